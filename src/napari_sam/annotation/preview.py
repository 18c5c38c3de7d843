"""The uncommitted result of a segmentation: masks of one slice and their candidates.

Qt- and napari-free. Masks are ``(Y, X)`` bool arrays of one slice, the slice
given by ``slice_index`` (one int per leading axis of the image).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

__all__ = ["MIN_OBJECT_PIXELS", "Preview", "masks_to_label_image", "prompt_position",
           "split_points"]

#: A mask with fewer pixels is "no object": shown as such, never committed (the
#: same limit as propagation's "vanished" rule).
MIN_OBJECT_PIXELS = 8


def prompt_position(prompt: Any) -> tuple[int, int] | None:
    """``(row, col)`` of an object's prompt for messages: its first positive point,
    else its box centre, else None."""
    points, labels = getattr(prompt, "points", None), getattr(prompt, "labels", None)
    if points is not None and len(points):
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        lab = np.ones(len(pts), bool) if labels is None else np.asarray(labels).ravel() == 1
        if lab.any():
            r, c = np.floor(pts[np.argmax(lab)] + 0.5).astype(int)
            return int(r), int(c)
    box = getattr(prompt, "box", None)
    if box is not None:
        r0, c0, r1, c1 = np.asarray(box, dtype=np.float64).ravel()[:4]
        return round((r0 + r1) / 2), round((c0 + c1) / 2)
    return None


def split_points(mask: np.ndarray, prompt: Any) -> tuple[int, int]:
    """``(positive points, separate parts they fall in)`` for one object's mask.

    Several positive points refine ONE object (SAM's convention); when they
    fall in 2 or more separate parts of the mask (8-connected), the user
    probably meant several objects. Boxes and mask prompts: ``(0, 0)``.
    """
    points, labels = getattr(prompt, "points", None), getattr(prompt, "labels", None)
    if points is None or getattr(prompt, "box", None) is not None:
        return 0, 0
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    lab = np.ones(len(pts), bool) if labels is None else np.asarray(labels).ravel() == 1
    pts = pts[lab]
    if len(pts) < 2 or not mask.any():
        return len(pts), 0
    from scipy import ndimage as ndi

    parts, _ = ndi.label(mask, structure=np.ones((3, 3), bool))
    rc = np.clip(np.floor(pts + 0.5).astype(int), 0, np.array(mask.shape) - 1)
    under = {int(parts[r, c]) for r, c in rc}
    # a point outside the mask is an object of its own that the mask missed
    return len(pts), len(under - {0}) + sum(int(parts[r, c]) == 0 for r, c in rc)


def masks_to_label_image(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Paint masks ``1..N`` into one ``(Y, X)`` label image, smaller objects on top.

    The dtype is the smallest unsigned type holding N (uint8 for up to 255 objects).
    """
    n = len(masks)
    dtype = np.uint8 if n < 256 else (np.uint16 if n < 65536 else np.uint32)
    out = np.zeros(shape, dtype=dtype)
    order = sorted(range(n), key=lambda i: -int(np.count_nonzero(masks[i])))
    for i in order:  # largest first, so smaller ones end up on top
        out[masks[i]] = i + 1
    return out


@dataclass(frozen=True, eq=False)
class Preview:
    """Masks shown in the preview layer, not yet committed.

    Attributes
    ----------
    slice_index : the slice the masks belong to
    predictions : one :class:`~napari_sam.predictor.Prediction` per object
        (``masks`` ``(K, Y, X)``, ``scores`` ``(K,)``)
    choices : index of the candidate shown, per object
    hover : True for a hover preview (one point under the mouse, no prompts)
    prompts : the :class:`~napari_sam.annotation.prompts.ObjectPrompt` of each
        object (or empty): the masks keep only their parts that these prompts
        select (:func:`napari_sam.masks.keep_prompted_parts`), dropping stray
        fragments on other objects

    By default each object shows its best-scoring candidate that is not empty
    (fewer than :data:`MIN_OBJECT_PIXELS`); :meth:`next_candidate` skips empty
    candidates too, as long as another one is not empty.
    """

    slice_index: tuple[int, ...]
    predictions: tuple[Any, ...]
    choices: tuple[int, ...] = field(default=())
    hover: bool = False
    prompts: tuple[Any, ...] = field(default=())

    def __post_init__(self) -> None:
        preds = tuple(self.predictions)
        object.__setattr__(self, "predictions", preds)
        if not self.choices:
            object.__setattr__(self, "choices", tuple(_best(p) for p in preds))
        if len(self.choices) != len(preds):
            raise ValueError(f"got {len(self.choices)} choices for {len(preds)} predictions")
        object.__setattr__(self, "prompts", tuple(self.prompts))
        if self.prompts and len(self.prompts) != len(preds):
            raise ValueError(f"got {len(self.prompts)} prompts for {len(preds)} predictions")

    @property
    def n_objects(self) -> int:
        """Number of objects."""
        return len(self.predictions)

    @cached_property
    def masks(self) -> list[np.ndarray]:
        """The shown ``(Y, X)`` bool mask of each object (its prompted parts)."""
        from napari_sam.masks import keep_prompted_parts

        prompts = self.prompts or (None,) * len(self.predictions)
        out = []
        for p, c, prompt in zip(self.predictions, self.choices, prompts):
            mask = np.asarray(p.masks[c], dtype=bool)
            if prompt is not None:
                mask = keep_prompted_parts(
                    mask,
                    getattr(prompt, "points", None),
                    getattr(prompt, "labels", None),
                    getattr(prompt, "box", None),
                )
            out.append(mask)
        return out

    @property
    def areas(self) -> list[int]:
        """Pixels of the shown mask of each object."""
        return [int(np.count_nonzero(m)) for m in self.masks]

    @property
    def empty(self) -> tuple[bool, ...]:
        """Per object: True when its shown mask is (nearly) empty: no object found."""
        return tuple(a < MIN_OBJECT_PIXELS for a in self.areas)

    def empty_message(self, where: str = "") -> str | None:
        """What the user reads when some object found nothing, or None.

        ``where`` names the slice (e.g. ``"z=14"``).
        """
        empty = [i for i, e in enumerate(self.empty) if e]
        if not empty:
            return None
        prompts = self.prompts or (None,) * self.n_objects
        spots = []
        for i in empty:
            pos = prompt_position(prompts[i])
            spots.append(f"(row {pos[0]}, col {pos[1]})" if pos is not None else f"object {i + 1}")
        on = f" on {where}" if where else ""
        head = (f"no object found{on} at {', '.join(spots)}" if len(empty) == self.n_objects
                else f"{len(empty)} of {self.n_objects} objects{on} found nothing, at "
                f"{', '.join(spots)} (not committed)")
        return (f"{head}: try a box, a second click, or another intensity range "
                "(nothing to commit there)")

    @property
    def scores(self) -> list[float]:
        """Predicted IoU of the shown mask of each object."""
        return [float(np.asarray(p.scores)[c]) for p, c in zip(self.predictions, self.choices)]

    @property
    def n_candidates(self) -> int:
        """Candidates of a single-object preview (1 for several objects)."""
        if self.n_objects != 1:
            return 1
        return int(np.asarray(self.predictions[0].masks).shape[0])

    @property
    def rank(self) -> int:
        """Rank (1 = best score) of the candidate shown for the first object."""
        scores = np.asarray(self.predictions[0].scores, dtype=np.float64)
        order = list(np.argsort(-scores, kind="stable"))
        return order.index(self.choices[0]) + 1

    def next_candidate(self) -> Preview:
        """The same preview showing the next candidate mask (single object only), cycling.

        Candidates are visited in decreasing score order, starting from the best.
        """
        if self.n_objects != 1 or self.n_candidates < 2:
            return self
        scores = np.asarray(self.predictions[0].scores, dtype=np.float64)
        order = list(np.argsort(-scores, kind="stable"))
        full = [k for k in order if _area(self.predictions[0], k) >= MIN_OBJECT_PIXELS]
        if full:  # empty candidates are skipped while there is another one
            order = full if self.choices[0] in full else [self.choices[0], *full]
        pos = order.index(self.choices[0])
        return replace(self, choices=(int(order[(pos + 1) % len(order)]),))

    @property
    def n_shown_candidates(self) -> int:
        """Non-empty candidates of a single-object preview (what :meth:`next_candidate`
        cycles through); 1 for several objects."""
        if self.n_objects != 1:
            return 1
        return sum(_area(self.predictions[0], k) >= MIN_OBJECT_PIXELS
                   for k in range(self.n_candidates))

    def label_image(self, shape: tuple[int, int]) -> np.ndarray:
        """The preview as a ``(Y, X)`` label image (objects ``1..N``)."""
        return masks_to_label_image(self.masks, shape)


def _area(prediction: Any, k: int) -> int:
    return int(np.count_nonzero(np.asarray(prediction.masks[k])))


def _best(prediction: Any) -> int:
    """The best-scoring candidate that is not empty (else the best-scoring one)."""
    scores = np.asarray(prediction.scores, dtype=np.float64)
    if not scores.size:
        return 0
    order = np.argsort(-scores, kind="stable")
    for k in order:
        if _area(prediction, int(k)) >= MIN_OBJECT_PIXELS:
            return int(k)
    return int(order[0])
