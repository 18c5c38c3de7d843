"""Which committed objects to propagate, their seeds, and the slices waiting to be written.

Qt- and napari-free (layers are duck-typed). z is the last leading axis of the
image: axis 0 of ``(Z, Y, X)``, axis 1 of ``(T, Z, Y, X)`` (the time point is
fixed).

A propagation's slices are not written into the labels one by one: napari's
``block_history()`` cannot stay open across GUI events (a paint stroke in
between would end the group and split the step). :class:`PendingSlices` keeps
them, shows each in a display layer (the preview) as it arrives, and writes
all of them through a :class:`~napari_sam.labels.LabelsWriter` at the end:
one undo step, recorded by napari's own history only.

The heavy part of each slice is done in the job's worker thread:
:func:`preparing` wraps the job's steps so that every ``SliceUpdate`` leaves
the worker as :class:`Arrived`, with the masks already cropped to their
bounding boxes; the main thread only copies them into the display layer
(refreshed only when the slice is on screen) and, at the end, writes them
slice by slice (the writer's ``pause`` lets the GUI repaint in between).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_sam.labels import resolve_label_ids

__all__ = [
    "STOP_LEVELS",
    "Arrived",
    "PendingSlices",
    "choose_ids",
    "place",
    "prepare_update",
    "preparing",
    "reach_summary",
    "seeds_from_slice",
    "stop_rule_options",
]

#: Positions of the widget's "stop earlier / later" slider: -2 (earliest) .. 2.
STOP_LEVELS = (-2, -1, 0, 1, 2)
# what one slider step changes: fade share, score and IoU thresholds
_STOP_STEP = {"fade_threshold": 0.1, "score_threshold": 0.1, "iou_threshold": 0.1}
_STOP_WORDS = {
    "end": "stack end", "z_range": "range end", "vanished": "vanished", "changed": "changed",
    "low_score": "low score", "faded": "faded", "stop_marker": "stop marker",
    "no_prompt": "no prompt", "cancelled": "cancelled",
}


def stop_rule_options(model_name: str | None, level: int) -> dict[str, float]:
    """Propagation stop thresholds for the slider position ``level`` (see :data:`STOP_LEVELS`).

    0 is the model's recommendation (:func:`napari_sam.model.registry.recommended_propagation`,
    else propagation's defaults) and returns ``{}``, so propagation decides.
    Each step towards "later" (positive) lowers the fade share, the score and
    the IoU thresholds by 0.1 (an object is followed further into dim or
    changing slices); each step towards "earlier" raises them (a fade rule that
    the model leaves off starts at 0.1 per step).
    """
    from napari_sam.model.registry import recommended_propagation
    from napari_sam.propagation.engine import (
        DEFAULT_FADE_THRESHOLD,
        DEFAULT_IOU_THRESHOLD,
        DEFAULT_SCORE_THRESHOLD,
    )

    level = int(level)
    if level not in STOP_LEVELS:
        raise ValueError(f"stop level must be one of {STOP_LEVELS}, got {level!r}")
    if level == 0:
        return {}
    base = {"fade_threshold": DEFAULT_FADE_THRESHOLD, "score_threshold": DEFAULT_SCORE_THRESHOLD,
            "iou_threshold": DEFAULT_IOU_THRESHOLD}
    base.update({k: float(v) for k, v in recommended_propagation(model_name).items()
                 if k in base})
    out = {}
    for name, value in base.items():
        if name == "fade_threshold" and value <= 0 and level > 0:
            out[name] = 0.0  # off stays off when following further
            continue
        out[name] = round(min(0.95, max(0.0, value - level * _STOP_STEP[name])), 3)
    return out


def reach_summary(written: dict[int, list[int]], records: Sequence[Any], axis: str = "z") -> str:
    """Per object, the range reached and why each direction stopped, for the status line:
    ``"1: z=3-11 (faded at z=12, stack end at z=11)"``."""
    parts = []
    for oid, zs in written.items():
        if not zs:
            parts.append(f"{oid}: nothing")
            continue
        span = f"{min(zs)}-{max(zs)}" if len(set(zs)) > 1 else f"{zs[0]}"
        text = f"{oid}: {axis}={span}"
        stops = sorted((r for r in records if getattr(r, "object_id", None) == oid
                        and getattr(r, "status", "ok") not in ("seed", "ok")),
                       key=lambda r: r.z)
        if stops:
            text += " (" + ", ".join(f"{_STOP_WORDS.get(r.status, r.status)} at {axis}={r.z}"
                                     for r in stops) + ")"
        parts.append(text)
    return "; ".join(parts)

Index = tuple[int, ...]


def choose_ids(
    present: set[int], label_id: Any, last_commit: Sequence[int] | None
) -> tuple[list[int], str | None]:
    """The object ids to propagate from a slice whose labels are ``present``.

    ``label_id`` None: the ids of the last commit on this slice (``last_commit``)
    that are still there, else every id present. Returns ``(ids, problem)``;
    ``problem`` is a message when there is nothing (valid) to propagate.

    Raises
    ------
    ValueError
        ``label_id`` is not an int >= 1 or a sequence of distinct ones (2.5 and
        ``"3"`` are refused, never truncated: :func:`~napari_sam.labels.resolve_label_ids`).
    """
    if label_id is None:
        ids = [i for i in (last_commit or ()) if i in present] or sorted(present)
    else:
        given = [label_id] if np.isscalar(label_id) else list(label_id)
        ids = resolve_label_ids(given, len(given), None) if given else []
    missing = [i for i in ids if i not in present]
    if missing:
        return [], f"label(s) {missing} are not on this slice"
    if not ids:
        return [], "this slice has no labels"
    return ids, None


def seeds_from_slice(labels_slice: np.ndarray, ids: Sequence[int], z: int) -> dict:
    """``{object_id: {z: (Y, X) bool mask}}`` from a slice of the labels."""
    labels_slice = np.asarray(labels_slice)
    return {int(oid): {int(z): labels_slice == oid} for oid in ids}


Crop = tuple[int, int, np.ndarray]  # (row0, col0, mask of the bounding box)


@dataclass(frozen=True, eq=False)
class Arrived:
    """One propagated slice, prepared in the job's worker (:func:`prepare_update`).

    Attributes
    ----------
    update : the ``SliceUpdate`` (``z``, ``masks``, ``records``)
    crops : ``{object_id: (row0, col0, bounding-box mask)}`` of its non-empty masks
    union : ``(Y, X)`` bool, every mask together, or None when all are empty
    """

    update: Any
    crops: dict[int, Crop]
    union: np.ndarray | None


def place(crop: Crop, shape: tuple[int, int]) -> np.ndarray:
    """The ``shape`` bool mask of a :data:`Crop`."""
    r0, c0, box = crop
    mask = np.zeros(shape, dtype=bool)
    mask[r0:r0 + box.shape[0], c0:c0 + box.shape[1]] = box
    return mask


def _crop(mask: np.ndarray) -> Crop | None:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not rows.size:
        return None
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return int(r0), int(c0), mask[r0:r1, c0:c1].copy()


def prepare_update(update: Any) -> Arrived:
    """Crop the masks of one ``SliceUpdate`` (any thread: reads no layer)."""
    crops: dict[int, Crop] = {}
    union = None
    for oid, mask in update.masks.items():
        mask = np.asarray(mask, dtype=bool)
        crop = _crop(mask)
        if crop is not None:
            crops[int(oid)] = crop
            union = mask.copy() if union is None else union | mask
    return Arrived(update, crops, union)


def _is_update(value: Any) -> bool:
    return not isinstance(value, (str, tuple)) and hasattr(value, "masks") and hasattr(
        value, "z")


def preparing(steps: Callable[[Any], Generator[Any, Any, Any]]
              ) -> Callable[[Any], Generator[Any, Any, Any]]:
    """A job's ``steps`` whose ``SliceUpdate`` values leave as :class:`Arrived` (prepared
    in the worker); everything else, and the return value, pass unchanged."""

    def run(cancel: Any) -> Generator[Any, Any, Any]:
        gen = steps(cancel)
        try:
            while True:
                try:
                    value = next(gen)
                except StopIteration as stop:
                    return stop.value
                yield prepare_update(value) if _is_update(value) else value
        finally:
            gen.close()

    return run


class PendingSlices:
    """Propagated masks waiting to be written, shown in a display layer meanwhile.

    Parameters
    ----------
    lead : the fixed leading indices before z (``()`` for ZYX, ``(t,)`` for TZYX)
    ids : the object ids being propagated
    display : a Labels layer to show the slices in as they arrive (duck-typed:
        ``data`` of the image's shape, ``refresh``), or None
    labels : the Labels layer the slices go to (duck-typed: ``data``), to show
        only the pixels a write will take (the background), or None
    on_screen : ``on_screen(slice_index)`` -> True when that slice is the one on
        screen (the display is refreshed only then; the others show when the user
        goes there), or None: always refresh

    Attributes
    ----------
    written : ``{object_id: [z, ...]}`` in arrival order
    records : every ``SliceRecord`` of the updates (why each direction stopped)
    """

    def __init__(
        self, lead: Index, ids: Sequence[int], *, display: Any = None, labels: Any = None,
        on_screen: Callable[[Index], bool] | None = None,
    ) -> None:
        self.lead = tuple(lead)
        self.display = display
        self.labels = labels
        self.on_screen = on_screen
        self.written: dict[int, list[int]] = {int(i): [] for i in ids}
        self.records: list[Any] = []  # every SliceRecord, in arrival order
        # slice index -> {id: (row0, col0, mask of the bounding box)}
        self._slices: dict[Index, dict[int, tuple[int, int, np.ndarray]]] = {}

    def __len__(self) -> int:
        return len(self._slices)

    def add(self, update: Any) -> Index:
        """Keep one ``SliceUpdate`` (``.z``, ``.masks``: ``{id: (Y, X) bool}``), or one
        :class:`Arrived` (prepared in the worker); show it. Returns its slice index.
        """
        arrived = update if isinstance(update, Arrived) else prepare_update(update)
        update = arrived.update
        idx = self.index_of(int(update.z))
        self.records.extend(getattr(update, "records", {}).values())
        kept = self._slices.setdefault(idx, {})
        for oid in update.masks:
            self.written.setdefault(int(oid), []).append(int(update.z))
        kept.update(arrived.crops)
        shown = arrived.union
        if shown is not None and self.display is not None:
            if self.labels is not None:
                shown = shown & (np.asarray(self.labels.data[idx]) == 0)
            self.display.data[idx] = np.where(shown, 1, self.display.data[idx])
            if self.on_screen is None or self.on_screen(idx):
                self.display.refresh()
        return idx

    def index_of(self, z: int) -> Index:
        """The slice index of position ``z`` along the propagation axis (``(*lead, z)``;
        tracking along another axis overrides it)."""
        return (*self.lead, int(z))

    def masks(self, shape: tuple[int, int]) -> Iterator[tuple[Index, dict[int, np.ndarray]]]:
        """``(slice_index, {id: (Y, X) bool mask})`` of everything kept, in arrival order
        (one slice in memory at a time)."""
        for idx, objects in list(self._slices.items()):
            yield idx, {oid: place(crop, shape) for oid, crop in objects.items()}

    def flush(self, writer: Any, shape: tuple[int, int]) -> dict[int, int]:
        """Write every kept slice with ``writer`` (a
        :class:`~napari_sam.labels.LabelsWriter`) as ONE undo step, background
        pixels only, and clear the display. Returns pixels written per id.
        """
        kept = list(self._slices)
        ids = {oid for objects in self._slices.values() for oid in objects}
        try:
            return writer.write_slices(self.masks(shape), label_ids=ids) if kept else {}
        finally:
            self._slices = {}
            if self.display is not None and kept:
                for idx in kept:
                    self.display.data[idx] = 0
                self.display.refresh()
