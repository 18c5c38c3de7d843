"""Everything mode: segmentation accuracy with stand-in predictors, and decoding speed.

Run from the repository root (about 3 minutes on an idle 2-core CPU)::

    .venv/bin/python benchmarks/everything_quality.py               # print the tables
    .venv/bin/python benchmarks/everything_quality.py --write-docs  # also update docs
    .venv/bin/python benchmarks/everything_quality.py --no-timing   # accuracy only (~20 s)

Accuracy
    Synthetic fluorescent nuclei (``napari_sam.synthetic.nuclei_2d``, 256 x 256,
    noisy and blurred, some nuclei touching) and stacks (``nuclei_stack``), each
    segmented with everything mode (32 x 32 grid, default filters) by the
    stand-ins of ``tests/stand_ins.py``: the exact oracle (a point returns the
    true object under it) and the noisy oracle (shifted, dilated/eroded masks,
    merges with touching neighbours, "ghost" masks with a middling score on
    background). The numbers measure the pipeline (grid coverage, filters,
    NMS, overlap resolution, z linking), not SAM's mask quality.
    Metrics as in the 2018 Data Science Bowl / StarDist: a predicted object
    matches a true one when their IoU is above ``t``; accuracy(t) =
    TP / (TP + FP + FN), averaged over ``t = 0.5, 0.55, ..., 0.9``; F1 at 0.5.

Speed
    One 512 x 512 slice, ``build_sam("vit_b")`` with random weights (the real
    model's size; float32): one embedding, then the 32 x 32-grid decoding pass
    (1024 prompts, 3072 candidate masks) on that embedding, with the default
    filters and with every prompt's masks decoded (``pred_iou_thresh=-inf``:
    the decoder's worst case; random weights predict low IoUs, so the default
    run skips the mask upscaling of most prompts). The plain ``predict_batch``
    path is timed on 64 prompts and scaled to 1024. The post-processing cost
    per kept mask (upscaling to the slice, hole/island clean-up, compaction) is
    measured separately with realistic masks (the true nuclei as low-res logits). Torch runs
    with one thread (``--threads``) and the ratio uses this process's CPU time,
    so that other jobs on a shared machine do not distort it; wall times are
    listed too.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from napari_sam.everything import segment_everything, segment_everything_stack  # noqa: E402
from napari_sam.synthetic import nuclei_2d, nuclei_stack  # noqa: E402
from stand_ins import NoisyOraclePredictor, OraclePredictor  # noqa: E402

DOC = ROOT / "docs" / "everything.md"
START, END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"
THRESHOLDS = np.round(np.arange(0.5, 0.91, 0.05), 2)


# ----------------------------------------------------------------------------- metrics


def pair_ious(gt: np.ndarray, pred: np.ndarray):
    """Every overlapping (true, predicted) pair: ids ``ig``, ``ip``, their IoU, and the areas."""
    g = gt.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    n_g, n_p = int(g.max()) + 1, int(p.max()) + 1
    both = (g > 0) & (p > 0)
    keys, inter = np.unique(g[both] * n_p + p[both], return_counts=True)
    area_g = np.bincount(g, minlength=n_g)
    area_p = np.bincount(p, minlength=n_p)
    ig, ip = keys // n_p, keys % n_p
    iou = inter / (area_g[ig] + area_p[ip] - inter)
    return ig, ip, iou, area_g, area_p


def matching_ious(gt: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, int, int]:
    """IoU of every overlapping (true, predicted) pair, and the object counts."""
    _, _, iou, area_g, area_p = pair_ious(gt, pred)
    count_g = int((area_g[1:] > 0).sum())
    count_p = int((area_p[1:] > 0).sum())
    return iou, count_g, count_p


def accuracy_table(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Accuracy per threshold (IoU > t matches are unique for t >= 0.5), F1@0.5."""
    iou, n_g, n_p = matching_ious(gt, pred)
    out = {}
    for t in THRESHOLDS:
        tp = int((iou > t).sum())
        out[f"{t:.2f}"] = tp / max(1, n_g + n_p - tp)
    tp = int((iou > 0.5).sum())
    out["mean"] = float(np.mean([out[f"{t:.2f}"] for t in THRESHOLDS]))
    out["f1"] = 2 * tp / max(1, n_g + n_p)
    out["n_true"] = n_g
    out["n_pred"] = n_p
    return out


def _mean_tables(tables: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([t[k] for t in tables])) for k in tables[0]}


# ----------------------------------------------------------------------------- accuracy


def run_accuracy(seeds: int = 2) -> list[tuple[str, dict[str, float], float]]:
    rows = []
    for name, make, thresh in [
        ("exact oracle", lambda lab, img, s: OraclePredictor(lab, img), 0.8),
        ("noisy oracle", lambda lab, img, s: NoisyOraclePredictor(lab, img, seed=s), 0.8),
        ("noisy oracle", lambda lab, img, s: NoisyOraclePredictor(lab, img, seed=s), 0.88),
    ]:
        tables, seconds = [], 0.0
        for s in range(seeds):
            image, gt = nuclei_2d((256, 256), seed=s)
            t0 = time.perf_counter()
            res = segment_everything(
                image,
                predictor=make(gt, image, s),
                points_per_side=32,
                pred_iou_thresh=thresh,
            )
            seconds += time.perf_counter() - t0
            tables.append(accuracy_table(gt, res.labels))
        rows.append(
            (f"2D, {name}, pred_iou_thresh {thresh}", _mean_tables(tables), seconds / seeds)
        )
    for name, make, thresh in [
        ("exact oracle", lambda lab, img, s: OraclePredictor(lab, img), 0.8),
        ("noisy oracle", lambda lab, img, s: NoisyOraclePredictor(lab, img, seed=s), 0.8),
        ("noisy oracle", lambda lab, img, s: NoisyOraclePredictor(lab, img, seed=s), 0.88),
    ]:
        tables, seconds = [], 0.0
        n_stacks = max(1, seeds // 2)
        for s in range(n_stacks):
            image, gt = nuclei_stack((12, 128, 128), seed=s)
            t0 = time.perf_counter()
            res = segment_everything_stack(
                image,
                predictor=make(gt, image, s),
                points_per_side=24,
                pred_iou_thresh=thresh,
                min_z_extent=2,
            )
            seconds += time.perf_counter() - t0
            tables.append(accuracy_table(gt, res.labels))
        rows.append(
            (
                f"3D stack, {name}, pred_iou_thresh {thresh}",
                _mean_tables(tables),
                seconds / n_stacks,
            )
        )
    return rows


def format_accuracy(rows) -> str:
    cols = [f"{t:.2f}" for t in THRESHOLDS]
    head = "| scene, predictor | mean acc. 0.5-0.9 | F1@0.5 | " + " | ".join(cols)
    head += " | true / found | s per image |"
    lines = [head, "|" + "---|" * (len(cols) + 6)]
    for name, t, sec in rows:
        vals = " | ".join(f"{t[c]:.3f}" for c in cols)
        lines.append(
            f"| {name} | **{t['mean']:.3f}** | {t['f1']:.3f} | {vals} | "
            f"{t['n_true']:.1f} / {t['n_pred']:.1f} | {sec:.1f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- speed


class _Clock:
    """Wall time and this process's CPU time of a block."""

    def __enter__(self):
        self.wall = time.perf_counter()
        self.cpu = time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def run_speed(threads: int) -> list[tuple[str, float, float, float]]:
    """Rows ``(step, wall s, CPU s, CPU / embedding CPU)``."""
    import torch

    from napari_sam.model.sam import build_sam
    from napari_sam.predictor import Predictor

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    predictor = Predictor(build_sam("vit_b"), precision="float32")
    image, gt = nuclei_2d((512, 512), seed=0)
    with _Clock() as c:
        emb = predictor.embed(image)
    if tuple(emb.input_size) != (1024, 1024):
        raise RuntimeError(f"unexpected model input {emb.input_size}; expected 1024 x 1024")
    embed = c.cpu
    rows = [("embedding (image encoder), once per slice", c.wall, c.cpu, 1.0)]
    for label, kw in [
        # every prompt's 3 masks decoded at low res (stability 1.0 keeps almost none):
        # the decoder's worst case
        (
            "everything pass, all 3072 masks decoded (pred_iou_thresh=-inf)",
            {"pred_iou_thresh": -1e9, "stability_score_thresh": 1.0},
        ),
        ("everything pass, default filters", {}),
    ]:
        with _Clock() as c:
            res = segment_everything(image, predictor=predictor, embedding=emb, **kw)
        detail = (
            f"{label}; {res.stats['passed_filters']} of {res.stats['candidates']} candidates kept"
        )
        rows.append((detail, c.wall, c.cpu, c.cpu / embed))
    # the plain batched decoder (predict_batch, low-res), 32 prompts scaled to 1024
    pts = np.random.default_rng(0).random((32, 1, 2)) * 511
    with _Clock() as c:
        predictor.predict_batch(emb, points=pts, labels=np.ones((32, 1)), upscale=False)
    rows.append(
        (
            "decoder via predict_batch (32 prompts, x 32), for comparison",
            32 * c.wall,
            32 * c.cpu,
            32 * c.cpu / embed,
        )
    )
    # post-processing per kept mask (upscaling around the object with the vit_b
    # geometry, hole/island clean-up, compaction) on realistic masks: the true
    # nuclei of the image drawn as low-res logits (512 px slice -> 256 low-res)
    from napari_sam.everything._core import _compact
    from napari_sam.everything._upscale import RegionUpscaler

    region = RegionUpscaler.for_predictor(predictor, emb, (256, 256), 0.0)
    lows = []
    for i in np.unique(gt)[1:]:
        low = (gt == i).astype(np.float32).reshape(256, 2, 256, 2).mean(axis=(1, 3))
        lows.append(torch.as_tensor((low - 0.5) * 20.0))
    with _Clock() as c, torch.inference_mode():
        for lg in lows:
            _compact(*region.crop(lg), 16)
    rows.append(
        (
            f"post-processing of 1000 kept masks (measured on {len(lows)} nuclei: upscaling "
            "around the object, clean-up, compaction)",
            1000 * c.wall / len(lows),
            1000 * c.cpu / len(lows),
            1000 * c.cpu / len(lows) / embed,
        )
    )
    with _Clock() as c:
        predictor.upscale(emb, torch.stack(lows[:8]))
    rows.append(
        (
            "for comparison: 1000 masks upscaled to the whole slice (predictor.upscale)",
            1000 * c.wall / 8,
            1000 * c.cpu / 8,
            1000 * c.cpu / 8 / embed,
        )
    )
    return rows


def format_speed(rows) -> str:
    lines = [
        "| step (512 x 512 slice, vit_b-sized model) | wall s | CPU s | CPU / embedding |",
        "|---|---|---|---|",
    ]
    lines += [f"| {n} | {w:.1f} | {c:.1f} | {r:.2f} |" for n, w, c, r in rows]
    return "\n".join(lines)


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = f"{len(names)} x {names[0]}" if names else cpu
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{cpu}, torch {torch.__version__}, {torch.get_num_threads()} threads, load {load:.1f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write-docs", action="store_true", help=f"update {DOC.name}")
    ap.add_argument("--no-timing", action="store_true", help="skip the vit_b timing")
    ap.add_argument("--seeds", type=int, default=2, help="images per predictor [2]")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for the timing [1: CPU time is then robust to other load]",
    )
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    acc = format_accuracy(run_accuracy(args.seeds))
    print(acc, flush=True)
    speed = None
    if not args.no_timing:
        speed = format_speed(run_speed(args.threads))
        print(speed)
    info = f"Machine: {machine()}. Total run time {time.perf_counter() - t0:.0f} s."
    print(info)
    if args.write_docs:
        cmd = "python benchmarks/everything_quality.py --write-docs"
        block = f"{START}\nCommand: `{cmd}`. {info}\n\n{acc}\n"
        if speed is not None:
            block += f"\n{speed}\n"
        block += END
        text = DOC.read_text()
        pattern = re.escape(START) + ".*?" + re.escape(END)
        if not re.search(pattern, text, flags=re.S):
            raise SystemExit(f"{DOC} has no {START} ... {END} block")
        DOC.write_text(re.sub(pattern, lambda _: block, text, flags=re.S))
        print(f"updated {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
