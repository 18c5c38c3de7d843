"""What propagation reports: per-slice records, per-slice updates, the final result.

Torch-, Qt- and napari-free. Axis order everywhere is ``(Z, Y, X)``; masks are
``(Y, X)`` bool arrays of one slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Every status a :class:`SliceRecord` can have.
STATUSES = (
    "seed",  # a keyframe given by the caller (not predicted)
    "ok",  # predicted and accepted
    "end",  # accepted, and the direction reached the first/last slice of the stack
    "z_range",  # accepted, and the direction reached the edge of ``z_range``
    "vanished",  # rejected: predicted area below ``min_area``
    "changed",  # rejected: IoU with the previous slice too low, or area grew too much
    "low_score",  # rejected: the model's predicted IoU below ``score_threshold``
    "faded",  # rejected: contrast against the surroundings below ``fade_threshold`` x keyframe's
    "stop_marker",  # not predicted: the caller marked this slice as outside the object
    "no_prompt",  # not predicted: no usable prompt could be built from the previous mask
    "cancelled",  # not predicted: the run was cancelled before this slice
)

#: Statuses of slices whose mask is part of the result.
ACCEPTED = frozenset({"seed", "ok", "end", "z_range"})


@dataclass(frozen=True)
class SliceRecord:
    """One object on one slice.

    Attributes
    ----------
    z : int
        Slice index.
    object_id : int
        The object (the label id for multi-object seeds; 1 for a single object).
    score : float
        The model's predicted IoU of the chosen mask; NaN where nothing was
        predicted (seeds, stop markers, cancelled, no prompt).
    iou_with_previous : float
        IoU of the chosen mask with the object's mask on the neighbouring slice
        it was propagated from (the better of the two neighbours when a gap
        between keyframes closes); NaN where nothing was predicted.
    area : int
        Pixels in the predicted (or seed) mask; also given for rejected masks.
    status : str
        One of :data:`STATUSES`. Accepted masks have ``"seed"``, ``"ok"``,
        ``"end"`` or ``"z_range"``; every other status says why one direction
        stopped *at this slice* (its mask is not in the result).
    """

    z: int
    object_id: int
    score: float
    iou_with_previous: float
    area: int
    status: str

    @property
    def accepted(self) -> bool:
        """True when this slice's mask is part of the result."""
        return self.status in ACCEPTED


@dataclass(frozen=True)
class SliceUpdate:
    """What :func:`propagate_iter` yields once per processed slice.

    Attributes
    ----------
    z : int
        Slice index.
    masks : dict of int to numpy.ndarray
        ``object_id -> (Y, X)`` bool mask of that object on slice ``z``; only
        the objects accepted on ``z`` (a rejected prediction is not here).
    records : dict of int to SliceRecord
        ``object_id -> record`` for every object handled on ``z``, accepted or
        not (so a record without a mask explains why a direction stopped).
    """

    z: int
    masks: dict[int, np.ndarray]
    records: dict[int, SliceRecord]


@dataclass(frozen=True)
class ObjectSummary:
    """The extent of one propagated object, from its records.

    Attributes
    ----------
    object_id : int
    z_min, z_max : int
        First and last accepted slice (inclusive).
    n_slices : int
        Number of accepted slices.
    voxels : int
        Sum of the accepted masks' areas (before any write into existing labels).
    stops : tuple of SliceRecord
        The records of slices where a direction stopped or reached its end
        (every record whose status is not ``"seed"`` or ``"ok"``), by z.
    """

    object_id: int
    z_min: int
    z_max: int
    n_slices: int
    voxels: int
    stops: tuple[SliceRecord, ...]


def summarize(records: list[SliceRecord]) -> dict[int, ObjectSummary]:
    """Per-object extent and stop reasons from a list of records, by object id."""
    out: dict[int, ObjectSummary] = {}
    for oid in sorted({r.object_id for r in records}):
        mine = [r for r in records if r.object_id == oid]
        ok = [r for r in mine if r.accepted]
        zs = sorted({r.z for r in ok})
        stops = tuple(sorted((r for r in mine if r.status not in ("seed", "ok")), key=_z))
        out[oid] = ObjectSummary(
            object_id=oid,
            z_min=zs[0] if zs else -1,
            z_max=zs[-1] if zs else -1,
            n_slices=len(zs),
            voxels=int(sum(r.area for r in ok)),
            stops=stops,
        )
    return out


def _z(record: SliceRecord) -> int:
    return record.z


@dataclass(frozen=True)
class PropagationResult:
    """What :func:`propagate` returns.

    Attributes
    ----------
    mask_or_labels : numpy.ndarray
        ``(Z, Y, X)``: the ``out`` array when one was given (written in place);
        otherwise a new bool mask for a single object without ``label_id``, or
        new labels (uint8/uint16/uint32, smallest that holds the ids).
    records : list of SliceRecord
        Every record, in processing order (seeds first).
    cancelled : bool
        True when ``cancel`` stopped the run; everything done before stays,
        and the unfinished directions have a ``"cancelled"`` record.
    """

    mask_or_labels: np.ndarray
    records: list[SliceRecord]
    cancelled: bool

    def summary(self) -> dict[int, ObjectSummary]:
        """Per-object extent and stop reasons; see :func:`summarize`."""
        return summarize(self.records)


def format_record(record: SliceRecord) -> str:
    """One human-readable line for a record (used by the CLI)."""
    score = "-" if math.isnan(record.score) else f"{record.score:.2f}"
    iou = "-" if math.isnan(record.iou_with_previous) else f"{record.iou_with_previous:.2f}"
    return f"z={record.z} {record.status} (score {score}, IoU {iou}, area {record.area})"
