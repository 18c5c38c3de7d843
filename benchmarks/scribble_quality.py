"""Scribble prompts vs a centre click with the bundled ``micro`` model.

Generated nuclei (:func:`napari_sam.synthetic.nuclei_2d`, 256 x 256, one
scene per seed); for every nucleus of at least ``--min-area`` pixels:

* ``centre click``: one positive point at its centre (the centroid when it lies
  inside, else the deepest pixel: :func:`napari_sam.training.validation.object_prompts`),
  multimask, best score;
* ``scribble``: a straight object stroke through that centre along the
  nucleus' long axis, ``--fraction`` (0.6) of its length along that axis,
  segmented with :meth:`napari_sam.scribbles.ScribblePrompt.segment`;
* ``scribble ..., middle 10 % off centre``: the same stroke shifted along
  the axis by 10 % of the nucleus' length (a stroke not centred on it);
* ``scribble random``: the same length in a random direction (may leave
  elongated nuclei);
* the same long-axis stroke given as ``--max-points`` points spread evenly
  along it in one prompt (the design :mod:`napari_sam.scribbles` rejects);
* on elongated nuclei (``--elongated-seeds``, elongation 2.5-4): a centre
  click vs a stroke along ``--elongated-fraction`` (0.8) of the long axis;
* ``lasso``: a closed stroke around the nucleus (its mask grown by 2 px),
  i.e. a mask + box prompt.

Scribbles go through :func:`napari_sam.scribbles.scribble_prompt` and
:meth:`~napari_sam.scribbles.ScribblePrompt.segment` (the stroke's middle,
then correction points from the stroke, at most ``--max-points``); every mask
keeps only the parts under its prompts
(:func:`napari_sam.masks.keep_prompted_parts`), as the annotator commits it.
Prints mean IoU with the true nucleus per prompt.

Run: ``OMP_NUM_THREADS=1 python benchmarks/scribble_quality.py [--seeds 9931 9932 9933 9934]``
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def cpu_name() -> str:
    """The CPU's model name and model number, and the number of cores."""
    name, model = platform.processor() or "unknown CPU", ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    name = value.strip()
                elif key.strip() == "model" and not model:
                    model = f" model {value.strip()}"
    except OSError:
        pass
    return f"{name}{model}, {os.cpu_count()} cores"


def major_axis(mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Unit ``(row, col)`` direction of a mask's long axis and its length in pixels."""
    rc = np.argwhere(mask).astype(np.float64)
    rc -= rc.mean(axis=0)
    cov = rc.T @ rc / max(1, len(rc))
    vals, vecs = np.linalg.eigh(cov)
    direction = vecs[:, int(np.argmax(vals))]
    proj = rc @ direction
    return direction, float(proj.max() - proj.min() + 1.0)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def _scenes(args):
    from napari_sam.synthetic import nuclei_2d

    for seed in args.seeds:
        yield "nuclei", nuclei_2d((args.size, args.size), seed=seed)
    for seed in args.elongated_seeds:
        yield "elongated nuclei", nuclei_2d(
            (args.size, args.size), seed=seed, radius=(8.0, 16.0), elongation=(2.5, 4.0),
            irregularity=0.3,
        )


def run(args) -> dict:
    import torch
    from scipy import ndimage as ndi

    from napari_sam.masks import keep_prompted_parts
    from napari_sam.predictor import Predictor
    from napari_sam.scribbles import Stroke, sample_polyline, scribble_prompt
    from napari_sam.training.validation import object_prompts

    torch.set_num_threads(args.threads)
    predictor = Predictor(args.model, device="cpu", precision=args.precision)
    rng = np.random.default_rng(0)
    rows: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        rows.setdefault(key, []).append(value)

    t0 = time.perf_counter()
    for scene, (image, labels) in _scenes(args):
        emb = predictor.embed(image)
        ids, centres, _ = object_prompts(labels, min_area=args.min_area)
        h, w = labels.shape
        fraction = args.fraction if scene == "nuclei" else args.elongated_fraction
        for oid, centre in zip(ids, centres):
            truth = labels == oid
            pred = predictor.predict(emb, points=centre[None], labels=[1], multimask=True)
            add(f"{scene}: centre click", iou(keep_prompted_parts(pred.best_mask, centre[None],
                                                                  [1]), truth))
            direction, length = major_axis(truth)
            angle = rng.uniform(0, np.pi)
            # (name, direction, shift of the stroke's middle from the centre along it)
            variants = [("long axis", direction, 0.0)]
            if scene == "nuclei":
                variants.append(("long axis, middle 10 % off centre", direction, 0.1))
                variants.append(("random direction", np.array([np.cos(angle), np.sin(angle)]),
                                 0.0))
            for name, d, shift in variants:
                half = 0.5 * fraction * length * d
                mid = centre + shift * length * d
                verts = np.clip(np.stack([mid - half, mid + half]), 0, [h - 1, w - 1])
                prompt = scribble_prompt([Stroke(verts, True)], (h, w),
                                         max_points=args.max_points)
                res = prompt.segment(predictor, emb)
                key = f"{scene}: scribble {fraction:.0%}, {name}"
                add(key, iou(res.mask, truth))
                add(f"{key} [points]", len(res.points))
                if name == "long axis":  # the rejected design: points spread along the stroke
                    pts = sample_polyline(verts, args.max_points)
                    p = predictor.predict(emb, points=pts, multimask=False)
                    add(f"{scene}: scribble {fraction:.0%}, {name}, {args.max_points} points "
                        "spread evenly (not used)",
                        iou(keep_prompted_parts(p.best_mask, pts, None), truth))
            if scene == "nuclei":
                lasso = ndi.binary_dilation(truth, iterations=2)
                stroke = Stroke(centre[None], True, True, lasso, "lasso")
                prompt = scribble_prompt([stroke], (h, w))
                add(f"{scene}: lasso 2 px around (mask + box)",
                    iou(prompt.segment(predictor, emb).mask, truth))
    return {"rows": rows, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[9931, 9932, 9933, 9934])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--min-area", type=int, default=30)
    ap.add_argument("--fraction", type=float, default=0.6)
    ap.add_argument("--elongated-seeds", type=int, nargs="*", default=[9931, 9932])
    ap.add_argument("--elongated-fraction", type=float, default=0.8)
    ap.add_argument("--max-points", type=int, default=8)
    ap.add_argument("--model", default="micro")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    out = run(args)
    n = len(out["rows"]["nuclei: centre click"])
    print(f"{n} nuclei, seeds {args.seeds} (elongated: {args.elongated_seeds}), {args.size} px, "
          f"model {args.model} ({args.precision}), {args.threads} thread(s), {cpu_name()}, "
          f"load {os.getloadavg()[0]:.1f}, {out['seconds']:.0f} s")
    print("| prompt | objects | mean IoU | median | IoU >= 0.5 | points used |")
    print("|---|---|---|---|---|---|")
    rows = out["rows"]
    for name, values in rows.items():
        if name.endswith("[points]"):
            continue
        v = np.asarray(values)
        used = rows.get(f"{name} [points]")
        used = "" if used is None else f"{np.mean(used):.2f} (1: {np.mean(np.equal(used, 1)):.0%})"
        print(f"| {name} | {len(v)} | {v.mean():.3f} | {np.median(v):.3f} | "
              f"{np.mean(v >= 0.5):.0%} | {used} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
