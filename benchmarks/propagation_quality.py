"""Quality of propagation through z per prompt mode, on synthetic stacks with exact labels.

Run from the repository root::

    .venv/bin/python benchmarks/propagation_quality.py            # print the tables
    .venv/bin/python benchmarks/propagation_quality.py --write-docs  # also update docs
    .venv/bin/python benchmarks/propagation_quality.py --spread 3    # + spread over noise seeds
    .venv/bin/python benchmarks/propagation_quality.py --model vit_b_lm --device cuda

Predictors are the stand-ins of ``tests/stand_ins.py``: the exact oracle
(returns the true object the prompt selects) and the noisy oracle (shifted,
dilated/eroded masks, merges with touching neighbours, "ghost" masks with a
middling score past an object's end). So the numbers measure how well each
prompt mode keeps the right object from slice to slice and how well the stop
rules end it, not SAM's mask quality. ``--model`` runs the same tables with a
real model instead (each slice embedded once per scene and reused by all runs;
slow on CPU).

Scenes (``napari_sam.synthetic.nuclei_stack``, noisy and blurred images):
``nuclei`` (anisotropic, some touching), ``irregular`` (irregular and dividing
nuclei, many touching, cut by the first and last slice), ``round`` (near-round
nuclei sampled finely in z, long z extents). Protocols: ``1 key`` seeds every
object with its true mask on its largest slice; ``2 keys`` on the slices at
1/4 and 3/4 of its z extent (gap filled from both ends).

Metrics per object, averaged over all objects of all scenes: 3D Dice with the
true object; slice-range error = |first slice error| + |last slice error|;
"ends ok" = share of objects whose first and last slices are both within one
slice of the truth.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from napari_sam.propagation import (  # noqa: E402
    BENCHMARK_MODES,
    propagate,
    stack_contrast_limits,
)
from napari_sam.synthetic import nuclei_stack  # noqa: E402
from stand_ins import NoisyOraclePredictor, OraclePredictor  # noqa: E402

DOC = ROOT / "docs" / "propagation.md"
START, END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"


@dataclass(frozen=True)
class Scene:
    name: str
    image: np.ndarray
    labels: np.ndarray
    limits: tuple[float, float]  # computed once; the stand-ins ignore them
    embeddings: dict = field(default_factory=dict)  # real model: z -> embedding, reused


@dataclass(frozen=True)
class SceneEmbeddings:
    """``embeddings[z]`` for :func:`propagate`: a real model embeds each slice once per run."""

    scene: Scene
    predictor: object

    def __getitem__(self, z: int):
        store = self.scene.embeddings
        if z not in store:
            store[z] = self.predictor.embed(self.scene.image[z], contrast_limits=self.scene.limits)
        return store[z]


def make_scenes() -> list[Scene]:
    """The three synthetic stacks (deterministic)."""
    img1, lab1 = nuclei_stack((24, 128, 128), seed=1)
    img2, lab2 = nuclei_stack(
        (30, 128, 128), seed=2, irregularity=0.45, cluster_prob=0.6, dividing_prob=0.15
    )
    img2, lab2 = img2[4:26], lab2[4:26]  # objects cut by the stack ends
    img3, lab3 = nuclei_stack(
        (40, 128, 128),
        seed=3,
        anisotropy=1.0,
        irregularity=0.0,
        flatness=(0.9, 1.0),
        cluster_prob=0.5,
    )
    return [
        Scene(name, img, lab, stack_contrast_limits(img))
        for name, img, lab in [
            ("nuclei", img1, lab1),
            ("irregular", img2, lab2),
            ("round", img3, lab3),
        ]
    ]


def make_seeds(labels: np.ndarray, protocol: str) -> dict[int, dict[int, np.ndarray]]:
    """True keyframe masks for every object (see the module doc)."""
    seeds = {}
    areas = np.stack([np.bincount(p.ravel(), minlength=labels.max() + 1) for p in labels])
    for oid in range(1, int(labels.max()) + 1):
        zs = np.flatnonzero(areas[:, oid])
        if zs.size == 0:
            continue
        if protocol == "1 key" or zs.size < 5:
            keys = [int(zs[np.argmax(areas[zs, oid])])]
        else:
            lo, hi = zs[0], zs[-1]
            keys = sorted({round(lo + (hi - lo) / 4), round(lo + 3 * (hi - lo) / 4)})
            keys = [k for k in keys if areas[k, oid]]
        seeds[oid] = {z: labels[z] == oid for z in keys}
    return seeds


def score_objects(result: np.ndarray, labels: np.ndarray) -> list[tuple[float, int, bool]]:
    """Per object: (3D Dice, slice-range error, both ends within one slice)."""
    out = []
    for oid in range(1, int(labels.max()) + 1):
        truth = labels == oid
        if not truth.any():
            continue
        got = result == oid
        inter = np.count_nonzero(got & truth)
        dice = 2 * inter / (np.count_nonzero(got) + np.count_nonzero(truth))
        tz = np.flatnonzero(truth.any(axis=(1, 2)))
        gz = np.flatnonzero(got.any(axis=(1, 2)))
        if gz.size == 0:
            err_lo = err_hi = tz.size
        else:
            err_lo, err_hi = abs(int(gz[0] - tz[0])), abs(int(gz[-1] - tz[-1]))
        out.append((dice, err_lo + err_hi, err_lo <= 1 and err_hi <= 1))
    return out


def run(
    scenes: list[Scene],
    predictor_kind: str | object,
    mode: str,
    protocol: str,
    noise_seeds: int = 1,
    **options,
) -> tuple[float, float, float]:
    """Mean Dice, mean range error and share of good ends over all objects (and noise seeds).

    ``predictor_kind`` is ``"oracle"``, ``"noisy"`` or a real predictor object.
    """
    rows = []
    for s in range(noise_seeds if predictor_kind == "noisy" else 1):
        for k, scene in enumerate(scenes):
            embeddings = None
            if predictor_kind == "oracle":
                predictor = OraclePredictor(scene.labels, scene.image)
            elif predictor_kind == "noisy":
                predictor = NoisyOraclePredictor(scene.labels, scene.image, seed=1000 * s + k)
            else:
                predictor = predictor_kind
                embeddings = SceneEmbeddings(scene, predictor)
            seeds = make_seeds(scene.labels, protocol)
            result = propagate(
                scene.image,
                seeds,
                predictor,
                prompt_mode=mode,
                contrast_limits=scene.limits,
                embeddings=embeddings,
                **options,
            )
            rows += score_objects(result.mask_or_labels, scene.labels)
            if embeddings is None:  # each slice is embedded at most once for all objects
                assert len(predictor.embedded) == len(set(predictor.embedded))
    arr = np.array(rows, dtype=np.float64)
    return float(arr[:, 0].mean()), float(arr[:, 1].mean()), float(arr[:, 2].mean())


def mode_table(scenes: list[Scene], noise_seeds: int, kinds: tuple) -> str:
    lines = [
        "| predictor | prompt mode | Dice 1 key | range err 1 key | ends ok 1 key "
        "| Dice 2 keys | range err 2 keys | ends ok 2 keys |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for kind in kinds:
        name = kind if isinstance(kind, str) else "model"
        for mode in BENCHMARK_MODES:
            cells = []
            for protocol in ("1 key", "2 keys"):
                dice, err, ok = run(scenes, kind, mode, protocol, noise_seeds)
                cells += [f"{dice:.3f}", f"{err:.2f}", f"{100 * ok:.0f}%"]
            lines.append(f"| {name} | {mode} | " + " | ".join(cells) + " |")
            print(lines[-1], flush=True)
    return "\n".join(lines)


def threshold_table(scenes: list[Scene], mode: str, noise_seeds: int, kind="noisy") -> str:
    name = kind if isinstance(kind, str) else "model"
    lines = [
        f"| iou_threshold | score_threshold | max_growth | Dice ({name}, {mode}, 1 key) "
        "| range err | ends ok |",
        "|---|---|---|---|---|---|",
    ]
    for iou_t, score_t, growth in [
        (0.0, 0.0, 1e9),  # no stop rule but "vanished"
        (0.2, 0.5, 2.0),
        (0.4, 0.5, 2.0),  # the defaults
        (0.6, 0.5, 2.0),
        (0.4, 0.7, 2.0),
        (0.4, 0.8, 2.0),
        (0.4, 0.5, 1.5),
    ]:
        dice, err, ok = run(
            scenes,
            kind,
            mode,
            "1 key",
            noise_seeds,
            iou_threshold=iou_t,
            score_threshold=score_t,
            max_growth=growth,
        )
        g = "off" if growth > 1e6 else f"{growth:g}"
        cells = f"{dice:.3f} | {err:.2f} | {100 * ok:.0f}%"
        lines.append(f"| {iou_t:g} | {score_t:g} | {g} | {cells} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def spread_table(scenes: list[Scene], n_seeds: int) -> str:
    """Mean ± standard deviation over noise seeds (noisy oracle, 1 key) per prompt mode."""
    lines = [
        f"| prompt mode | Dice (mean ± sd over {n_seeds} noise seeds) | range err | ends ok |",
        "|---|---|---|---|",
    ]
    for mode in BENCHMARK_MODES:
        per_seed = []
        for s in range(n_seeds):
            rows = []
            for k, scene in enumerate(scenes):
                predictor = NoisyOraclePredictor(scene.labels, scene.image, seed=1000 * s + k)
                result = propagate(
                    scene.image,
                    make_seeds(scene.labels, "1 key"),
                    predictor,
                    prompt_mode=mode,
                    contrast_limits=scene.limits,
                )
                rows += score_objects(result.mask_or_labels, scene.labels)
            per_seed.append(np.array(rows, dtype=np.float64).mean(axis=0))
        arr = np.array(per_seed)
        mean, sd = arr.mean(axis=0), arr.std(axis=0)
        lines.append(
            f"| {mode} | {mean[0]:.3f} ± {sd[0]:.3f} | {mean[1]:.2f} ± {sd[1]:.2f} "
            f"| {100 * mean[2]:.0f} ± {100 * sd[2]:.0f}% |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-docs", action="store_true", help=f"update {DOC.name}")
    parser.add_argument("--mode", default="box+mask", help="mode of the threshold sweep")
    parser.add_argument(
        "--noise-seeds", type=int, default=1, help="noisy-oracle runs averaged per row [1]"
    )
    parser.add_argument(
        "--spread",
        type=int,
        default=0,
        metavar="N",
        help="also a table of mean ± sd over N noise seeds per mode (slower) [off]",
    )
    parser.add_argument(
        "--model",
        default=None,
        help="benchmark a real model (registry name or checkpoint) instead of the stand-ins",
    )
    parser.add_argument("--device", default="auto", help="with --model [auto]")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    scenes = make_scenes()
    kinds: tuple = ("oracle", "noisy")
    if args.model:
        from napari_sam.predictor import Predictor

        kinds = (Predictor(args.model, device=args.device),)
        args.spread = 0
    n_objects = sum(int(len(np.unique(s.labels)) - 1) for s in scenes)
    header = (
        f"{len(scenes)} scenes ({', '.join(f'{s.name} {s.labels.shape}' for s in scenes)}), "
        f"{n_objects} objects"
    )
    print(header)
    modes = mode_table(scenes, args.noise_seeds, kinds)
    print()
    sweep = threshold_table(scenes, args.mode, args.noise_seeds, kinds[-1])
    spread = ""
    if args.spread:
        print()
        spread = spread_table(scenes, args.spread)
    elapsed = time.perf_counter() - t0
    print(f"\n{elapsed:.0f} s")
    if args.write_docs:
        block = "\n".join(
            [
                START,
                "Command: `.venv/bin/python benchmarks/propagation_quality.py --write-docs"
                + (f" --noise-seeds {args.noise_seeds}" if args.noise_seeds != 1 else "")
                + (f" --spread {args.spread}" if args.spread else "")
                + (f" --model {args.model}" if args.model else "")
                + f"` ({elapsed:.0f} s on 2 shared CPU cores). {header}; noisy rows average "
                f"{args.noise_seeds} noise seed(s).",
                "",
                modes,
                "",
                f"Stop-rule sweep ({'model' if args.model else 'noisy oracle'}, `{args.mode}`, "
                "1 key):",
                "",
                sweep,
                *(
                    ["", f"Spread over {args.spread} noise seeds (noisy, 1 key):", "", spread]
                    if spread
                    else []
                ),
                END,
            ]
        )
        text = DOC.read_text(encoding="utf-8")
        if START not in text or END not in text:
            raise SystemExit(f"{DOC} has no {START} ... {END} block to replace")
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
        DOC.write_text(text, encoding="utf-8")
        print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
