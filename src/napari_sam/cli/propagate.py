"""``napari-sam propagate``: propagate seed masks or points through the slices of a stack.

Seeds are either a labels TIFF of the stack's ``(Z, Y, X)`` shape (every id's
non-empty slices are its keyframes) or a points CSV (``z,y,x[,label]``): each
positive point is one object, segmented on its slice first; negative points
(label 0) are added to every object's prompt on their slice.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np


def register(sub) -> None:
    from napari_sam.cli._common import add_model_options
    from napari_sam.propagation import (
        DEFAULT_IOU_THRESHOLD,
        DEFAULT_PROMPT_MODE,
        DEFAULT_SCORE_THRESHOLD,
        DIRECTIONS,
    )

    p = sub.add_parser(
        "propagate",
        help="propagate seed masks or points through the z slices of a stack",
        description=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("stack", help="image stack (Z, Y, X) or (Z, Y, X, C): .tif, .zarr or .npy")
    p.add_argument(
        "--seeds",
        required=True,
        help="labels .tif of the stack's (Z, Y, X) shape, or points .csv (z,y,x[,label])",
    )
    p.add_argument("--out", required=True, help="output labels .tif (overwritten)")
    add_model_options(p)
    p.add_argument(
        "--prompt-mode",
        default=None,
        help="box, points, mask, neg joined with '+' [the model's recommendation: "
        f"box+mask+neg for micro; else {DEFAULT_PROMPT_MODE}]",
    )
    p.add_argument("--direction", choices=DIRECTIONS, default="both", help="[both]")
    p.add_argument(
        "--z-range",
        type=parse_z_range,
        default=None,
        metavar="A:B",
        help="only slices A <= z < B (Python slice; A or B may be empty)",
    )
    p.add_argument(
        "--iou-threshold",
        type=float,
        default=DEFAULT_IOU_THRESHOLD,
        help=f"stop when IoU with the previous slice is lower [{DEFAULT_IOU_THRESHOLD}]",
    )
    p.add_argument(
        "--score-threshold",
        type=float,
        default=DEFAULT_SCORE_THRESHOLD,
        help=f"stop when the model's score is lower [{DEFAULT_SCORE_THRESHOLD}]",
    )
    p.add_argument(
        "--fade-threshold",
        type=float,
        default=None,
        help="stop when the object's contrast falls below this share of its seed's; 0: off "
        "[the model's recommendation: 0.4 for micro; else 0]",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_z_range(text: str) -> tuple[int | None, int | None]:
    """``"a:b"`` -> ``(a, b)``; either side may be empty (None)."""
    parts = text.split(":")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected A:B (e.g. 10:40), got {text!r}")
    try:
        return tuple(int(p) if p.strip() else None for p in parts)  # type: ignore[return-value]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers A:B (e.g. 10:40), got {text!r}"
        ) from None


def make_predictor(model: str, device: str, precision: str) -> Any:
    """Load the predictor (the one place tests replace with a stand-in)."""
    from napari_sam.predictor import Predictor

    return Predictor(model, device=device, precision=precision)


def seeds_from_labels(labels: np.ndarray, stack_shape: tuple[int, ...]) -> dict:
    """``(Z, Y, X)`` labels -> ``{id: {z: mask}}`` with every id's non-empty slices."""
    from napari_sam.cli._common import UserError

    if labels.shape != tuple(stack_shape[:3]):
        raise UserError(
            f"seed labels have shape {labels.shape}, expected the stack's (Z, Y, X) "
            f"{tuple(stack_shape[:3])}"
        )
    if labels.dtype.kind not in "iu":
        raise UserError(f"seed labels must be integers, got {labels.dtype}")
    seeds: dict[int, dict[int, np.ndarray]] = {}
    for z in range(labels.shape[0]):
        plane = labels[z]
        for lid in np.unique(plane):
            if lid > 0:
                seeds.setdefault(int(lid), {})[z] = plane == lid
    if not seeds:
        raise UserError("the seed labels are empty: paint at least one object")
    return seeds


def seeds_from_points(
    points: np.ndarray, positive: np.ndarray, stack: Any, predictor: Any, limits, embeddings: dict
) -> dict:
    """One object per positive ``(z, y, x)`` point, segmented on its slice.

    Negative points on the same slice are added to the prompt; the seed is the
    part of the best mask under the point. Embeddings are stored in
    ``embeddings`` (``{z: embedding}``) for propagation to reuse.
    """
    from napari_sam.cli._common import UserError
    from napari_sam.masks import keep_prompted_parts

    if points.shape[1] != 3:
        raise UserError(
            f"points have {points.shape[1]} coordinates; propagation needs z,y,x columns"
        )
    if not positive.any():
        raise UserError("the points file has no positive point (label 1)")
    n_z, h, w = stack.shape[:3]
    zs = np.rint(points[:, 0]).astype(int)
    inside = (zs >= 0) & (zs < n_z)
    inside &= (points[:, 1] >= 0) & (points[:, 1] <= h - 1)
    inside &= (points[:, 2] >= 0) & (points[:, 2] <= w - 1)
    if not inside.all():
        bad = points[~inside][0].tolist()
        raise UserError(f"point (z, y, x) = {bad} is outside the stack {tuple(stack.shape[:3])}")
    seeds: dict[int, dict[int, np.ndarray]] = {}
    for oid, i in enumerate(np.flatnonzero(positive), start=1):
        z = int(zs[i])
        if z not in embeddings:
            embeddings[z] = predictor.embed(np.asarray(stack[z]), contrast_limits=limits)
        neg = (~positive) & (zs == z)
        pts = np.concatenate([points[i : i + 1, 1:], points[neg, 1:]])
        labels = np.concatenate([[1], np.zeros(int(neg.sum()), int)])
        best = predictor.predict(embeddings[z], points=pts, labels=labels).best_mask
        # the object is the part under its point, as in the annotator
        mask = keep_prompted_parts(np.asarray(best, dtype=bool), pts, labels)
        if not mask.any():
            raise UserError(
                f"point {oid} at (z, y, x) = {points[i].tolist()} gave an empty mask; move it "
                "onto the object"
            )
        seeds[oid] = {z: mask}
    return seeds


def run(args) -> int:
    from napari_sam.cli._common import UserError, progress_printer
    from napari_sam.io import read_image, read_labels_tiff, read_points_csv, write_labels_tiff
    from napari_sam.propagation import parse_prompt_mode, propagate, stack_contrast_limits

    if args.prompt_mode is not None:
        parse_prompt_mode(args.prompt_mode)  # fail before loading anything heavy
    stack = read_image(args.stack)
    if len(stack.shape) not in (3, 4):
        raise UserError(
            f"{args.stack} has shape {tuple(stack.shape)}; propagation needs a stack "
            "(Z, Y, X) or (Z, Y, X, C)"
        )
    seeds_path = str(args.seeds)
    is_csv = seeds_path.lower().endswith(".csv")
    if not is_csv:
        seed_labels, _ = read_labels_tiff(seeds_path)
        seeds = seeds_from_labels(np.asarray(seed_labels), tuple(stack.shape))
    predictor = make_predictor(args.model, args.device, args.precision)
    limits = stack_contrast_limits(stack)
    embeddings: dict = {}
    if is_csv:
        prompts = read_points_csv(seeds_path)
        seeds = seeds_from_points(
            np.asarray(prompts.points),
            np.asarray(prompts.point_positive),
            stack,
            predictor,
            limits,
            embeddings,
        )
    max_id = max(seeds)
    dtype = next(d for d in (np.uint8, np.uint16, np.uint32) if max_id <= np.iinfo(d).max)
    labels = np.zeros(tuple(stack.shape[:3]), dtype=dtype)
    progress = None if args.quiet else progress_printer("propagate")
    result = propagate(
        stack,
        seeds,
        predictor,
        out=labels,
        progress=progress,
        prompt_mode=args.prompt_mode,
        direction=args.direction,
        z_range=args.z_range,
        iou_threshold=args.iou_threshold,
        score_threshold=args.score_threshold,
        fade_threshold=args.fade_threshold,
        contrast_limits=limits,
        embeddings=embeddings,
    )
    write_labels_tiff(args.out, labels)
    print_summary(result, labels)
    print(f"wrote {args.out}: labels {labels.shape} {labels.dtype}")
    return 0


def print_summary(result, labels: np.ndarray, file=None) -> None:
    """One line per object: slices, voxels written, and why each direction stopped."""
    from napari_sam.propagation.records import format_record

    file = file or sys.stdout
    counts = np.bincount(labels.ravel().astype(np.int64))
    for oid, s in result.summary().items():
        voxels = int(counts[oid]) if oid < len(counts) else 0
        stops = "; ".join(format_record(r) for r in s.stops) or "-"
        print(
            f"object {oid}: z {s.z_min}-{s.z_max} ({s.n_slices} slices), {voxels} voxels; "
            f"stops: {stops}",
            file=file,
        )
