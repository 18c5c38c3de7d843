"""Review of a propagation: the doubtful slices, listed while it runs, and a jump to each.

Qt- and napari-free (viewer and layers duck-typed). Each propagated slice
comes with the propagation's per-object records
(:class:`~napari_sam.propagation.SliceRecord`: status, the model's score, the
IoU with the previous slice's mask). :class:`PropagationReview` collects them
as they arrive (``events.propagation_step``) and keeps
``state.review`` (a :class:`ReviewList`) up to date: the slices where a stop
rule fired and the accepted slices whose score or IoU is low or dropped, so
the user checks those few slices instead of every one. "Next doubtful"
(:meth:`PropagationReview.next`) moves the viewer to the next of them (and
selects the object's label).

A slice is doubtful for an object when

* a stop rule fired there (``changed``, ``low_score``, ``vanished``,
  ``faded``, ``no_prompt``): the object was not written there; check that it
  really ends;
* the accepted mask's score is below :data:`DOUBT_SCORE`, or its IoU with the
  previous slice's mask below :data:`DOUBT_IOU`;
* the score or the IoU is more than :data:`DOUBT_DROP` below the object's
  median over the run (a sudden change);
* its mask starts to overlap another propagated object's (more than
  :data:`DOUBT_OVERLAP` of the smaller one; listed where the overlap begins,
  going away from the seed): two tracks merging onto one object.

The thresholds were chosen on micro-model runs in docs/napari.md ("Review of a
propagation"); they are a reading aid, not a judgement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_sam.annotation.slicing import apply_affine

__all__ = ["DOUBT_DROP", "DOUBT_IOU", "DOUBT_OVERLAP", "DOUBT_SCORE", "Doubt",
           "PropagationReview", "ReviewList", "doubts", "overlaps"]

#: An accepted mask with a lower model score is doubtful.
DOUBT_SCORE = 0.7
#: An accepted mask with a lower IoU with the previous slice's mask is doubtful.
DOUBT_IOU = 0.5
#: A score or IoU this much below the object's median is doubtful.
DOUBT_DROP = 0.25
#: Two objects' masks overlapping by more than this share of the smaller are doubtful.
DOUBT_OVERLAP = 0.05
#: Accepted statuses (:data:`napari_sam.propagation.ACCEPTED`).
_ACCEPTED = ("seed", "ok", "end", "z_range")
#: Statuses that are not the propagation's doubt (the user's marker, a cancel).
_NOT_DOUBT = ("stop_marker", "cancelled")
_WORDS = {"changed": "changed", "low_score": "low score", "vanished": "vanished",
          "faded": "faded", "no_prompt": "no prompt"}

Index = tuple[int, ...]


@dataclass(frozen=True)
class Doubt:
    """One doubtful object on one slice.

    Attributes
    ----------
    slice_index : the slice (one int per leading axis)
    object_id : the label id
    status : the record's status (``"ok"``, ``"changed"``...)
    score, iou : the model's score and the IoU with the previous slice (NaN: none)
    reason : why it is listed, for people
    """

    slice_index: Index
    object_id: int
    status: str
    score: float
    iou: float
    reason: str

    @property
    def stopped(self) -> bool:
        """True when a stop rule fired (the object was not written on this slice)."""
        return self.status not in (*_ACCEPTED, "overlap")


@dataclass(frozen=True)
class ReviewList:
    """What ``state.review`` holds: the doubtful slices of the last propagation.

    Attributes
    ----------
    doubts : one :class:`Doubt` per (slice, object), in slice order
    axis : the axis name (``"z"``, ``"t"``) for messages
    n_slices : slices propagated so far
    running : True while the propagation runs
    """

    doubts: tuple[Doubt, ...] = ()
    axis: str = "z"
    n_slices: int = 0
    running: bool = False

    @property
    def slices(self) -> list[Index]:
        """The doubtful slices, in order, each once."""
        return sorted({d.slice_index for d in self.doubts})


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def overlaps(masks: dict[int, Any]) -> list[tuple[int, int, int, float]]:
    """``(a, b, pixels, share of the smaller)`` for the objects of one slice whose
    ``(Y, X)`` masks overlap by more than :data:`DOUBT_OVERLAP` (``a < b``)."""
    items = [(int(k), np.asarray(m, bool)) for k, m in masks.items()]
    if len(items) < 2:
        return []
    count = np.zeros(items[0][1].shape, np.uint16)
    for _, m in items:
        count += m
    shared = count > 1
    if not shared.any():
        return []
    hit = [(k, m) for k, m in items if (m & shared).any()]
    out = []
    for i, (a, ma) in enumerate(hit):
        for b, mb in hit[i + 1:]:
            n = int(np.count_nonzero(ma & mb))
            share = n / max(1, min(int(ma.sum()), int(mb.sum())))
            if share > DOUBT_OVERLAP:
                out.append((min(a, b), max(a, b), n, share))
    return out


def doubts(records: list[tuple[Index, Any]],
           merges: Sequence[tuple[Index, int, int, int, float]] = ()) -> list[Doubt]:
    """The :class:`Doubt` s among ``(slice_index, SliceRecord)`` pairs and
    ``(slice_index, a, b, pixels, share)`` overlaps (module doc rules)."""
    by_object: dict[int, list[Any]] = {}
    for _, r in records:
        if r.status in _ACCEPTED[1:]:
            by_object.setdefault(int(r.object_id), []).append(r)
    medians = {}
    for oid, rs in by_object.items():
        scores = [r.score for r in rs if not math.isnan(r.score)]
        ious = [r.iou_with_previous for r in rs if not math.isnan(r.iou_with_previous)]
        medians[oid] = (float(np.median(scores)) if scores else math.nan,
                        float(np.median(ious)) if ious else math.nan)
    out = []
    for idx, r in records:
        score, iou, status = float(r.score), float(r.iou_with_previous), str(r.status)
        if status == "seed" or status in _NOT_DOUBT:
            continue
        if status not in _ACCEPTED:
            detail = f"score {_fmt(score)}, IoU {_fmt(iou)}, {int(r.area)} px"
            out.append(Doubt(idx, int(r.object_id), status, score, iou,
                             f"stopped: {_WORDS.get(status, status)} ({detail})"))
            continue
        med_score, med_iou = medians.get(int(r.object_id), (math.nan, math.nan))
        why = []
        if score < DOUBT_SCORE:
            why.append(f"low score {score:.2f}")
        elif score < med_score - DOUBT_DROP:
            why.append(f"score dropped to {score:.2f} (median {med_score:.2f})")
        if iou < DOUBT_IOU:
            why.append(f"IoU {iou:.2f} with the previous slice")
        elif iou < med_iou - DOUBT_DROP:
            why.append(f"IoU dropped to {iou:.2f} (median {med_iou:.2f})")
        if why:
            out.append(Doubt(idx, int(r.object_id), status, score, iou, "; ".join(why)))
    for idx, a, b, n, share in merges:
        for oid, other in ((a, b), (b, a)):
            out.append(Doubt(idx, oid, "overlap", math.nan, math.nan,
                             f"overlaps label {other} ({n} px, {share:.0%}): merging?"))
    return sorted(out, key=lambda d: (d.slice_index, d.object_id))


@dataclass(eq=False)
class PropagationReview:
    """Collects a propagation's records into ``state.review``; jumps to doubtful slices.

    Parameters
    ----------
    state : the annotator's state (``review``, ``current_slice``)
    layers : its :class:`~napari_sam.annotation.layer_set.AnnotatorLayers`
    viewer : the viewer (``dims``), to move to a slice
    say : ``say(level, text)`` for messages
    """

    state: Any
    layers: Any
    viewer: Any
    say: Any
    records: list[tuple[Index, Any]] = field(default_factory=list)
    merges: list[tuple[Index, int, int, int, float]] = field(default_factory=list)
    _done: bool = True
    _seen: set = field(default_factory=set)

    def _publish(self, running: bool) -> None:
        idx = [i for i, _ in self.records]
        axis = self._axis(idx)
        self.state.review = ReviewList(tuple(doubts(self.records, self.merges)), axis,
                                       len(set(idx)), running)

    def _axis(self, indices: list[Index]) -> str:
        names = self.layers.axis_names
        for k in range(len(names)):
            if len({i[k] for i in indices}) > 1:
                return names[k]
        return names[-1] if names else "z"

    def step(self, event: Any = None) -> None:
        """``events.propagation_step``: one slice with its records (``event.records``)."""
        if self._done:
            self.records, self.merges, self._seen, self._done = [], [], set(), False
        idx = tuple(getattr(event, "slice_index", ()))
        records = tuple(getattr(event, "records", ()) or ())
        self.records.extend((idx, r) for r in records)
        seeds = {int(r.object_id): s for s, r in self.records if r.status == "seed"}
        for a, b, n, share in overlaps(getattr(event, "masks", None) or {}):
            side = tuple(np.sign(np.subtract(idx, seeds.get(a, idx))).tolist())
            if (a, b, side) not in self._seen:  # where it begins, on each side of the seed
                self._seen.add((a, b, side))
                self.merges.append((idx, a, b, n, share))
        self._publish(running=True)

    def finished(self, event: Any = None) -> None:
        """``events.propagated``: the list is final."""
        self._done = True
        self._publish(running=False)
        review = self.state.review
        if review.doubts:  # added to the propagation's status line
            from napari_sam.annotation.actions import key_for

            shown = ", ".join(self.layers.where(i) for i in review.slices[:6])
            more = " ..." if len(review.slices) > 6 else ""
            self.say("status", f"{self.state.message.text}. Check {len(review.slices)} "
                     f"doubtful slice(s) of {review.n_slices}: {shown}{more} (next doubtful: "
                     f"{key_for('next_doubtful')})")

    # ------------------------------------------------------------------ navigation
    def next(self, current: Index | None = None) -> Doubt | None:
        """Go to the first doubtful slice after ``current`` (default: the slice on
        screen), wrapping around; returns its first :class:`Doubt`, or None."""
        review = self.state.review
        if review is None or not review.doubts:
            self.say("info", "no doubtful slice: run a propagation first (its stops and "
                     "low scores are listed)" if review is None else
                     f"no doubtful slice in the last propagation ({review.n_slices} slices)")
            return None
        here = self.state.current_slice if current is None else tuple(current)
        slices = review.slices
        after = [s for s in slices if here is None or s > here]
        target = (after or slices)[0]
        doubt = next(d for d in review.doubts if d.slice_index == target)
        self.go_to(doubt)
        k = slices.index(target) + 1
        self.say("status", f"doubtful {k}/{len(slices)}: {self.layers.where(target)}, label "
                 f"{doubt.object_id}: {doubt.reason}")
        return doubt

    def go_to(self, doubt: Doubt) -> None:
        """Show ``doubt``'s slice (the viewer's sliders) and select its label."""
        layers = self.layers
        labels = layers.labels
        idx = tuple(doubt.slice_index)
        h, w = layers.geometry.slice_shape
        centre = np.array([(h - 1) / 2, (w - 1) / 2])
        mask = np.asarray(labels.data[idx]) == doubt.object_id
        if mask.any():
            centre = np.argwhere(mask).mean(axis=0)
        world = apply_affine(layers.affine(layers.image, "data_to_world"),
                             np.array([[*idx, *centre]], dtype=float))[0]
        dims = self.viewer.dims
        first = dims.ndim - len(world)
        dims.set_point([first + k for k in range(len(idx))], [float(v) for v in world[:len(idx)]])
        labels.selected_label = int(doubt.object_id)
