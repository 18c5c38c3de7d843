"""``napari-sam propagate``: propagate seed masks or points through the slices of a stack.

Seeds are either a labels TIFF of the stack's ``(Z, Y, X)`` shape (every id's
non-empty slices are its keyframes) or a points CSV (``z,y,x[,label]``): each
positive point is one object, segmented on its slice first; negative points
(label 0) are added to every object's prompt on their slice.

``--axis t`` (or ``z``, or an axis index) propagates along that axis of a
``(T, Y, X)`` or ``(T, Z, Y, X)`` stack: objects keep their id from frame to
frame (tracking; no lineage). Seeds then have the stack's shape without
channels (labels) or one coordinate per axis (points: ``t,z,y,x``), and all
of them lie at one index of the other leading axes (e.g. one z), which is
where the result is written.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import numpy as np

from napari_sam.propagation.params import parse_axis, parse_z_range  # noqa: F401 (CLI types)


def register(sub) -> None:
    from napari_sam import options
    from napari_sam.cli._common import add_model_options
    from napari_sam.propagation import PropagationParams

    p = sub.add_parser(
        "propagate",
        help="propagate seed masks or points through the z slices (or time) of a stack",
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
    # every option of a propagation, from the fields of PropagationParams
    options.add_arguments(p, PropagationParams)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _options(args: argparse.Namespace, **given: Any) -> dict[str, Any]:
    """The propagation options on the command line, with ``given`` (computed) ones."""
    from napari_sam.options import from_args
    from napari_sam.propagation import PropagationParams

    return {**from_args(PropagationParams, args), **given}


def seeds_along_axis(
    coords: np.ndarray, axis: int, n_lead: int, what: str
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Seed coordinates ``(N, n_lead)`` -> their index along ``axis`` and the one position
    of the other leading axes that they share (a UserError names the clash)."""
    from napari_sam.cli._common import UserError

    lead = np.rint(np.asarray(coords, dtype=np.float64)[:, :n_lead]).astype(np.int64)
    others = [i for i in range(n_lead) if i != axis]
    rest = {tuple(int(v) for v in row[others]) for row in lead}
    if len(rest) > 1:
        raise UserError(
            f"the {what} lie at different indices {sorted(rest)} of axes {others}; "
            f"propagation along axis {axis} runs at one of them: keep seeds of one slice "
            "position (e.g. one z) per run"
        )
    position = [0] * n_lead
    for i, v in zip(others, next(iter(rest))):
        position[i] = v
    return lead[:, axis], tuple(position)


def run_along_axis(args, stack: Any) -> int:
    """``run`` for ``--axis``: seeds of the whole stack, result written at their position."""
    from napari_sam.cli._common import UserError, progress_printer
    from napari_sam.io import read_labels_tiff, read_points_csv, write_labels_tiff
    from napari_sam.propagation import propagate, stack_contrast_limits
    from napari_sam.propagation.inputs import along_axis, resolve_axis, split_shape

    shape = tuple(int(v) for v in stack.shape)
    axis = resolve_axis(shape, args.axis)
    n_lead, _ = split_shape(shape)
    labels_shape = shape[: n_lead + 2]
    predictor = None
    embeddings: dict = {}
    limits = stack_contrast_limits(stack)
    if str(args.seeds).lower().endswith(".csv"):
        prompts = read_points_csv(args.seeds)
        points = np.asarray(prompts.points, dtype=np.float64)
        if points.shape[1] != n_lead + 2:
            raise UserError(
                f"points have {points.shape[1]} coordinates; this stack of shape {shape} needs "
                f"{n_lead + 2} (one per leading axis, then y, x)"
            )
        zs, position = seeds_along_axis(points, axis, n_lead, "points")
        view = along_axis(stack, axis, position)
        predictor = make_predictor(args.model, args.device, args.precision)
        on_view = np.column_stack([zs, points[:, n_lead:]])
        seeds = seeds_from_points(on_view, np.asarray(prompts.point_positive), view,
                                  predictor, limits, embeddings)
    else:
        seed_labels, _ = read_labels_tiff(args.seeds)
        seed_labels = np.asarray(seed_labels)
        if seed_labels.shape != labels_shape:
            raise UserError(
                f"seed labels have shape {seed_labels.shape}, expected the stack's "
                f"{labels_shape}"
            )
        planes = np.argwhere(seed_labels.reshape(*labels_shape[:n_lead], -1).any(axis=-1))
        if len(planes) == 0:
            raise UserError("the seed labels are empty: paint at least one object")
        zs, position = seeds_along_axis(planes, axis, n_lead, "seed labels")
        view = along_axis(seed_labels, axis, position)
        seeds = seeds_from_labels(np.stack([view[z] for z in range(len(view))]),
                                  (len(view), *labels_shape[-2:]))
    if predictor is None:
        predictor = make_predictor(args.model, args.device, args.precision)
    max_id = max(seeds)
    dtype = next(d for d in (np.uint8, np.uint16, np.uint32) if max_id <= np.iinfo(d).max)
    labels = np.zeros(labels_shape, dtype=dtype)
    result = propagate(
        stack,
        seeds,
        predictor,
        out=labels,
        progress=None if args.quiet else progress_printer("propagate"),
        **_options(args, axis=axis, position=position, contrast_limits=limits,
                   embeddings=embeddings),
    )
    write_labels_tiff(args.out, labels)
    print_summary(result, labels)
    where = ", ".join(f"axis {i} = {p}" for i, p in enumerate(position) if i != axis)
    print(f"wrote {args.out}: labels {labels.shape} {labels.dtype}, propagated along axis "
          f"{axis}" + (f" at {where}" if where else ""))
    return 0


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
    from napari_sam.cli._common import (
        UserError,
        check_device_option,
        check_output_file,
        progress_printer,
    )
    from napari_sam.io import read_image, read_labels_tiff, read_points_csv, write_labels_tiff
    from napari_sam.propagation import parse_prompt_mode, propagate, stack_contrast_limits

    check_output_file(args.out)  # before computing: the result would be lost
    check_device_option(args.device)
    if args.prompt_mode is not None:
        parse_prompt_mode(args.prompt_mode)  # fail before loading anything heavy
    stack = read_image(args.stack)
    if args.axis is not None:
        return run_along_axis(args, stack)
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
        **_options(args, contrast_limits=limits, embeddings=embeddings),
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
