"""Everything mode with the bundled ``micro`` model: tiles at native resolution vs resized.

Run from the repository root (several minutes on a loaded 2-core CPU)::

    .venv/bin/python benchmarks/everything_tiles.py [--seeds 9911 9912] [--size 512]
        [--points-per-side 32] [--pred-iou-thresh 0.7] [--stability-thresh 0.9]
        [--box-nms-thresh 0.7] [--containment-thresh 0.8|none|auto] [--threads 1]

Generated fluorescent nuclei (``napari_sam.synthetic.nuclei_2d``, radius 4-15
px) on a ``size x size`` slice are segmented by everything mode with
``tiling="off"`` (the whole slice resized to the model's 256 px input) and
``tiling="auto"`` (the whole slice resized, plus the predictor's 256 px tiles
at native resolution). Metrics: mean best-match IoU per true nucleus,
accuracy TP / (TP + FP + FN) averaged over IoU 0.5 ... 0.9 and F1 at 0.5 (see
``benchmarks/everything_quality.py``), object counts, wall time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from everything_quality import accuracy_table, pair_ious


def best_match_iou(gt: np.ndarray, pred: np.ndarray) -> float:
    """Mean over true objects of the IoU with the best-overlapping predicted object."""
    ig, _, iou, area_g, _ = pair_ious(gt, pred)
    best = np.zeros(len(area_g))
    np.maximum.at(best, ig, iou)
    present = np.flatnonzero(area_g[1:] > 0) + 1
    return float(best[present].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[9911, 9912])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--points-per-side", type=int, default=32)
    ap.add_argument(
        "--pred-iou-thresh", type=float, default=None, help="default: the model's (micro 0.6)"
    )
    ap.add_argument(
        "--stability-thresh", type=float, default=None, help="default: the model's (micro 0.85)"
    )
    ap.add_argument(
        "--box-nms-thresh", type=float, default=None, help="default: the model's (micro 0.5)"
    )
    ap.add_argument(
        "--containment-thresh",
        type=lambda v: v.lower() if v.lower() == "auto" else None if v.lower() == "none"
        else float(v),
        default="auto",
        help="segment_everything's containment_thresh ('none': keep nested sub-parts; "
        "'auto', the default: the model's, micro 0.5)",
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--weights", default=None,
        help="a micro checkpoint to test (default: the bundled one); micro's options apply",
    )
    args = ap.parse_args()

    import torch

    from napari_sam.everything import segment_everything
    from napari_sam.predictor import Predictor
    from napari_sam.synthetic import nuclei_2d

    torch.set_num_threads(args.threads)
    predictor = Predictor("micro", precision="float32")
    if args.weights:  # a candidate for the bundled model: same name, so micro's options apply
        from napari_sam.model.checkpoint import model_from_state_dict, read_state_dict

        candidate = model_from_state_dict(read_state_dict(args.weights))
        predictor.model.load_state_dict(candidate.state_dict())
    print(
        f"micro, {args.size} x {args.size}, points_per_side {args.points_per_side}, "
        f"pred_iou_thresh {args.pred_iou_thresh}, stability {args.stability_thresh}, "
        f"box NMS {args.box_nms_thresh}, containment_thresh {args.containment_thresh} "
        f"(None/auto: the model's), {args.threads} torch thread(s), "
        f"load {os.getloadavg()[0]:.1f}"
    )
    print(
        "| seed | tiling | crops | prompts | true / found | best-match IoU | mean acc. | F1@0.5 "
        "| s (embed / decode) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        image, gt = nuclei_2d((args.size, args.size), seed=seed, radius=(4.0, 15.0))
        for tiling in ("off", "auto"):
            t0 = time.perf_counter()
            res = segment_everything(
                image,
                predictor=predictor,
                points_per_side=args.points_per_side,
                pred_iou_thresh=args.pred_iou_thresh,
                stability_score_thresh=args.stability_thresh,
                box_nms_thresh=args.box_nms_thresh,
                containment_thresh=args.containment_thresh,
                tiling=tiling,
            )
            wall = time.perf_counter() - t0
            acc = accuracy_table(gt, res.labels)
            print(
                f"| {seed} | {tiling} | {res.stats['crops']} | {res.stats['prompts']} "
                f"| {acc['n_true']} / {acc['n_pred']} | {best_match_iou(gt, res.labels):.3f} "
                f"| {acc['mean']:.3f} | {acc['f1']:.3f} | {wall:.1f} "
                f"({res.timings['embed']:.1f} / {res.timings['decode']:.1f}) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
