"""The no-worse check: IoU on held-back objects from a centre click and a tight box.

Each held-back object is prompted as a user would, through the Predictor as
the user gets it (tiling, precision, the annotator's "keep the prompted
parts" rule): one positive click at its centre (the centroid when inside the
object, else the pixel deepest inside it) and, separately, its tight box
``(row_min, col_min, row_max, col_max)`` (inclusive), each with
``multimask=True`` and the best-scored mask. A 3D object is checked on the
slice where it is largest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from napari_sam.adaptation.objects import LabelledData


def centre_and_box(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(row, col)`` centre click and inclusive tight box of a non-empty ``(H, W)`` mask."""
    from scipy import ndimage as ndi

    rr, cc = np.nonzero(mask)
    r, c = round(float(rr.mean())), round(float(cc.mean()))
    if not mask[r, c]:
        r0, c0 = rr.min(), cc.min()
        sub = np.pad(mask[r0 : rr.max() + 1, c0 : cc.max() + 1], 1)
        dist = ndi.distance_transform_edt(sub)
        dr, dc = np.unravel_index(int(np.argmax(dist)), dist.shape)
        r, c = int(dr) - 1 + int(r0), int(dc) - 1 + int(c0)
    box = np.array([rr.min(), cc.min(), rr.max(), cc.max()], dtype=np.float64)
    if box[2] == box[0]:  # a one-row object: give the box some height
        box[2] += 1
    if box[3] == box[1]:
        box[3] += 1
    return np.array([r, c], dtype=np.float64), box


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


@dataclass(frozen=True)
class CheckScores:
    """Per-object IoUs of one model on the held-back objects.

    Attributes
    ----------
    point, box : one IoU per checked object (same order as ``objects``)
    objects : ``(image index, id)`` of each checked object
    """

    point: tuple[float, ...]
    box: tuple[float, ...]
    objects: tuple[tuple[int, int], ...]

    @property
    def mean_point(self) -> float:
        return float(np.mean(self.point)) if self.point else float("nan")

    @property
    def mean_box(self) -> float:
        return float(np.mean(self.box)) if self.box else float("nan")

    def to_dict(self) -> dict:
        return {
            "point": round(self.mean_point, 4),
            "box": round(self.mean_box, 4),
            "point_per_object": [round(v, 4) for v in self.point],
            "box_per_object": [round(v, 4) for v in self.box],
        }


def check_instances(data: LabelledData, objects: Sequence[int]) -> list[int]:
    """For each object, its largest instance (the slice it is checked on)."""
    out = []
    for o in objects:
        inst = data.objects[o].instances
        out.append(max(inst, key=lambda k: (data.instances[k].area, -k)))
    return out


def score(
    predictor,
    data: LabelledData,
    objects: Sequence[int],
    embed: Callable[[int], object] | None = None,
    cancel: Callable[[], None] | None = None,
) -> CheckScores:
    """Click and box IoU of ``predictor`` on ``objects`` (indices into ``data.objects``).

    ``embed(slice_index)`` may supply embeddings (default: ``predictor.embed``
    with the slice's contrast limits); ``cancel()`` is polled per slice.
    """
    from napari_sam.masks import keep_prompted_parts

    chosen = check_instances(data, objects)
    by_slice: dict[int, list[int]] = {}
    for pos, k in enumerate(chosen):
        by_slice.setdefault(data.instances[k].slice_index, []).append(pos)
    point = [0.0] * len(chosen)
    box = [0.0] * len(chosen)
    for s, positions in sorted(by_slice.items()):
        if cancel is not None:
            cancel()
        sl = data.slices[s]
        emb = (
            embed(s)
            if embed is not None
            else predictor.embed(sl.image, contrast_limits=sl.contrast_limits)
        )
        truths, pts, boxes = [], [], []
        for pos in positions:
            truth = sl.labels == data.instances[chosen[pos]].label
            p, b = centre_and_box(truth)
            truths.append(truth)
            pts.append(p)
            boxes.append(b)
        by_points = predictor.predict_batch(
            emb, points=np.stack(pts)[:, None], labels=np.ones((len(pts), 1)), multimask=True
        )
        by_boxes = predictor.predict_batch(emb, boxes=np.stack(boxes), multimask=True)
        for j, pos in enumerate(positions):
            m = keep_prompted_parts(by_points[j].best_mask, pts[j][None], np.ones(1))
            point[pos] = iou(m, truths[j])
            m = keep_prompted_parts(by_boxes[j].best_mask, None, None, boxes[j])
            box[pos] = iou(m, truths[j])
    keys = tuple(data.objects[o].key for o in objects)
    return CheckScores(tuple(point), tuple(box), keys)


#: Largest fall of the click or the box IoU on the held-back objects that still counts
#: as "not worse" when the mean of the two rises: about 3 boundary pixels of a 20 px
#: nucleus (measured in docs/api.md, "Learning from labels").
CHECK_TOLERANCE = 0.02


def verdict(
    before: CheckScores, after: CheckScores, tolerance: float = CHECK_TOLERANCE
) -> tuple[bool, str]:
    """Whether the adapted model is kept, and why.

    Kept when the mean of the click and the box IoU on the held-back objects
    rises and neither of the two falls by more than ``tolerance``.
    """
    b = (before.mean_point + before.mean_box) / 2
    a = (after.mean_point + after.mean_box) / 2
    figures = (
        f"click {before.mean_point:.3f} -> {after.mean_point:.3f}, "
        f"box {before.mean_box:.3f} -> {after.mean_box:.3f}"
    )
    if not np.isfinite(a):
        return False, f"the adapted model gave no valid result on the held-back objects ({figures})"
    if after.mean_point < before.mean_point - tolerance:
        return False, f"the adapted model is worse on held-back objects for clicks ({figures})"
    if after.mean_box < before.mean_box - tolerance:
        return False, f"the adapted model is worse on held-back objects for boxes ({figures})"
    if a <= b:
        return False, f"the adapted model is not better on the held-back objects ({figures})"
    return True, f"better on the held-back objects ({figures})"
