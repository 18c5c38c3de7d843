"""``napari-sam everything``: segment every object of an image or a stack automatically.

A 2D image (Y, X) or (Y, X, C) gives 2D labels; a stack (Z, Y, X) or
(Z, Y, X, C) is segmented slice by slice and its objects are linked through z
into 3D labels; ``--slice Z`` segments one slice of a stack (2D labels).
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np


def register(sub) -> None:
    from napari_sam.cli._common import add_model_options

    p = sub.add_parser(
        "everything",
        help="segment every object of an image or stack automatically (no prompts)",
        description=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("image", help="2D image or (Z, Y, X) stack: .tif, .zarr or .npy")
    p.add_argument("--out", required=True, help="output labels .tif (overwritten)")
    add_model_options(p)
    p.add_argument("--points-per-side", type=int, default=32, help="prompt grid per side [32]")
    p.add_argument("--points-per-batch", type=int, default=64, help="prompts per decoder call [64]")
    p.add_argument(
        "--pred-iou-thresh",
        type=float,
        default=None,
        help="min predicted IoU [the model's recommendation: micro 0.6; others 0.8]",
    )
    p.add_argument(
        "--stability-thresh",
        type=float,
        default=None,
        help="min stability score [the model's recommendation: micro 0.85; others 0.9]",
    )
    p.add_argument(
        "--box-nms-thresh",
        type=float,
        default=None,
        help="candidates overlapping a better one with IoU above this are duplicates "
        "[the model's recommendation: micro 0.5; others 0.7]",
    )
    p.add_argument(
        "--containment-thresh",
        type=_containment,
        default="auto",
        help="drop a mask when this fraction of it lies inside a larger, better-scored "
        "mask (an object's sub-parts); 'none' keeps nested masks "
        "[auto: the model's recommendation: micro 0.5; others 0.8]",
    )
    p.add_argument(
        "--min-area", type=int, default=16, help="smallest object / largest hole in px [16]"
    )
    p.add_argument("--max-area", type=int, default=None, help="largest object in px [none]")
    p.add_argument(
        "--crop-layers", type=int, default=0, help="zoomed-in crop layers for small objects [0]"
    )
    p.add_argument(
        "--tiling",
        choices=("auto", "off"),
        default="auto",
        help="auto: slices larger than the model input are also segmented tile by tile "
        "at native resolution (small objects); off: only resized to the model input [auto]",
    )
    p.add_argument(
        "--contrast-limits",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=None,
        help="intensities mapped to black and white [robust range of the image/stack]",
    )
    p.add_argument(
        "--slice", type=int, default=None, metavar="Z", help="segment only slice Z of a stack"
    )
    p.add_argument(
        "--min-z-extent",
        type=int,
        default=2,
        help="stacks: smallest number of slices an object spans [2]",
    )
    p.add_argument(
        "--link-iou", type=float, default=0.3, help="stacks: min IoU to link slices [0.3]"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def make_predictor(model: str, device: str, precision: str) -> Any:
    """Load the predictor (the one place tests replace with a stand-in)."""
    from napari_sam.predictor import Predictor

    return Predictor(model, device=device, precision=precision)


def image_kind(shape: tuple[int, ...]) -> str:
    """``"2d"`` for (Y, X) / (Y, X, C<=3), ``"stack"`` for (Z, Y, X) / (Z, Y, X, C<=3)."""
    from napari_sam.cli._common import UserError

    if len(shape) == 2 or (len(shape) == 3 and shape[-1] <= 3):
        return "2d"
    if len(shape) == 3 or (len(shape) == 4 and shape[-1] <= 3):
        return "stack"
    raise UserError(
        f"image has shape {shape}; expected (Y, X), (Y, X, C), (Z, Y, X) or (Z, Y, X, C) "
        "with C <= 3 channels last"
    )


def _smallest_dtype(labels: np.ndarray) -> np.ndarray:
    top = int(labels.max()) if labels.size else 0
    dtype = next(d for d in (np.uint8, np.uint16, np.uint32) if top <= np.iinfo(d).max)
    return labels.astype(dtype, copy=False)


def _containment(value: str) -> float | str | None:
    """``--containment-thresh`` value: a number, 'none' or 'auto'."""
    word = value.strip().lower()
    if word in ("none", "auto"):
        return None if word == "none" else "auto"
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number, 'none' or 'auto', got {value!r}"
        ) from None


def _params(args: argparse.Namespace) -> dict:
    return {
        "points_per_side": args.points_per_side,
        "points_per_batch": args.points_per_batch,
        "pred_iou_thresh": args.pred_iou_thresh,
        "stability_score_thresh": args.stability_thresh,
        "box_nms_thresh": args.box_nms_thresh,
        "containment_thresh": args.containment_thresh,
        "min_area": args.min_area,
        "max_area": args.max_area,
        "crop_layers": args.crop_layers,
        "tiling": args.tiling,
    }


def run(args) -> int:
    from napari_sam.cli._common import (
        UserError,
        check_device_option,
        check_output_file,
        progress_printer,
    )
    from napari_sam.everything import segment_everything, segment_everything_stack
    from napari_sam.everything._params import EverythingParams
    from napari_sam.io import read_image, write_labels_tiff

    EverythingParams(**_params(args))  # fail on bad options before loading anything
    check_output_file(args.out)  # before computing: the result would be lost
    check_device_option(args.device)
    image = read_image(args.image)
    shape = tuple(int(s) for s in image.shape)
    kind = image_kind(shape)
    if args.slice is not None:
        if kind != "stack":
            raise UserError(f"--slice needs a stack; {args.image} is a 2D image {shape}")
        if not 0 <= args.slice < shape[0]:
            raise UserError(f"--slice {args.slice} is outside the stack's 0..{shape[0] - 1}")
    limits = None if args.contrast_limits is None else tuple(args.contrast_limits)
    predictor = make_predictor(args.model, args.device, args.precision)
    progress = None if args.quiet else progress_printer("everything")
    if kind == "stack" and args.slice is None:
        result = segment_everything_stack(
            image,
            predictor=predictor,
            contrast_limits=limits,
            progress=progress,
            min_z_extent=args.min_z_extent,
            link_iou=args.link_iou,
            **_params(args),
        )
        labels = result.labels
        n = len(result.objects)
    else:
        if kind == "stack":
            from napari_sam.normalize import stack_intensity_range

            if limits is None and np.dtype(image.dtype) != np.uint8:
                limits = stack_intensity_range(image)  # the same limits as for the whole stack
            plane = np.asarray(image[args.slice])
        else:
            plane = np.asarray(image)
        res = segment_everything(
            plane, predictor=predictor, contrast_limits=limits, progress=progress, **_params(args)
        )
        labels = res.labels
        n = len(res.objects)
    labels = _smallest_dtype(labels)
    write_labels_tiff(args.out, labels)
    print(f"wrote {args.out}: {n} objects, labels {labels.shape} {labels.dtype}")
    return 0
