"""Quality and speed of the bundled micro model on held-out synthetic data.

Measures, for the weights shipped in ``napari_sam/weights/`` (or ``--weights``):

* per validation set of :data:`napari_sam.training.validation.VALIDATION_SETS`
  (held-out seeds and generator settings): mean IoU from one positive click at
  each object's centre, from its tight box (multimask, best score) and from
  the box with the single-mask output;
* 3D Dice of propagation from one click per nucleus through held-out nuclei
  stacks, when :mod:`napari_sam.propagation` is available;
* with ``--stress``: every validation set also under the appearance changes
  of :data:`napari_sam.synthetic.appearance.STRESS_CONDITIONS` (intensity
  windows, gamma, 8 bits, saturated objects, low photon counts, blur, uneven
  background, inverted polarity, rescaling, tiny crops), none of which the
  scene generators make; per set the mean over conditions and the **worst**
  condition;
* propagation on small anisotropic stacks (slices of 64 px, nuclei of radius
  4-6 px, anisotropy 3);
* embedding time of a 512x512 slice (median of several runs) with the torch
  threads of this machine, the cost of the zoom into small objects (clicks and
  boxes on nuclei 5-15 px across, with and without), and that it runs on
  ``skimage.data.cell()``.

Run: ``python benchmarks/micro_model_quality.py [--json out.json] [--threads N] [--stress]``
(``--propagation-only``: the two propagation sets alone; ``--zoom off``: without
zooming into small objects, see :mod:`napari_sam.zoom`).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def load_predictor(weights: str | None, zoom: str = "auto"):
    from napari_sam.model.checkpoint import model_from_state_dict, read_state_dict
    from napari_sam.predictor import Predictor

    if not weights:  # by name, so the registry's recommended propagation options apply
        return Predictor("micro", device="cpu", precision="float32", zoom=zoom)
    return Predictor(model_from_state_dict(read_state_dict(weights)), device="cpu",
                     precision="float32", zoom=zoom)


def embedding_time(predictor, size: int = 512, repeats: int = 7) -> dict:
    """Median seconds to embed a ``size x size`` uint16 slice: all its tiles, and resized whole."""
    from napari_sam.synthetic import nuclei_2d

    image, _ = nuclei_2d((size, size), seed=1234)

    def full_embed(tiling: str):
        emb = predictor.embed(image, tiling=tiling)
        return emb.compute() if hasattr(emb, "compute") else emb  # every tile, not lazily

    full_embed("auto")  # warm-up
    times, untiled = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        full_embed("auto")
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        full_embed("off")
        untiled.append(time.perf_counter() - t0)
    point = np.array([[size / 2, size / 2]])
    emb = predictor.embed(image)
    t0 = time.perf_counter()
    for _ in range(20):
        predictor.predict(emb, points=point, labels=[1])
    decode = (time.perf_counter() - t0) / 20
    return {
        "embed_median_s": float(np.median(times)),
        "embed_min_s": float(np.min(times)),
        "embed_untiled_median_s": float(np.median(untiled)),
        "n_tiles": getattr(predictor.embed(image), "n_tiles", 1),
        "decode_one_prompt_s": decode,
    }


def zoom_cost(predictor, repeats: int = 20) -> dict:
    """Decoding time of small objects with and without the zoom, in one run (same machine).

    A 256 px slice of nuclei 5-15 px across, its embedding ready: the median of
    ``repeats`` single clicks, and all its tight boxes in one ``predict_batch`` call.
    """
    from napari_sam.synthetic import nuclei_2d
    from napari_sam.training.validation import object_prompts

    image, labels = nuclei_2d((256, 256), seed=4343, radius=(2.5, 7.5))
    _, points, boxes = object_prompts(labels, 10)
    zoom, out = predictor.zoom, {"n_boxes": len(boxes)}
    predictor.zoom = "auto"  # the embedding keeps its slice
    emb = predictor.embed(image)
    try:
        for mode in ("off", "auto"):
            predictor.zoom = mode
            clicks = []
            for pt in points[:repeats]:
                t0 = time.perf_counter()
                _ = predictor.predict(emb, points=pt[None], labels=[1]).best_mask
                clicks.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _ = [pred.best_mask for pred in predictor.predict_batch(emb, boxes=boxes)]
            out[f"click_median_s_{mode}"] = float(np.median(clicks))
            out[f"boxes_s_{mode}"] = time.perf_counter() - t0
    finally:
        predictor.zoom = zoom
    return out


def cell_image_runs(predictor) -> dict:
    """Clicks on skimage.data.cell() (no labels, so no quality number: it shows it runs).

    One click on the bright cell (the centroid of the largest region above the
    99th intensity percentile) and one on the empty background at the image centre.
    """
    from scipy import ndimage as ndi
    from skimage import data

    image = data.cell()
    emb = predictor.embed(image)
    bright, n = ndi.label(image > np.percentile(image, 99))
    largest = 1 + int(np.argmax(ndi.sum_labels(np.ones_like(image), bright, range(1, n + 1))))
    cell = np.array([ndi.center_of_mass(bright == largest)])
    background = np.array([[image.shape[0] / 2, image.shape[1] / 2]])
    out = {"shape": list(image.shape)}
    for name, point in (("cell", cell), ("background", background)):
        pred = predictor.predict(emb, points=point, labels=[1])
        mask = pred.best_mask
        rows, cols = np.nonzero(mask)
        out[name] = {
            "click_row_col": [round(float(v), 1) for v in point[0]],
            "mask_pixels": int(mask.sum()),
            "bbox": [int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())]
            if mask.any()
            else None,
            "score": float(pred.scores[pred.best_index]),
        }
    return out


def stress_sweep(
    predictor, sets=None, conditions=None, n_seeds: int = 2, log=print, default_window="auto"
) -> dict:
    """Point/box IoU of every set under every stress condition (first ``n_seeds`` seeds).

    Returns ``{"by_set": {set: {condition: {...}}}, "summary": {set: {...}}}``;
    a set's summary holds the mean over conditions and its worst condition for
    the point and for the box prompt. ``default_window``: how scenes whose
    condition sets no window are normalized (``"auto"``: the Predictor's robust
    default; ``"napari"``: napari's default contrast limits, what the annotator
    gets when it normalizes with the layer's display range).
    """
    from napari_sam.synthetic.appearance import STRESS_CONDITIONS
    from napari_sam.training.validation import VALIDATION_SETS, evaluate_set

    by_set: dict = {}
    summary: dict = {}
    for name in sets or list(VALIDATION_SETS):
        vset = VALIDATION_SETS[name]
        rows = {}
        for cond in conditions or list(STRESS_CONDITIONS):
            r = evaluate_set(predictor, vset, vset.seeds[:n_seeds], cond, default_window)
            rows[cond] = {k: r[k] for k in ("point", "box", "box_single", "n_objects")}
        by_set[name] = rows
        summary[name] = sm = summarize_conditions(rows)
        log(
            f"{name:22s} stress mean point {sm['mean_point']:.3f} box {sm['mean_box']:.3f}; "
            f"worst point {sm['worst_point'][1]:.3f} ({sm['worst_point'][0]}), "
            f"box {sm['worst_box'][1]:.3f} ({sm['worst_box'][0]}); without display windows: "
            f"point {sm['worst_point_image_changes'][1]:.3f} "
            f"({sm['worst_point_image_changes'][0]}), box "
            f"{sm['worst_box_image_changes'][1]:.3f} ({sm['worst_box_image_changes'][0]})"
        )
        log("    " + ", ".join(f"{c} {r['point']:.2f}/{r['box']:.2f} (n={r['n_objects']})"
                              for c, r in rows.items()))
    return {"by_set": by_set, "summary": summary, "n_seeds": n_seeds,
            "default_window": default_window}


def summarize_conditions(rows: dict) -> dict:
    """A set's sweep summary from its ``{condition: {"point", "box", "n_objects"...}}``:
    the means over conditions and the worst condition, over all of them and over
    those that change the image only (the robust default ignores display windows)."""
    from napari_sam.synthetic.appearance import STRESS_CONDITIONS

    valid = {c: r for c, r in rows.items() if r["n_objects"] > 0}
    worst_p = min(valid, key=lambda c: valid[c]["point"])
    worst_b = min(valid, key=lambda c: valid[c]["box"])
    image_only = {c: r for c, r in valid.items() if STRESS_CONDITIONS[c].window == "auto"}
    worst_pi = min(image_only, key=lambda c: image_only[c]["point"])
    worst_bi = min(image_only, key=lambda c: image_only[c]["box"])
    return {
        "mean_point": float(np.mean([r["point"] for r in valid.values()])),
        "mean_box": float(np.mean([r["box"] for r in valid.values()])),
        "worst_point": [worst_p, valid[worst_p]["point"]],
        "worst_box": [worst_b, valid[worst_b]["box"]],
        "worst_point_image_changes": [worst_pi, image_only[worst_pi]["point"]],
        "worst_box_image_changes": [worst_bi, image_only[worst_bi]["box"]],
    }


#: Small anisotropic stacks: 16 slices of 64 x 64 px, nuclei of radius 4-6 px.
SMALL_STACK = {"shape": (16, 64, 64), "radius": (4.0, 6.0), "anisotropy": 3.0}
#: Their held-out seeds (the propagation rules were tuned on others: docs/propagation.md).
SMALL_STACK_SEEDS = (9821, 9822, 9823, 9824)


def propagation_dice(
    predictor, seeds=(9801, 9802), log=print, stack_kwargs=None, **options
) -> dict | None:
    """3D Dice of propagation from one click per nucleus through held-out nuclei stacks.

    Each nucleus is clicked once (centre point, multimask, best score) on its
    largest slice; the resulting 2D masks seed :func:`napari_sam.propagation.propagate`
    for all objects at once, with ``options`` (default: the model's
    recommended options from the registry). Dice is per object against its
    true 3D mask, averaged over objects. ``stack_kwargs`` are passed to
    :func:`napari_sam.synthetic.nuclei_stack` (default: ``shape=(24, 192, 192)``).
    """
    try:
        from napari_sam.propagation import propagate, stack_contrast_limits
    except ModuleNotFoundError:
        log("napari_sam.propagation is not available: propagation skipped")
        return None
    from napari_sam.synthetic import nuclei_stack
    from napari_sam.training.validation import object_prompts

    kwargs = dict(stack_kwargs or {"shape": (24, 192, 192)})
    shape = kwargs.pop("shape")
    dices, dices_2d = [], []
    per_stack = {}
    for seed in seeds:
        first = len(dices)
        stack, labels = nuclei_stack(shape, seed=seed, **kwargs)
        limits = stack_contrast_limits(stack)
        seeds_by_object = {}
        embeddings = {}
        for k in range(1, int(labels.max()) + 1):
            obj = labels == k
            areas = obj.sum((1, 2))
            if areas.max() < 30:
                continue
            z = int(np.argmax(areas))  # the object's largest slice
            if z not in embeddings:
                embeddings[z] = predictor.embed(stack[z], contrast_limits=limits)
            _, pts, _ = object_prompts(obj[z].astype(np.uint32), 1)
            pred = predictor.predict(embeddings[z], points=pts[:1], labels=[1])
            if not pred.best_mask.any():  # the click found nothing: the object scores 0
                dices.append(0.0)
                dices_2d.append(0.0)
                continue
            seeds_by_object[k] = {z: pred.best_mask}
            inter2 = np.logical_and(pred.best_mask, obj[z]).sum()
            dices_2d.append(2 * inter2 / max(1, pred.best_mask.sum() + obj[z].sum()))
        result = propagate(
            stack, seeds_by_object, predictor, contrast_limits=limits, embeddings=embeddings,
            **options,
        )
        out = np.asarray(result.mask_or_labels)
        for k in seeds_by_object:
            mask, obj = out == k, labels == k
            dices.append(2 * np.logical_and(mask, obj).sum() / max(1, mask.sum() + obj.sum()))
        per_stack[seed] = float(np.mean(dices[first:]))
    return {
        "dice_3d": float(np.mean(dices)),
        "dice_3d_p10": float(np.percentile(dices, 10)),
        "dice_3d_worst_stack": min(per_stack.values()),
        "dice_3d_per_stack": per_stack,
        "dice_2d_click": float(np.mean(dices_2d)),
        "n_objects": len(dices),
        "stacks": f"nuclei_stack({shape}, seed, {kwargs}) for seeds " + ", ".join(map(str, seeds)),
    }


def propagation_sets(predictor, results: dict, log=print) -> None:
    """The main propagation set (micro's options, then the generic ones) and the small
    anisotropic stacks (micro's options) into ``results``."""
    from napari_sam.model.registry import recommended_propagation

    t0 = time.perf_counter()
    # the bundled model's registry options, also for --weights (a micro candidate)
    recommended = recommended_propagation("micro")
    results["propagation"] = propagation_dice(predictor, log=log, **recommended)
    if results["propagation"] is None:
        return
    log(f"propagation {recommended} (micro's defaults): {results['propagation']}")
    generic = {"prompt_mode": "box+mask", "fade_threshold": 0.0}
    results["propagation_generic"] = propagation_dice(predictor, log=log, **generic)
    log(f"propagation {generic}: {results['propagation_generic']}")
    small = propagation_dice(
        predictor, seeds=SMALL_STACK_SEEDS, stack_kwargs=SMALL_STACK, log=log, **recommended
    )
    results["propagation_small_stacks"] = small
    log(f"propagation on small anisotropic stacks {SMALL_STACK}: {small}")
    log(f"propagation took {time.perf_counter() - t0:.0f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=None, help="checkpoint (default: the bundled one)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--sets", nargs="*", default=None, help="validation sets to run")
    p.add_argument("--no-propagation", action="store_true")
    p.add_argument("--propagation-only", action="store_true",
                   help="only the propagation sets (main and small anisotropic stacks)")
    p.add_argument("--stress", action="store_true", help="also run the stress sweep")
    p.add_argument("--stress-only", action="store_true", help="only the stress sweep")
    p.add_argument("--stress-seeds", type=int, default=2, help="scenes per set in the sweep")
    p.add_argument("--stress-window", default="auto", choices=("auto", "napari"),
                   help="normalization of conditions without their own window")
    p.add_argument("--stress-sets", nargs="*", default=None, help="sets of the sweep")
    p.add_argument("--stress-conditions", nargs="*", default=None, help="conditions (all)")
    p.add_argument("--zoom", default="auto", choices=("auto", "off"),
                   help="the Predictor's zoom into small objects (default: auto, as shipped)")
    args = p.parse_args(argv)

    import torch

    from napari_sam.training.validation import VALIDATION_SETS, validation_table

    if args.threads:
        torch.set_num_threads(args.threads)
    predictor = load_predictor(args.weights, args.zoom)
    results: dict = {"torch_threads": torch.get_num_threads(), "zoom": args.zoom}
    print(f"torch threads: {results['torch_threads']}")
    if args.stress or args.stress_only:
        t0 = time.perf_counter()
        results["stress"] = stress_sweep(
            predictor, args.stress_sets or args.sets, args.stress_conditions,
            n_seeds=args.stress_seeds,
            default_window=args.stress_window,
        )
        print(f"stress sweep took {time.perf_counter() - t0:.0f} s")
        if args.stress_only:
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(results, f, indent=1)
            return 0
    if args.propagation_only:
        propagation_sets(predictor, results)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
        return 0
    t0 = time.perf_counter()
    results["sets"] = validation_table(predictor, args.sets, log=print)
    results["descriptions"] = {k: v.description for k, v in VALIDATION_SETS.items()}
    print(f"validation took {time.perf_counter() - t0:.0f} s")
    results["timing_512"] = embedding_time(predictor)
    timing = results["timing_512"]
    print(
        f"512x512 slice: embed {timing['embed_median_s']:.3f} s (median, "
        f"{timing['n_tiles']} tiles), resized whole {timing['embed_untiled_median_s']:.3f} s, "
        f"decode one prompt {timing['decode_one_prompt_s'] * 1000:.1f} ms"
    )
    cost = results["zoom_cost"] = zoom_cost(predictor)
    print(
        f"small nuclei (256 px slice): one click {cost['click_median_s_off'] * 1000:.1f} ms "
        f"without zoom, {cost['click_median_s_auto'] * 1000:.1f} ms with (median); "
        f"{cost['n_boxes']} boxes in one call {cost['boxes_s_off']:.2f} s / "
        f"{cost['boxes_s_auto']:.2f} s"
    )
    results["skimage_cell"] = cell_image_runs(predictor)
    print(f"skimage.data.cell(): {results['skimage_cell']}")
    if not args.no_propagation:
        propagation_sets(predictor, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
