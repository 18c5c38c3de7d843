""""Find all like this" on a whole ``(Z, Y, X)`` stack (see :mod:`napari_sam.similar`).

Candidates are everything mode's 3D objects
(:func:`~napari_sam.everything.segment_everything_stack`: each slice in 2D,
then linked through z). Each cross-section of a candidate is compared, on
its slice's embedding, with every exemplar cross-section of at least
:data:`~napari_sam.similar.MIN_SECTION` of that exemplar's largest area
(an object's caps do not show what it looks like); a candidate's score,
cosine and distances are the medians over its cross-sections.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_sam.similar import (
    MIN_SECTION,
    SimilarResult,
    _check_existing,
    _compare,
    _exemplar_list,
    _Features,
    _intensity,
    _keep_candidates,
    _objects,
    _records,
    _relabel,
)


def find_similar_stack(
    stack: Any,
    exemplar_masks: Any,
    predictor: Any,
    *,
    contrast_limits=None,
    threshold: float,
    labels: Any = None,
    candidates: Any = None,
    embeddings: Any = None,
    tolerances: tuple[float, float, float],
    max_overlap: float,
    progress=None,
    cancel=None,
    **everything_options: Any,
) -> SimilarResult:
    """:func:`napari_sam.similar.find_similar` with ``stack=True`` (checked options)."""
    from scipy import ndimage as ndi

    from napari_sam.everything import segment_everything_stack
    from napari_sam.everything._stack import _check_stack, _embedding_for
    from napari_sam.normalize import stack_contrast_limits

    if len(getattr(stack, "shape", ())) == 2:
        raise ValueError(
            f"stack=True needs a (Z, Y, X) stack; the image has shape {tuple(stack.shape)} "
            "(one slice): call find_similar without stack=True"
        )
    shape = _check_stack(stack)[:3]
    exemplars = _exemplar_list(exemplar_masks, shape, "(Z, Y, X)")
    existing = _check_existing(labels, shape)
    limits = stack_contrast_limits(stack, contrast_limits)
    kept: dict[int, Any] = {}

    def embedding_of(z: int):
        """The given embedding of slice z, else one computed here (kept for the call)."""
        if z not in kept:
            given = None if embeddings is None else _embedding_for(embeddings, z)
            kept[z] = given if given is not None else predictor.embed(
                np.asarray(stack[z]), contrast_limits=limits
            )
        return kept[z]

    if candidates is None:
        candidates = segment_everything_stack(
            stack, predictor=predictor, contrast_limits=limits, embeddings=embedding_of,
            progress=progress, cancel=cancel, **everything_options,
        )
    cand_labels = np.asarray(candidates.labels)
    if cand_labels.shape != shape:
        raise ValueError(
            f"candidates have labels of shape {cand_labels.shape}, not the stack's {shape}; "
            "pass the everything result of this stack"
        )
    taken = np.logical_or.reduce(exemplars)
    if existing is not None:
        taken |= existing
    keep, excluded = _keep_candidates(cand_labels, taken, max_overlap)
    out = _relabel(cand_labels, keep)
    planes: dict[int, np.ndarray] = {}

    def plane(z: int) -> np.ndarray:
        if z not in planes:
            planes[z] = _intensity(np.asarray(stack[z]), limits)
        return planes[z]

    ex_feats = _Features()
    for m in exemplars:
        sections = m.sum(axis=(1, 2))
        for section in np.flatnonzero(sections >= MIN_SECTION * sections.max()):
            ex_feats.add_mask(embedding_of(int(section)), plane(int(section)), m[section])
    cand_feats, owner = _Features(), []
    for z in range(shape[0]):
        boxes = ndi.find_objects(out[z])
        if not any(b is not None for b in boxes):
            continue
        emb, pl = embedding_of(z), plane(z)
        for i, sl in enumerate(boxes, start=1):
            if sl is None:
                continue
            rows, cols = np.nonzero(out[z][sl] == i)
            cand_feats.add(emb, pl, rows + sl[0].start, cols + sl[1].start)
            owner.append(i)
        planes.pop(z, None)
    per_section = _compare(cand_feats, ex_feats, tolerances)
    boxes, areas = _objects(out)
    owner_arr = np.asarray(owner, dtype=np.int64)
    medians = [
        np.array([np.nanmedian(v[owner_arr == i]) if (owner_arr == i).any() else np.nan
                  for i in range(1, len(boxes) + 1)])
        for v in per_section
    ]
    return SimilarResult(
        out, _records(boxes, areas, *medians), threshold, candidates, excluded
    )
