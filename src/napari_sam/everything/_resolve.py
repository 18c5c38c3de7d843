"""De-duplication of candidate masks and their resolution into one label image."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_sam.boxes import batched_nms, nms, overlapping_pairs
from napari_sam.everything._masks import CompactMask, mask_intersection, mask_iou
from napari_sam.everything._params import EverythingParams, ObjectRecord


@dataclass
class Candidates:
    """Masks kept so far (compact), with their scores and crop of origin."""

    masks: list[CompactMask] = field(default_factory=list)
    iou: list[float] = field(default_factory=list)
    stability: list[float] = field(default_factory=list)
    crop: list[int] = field(default_factory=list)

    def add(self, mask: CompactMask, iou: float, stability: float, crop: int) -> None:
        self.masks.append(mask)
        self.iou.append(float(iou))
        self.stability.append(float(stability))
        self.crop.append(crop)

    def boxes(self) -> np.ndarray:
        return np.asarray([m.bbox for m in self.masks], dtype=np.float64).reshape(-1, 4)

    def subset(self, index) -> Candidates:
        index = [int(i) for i in index]
        return Candidates(
            [self.masks[i] for i in index],
            [self.iou[i] for i in index],
            [self.stability[i] for i in index],
            [self.crop[i] for i in index],
        )

    def __len__(self) -> int:
        return len(self.masks)


def box_nms(cands: Candidates, params: EverythingParams, n_crops: int) -> Candidates:
    """Box NMS within each crop, then across crops (zoomed-in crops first); best first."""
    if not len(cands):
        return cands
    boxes = cands.boxes()
    iou = np.asarray(cands.iou)
    stab = np.asarray(cands.stability)
    # rank by predicted IoU, then stability: one score with the order of (iou, stability)
    order = np.lexsort((-stab, -iou))
    rank_score = np.empty(len(order))
    rank_score[order] = -np.arange(len(order), dtype=np.float64)
    crops = np.asarray(cands.crop)
    thresh = params.resolved("box_nms_thresh")
    keep = batched_nms(boxes, rank_score, crops, thresh)
    if n_crops > 1 and len(keep):
        # across crops prefer masks from the more zoomed-in (later) crops, as SAM does
        sub = keep
        cross = np.lexsort((-stab[sub], -iou[sub], -crops[sub]))
        cross_score = np.empty(len(sub))
        cross_score[cross] = -np.arange(len(sub), dtype=np.float64)
        keep = sub[nms(boxes[sub], cross_score, thresh)]
        keep = keep[np.argsort(-rank_score[keep], kind="stable")]
    return cands.subset(keep)


def mask_dedup(cands: Candidates, thresh: float) -> Candidates:
    """Drop masks whose mask IoU with a better-ranked kept mask is > ``thresh``.

    ``cands`` must be ordered best first. Only pairs with overlapping boxes are compared.
    """
    if len(cands) < 2:
        return cands
    pairs = overlapping_pairs(cands.boxes())
    dup: dict[int, list[int]] = {}
    for i, j in pairs:
        if mask_iou(cands.masks[i], cands.masks[j]) > thresh:
            dup.setdefault(int(j), []).append(int(i))  # i < j: i ranks higher
    dropped: set[int] = set()
    for j in range(len(cands)):
        if any(i not in dropped for i in dup.get(j, ())):
            dropped.add(j)
    return cands.subset([i for i in range(len(cands)) if i not in dropped])


def drop_contained_parts(cands: Candidates, thresh: float | None) -> Candidates:
    """Drop masks that lie mostly inside a larger, better-scored kept mask.

    SAM's multimask output gives, besides the whole object, its *sub-parts*,
    which pass the score filters too and, under the "smallest mask wins" rule
    of :func:`resolve_overlaps`, split the object into pieces. Box NMS does not
    see them (a part's box overlaps the object's box by little). Here a mask
    ``i`` is a *part* of a larger mask ``j`` when at least ``thresh`` of its
    pixels lie inside ``j`` and ``j`` has the strictly better score (predicted
    IoU, then stability score): the part is dropped and ``j`` keeps its pixels,
    as SAM's NMS keeps the better-scored of two overlapping masks. A nested
    mask that scores at least as well as its container (e.g. a nucleolus the
    model is sure of) stays and keeps its pixels in :func:`resolve_overlaps`.
    Masks are decided from the largest to the smallest, and a dropped mask
    removes no others.

    Parameters
    ----------
    cands : candidates after de-duplication
    thresh : fraction of a mask's area, in ``(0, 1]``, that must lie inside the
        container; None keeps every mask

    Returns
    -------
    Candidates
        The kept candidates, in their original order.
    """
    n = len(cands)
    if thresh is None or n < 2:
        return cands
    areas = np.asarray([m.area for m in cands.masks])
    iou = np.asarray(cands.iou, dtype=np.float64)
    stab = np.asarray(cands.stability, dtype=np.float64)
    neighbours: dict[int, list[int]] = {}
    for i, j in overlapping_pairs(cands.boxes()):
        i, j = int(i), int(j)
        if areas[i] < areas[j]:
            neighbours.setdefault(i, []).append(j)
        elif areas[j] < areas[i]:
            neighbours.setdefault(j, []).append(i)
    dropped = np.zeros(n, dtype=bool)
    for i in np.argsort(-areas, kind="stable"):  # containers are decided before their parts
        for j in neighbours.get(int(i), ()):
            better = iou[j] > iou[i] or (iou[j] == iou[i] and stab[j] > stab[i])
            if (
                better
                and not dropped[j]
                and mask_intersection(cands.masks[i], cands.masks[j]) >= thresh * areas[i]
            ):
                dropped[i] = True
                break
    return cands.subset(np.flatnonzero(~dropped))


def resolve_overlaps(
    masks: list[CompactMask],
    scores: np.ndarray,
    shape: tuple[int, int],
    min_area: int,
    min_visible_fraction: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint masks into one label image so that small objects are not swallowed.

    Rule: masks are painted from the largest area to the smallest (equal areas:
    lower score first), so every pixel goes to the *smallest* mask covering it
    and an object inside a larger one (a nucleolus in a nucleus, a cell in a
    cluster mask) stays visible. An object whose visible part is smaller than
    ``min_area`` pixels or than ``min_visible_fraction`` of its mask (e.g. a
    mask of two cells that were also found separately) is dropped and the
    others are painted again.

    Returns
    -------
    index : ``(H, W)`` int32, -1 = background, else the index into ``masks``
    kept : ``(K,)`` indices of the masks that remain, ascending
    """
    n = len(masks)
    index = np.full(shape, -1, dtype=np.int32)
    if n == 0:
        return index, np.zeros(0, dtype=np.int64)
    areas = np.asarray([m.area for m in masks])
    order = np.lexsort((np.asarray(scores, dtype=np.float64), -areas))
    alive = np.ones(n, dtype=bool)
    # pass 1 finds the objects that are (mostly) hidden; pass 2 paints without them.
    # Dropping a mask only uncovers pixels of the others, so no new object becomes
    # too small in pass 2.
    for _ in range(2):
        index.fill(-1)
        for i in order:
            if alive[i]:
                r0, c0, r1, c1 = masks[i].bbox
                index[r0:r1, c0:c1][masks[i].crop()] = i
        visible = np.bincount(index[index >= 0], minlength=n)
        too_small = (visible < max(1, min_area)) | (visible < min_visible_fraction * areas)
        if not (alive & too_small).any():
            break
        alive &= ~too_small
    return index, np.flatnonzero(alive)


def labels_from_index(
    index: np.ndarray, cands: Candidates
) -> tuple[np.ndarray, list[ObjectRecord]]:
    """Relabel to ids 1..N in raster order of each object's first pixel; build records."""
    from scipy import ndimage

    flat = index.ravel()
    present, first = np.unique(flat, return_index=True)
    sel = present >= 0
    present, first = present[sel], first[sel]
    order = np.argsort(first, kind="stable")
    lut = np.zeros(len(cands) + 1, dtype=np.uint32)
    lut[present[order] + 1] = np.arange(1, len(order) + 1, dtype=np.uint32)
    labels = lut[index + 1]
    areas = np.bincount(labels.ravel(), minlength=len(order) + 1)
    slices = ndimage.find_objects(labels)
    objects = []
    for new_id, cand in enumerate(present[order], start=1):
        sl = slices[new_id - 1]
        objects.append(
            ObjectRecord(
                id=new_id,
                area=int(areas[new_id]),
                predicted_iou=float(cands.iou[cand]),
                stability_score=float(cands.stability[cand]),
                bbox=(sl[0].start, sl[1].start, sl[0].stop, sl[1].stop),
            )
        )
    return labels, objects
