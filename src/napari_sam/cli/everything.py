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
    from napari_sam import options
    from napari_sam.cli._common import add_model_options
    from napari_sam.everything._params import EverythingStackParams

    p = sub.add_parser(
        "everything",
        help="segment every object of an image or stack automatically (no prompts)",
        description=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("image", help="2D image or (Z, Y, X) stack: .tif, .zarr or .npy")
    p.add_argument("--out", required=True, help="output labels .tif (overwritten)")
    add_model_options(p)
    # every option of everything mode, from the fields of EverythingStackParams
    options.add_arguments(p, EverythingStackParams)
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


def _params(args: argparse.Namespace, *, stack: bool = False) -> dict:
    """The options of everything mode given on the command line (their fields' names)."""
    from napari_sam.everything._params import EverythingParams, EverythingStackParams
    from napari_sam.options import from_args

    return from_args(EverythingStackParams if stack else EverythingParams, args)


def run(args) -> int:
    from napari_sam.cli._common import (
        UserError,
        check_device_option,
        check_output_file,
        progress_printer,
    )
    from napari_sam.everything import segment_everything, segment_everything_stack
    from napari_sam.everything._params import EverythingStackParams
    from napari_sam.io import read_image, write_labels_tiff

    EverythingStackParams(**_params(args, stack=True))  # fail on bad options before loading
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
            **_params(args, stack=True),
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
