"""Tracking through time (and propagation along any non-displayed axis) in the annotator.

Qt- and napari-free (layers duck-typed). :class:`Tracker` propagates the
committed objects of the slice on screen along the time axis of a ``(T, Y,
X)`` or ``(T, Z, Y, X)`` image (or any other leading axis but z, which
:class:`~napari_sam.annotation.stack.StackActions` does): one
:func:`napari_sam.propagation.propagate_iter` run with ``axis`` and
``position`` (the slice on screen), the annotator's embeddings, and the time
defaults (:data:`~napari_sam.propagation.engine.TRACKING_DEFAULTS`, objects
followed by their motion). Objects keep their id across frames. As for z,
frames are shown in the preview layer as they arrive and written at the end
(also when cancelled) through the labels writer: background pixels only,
ONE undo step (the whole ``(T, Z, Y, X)`` labels are the target, written at
the displayed z).

Which axis is time: the ``axis`` asked for (``"t"``, ``"z"``, a leading axis
name of the image or an index), else the image's last leading axis when the
layer's ``axis_labels`` name it ``t`` (a ``(T, Y, X)`` movie); in the widget
the "along" menu.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from typing import Any

import numpy as np

from napari_sam.annotation.jobs import Job, Status
from napari_sam.annotation.propagating import PendingSlices, choose_ids, seeds_from_slice

__all__ = ["TIME_NAMES", "AxisSlices", "Tracker", "track_job", "tracking_stop_options"]

#: Leading-axis names (``axis_labels``, lower case) that mean time.
TIME_NAMES = ("t", "time")
#: What one step of the widget's "stop earlier / later" slider changes along time.
_STOP_STEP = 0.1

Index = tuple[int, ...]


def tracking_stop_options(level: int) -> dict[str, float]:
    """Stop thresholds along time for the slider position ``level`` (-2 .. 2).

    They start from the time defaults (the "faded" rule off,
    :data:`~napari_sam.propagation.engine.TRACKING_DEFAULTS`, and propagation's
    score and IoU thresholds): 0 returns ``{}``; each step towards "later"
    lowers the score and IoU thresholds by 0.1, each step towards "earlier"
    raises them and turns the fade rule on at 0.1 per step.
    """
    from napari_sam.propagation.engine import (
        DEFAULT_IOU_THRESHOLD,
        DEFAULT_SCORE_THRESHOLD,
        TRACKING_DEFAULTS,
    )

    level = int(level)
    if not -2 <= level <= 2:
        raise ValueError(f"stop level must be one of (-2, -1, 0, 1, 2), got {level!r}")
    if level == 0:
        return {}
    fade = float(TRACKING_DEFAULTS.get("fade_threshold", 0.0))
    out = {name: round(min(0.95, max(0.0, value - level * _STOP_STEP)), 3)
           for name, value in (("score_threshold", DEFAULT_SCORE_THRESHOLD),
                               ("iou_threshold", DEFAULT_IOU_THRESHOLD))}
    out["fade_threshold"] = fade if level > 0 else round(fade - level * _STOP_STEP, 3)
    return out


class _RGB:
    """A lazy RGB view of an RGBA array (alpha dropped slice by slice)."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.shape = (*tuple(array.shape[:-1]), 3)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        return np.asarray(self.array[key])[..., :3]


class AxisSlices(PendingSlices):
    """:class:`~napari_sam.annotation.propagating.PendingSlices` along ``axis``: the
    position ``i`` along it is the slice ``position`` with ``axis`` set to ``i``."""

    def __init__(self, position: Index, axis: int, ids: Any, **kwargs: Any) -> None:
        super().__init__((), ids, **kwargs)
        self.position, self.axis = tuple(position), int(axis)

    def index_of(self, z: int) -> Index:
        idx = list(self.position)
        idx[self.axis] = int(z)
        return tuple(idx)


def track_job(
    embedder: Any, position: Index, axis: int, seeds: dict, cl: Any, *, ids: Any,
    direction: str, z_range: Any, options: dict, name: str,
) -> Job:
    """Propagate ``seeds`` (``{id: {i: (Y, X) mask}}``, ``i`` along ``axis``) through the
    image's axis ``axis`` from the slice ``position``; yields one ``SliceUpdate`` per
    frame (:func:`napari_sam.propagation.propagate_iter` with ``axis``/``position``)."""
    to_index = AxisSlices(position, axis, ()).index_of

    def steps(cancel: threading.Event) -> Generator[Any, Any, Any]:
        from napari_sam.propagation import propagate_iter

        predictor = yield from embedder.loading()
        limits = yield from embedder.measuring(cl)
        source = embedder.source
        if embedder.geometry.rgb and embedder.geometry.channels == 4:
            source = _RGB(source)
        yield Status(f"from {embedder.describe(tuple(position))} along {name} "
                     f"({'both ways' if direction == 'both' else direction})")
        yield from propagate_iter(
            source, seeds, predictor, axis=axis, position=position, direction=direction,
            z_range=z_range, contrast_limits=limits,
            embeddings=lambda i: embedder.embedding(to_index(int(i)), cl), **options,
        )

    return Job("propagate", f"tracking {list(ids)} along {name}", steps,
               total=embedder.geometry.lead_shape[axis] + 1)


class Tracker:
    """Propagation of one annotator along time (or another leading axis than z).

    Parameters
    ----------
    state, runner, embedder, layers, writer, events : the annotator's parts; ``events``
        has ``propagation_step`` (``slice_index``, ``records``, ``masks``) and ``propagated``
        (``slice_index``, ``written``, ``records``)

    Attributes
    ----------
    axis : the default axis of :meth:`napari_sam.Annotator.propagate` (the widget's
        "along" menu): None (z, or t when the image's axis labels say so), ``"t"``,
        ``"z"``, an axis name or an index
    """

    def __init__(self, state: Any, runner: Any, embedder: Any, layers: Any, writer: Any,
                 events: Any) -> None:
        self.state, self.runner, self.embedder = state, runner, embedder
        self.layers, self.writer, self.events = layers, writer, events
        self.axis: Any = None
        self._route: tuple[int, bool] | None = None

    def _say(self, level: str, text: str) -> None:
        self.runner.post(level, text)

    # ------------------------------------------------------------------ the axis
    def resolve(self, axis: Any) -> tuple[int, bool]:
        """``(leading axis index, is time)`` of ``axis`` (see the module doc).

        Raises
        ------
        ValueError
            A 2D image, an axis that does not exist, or a displayed/channel axis.
        """
        geometry, names = self.layers.geometry, self.layers.axis_names
        n_lead = geometry.n_lead
        image = getattr(self.layers.image, "name", "image")
        if n_lead == 0:
            raise ValueError(
                f"image {image!r} is 2D {geometry.slice_shape} (Y, X): there is no time or z "
                f"axis to track or propagate through (axis={axis!r}); open a (T, Y, X) or "
                "(T, Z, Y, X) stack")
        lower = [str(n).strip().lower() for n in names]
        if axis is None:
            return n_lead - 1, lower[-1] in TIME_NAMES
        if isinstance(axis, str):
            name = axis.strip().lower()
            if name in TIME_NAMES:
                hits = [i for i, n in enumerate(lower) if n in TIME_NAMES]
                return (hits[0] if hits else 0), True
            if name == "z":
                return n_lead - 1, False
            if name in lower:
                i = lower.index(name)
                return i, i != n_lead - 1
            raise ValueError(
                f"axis {axis!r} is not an axis of image {image!r}; its non-displayed axes "
                f"are {list(names)}: use 't' (time), 'z' or an index 0..{n_lead - 1}")
        from napari_sam.propagation.inputs import resolve_axis

        shape = tuple(int(s) for s in self.embedder.source.shape)
        if geometry.rgb:
            shape = (*shape[:-1], min(shape[-1], 3))
        index = resolve_axis(shape, axis)
        return index, index != n_lead - 1 or lower[index] in TIME_NAMES

    def route(self, options: dict) -> bool:
        """Take ``axis`` out of ``options``; True when this tracker propagates (time or
        another axis than z), False for plain z propagation."""
        axis = options.pop("axis", self.axis)
        if axis is None and self.layers.geometry.n_lead == 0:
            return False  # the annotator's own "needs a stack" message
        try:
            index, time = self.resolve(axis)
        except ValueError:
            if axis is None:
                return False
            self._route = None
            raise
        self._route = (index, time)
        return time or index != self.layers.geometry.n_lead - 1

    # ------------------------------------------------------------------ propagate
    def propagate(self, idx: Index, cl: Any, label_id: Any, direction: str, z_range: Any,
                  options: dict, *, blocking: bool) -> Any:
        """See :meth:`napari_sam.Annotator.propagate` (after :meth:`route` said True)."""
        if self._route is None:
            raise RuntimeError("Tracker.propagate runs after Tracker.route")
        axis, time = self._route
        name = self.layers.axis_names[axis]
        if self.runner.running("propagate"):
            self._say("warning", "a propagation is already running")
            return None
        labels = self.layers.labels
        current = np.asarray(labels.data[idx])
        last = self.state.last_commit
        last_ids = last.label_ids if last is not None and last.slice_index == idx else None
        ids, problem = choose_ids(set(np.unique(current).tolist()) - {0}, label_id, last_ids)
        if problem:
            self._say("warning", f"nothing to track from {self.layers.where(idx)}: {problem}; "
                      "commit an object first")
            return None
        options = dict(options)
        if time:
            from napari_sam.propagation.engine import TRACKING_DEFAULTS

            for key, value in TRACKING_DEFAULTS.items():
                options.setdefault(key, value)
            options.setdefault("motion", True)
        job = track_job(self.embedder, idx, axis, seeds_from_slice(current, ids, idx[axis]), cl,
                        ids=ids, direction=direction, z_range=z_range, options=options,
                        name=name)
        pending = AxisSlices(idx, axis, ids, display=self.layers.preview, labels=labels)

        def arrived(update: Any) -> None:
            records = tuple(getattr(update, "records", {}).values())
            self.events.propagation_step(slice_index=pending.add(update), records=records,
                                         masks=update.masks)

        def finished() -> None:  # also after a cancel, an error or close: nothing is lost
            pending.flush(self.writer, self.layers.geometry.slice_shape)
            if not self.runner.closed:
                n = sum(len(v) for v in pending.written.values())
                self._say("status", f"tracked {ids} along {name}: {n} object-frame(s) written "
                          f"(one undo step). Reached {_reach(pending, name)}")
                self.events.propagated(slice_index=idx, written=pending.written,
                                       records=tuple(pending.records))

        job.on_item, job.on_finished = arrived, finished
        handle = self.runner.run(job, blocking=blocking)
        return pending.written if blocking else handle


def _reach(pending: PendingSlices, name: str) -> str:
    """Per object its range along the axis and why it stopped (the status line)."""
    from napari_sam.annotation.propagating import reach_summary

    return reach_summary(pending.written, pending.records, name)
