"""``napari-sam demo``: the main job, a scripted segmentation of the sample stack.

It generates the package's sample nuclei stack (exact ground truth known),
clicks once inside each nucleus on its middle slice (as a user would),
segments that slice, propagates every object through z, writes the labels TIFF
and a PNG overview, and prints per-object results against the ground truth.
"""

from __future__ import annotations

from pathlib import Path

SCALE = (2.0, 0.5, 0.5)


def register(sub) -> None:
    from napari_sam.cli._common import add_model_options

    p = sub.add_parser(
        "demo",
        help="segment the bundled sample stack from one click per nucleus (the main job)",
        description=__doc__,
    )
    p.add_argument("--out", type=Path, default=Path("demo_output"), help="output folder")
    add_model_options(p)
    p.set_defaults(func=run)


def make_predictor(args):
    """The predictor for ``args.model`` (a seam for tests)."""
    from napari_sam.cli._common import UserError
    from napari_sam.model.checkpoint import CheckpointError
    from napari_sam.predictor import Predictor

    try:
        return Predictor(args.model, device=args.device, precision=args.precision)
    except CheckpointError as err:
        raise UserError(
            f"{err}\nThe demo needs a model: pass --model with a registry name "
            "(`napari-sam models`) or a checkpoint file path."
        ) from err


def click_points(labels):
    """One (z, row, col) click per object: the most interior point of its largest slice."""
    import numpy as np
    from scipy import ndimage as ndi

    clicks = {}
    for obj_id, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        sub = labels[box] == obj_id
        z_local = int(np.argmax(sub.sum(axis=(1, 2))))
        dist = ndi.distance_transform_edt(np.pad(sub[z_local], 1))[1:-1, 1:-1]
        r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
        clicks[obj_id] = (box[0].start + z_local, box[1].start + int(r), box[2].start + int(c))
    return clicks


def dice(a, b) -> float:
    import numpy as np

    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def run(args) -> int:
    import numpy as np

    from napari_sam.cli._common import check_device_option, check_output_folder, progress_printer
    from napari_sam.cli._overview import ObjectRow, write_overview
    from napari_sam.io import write_labels_tiff
    from napari_sam.masks import keep_prompted_parts
    from napari_sam.normalize import stack_intensity_range
    from napari_sam.propagation import propagate
    from napari_sam.synthetic import sample_nuclei_stack

    check_output_folder(args.out)  # before computing: the results would be lost
    check_device_option(args.device)
    stack, truth = sample_nuclei_stack()
    predictor = make_predictor(args)
    limits = stack_intensity_range(stack)
    clicks = click_points(truth)
    print(f"sample stack {stack.shape} {stack.dtype}, {len(clicks)} nuclei; "
          f"model {args.model} ({predictor.precision})")

    embeddings: dict[int, object] = {}

    def embedding(z: int):
        if z not in embeddings:
            embeddings[z] = predictor.embed(stack[z], contrast_limits=limits)
        return embeddings[z]

    seeds = {}
    for obj_id, (z, r, c) in clicks.items():
        pred = predictor.predict(embedding(z), points=[[r, c]], labels=[1])
        # the object is the part under the click, as the annotator commits it
        seeds[obj_id] = {z: keep_prompted_parts(pred.best_mask, [[r, c]], [1])}

    labels = np.zeros(stack.shape, np.uint32)
    result = propagate(
        stack, seeds, predictor, out=labels, embeddings=embedding,
        contrast_limits=limits, progress=progress_printer("propagating"),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    tiff = write_labels_tiff(args.out / "labels.tif", labels, scale=SCALE, axes="ZYX")
    png = args.out / "overview.png"

    print(f"{'id':>3} {'click (z,row,col)':>18} {'z range':>9} {'true z':>9} "
          f"{'voxels':>7} {'Dice':>6}")
    rows = []
    for obj_id, (z, r, c) in clicks.items():
        found = labels == obj_id
        true = truth == obj_id
        zs, tz = np.nonzero(found.any(axis=(1, 2)))[0], np.nonzero(true.any(axis=(1, 2)))[0]
        rows.append(ObjectRow(
            obj_id, (z, r, c),
            (int(zs.min()), int(zs.max())) if zs.size else None,
            (int(tz.min()), int(tz.max())) if tz.size else None,
            dice(found, true),
        ))
        z_range = f"{zs.min()}-{zs.max()}" if zs.size else "-"
        print(f"{obj_id:>3} {f'({z},{r},{c})':>18} {z_range:>9} {f'{tz.min()}-{tz.max()}':>9} "
              f"{int(found.sum()):>7} {rows[-1].dice:>6.3f}")
    mean = float(np.mean([row.dice for row in rows]))
    print(f"mean 3D Dice {mean:.3f} over {len(rows)} nuclei"
          + (" (cancelled)" if result.cancelled else ""))
    title = (f"napari-sam demo: {len(rows)} nuclei, one click each, propagated through "
             f"{stack.shape[0]} slices with {args.model}; mean 3D Dice {mean:.3f}")
    write_overview(png, stack, labels, limits, clicks, rows, title)
    print(f"wrote {tiff} and {png}")
    return 0
