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

__all__ = ["Preview", "masks_to_label_image"]


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
        pos = order.index(self.choices[0])
        return replace(self, choices=(int(order[(pos + 1) % len(order)]),))

    def label_image(self, shape: tuple[int, int]) -> np.ndarray:
        """The preview as a ``(Y, X)`` label image (objects ``1..N``)."""
        return masks_to_label_image(self.masks, shape)


def _best(prediction: Any) -> int:
    scores = np.asarray(prediction.scores)
    return int(np.argmax(scores)) if scores.size else 0
