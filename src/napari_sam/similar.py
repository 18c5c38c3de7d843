""""Find all like this": objects of the same kind as a few exemplars.

Candidates come from everything mode (:func:`napari_sam.everything.segment_everything`
on a slice, :func:`~napari_sam.everything.segment_everything_stack` on a
stack); each is ranked by how much it resembles its nearest exemplar:

* **appearance in the model's embedding space**: the image embedding's
  feature map ``(C, h, w)`` averaged over the object's mask resized to the
  map (its pixels binned into the map's cells), compared by cosine
  similarity. A tiled embedding (large slices) gives the features of the
  tile that holds the object with most margin (native resolution), or of
  its overview (the whole slice resized) for objects larger than a tile,
  the same rule for exemplars and candidates;
* **size**: log area, distance to the exemplars' range;
* **intensity**: mean intensity inside the mask in units of the contrast
  window, distance to the exemplars' range.

The score is ``exp(-((d_emb / t_emb)**2 + (d_size / t_size)**2 + (d_int / t_int)**2) / 2)``
in ``(0, 1]`` with ``d_emb = 1 - cosine`` and the tolerances ``t``
(:data:`DEFAULT_TOLERANCES`, measured with the bundled ``micro`` model in
docs/everything.md, "Find all like this"). Candidates overlapping an
exemplar or an existing label by more than ``max_overlap`` of their area are
left out. Pure numpy/scipy: torch only through the predictor, no Qt or napari.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_THRESHOLD",
    "DEFAULT_TOLERANCES",
    "SimilarCandidate",
    "SimilarResult",
    "find_similar",
    "pooled_features",
]

#: Default score above which a candidate is proposed.
DEFAULT_THRESHOLD = 0.5
#: Default tolerances ``(embedding, size, intensity)``: 1 - cosine, log area, and
#: mean intensity in units of the contrast window.
DEFAULT_TOLERANCES = (0.2, 1.0, 0.2)
#: Default largest share of a candidate that may overlap exemplars or existing labels.
DEFAULT_MAX_OVERLAP = 0.2
#: An exemplar's slices used in a stack: those with at least this share of its
#: largest cross-section (its caps are not what the object looks like).
MIN_SECTION = 0.5


@dataclass(frozen=True)
class SimilarCandidate:
    """One candidate object and how it compares with the exemplars.

    Attributes
    ----------
    id : label value in :attr:`SimilarResult.labels`
    score : similarity in ``(0, 1]`` (see the module doc)
    area : pixels (voxels in a stack)
    bbox : ``(row_min, col_min, row_max, col_max)`` half-open (in a stack
        ``(z_min, row_min, col_min, z_max, row_max, col_max)``)
    cosine : embedding cosine similarity with the nearest exemplar (NaN when
        the predictor's embeddings have no feature map)
    size_distance : log-area distance to the exemplars' range (0 inside it)
    intensity_distance : mean-intensity distance to the exemplars' range (0 inside)
    """

    id: int
    score: float
    area: int
    bbox: tuple[int, ...]
    cosine: float
    size_distance: float
    intensity_distance: float


@dataclass
class SimilarResult:
    """What :func:`find_similar` returns.

    Attributes
    ----------
    labels : ``(H, W)`` (or ``(Z, Y, X)``) uint32: the candidates, ids ``1..N``
        in everything mode's order, 0 elsewhere (exemplars and candidates
        overlapping existing labels are left out)
    candidates : one :class:`SimilarCandidate` per id, in id order
    threshold : the score threshold of :attr:`selected`
    everything : the everything-mode result the candidates came from; pass
        it back as ``candidates=`` to rank against other exemplars without
        segmenting again
    excluded : candidates of ``everything`` left out for their overlap
    """

    labels: np.ndarray
    candidates: list[SimilarCandidate]
    threshold: float
    everything: Any = field(repr=False, default=None)
    excluded: int = 0

    @property
    def scores(self) -> np.ndarray:
        """``(N,)`` float scores, index ``i`` for id ``i + 1``."""
        return np.array([c.score for c in self.candidates], dtype=np.float64)

    @property
    def selected(self) -> np.ndarray:
        """``(N,)`` bool: the candidates scoring at or above :attr:`threshold`."""
        return self.scores >= self.threshold

    def labels_above(self, threshold: float | None = None) -> np.ndarray:
        """:attr:`labels` with only the candidates scoring ``>= threshold``
        (default :attr:`threshold`), ids unchanged (e.g. for a threshold slider)."""
        thr = self.threshold if threshold is None else float(threshold)
        keep = np.zeros(len(self.candidates) + 1, dtype=bool)
        keep[1:] = self.scores >= thr
        return np.where(keep[self.labels], self.labels, 0).astype(self.labels.dtype)


# ----------------------------------------------------------------------------- features


def _as_numpy(features: Any) -> np.ndarray:
    """A feature map (torch or numpy) as a float32 numpy array ``(C, h, w)``."""
    if hasattr(features, "detach"):
        features = features.detach().float().cpu().numpy()
    f = np.asarray(features, dtype=np.float32)
    return f[0] if f.ndim == 4 else f


def _has_features(embedding: Any) -> bool:
    from napari_sam.tiling import TiledEmbedding

    if isinstance(embedding, TiledEmbedding):
        return True
    return all(hasattr(embedding, a) for a in ("features", "input_size", "original_size"))


def _pool_plain(embedding: Any, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Mean feature vector over slice pixels ``(rows, cols)`` of a plain embedding.

    A pixel's centre maps into the model frame (scaled by ``input_size /
    original_size``); the feature map covers the padded square input of
    side ``max(input_size)``, so cell = frame coordinate * cells / side.
    """
    f = _as_numpy(embedding.features)
    c, gh, gw = f.shape
    (ih, iw), (oh, ow) = embedding.input_size, embedding.original_size
    side = float(max(ih, iw))
    gr = np.minimum(((rows + 0.5) * (ih / oh) * (gh / side)).astype(np.int64), gh - 1)
    gc = np.minimum(((cols + 0.5) * (iw / ow) * (gw / side)).astype(np.int64), gw - 1)
    weights = np.bincount(gr * gw + gc, minlength=gh * gw).astype(np.float32)
    return f.reshape(c, -1) @ weights / max(1.0, float(weights.sum()))


def pooled_features(embedding: Any, mask: np.ndarray) -> np.ndarray | None:
    """The embedding's features averaged over a ``(H, W)`` bool mask: ``(C,)`` float32.

    Plain embeddings pool their feature map; a
    :class:`~napari_sam.tiling.TiledEmbedding` the tile that holds the mask
    with most margin (:meth:`~napari_sam.tiling.TileGrid.route`), or the
    overview when the mask fits no tile's interior. None for an empty mask or
    an embedding without a feature map (stand-ins).
    """
    rows, cols = np.nonzero(np.asarray(mask, dtype=bool))
    return _pool_pixels(embedding, rows, cols)


def _pool_pixels(embedding: Any, rows: np.ndarray, cols: np.ndarray) -> np.ndarray | None:
    """:func:`pooled_features` of the pixels ``(rows, cols)``."""
    from napari_sam.tiling import TiledEmbedding

    if rows.size == 0 or not _has_features(embedding):
        return None
    if isinstance(embedding, TiledEmbedding):
        extent = (rows.min(), cols.min(), rows.max(), cols.max())
        index, margin = embedding.grid.route(extent)
        if margin >= 0:
            r0, c0, _, _ = embedding.grid.window(index)
            return _pool_plain(embedding.tile(index), rows - r0, cols - c0)
        return _pool_plain(embedding.overview(), rows, cols)
    return _pool_plain(embedding, rows, cols)


def _intensity(image: np.ndarray, limits: tuple[float, float]) -> np.ndarray:
    """``(H, W)`` float32 channel-mean intensity in units of the contrast window."""
    data = np.asarray(image, dtype=np.float32)
    if data.ndim == 3:
        data = data.mean(axis=-1)
    low, high = limits
    return (data - np.float32(low)) / np.float32(max(high - low, 1e-12))


@dataclass
class _Features:
    """Features of a set of objects (one row each)."""

    vectors: list[np.ndarray | None] = field(default_factory=list)
    log_area: list[float] = field(default_factory=list)
    intensity: list[float] = field(default_factory=list)

    def add(self, embedding, plane: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
        """Add the object of pixels ``(rows, cols)`` of a slice."""
        v = _pool_pixels(embedding, rows, cols)
        if v is not None:
            norm = float(np.linalg.norm(v))
            v = v / norm if norm > 0 else v
        self.vectors.append(v)
        self.log_area.append(float(np.log(rows.size)))
        self.intensity.append(float(plane[rows, cols].mean()))

    def add_mask(self, embedding, plane: np.ndarray, mask: np.ndarray) -> None:
        """Add the object of a ``(H, W)`` bool mask."""
        self.add(embedding, plane, *np.nonzero(mask))


def _range_distance(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    lo, hi = float(reference.min()), float(reference.max())
    return np.maximum(0.0, np.maximum(lo - values, values - hi))


def _compare(cands: _Features, exemplars: _Features, tolerances) -> tuple[np.ndarray, ...]:
    """``(score, cosine, size distance, intensity distance)`` per candidate."""
    t_emb, t_size, t_int = (float(t) for t in tolerances)
    n = len(cands.log_area)
    cosine = np.full(n, np.nan)
    ex = [v for v in exemplars.vectors if v is not None]
    if ex:
        ex_mat = np.stack(ex)
        for i, v in enumerate(cands.vectors):
            if v is not None:
                cosine[i] = float(np.max(ex_mat @ v))
    d_emb = np.where(np.isnan(cosine), 0.0, 1.0 - cosine)
    d_size = _range_distance(np.asarray(cands.log_area), np.asarray(exemplars.log_area))
    d_int = _range_distance(np.asarray(cands.intensity), np.asarray(exemplars.intensity))
    z = (d_emb / t_emb) ** 2 + (d_size / t_size) ** 2 + (d_int / t_int) ** 2
    return np.exp(-0.5 * z), cosine, d_size, d_int


# ----------------------------------------------------------------------------- inputs


def _exemplar_list(exemplar_masks: Any, shape: tuple[int, ...], what: str) -> list[np.ndarray]:
    """Exemplars as bool masks of ``shape``: one mask, a stack/list of them, or int labels."""
    arr = exemplar_masks
    if isinstance(arr, (list, tuple)):
        masks = [np.asarray(m) for m in arr]
    else:
        arr = np.asarray(arr)
        if arr.shape == shape and arr.dtype.kind in "iu":
            ids = [int(i) for i in np.unique(arr) if i != 0]
            if not ids:
                raise ValueError(
                    f"the exemplar labels are empty (all 0); commit the objects to use as "
                    f"exemplars first, or pass their {what} bool masks"
                )
            masks = [arr == i for i in ids]
        elif arr.shape == shape:
            masks = [arr]
        elif arr.ndim == len(shape) + 1 and arr.shape[1:] == shape:
            masks = list(arr)
        else:
            raise ValueError(
                f"exemplar_masks has shape {arr.shape}; expected {what} masks of shape "
                f"{shape}: one mask, (K, *shape) masks, a list of them, or integer labels "
                "(each id one exemplar)"
            )
    if not masks:
        raise ValueError("no exemplar given: pass at least one mask of an object of the kind")
    out = []
    for k, m in enumerate(masks):
        if m.shape != shape:
            raise ValueError(f"exemplar {k} has shape {m.shape}, expected {what} shape {shape}")
        if m.dtype != bool:
            if m.dtype.kind not in "biuf" or not np.isin(m, (0, 1)).all():
                raise ValueError(
                    f"exemplar {k} is not a bool mask (values {np.unique(m)[:5]}); pass "
                    "labels == label_id"
                )
            m = m.astype(bool)
        if not m.any():
            raise ValueError(
                f"exemplar {k} is empty (no pixel); the label it came from has no pixels "
                f"here: choose a committed object"
            )
        out.append(m)
    return out


def _check_existing(labels: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    if labels is None:
        return None
    arr = np.asarray(labels)
    if arr.shape != shape:
        raise ValueError(f"labels has shape {arr.shape}; expected the image's {shape}")
    return arr != 0


def _keep_candidates(
    cand_labels: np.ndarray, taken: np.ndarray, max_overlap: float
) -> tuple[np.ndarray, int]:
    """Ids of candidates overlapping ``taken`` by at most ``max_overlap`` of their
    area, and how many were dropped."""
    n = int(cand_labels.max()) if cand_labels.size else 0
    area = np.bincount(cand_labels.ravel(), minlength=n + 1)
    covered = np.bincount(cand_labels[taken].ravel(), minlength=n + 1)
    ids = np.flatnonzero(area > 0)
    ids = ids[ids > 0]
    keep = ids[covered[ids] <= max_overlap * area[ids]]
    return keep, len(ids) - len(keep)


def _relabel(cand_labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    lut = np.zeros(int(cand_labels.max()) + 1 if cand_labels.size else 1, dtype=np.uint32)
    lut[keep] = np.arange(1, len(keep) + 1, dtype=np.uint32)
    return lut[cand_labels]


def _bbox(mask_slices) -> tuple[int, ...]:
    return tuple(s.start for s in mask_slices) + tuple(s.stop for s in mask_slices)


def _check_options(threshold, tolerances, max_overlap) -> tuple[float, tuple, float]:
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    tol = tuple(float(t) for t in tolerances)
    if len(tol) != 3 or min(tol) <= 0:
        raise ValueError(
            f"tolerances must be 3 positive numbers (embedding, size, intensity), got "
            f"{tolerances!r}"
        )
    if not 0.0 <= float(max_overlap) <= 1.0:
        raise ValueError(f"max_overlap must be in [0, 1], got {max_overlap!r}")
    return float(threshold), tol, float(max_overlap)


# ----------------------------------------------------------------------------- API


def find_similar(
    image: Any,
    exemplar_masks: Any,
    predictor: Any = None,
    *,
    model: str = "micro",
    contrast_limits: tuple[float, float] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    stack: bool = False,
    labels: Any = None,
    candidates: Any = None,
    embedding: Any = None,
    embeddings: Any = None,
    tolerances: Sequence[float] = DEFAULT_TOLERANCES,
    max_overlap: float = DEFAULT_MAX_OVERLAP,
    progress: Callable[[int, int], None] | None = None,
    cancel: Any = None,
    **everything_options: Any,
) -> SimilarResult:
    """Find the objects that look like the exemplars, ranked by similarity.

    Parameters
    ----------
    image : ``(H, W)`` or ``(H, W, C)`` slice; with ``stack=True`` a
        ``(Z, Y, X)`` (or ``(Z, Y, X, C)``) numpy, dask or zarr stack
    exemplar_masks : objects of the kind to find, on ``image``: one bool
        mask of the image's shape (``(H, W)``, or ``(Z, Y, X)`` for a stack),
        several (``(K, ...)`` or a list), or integer labels whose ids are
        the exemplars (e.g. ``np.isin(labels, ids) * labels``)
    predictor : :class:`~napari_sam.predictor.Predictor` (or a stand-in);
        None: ``Predictor(model)``
    model : registry name or checkpoint path when ``predictor`` is None
    contrast_limits : ``(low, high)`` for the embedding, everything mode and
        the intensity feature; default as everything mode (``(0, 255)`` for
        uint8, else robust percentiles of the slice, or of the stack)
    threshold : score of the candidates proposed (:attr:`SimilarResult.selected`)
    stack : candidates on every slice of a stack, linked through z by
        :func:`~napari_sam.everything.segment_everything_stack`; a candidate's
        score is the median of its slices' scores against the exemplars'
        cross-sections (those of at least half their largest area)
    labels : existing labels of the image's shape; candidates overlapping
        them (or an exemplar) by more than ``max_overlap`` of their area are
        left out
    candidates : an :class:`~napari_sam.everything.EverythingResult` (or
        ``EverythingStackResult``) of this image, e.g. ``result.everything``
        of an earlier call: everything mode is not run again
    embedding : the slice's embedding from ``predictor.embed`` with the same
        contrast limits (2D; plain or tiled), e.g. the annotator's cached one
    embeddings : stack: ``z -> embedding`` mapping, sequence or callable (as
        :func:`~napari_sam.everything.segment_everything_stack`); missing
        slices are embedded and kept until the call returns
    tolerances : ``(embedding, size, intensity)`` scales of the score
        (:data:`DEFAULT_TOLERANCES`)
    max_overlap : see ``labels``
    progress, cancel : passed to everything mode (``Cancelled`` is raised when
        ``cancel`` is set)
    **everything_options : options of
        :func:`~napari_sam.everything.segment_everything` (``points_per_side``, ...)

    Returns
    -------
    SimilarResult

    Raises
    ------
    ValueError
        Exemplars of the wrong shape, empty, or not masks; a stack without
        ``stack=True`` (or a slice with it); options out of range.
    """
    from napari_sam.everything._core import make_predictor, resolve_contrast_limits

    threshold, tolerances, max_overlap = _check_options(threshold, tolerances, max_overlap)
    predictor = make_predictor(model, predictor)
    if stack:
        from napari_sam.similar_stack import find_similar_stack

        return find_similar_stack(
            image, exemplar_masks, predictor, contrast_limits=contrast_limits,
            threshold=threshold, labels=labels, candidates=candidates, embeddings=embeddings,
            tolerances=tolerances, max_overlap=max_overlap, progress=progress, cancel=cancel,
            **everything_options,
        )
    from napari_sam.everything import segment_everything
    from napari_sam.normalize import validate_slice

    if getattr(image, "ndim", 2) > 2 and np.shape(image)[-1] > 3:
        raise ValueError(
            f"image has shape {np.shape(image)}: a stack; pass one slice (image[z]) or "
            "stack=True"
        )
    image = validate_slice(np.asarray(image))
    shape = image.shape[:2]
    exemplars = _exemplar_list(exemplar_masks, shape, "(H, W)")
    existing = _check_existing(labels, shape)
    limits = resolve_contrast_limits(image, contrast_limits)
    if embedding is None:
        embedding = predictor.embed(image, contrast_limits=limits)
    if candidates is None:
        candidates = segment_everything(
            image, predictor=predictor, contrast_limits=limits, embedding=embedding,
            progress=progress, cancel=cancel, **everything_options,
        )
    cand_labels = np.asarray(candidates.labels)
    if cand_labels.shape != shape:
        raise ValueError(
            f"candidates have labels of shape {cand_labels.shape}, not the image's {shape}; "
            "pass the everything result of this image"
        )
    taken = np.logical_or.reduce(exemplars)
    if existing is not None:
        taken |= existing
    keep, excluded = _keep_candidates(cand_labels, taken, max_overlap)
    out = _relabel(cand_labels, keep)
    plane = _intensity(image, limits)
    ex_feats, cand_feats = _Features(), _Features()
    for m in exemplars:
        ex_feats.add_mask(embedding, plane, m)
    boxes, areas = _objects(out)
    for i, sl in enumerate(boxes, start=1):
        rows, cols = np.nonzero(out[sl] == i)
        cand_feats.add(embedding, plane, rows + sl[0].start, cols + sl[1].start)
    score, cosine, d_size, d_int = _compare(cand_feats, ex_feats, tolerances)
    return SimilarResult(
        out, _records(boxes, areas, score, cosine, d_size, d_int), threshold, candidates,
        excluded,
    )


def _objects(labels: np.ndarray) -> tuple[list, np.ndarray]:
    """Bounding slices of ids ``1..N`` (all present) and their areas."""
    from scipy import ndimage as ndi

    n = int(labels.max()) if labels.size else 0
    return ndi.find_objects(labels, max_label=n), np.bincount(labels.ravel(), minlength=n + 1)


def _records(boxes, areas, score, cosine, d_size, d_int) -> list[SimilarCandidate]:
    return [
        SimilarCandidate(
            id=i + 1,
            score=float(score[i]),
            area=int(areas[i + 1]),
            bbox=_bbox(boxes[i]),
            cosine=float(cosine[i]),
            size_distance=float(d_size[i]),
            intensity_distance=float(d_int[i]),
        )
        for i in range(len(boxes))
    ]
