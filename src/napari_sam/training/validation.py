"""Held-out validation: segmentation quality from one click or one box per object.

The validation scenes come from :func:`napari_sam.synthetic.nuclei_2d` (and two
other generators) called with seeds the training stream never uses and, for
most sets, settings outside the ranges that
:func:`napari_sam.synthetic.random_scene_2d` draws from during training (see
:data:`VALIDATION_SETS`). Prompts are given as a user would: a positive point at
the object's centre (its centroid when that lies inside the object, else the
pixel deepest inside it) and its tight bounding box
``(row_min, col_min, row_max, col_max)`` (inclusive pixel indices). Everything
runs through :class:`napari_sam.predictor.Predictor`, i.e. the inference path
the plugin uses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ValidationSet:
    """A family of held-out scenes.

    Attributes
    ----------
    name : short identifier
    generator : name in :data:`napari_sam.synthetic.SCENES_2D`
    shape : ``(Y, X)`` of each scene
    params : keyword arguments for the generator
    seeds : one scene per seed
    description : what is new compared to training
    min_area : objects smaller than this (pixels of the scene) are skipped
        (slivers cut by the border)
    """

    name: str
    generator: str
    shape: tuple[int, int]
    params: dict = field(default_factory=dict)
    seeds: tuple[int, ...] = (9001, 9002, 9003, 9004)
    description: str = ""
    min_area: int = 30

    def scenes(self, seeds: Sequence[int] | None = None):
        """Yield ``(image, labels)`` for each seed."""
        from napari_sam.synthetic import SCENES_2D

        fn = SCENES_2D[self.generator]
        for seed in self.seeds if seeds is None else seeds:
            yield fn(self.shape, seed=int(seed), **self.params)


#: The held-out validation sets (seeds >= 9000; training draws from its own stream).
VALIDATION_SETS: dict[str, ValidationSet] = {
    v.name: v
    for v in [
        ValidationSet(
            "nuclei_256",
            "nuclei",
            (256, 256),
            description="nuclei_2d defaults (radius 6-14 px), 256x256, not resized",
        ),
        ValidationSet(
            "nuclei_512",
            "nuclei",
            (512, 512),
            {"radius": (4.0, 15.0)},
            seeds=(9101, 9102),
            description="512x512 slice, nuclei 8-30 px across; resized 2x down by the Predictor",
        ),
        ValidationSet(
            "nuclei_dim",
            "nuclei",
            (256, 256),
            {"photons": 40.0, "background": 0.3, "bit_depth": 12, "read_noise": 5.0},
            seeds=(9201, 9202, 9203, 9204),
            description="very noisy: 40 photons (training >= 60), background 0.3 "
            "(training <= 0.25), read noise 5 (training <= 4)",
        ),
        ValidationSet(
            "nuclei_irregular",
            "nuclei",
            (256, 256),
            {"irregularity": 0.45, "elongation": (1.3, 2.4), "texture": 0.5},
            seeds=(9301, 9302, 9303, 9304),
            description="irregularity 0.45, elongation up to 2.4, texture 0.5 "
            "(training <= 0.3, <= 2.0, <= 0.4)",
        ),
        ValidationSet(
            "nuclei_crowded",
            "nuclei",
            (256, 256),
            {"n_objects": 70, "cluster_prob": 0.9, "radius": (6.0, 11.0)},
            seeds=(9401, 9402, 9403, 9404),
            description="dense, touching nuclei: cluster probability 0.9 (training <= 0.7)",
        ),
        ValidationSet(
            "nuclei_dim_and_bright",
            "nuclei",
            (256, 256),
            {"brightness": (0.05, 1.0), "bit_depth": 8, "photons": 2000.0},
            seeds=(9501, 9502, 9503, 9504),
            description="8-bit, brightness 0.05-1.0 (training 0.35-1.0): dim nuclei "
            "next to bright ones",
        ),
        ValidationSet(
            "phase_cells",
            "phase",
            (256, 256),
            {"elongation": (1.5, 3.8)},
            seeds=(9601, 9602, 9603),
            description="phase-contrast cells, elongation up to 3.8 (training <= 3.5)",
        ),
        ValidationSet(
            "membrane_cells",
            "membrane",
            (256, 256),
            {"cell_size": 40.0},
            seeds=(9701, 9702, 9703),
            description="membrane-stained tissue, cells of 40 px (training 17-45)",
        ),
    ]
}

#: The sets that count for the nuclei quality targets.
NUCLEI_SETS = tuple(k for k in VALIDATION_SETS if k.startswith("nuclei"))


def object_prompts(labels: np.ndarray, min_area: int = 1):
    """Centre points and tight boxes of every object of an ``(H, W)`` label image.

    Returns
    -------
    ids : int ``(N,)`` object ids with area >= ``min_area``
    points : float64 ``(N, 2)`` ``(row, col)``: the centroid when it lies inside
        the object, else the pixel farthest from the object's boundary
    boxes : float64 ``(N, 4)`` ``(row_min, col_min, row_max, col_max)``, inclusive
    """
    from scipy import ndimage as ndi

    ids, points, boxes = [], [], []
    for k, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        m = labels[sl] == k
        if m.sum() < min_area:
            continue
        rr, cc = np.nonzero(m)
        r, c = round(float(rr.mean())), round(float(cc.mean()))
        if not m[r, c]:
            dist = ndi.distance_transform_edt(np.pad(m, 1))
            r, c = (int(v) - 1 for v in np.unravel_index(int(np.argmax(dist)), dist.shape))
        ids.append(k)
        points.append((r + sl[0].start, c + sl[1].start))
        boxes.append(
            (sl[0].start + rr.min(), sl[1].start + cc.min(),
             sl[0].start + rr.max(), sl[1].start + cc.max())
        )
    return (
        np.asarray(ids, dtype=np.int64),
        np.asarray(points, dtype=np.float64).reshape(-1, 2),
        np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
    )


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _predict_all(predictor, emb, points=None, boxes=None, multimask=True, chunk=32):
    """Best masks for many single-prompt objects, ``chunk`` per ``predict_batch`` call."""
    from napari_sam.contract import as_predictor

    predictor = as_predictor(predictor)
    n = len(points) if points is not None else len(boxes)
    masks = []
    for i0 in range(0, n, chunk):
        sl = slice(i0, min(n, i0 + chunk))
        preds = predictor.predict_batch(
            emb,
            points=None if points is None else points[sl, None],
            labels=None if points is None else np.ones((sl.stop - sl.start, 1)),
            boxes=None if boxes is None else boxes[sl],
            multimask=multimask,
        )
        masks.extend(p.best_mask for p in preds)
    return masks


def evaluate_image(
    predictor,
    image: np.ndarray,
    labels: np.ndarray,
    min_area: int = 30,
    contrast_limits: tuple[float, float] | None = None,
) -> dict[str, list[float]]:
    """Per-object IoU from a centre click, a box (multimask, best score) and a box (single).

    ``contrast_limits`` are passed to ``predictor.embed`` (None: its default range).

    Returns a dict of lists ``"point"``, ``"box"``, ``"box_single"`` (one IoU per object).
    """
    ids, points, boxes = object_prompts(labels, min_area)
    out: dict[str, list[float]] = {"point": [], "box": [], "box_single": []}
    if ids.size == 0:
        return out
    emb = predictor.embed(image, contrast_limits=contrast_limits)
    for key, kw in (
        ("point", {"points": points}),
        ("box", {"boxes": boxes}),
        ("box_single", {"boxes": boxes, "multimask": False}),
    ):
        masks = _predict_all(predictor, emb, **kw)
        out[key] = [iou(m, labels == k) for m, k in zip(masks, ids)]
    return out


def evaluate_set(
    predictor,
    vset: ValidationSet,
    seeds: Sequence[int] | None = None,
    condition: str | None = None,
    default_window: str = "auto",
) -> dict[str, Any]:
    """Mean IoUs over a validation set: ``{"point", "box", "box_single", "n_objects"}``.

    ``condition`` names a stress condition of
    :data:`napari_sam.synthetic.appearance.STRESS_CONDITIONS` applied to every
    scene (with the scene's seed; ``samples`` draws per scene), including its
    contrast limits;
    ``default_window`` normalizes the scenes whose condition sets no window
    (``"auto"``: the Predictor's default; ``"napari"``: napari's default limits).
    """
    from napari_sam.synthetic.stress import STRESS_CONDITIONS, apply_condition

    acc: dict[str, list[float]] = {"point": [], "box": [], "box_single": []}
    changed = condition is not None or default_window != "auto"
    samples = STRESS_CONDITIONS[condition].samples if condition in STRESS_CONDITIONS else 1
    for seed, (scene, scene_labels) in zip(
        vset.seeds if seeds is None else seeds, vset.scenes(seeds)
    ):
        for sample in range(samples):
            image, labels, limits = scene, scene_labels, None
            if changed:
                image, labels, limits = apply_condition(
                    scene, scene_labels, condition or "clean", int(seed), default_window, sample
                )
            res = evaluate_image(predictor, image, labels, vset.min_area, limits)
            for k in acc:
                acc[k].extend(res[k])
    summary: dict[str, Any] = {k: float(np.mean(v)) if v else float("nan") for k, v in acc.items()}
    summary["n_objects"] = len(acc["point"])
    summary["point_iou_p10"] = float(np.percentile(acc["point"], 10)) if acc["point"] else None
    return summary


def quick_validation(
    model,
    sets: Sequence[str] = ("nuclei_256", "nuclei_irregular"),
    n_images: int = 2,
    conditions: Sequence[str] = ("saturated_minmax", "inverted", "scale_0.5"),
) -> dict[str, float]:
    """A fast check used during training: mean point/box IoU on a few held-out images,
    clean and (on the first set) under a few stress ``conditions``."""
    from napari_sam.predictor import Predictor

    # without the zoom into small objects: the model alone, comparable with earlier records
    predictor = Predictor(model, precision="float32", zoom="off")
    out = {}
    runs = [(name, None) for name in sets] + [(sets[0], c) for c in conditions]
    for name, condition in runs:
        vset = VALIDATION_SETS[name]
        res = evaluate_set(predictor, vset, vset.seeds[:n_images], condition)
        key = name if condition is None else f"{name}@{condition}"
        out[f"{key}_point"] = res["point"]
        out[f"{key}_box"] = res["box"]
    return out


def validation_table(
    predictor, names: Sequence[str] | None = None, log: Callable[[str], None] | None = None
) -> dict[str, dict[str, Any]]:
    """Evaluate every (or the named) :data:`VALIDATION_SETS`; returns results by set name."""
    results = {}
    for name in names or list(VALIDATION_SETS):
        results[name] = evaluate_set(predictor, VALIDATION_SETS[name])
        if log is not None:
            r = results[name]
            log(
                f"{name:22s} n={r['n_objects']:4d} point {r['point']:.3f} box {r['box']:.3f} "
                f"box(single) {r['box_single']:.3f}"
            )
    return results
