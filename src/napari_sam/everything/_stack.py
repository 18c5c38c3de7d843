"""Everything mode for a ``(Z, Y, X)`` stack: every slice in 2D, then linking through z.

See :func:`segment_everything_stack` and ``docs/everything.md`` (why linking).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_sam.everything._core import make_predictor, run_everything
from napari_sam.everything._params import (
    EverythingParams,
    EverythingStackParams,
    ProgressCallback,
    check_cancel,
)
from napari_sam.normalize import stack_contrast_limits
from napari_sam.options import resolve


@dataclass(frozen=True)
class StackObjectRecord:
    """One object of a 3D everything result.

    Attributes
    ----------
    id : label value in :attr:`EverythingStackResult.labels` (1..N)
    volume : voxels of the object
    z_range : ``(z_start, z_stop)`` half-open: the object spans slices
        ``z_start .. z_stop - 1`` (closed gaps included)
    n_slices : slices in which the object has voxels
    bbox : ``(z_min, row_min, col_min, z_max, row_max, col_max)`` half-open
    predicted_iou : mean predicted IoU of its 2D masks
    stability_score : mean stability score of its 2D masks
    """

    id: int
    volume: int
    z_range: tuple[int, int]
    n_slices: int
    bbox: tuple[int, int, int, int, int, int]
    predicted_iou: float
    stability_score: float


@dataclass
class EverythingStackResult:
    """Result of :func:`segment_everything_stack`.

    Attributes
    ----------
    labels : ``(Z, Y, X)`` uint32, 0 = background, objects ``1..N`` ordered by
        first slice, then raster order of the first pixel in that slice
    objects : one :class:`StackObjectRecord` per id, in id order
    contrast_limits : the ``(low, high)`` used for every slice
    objects_per_slice : number of 2D objects found in each slice before linking
    """

    labels: np.ndarray
    objects: list[StackObjectRecord]
    contrast_limits: tuple[float, float]
    objects_per_slice: list[int] = field(default_factory=list)


# ----------------------------------------------------------------------------- linking


def match_slices(prev: np.ndarray, cur: np.ndarray, min_iou: float) -> list[tuple[int, int]]:
    """One-to-one matching of the objects of two label slices by overlap.

    Pairs with IoU ``>= min_iou`` are candidates; the assignment maximizing the
    total IoU is found with the Hungarian algorithm in each connected group of
    candidates (groups are small, so this stays cheap with thousands of objects).

    Parameters
    ----------
    prev, cur : ``(Y, X)`` integer labels (0 = background)
    min_iou : smallest IoU of a link, in ``(0, 1]``

    Returns
    -------
    ``[(prev_id, cur_id), ...]`` matched label pairs.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    prev = np.asarray(prev)
    cur = np.asarray(cur)
    both = (prev > 0) & (cur > 0)
    if not both.any():
        return []
    a = prev[both].astype(np.int64)
    b = cur[both].astype(np.int64)
    nb = int(cur.max()) + 1
    keys, inter = np.unique(a * nb + b, return_counts=True)
    ua, ub = keys // nb, keys % nb
    area_a = np.bincount(prev.ravel().astype(np.int64))
    area_b = np.bincount(cur.ravel().astype(np.int64))
    iou = inter / (area_a[ua] + area_b[ub] - inter)
    sel = iou >= min_iou
    ua, ub, iou = ua[sel], ub[sel], iou[sel]
    if ua.size == 0:
        return []
    ra, ia = np.unique(ua, return_inverse=True)
    rb, ib = np.unique(ub, return_inverse=True)
    n = len(ra) + len(rb)
    graph = coo_matrix((np.ones(len(ia)), (ia, ib + len(ra))), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    edge_comp = comp[ia]
    pairs: list[tuple[int, int]] = []
    for c in np.unique(edge_comp):
        e = np.flatnonzero(edge_comp == c)
        if len(e) == 1:
            pairs.append((int(ra[ia[e[0]]]), int(rb[ib[e[0]]])))
            continue
        rows, row_idx = np.unique(ia[e], return_inverse=True)
        cols, col_idx = np.unique(ib[e], return_inverse=True)
        m = np.zeros((len(rows), len(cols)))
        m[row_idx, col_idx] = iou[e]
        r, k = linear_sum_assignment(m, maximize=True)
        for i, j in zip(r, k):
            if m[i, j] > 0:
                pairs.append((int(ra[rows[i]]), int(rb[cols[j]])))
    return pairs


@dataclass
class _Tracks:
    """Objects linked through z while the slices are processed."""

    first: list[int] = field(default_factory=list)
    last: list[int] = field(default_factory=list)
    first_pos: list[int] = field(default_factory=list)
    iou_sum: list[float] = field(default_factory=list)
    stab_sum: list[float] = field(default_factory=list)
    count: list[int] = field(default_factory=list)
    #: per slice: local 2D id -> track index + 1 (0 = background)
    of_slice: list[np.ndarray] = field(default_factory=list)
    #: (track, z_before, z_after) gaps that were closed
    gaps: list[tuple[int, int, int]] = field(default_factory=list)

    def new(self, z: int, pos: int) -> int:
        self.first.append(z)
        self.last.append(z)
        self.first_pos.append(pos)
        self.iou_sum.append(0.0)
        self.stab_sum.append(0.0)
        self.count.append(0)
        return len(self.first) - 1


def _restrict(labels: np.ndarray, ids: Any) -> np.ndarray:
    """``labels`` with every id not in ``ids`` set to 0."""
    keep = np.zeros(int(labels.max()) + 1, dtype=bool)
    ids = np.asarray(list(ids), dtype=np.int64)
    keep[ids[ids < len(keep)]] = True
    keep[0] = False
    return np.where(keep[labels], labels, 0)


def _link_slice(
    tracks: _Tracks,
    out: np.ndarray,
    z: int,
    records: Sequence[Any],
    link_iou: float,
    max_gap: int,
) -> None:
    """Give every 2D object of slice ``z`` a track: continued, gap-closed or new."""
    cur = out[z]
    n_local = len(records)
    of = np.zeros(n_local + 1, dtype=np.int64)  # track + 1
    if z >= 1 and n_local:
        for a, b in match_slices(out[z - 1], cur, link_iou):
            of[b] = tracks.of_slice[z - 1][a]
        for gap in range(1, max_gap + 1):
            zz = z - 1 - gap
            unmatched = np.flatnonzero(of[1:] == 0) + 1
            if zz < 0 or unmatched.size == 0:
                break
            prev_of = tracks.of_slice[zz]
            ended = [
                a
                for a in range(1, len(prev_of))
                if prev_of[a] and tracks.last[prev_of[a] - 1] == zz
            ]
            if not ended:
                continue
            pairs = match_slices(_restrict(out[zz], ended), _restrict(cur, unmatched), link_iou)
            for a, b in pairs:
                of[b] = prev_of[a]
                tracks.gaps.append((int(prev_of[a] - 1), zz, z))
    if n_local:
        present, first_index = np.unique(cur.ravel(), return_index=True)
        pos = dict(zip(present.tolist(), first_index.tolist()))
        for b in range(1, n_local + 1):
            if of[b] == 0:
                of[b] = tracks.new(z, pos.get(b, 0)) + 1
            t = of[b] - 1
            tracks.last[t] = max(tracks.last[t], z)
            tracks.iou_sum[t] += records[b - 1].predicted_iou
            tracks.stab_sum[t] += records[b - 1].stability_score
            tracks.count[t] += 1
    tracks.of_slice.append(of)


def _fill_gaps(tracks: _Tracks, out: np.ndarray) -> None:
    """Fill each closed gap with the overlap of the object's masks on both sides.

    Only background pixels of the gap slices are filled.
    """
    for t, z0, z1 in tracks.gaps:
        a = np.flatnonzero(tracks.of_slice[z0] == t + 1)
        b = np.flatnonzero(tracks.of_slice[z1] == t + 1)
        if a.size == 0 or b.size == 0:
            continue
        region = np.isin(out[z0], a) & np.isin(out[z1], b)
        for zg in range(z0 + 1, z1):
            fill = region & (out[zg] == 0)
            if not fill.any():
                continue
            new_local = len(tracks.of_slice[zg])
            tracks.of_slice[zg] = np.append(tracks.of_slice[zg], t + 1)
            out[zg][fill] = new_local


def _relabel(tracks: _Tracks, out: np.ndarray, min_z_extent: int) -> tuple[np.ndarray, np.ndarray]:
    """Global ids 1..N (by first slice, then first pixel) for tracks spanning enough slices.

    Returns ``(track -> id, kept tracks in id order)``; rewrites ``out`` in place.
    """
    first = np.asarray(tracks.first, dtype=np.int64)
    last = np.asarray(tracks.last, dtype=np.int64)
    extent = last - first + 1
    kept = np.flatnonzero(extent >= min_z_extent)
    kept = kept[np.lexsort((np.asarray(tracks.first_pos)[kept], first[kept]))]
    track_id = np.zeros(len(first) + 1, dtype=np.uint32)  # index: track + 1
    track_id[kept + 1] = np.arange(1, len(kept) + 1, dtype=np.uint32)
    for z in range(out.shape[0]):
        lut = track_id[tracks.of_slice[z]]
        out[z] = lut[out[z]]
    return track_id, kept


def _records(tracks: _Tracks, labels: np.ndarray, kept: np.ndarray) -> list[StackObjectRecord]:
    from scipy import ndimage

    n = len(kept)
    volumes = np.zeros(n + 1, dtype=np.int64)
    n_slices = np.zeros(n + 1, dtype=np.int64)
    for z in range(labels.shape[0]):
        counts = np.bincount(labels[z].ravel(), minlength=n + 1)
        volumes += counts
        n_slices += counts > 0
    slices = ndimage.find_objects(labels, max_label=n)
    out = []
    for i, t in enumerate(kept, start=1):
        sl = slices[i - 1]
        count = max(1, tracks.count[t])
        out.append(
            StackObjectRecord(
                id=i,
                volume=int(volumes[i]),
                z_range=(sl[0].start, sl[0].stop),
                n_slices=int(n_slices[i]),
                bbox=(sl[0].start, sl[1].start, sl[2].start, sl[0].stop, sl[1].stop, sl[2].stop),
                predicted_iou=tracks.iou_sum[t] / count,
                stability_score=tracks.stab_sum[t] / count,
            )
        )
    return out


# ----------------------------------------------------------------------------- API


def _embedding_for(embeddings: Any, z: int) -> Any:
    """The precomputed embedding of slice ``z`` or None (compute it)."""
    if embeddings is None:
        return None
    if callable(embeddings):
        return embeddings(z)
    if isinstance(embeddings, Mapping):
        return embeddings.get(z)
    if (
        hasattr(embeddings, "__contains__")
        and hasattr(embeddings, "__getitem__")
        and not isinstance(embeddings, Sequence)
    ):
        if z not in embeddings:
            return None
        return embeddings[z]
    if isinstance(embeddings, Sequence):
        return embeddings[z] if z < len(embeddings) else None
    raise TypeError(
        f"embeddings must be a mapping z -> embedding, a sequence, or a callable z -> "
        f"embedding (or None), got {type(embeddings).__name__}"
    )


def _check_stack(stack: Any) -> tuple[int, ...]:
    shape = tuple(int(s) for s in getattr(stack, "shape", ()))
    ok = len(shape) == 3 or (len(shape) == 4 and shape[-1] <= 3)
    if not ok:
        raise ValueError(
            f"stack must be (Z, Y, X) or (Z, Y, X, C) with C <= 3, got shape {shape}; "
            "for one 2D image use segment_everything"
        )
    if shape[0] == 0:
        raise ValueError(f"stack has no slices (shape {shape})")
    return shape


def segment_everything_stack(
    stack: Any,
    predictor: Any = None,
    *,
    params: EverythingParams | Mapping[str, Any] | None = None,
    model: str | os.PathLike = "micro",
    contrast_limits: tuple[float, float] | None = None,
    embeddings: Any = None,
    progress: ProgressCallback | None = None,
    cancel: Any = None,
    **options: Any,
) -> EverythingStackResult:
    """Segment every object of a stack: everything mode on each slice, then linking in z.

    Slices are read one at a time (numpy, dask or zarr) and segmented with
    :func:`segment_everything` using the same contrast limits for all slices.
    Each new slice's objects are linked to the previous slice's objects by
    one-to-one overlap matching (Hungarian, IoU ``>= link_iou``); objects left
    unmatched are linked across up to ``max_gap`` missing slices to objects
    whose track ended there (closing gaps where the 2D pass missed an object);
    the rest start new objects. Objects spanning fewer than ``min_z_extent``
    slices are removed.

    Parameters
    ----------
    stack : ``(Z, Y, X)`` (or ``(Z, Y, X, C)``, C <= 3) numpy, dask or zarr array
    predictor : a :class:`~napari_sam.predictor.Predictor` or stand-in
    params : :class:`EverythingStackParams` (or :class:`EverythingParams`, or a
        mapping of fields); default: its defaults
    model : registry name or checkpoint path, used when ``predictor`` is None
    contrast_limits : ``(low, high)`` for every slice; default ``(0, 255)`` for
        uint8, else :func:`napari_sam.normalize.stack_intensity_range` (computed once)
    embeddings : precomputed slice embeddings: a mapping ``z -> embedding`` (used
        where ``z in embeddings``, e.g. an :class:`~napari_sam.store.EmbeddingStore`),
        a sequence, or a callable ``z -> embedding or None`` (e.g. the store's
        ``bound(...)`` view, which computes and saves missing slices)
    progress : ``callback(done, total)`` after each slice (``total`` = Z)
    cancel : ``threading.Event`` or callable; checked between slices and batches
    **options : fields of :class:`EverythingStackParams`: the linking
        (``min_z_extent``, ``link_iou``, ``max_gap``, ``fill_gaps``) and every
        option of :func:`segment_everything` (``points_per_side``,
        ``pred_iou_thresh``, ``min_area``, ...)

    Returns
    -------
    EverythingStackResult

    Raises
    ------
    TypeError, ValueError
        An unknown option (the valid ones are listed) or one out of range.
    Cancelled
        When ``cancel`` was set; nothing is returned.
    """
    shape = _check_stack(stack)
    for bad in ("image", "embedding"):
        if bad in options:
            raise TypeError(f"{bad!r} is not a parameter of segment_everything_stack")
    resolved = resolve(EverythingStackParams, params, options, caller="segment_everything_stack")
    predictor = make_predictor(model, predictor)
    check_cancel(cancel)
    limits = stack_contrast_limits(stack, contrast_limits)
    from napari_sam.normalize import validate_slice

    nz = shape[0]
    out = np.zeros(shape[:3], dtype=np.uint32)
    tracks = _Tracks()
    per_slice = []
    for z in range(nz):
        check_cancel(cancel)
        image = validate_slice(np.asarray(stack[z]))
        res = run_everything(
            image,
            predictor,
            resolved,
            contrast_limits=limits,
            embedding=_embedding_for(embeddings, z),
            cancel=cancel,
        )
        out[z] = res.labels
        per_slice.append(len(res.objects))
        _link_slice(tracks, out, z, res.objects, float(resolved.link_iou), int(resolved.max_gap))
        if progress is not None:
            progress(z + 1, nz)
    if resolved.fill_gaps:
        _fill_gaps(tracks, out)
    _, kept = _relabel(tracks, out, int(resolved.min_z_extent))
    objects = _records(tracks, out, kept)
    return EverythingStackResult(out, objects, limits, per_slice)
