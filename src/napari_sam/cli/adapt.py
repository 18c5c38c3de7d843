"""``napari-sam adapt``: teach a model your objects, from an image and its labels.

Every nonzero id of the labels is an object you vouch for (unlabelled objects
are fine). About 20 % of them are held back; the adapted model is saved only
when it beats the base model on those (a centre click and a tight box per
object), with a JSON record next to the weights. Use the result anywhere a
model is asked for: ``napari-sam propagate ... --model MODEL.pt``.
"""

from __future__ import annotations

import sys
from typing import Any


def register(sub) -> None:
    from napari_sam.cli._common import add_model_options

    p = sub.add_parser(
        "adapt",
        help="fine-tune a model on your labelled objects (about a minute on a CPU)",
        description=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("image", help="image (Y, X[, C]) or stack (Z, Y, X[, C]): .tif, .zarr or .npy")
    p.add_argument(
        "--labels", required=True, help="labels .tif of the image's (Y, X) or (Z, Y, X) shape"
    )
    p.add_argument("--out", required=True, help="adapted model .pt (its record: same name .json)")
    add_model_options(p)
    p.add_argument(
        "--minutes", type=float, default=1.5, help="time budget of the whole run [1.5]"
    )
    p.add_argument(
        "--contrast-limits",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=None,
        help="intensity range mapped to black and white, as in napari "
        "[robust percentiles; one range for a stack]",
    )
    p.add_argument(
        "--steps", type=int, default=None, help="optimizer steps [120; fewer if time runs out]"
    )
    p.add_argument(
        "--holdout", type=float, default=0.2, help="share of objects held back for the check [0.2]"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed [0]")
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads [torch's default]"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="save the adapted model even when it is not better on the held-back objects",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def make_predictor(model: str, device: str, precision: str) -> Any:
    """Load the predictor (the one place tests replace with a small model)."""
    from napari_sam.predictor import Predictor

    return Predictor(model, device=device, precision=precision)


def run(args) -> int:
    import numpy as np

    from napari_sam.adaptation import AdaptSettings, adapt
    from napari_sam.cli._common import UserError, progress_printer
    from napari_sam.io import read_image, read_labels_tiff

    if not args.minutes > 0:
        raise UserError(f"--minutes must be positive, got {args.minutes}")
    image = read_image(args.image)
    labels, _ = read_labels_tiff(args.labels)
    labels = np.asarray(labels)
    if tuple(labels.shape) != tuple(image.shape[: labels.ndim]):
        raise UserError(
            f"{args.labels} has shape {tuple(labels.shape)} but {args.image} has shape "
            f"{tuple(image.shape)}; the labels must cover the image pixel for pixel"
        )
    if labels.ndim == 2 and len(image.shape) in (2, 3):
        image = np.asarray(image)
    predictor = make_predictor(args.model, args.device, args.precision)
    settings = AdaptSettings(threads=args.threads)
    progress = None if args.quiet else progress_printer("adapt")
    result = adapt(
        predictor,
        image,
        labels,
        contrast_limits=args.contrast_limits,
        time_limit_s=60.0 * args.minutes,
        holdout=args.holdout,
        seed=args.seed,
        progress=progress,
        steps=args.steps,
        settings=settings,
    )
    if progress is not None:
        sys.stderr.write("\n")
    print(result.report.summary())
    if result.report.kept_base and not args.force:
        print(
            f"not saved: the adapted model was not better than {args.model} on the held-back "
            "objects; label more objects or pass --force to save it anyway"
        )
        return 1
    try:
        path = result.save(args.out, force=args.force)
    except OSError as err:  # SaveError: full or read-only disk, missing folder
        raise UserError(str(err)) from err
    print(f"wrote {path} and {path.with_suffix('.json')}; use it with --model {path}")
    return 0
