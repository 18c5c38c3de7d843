"""Small objects decoded again on an enlarged crop of the slice ("zoom").

A model sees a slice at a fixed input size (256 px for the bundled
``micro``): an object a few pixels across in the model's input covers one or
two embedding tokens (8 px each for ``micro``) and its mask comes out blobby
or empty. :func:`zoom_small` takes the predictions of the whole-slice (or
tiled) decoding and, for each object whose extent in the model's input is
below :data:`ZOOM_BELOW` pixels (its box, else its clicks and its mask),
crops a window around it, embeds the crop
resized to the model input (so enlarged :data:`ZOOM_FACTOR` times more than
the slice), decodes the object's prompts there, and keeps the zoomed
prediction when

* its best mask is not empty and does not touch an edge of the crop that
  lies inside the slice (the object would go on beyond the crop), and
* its best predicted IoU is at least the whole-slice prediction's,

the same rule as the tiling layer's choice between a tile and the overview
(:mod:`napari_sam.tiling`). Measured in docs/bundled_model.md ("Zoom into
small objects").

Crops are normalized with the whole slice's intensity mapping
(:func:`napari_sam.normalize.slice_mapping`), so a dim object is not
brightened by a crop of its own. Objects with a mask prompt are not zoomed
(a mask prompt lives in the whole slice's frame). A zoomed prediction's
``logits`` are made from its masks in the whole slice's frame (+/- 8, as for
a slice-shaped mask prompt), so they still serve as the mask prompt of a
later call; on a tiled embedding they stay in the crop's frame (as a tile's
do: use slice-shaped masks as mask prompts there).

Coordinates are napari's ``(row, col)`` slice pixels. Imports neither torch
nor Qt: :class:`napari_sam.predictor.Predictor` hands in its decoder and
encoder as callables.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np

from napari_sam.contract import Prediction
from napari_sam.tiled_predict import (
    _paster,
    _shift_prompts,
    per_object_prompts,
    prompt_extent,
)
from napari_sam.tiling import touches_inner_edge

#: Objects smaller than this many pixels of the model's input (the longest side
#: of their box, else of their positive clicks and best mask together) are
#: decoded again on a zoomed crop.
ZOOM_BELOW = 32

#: How many times more a zoomed crop is enlarged than the whole slice was.
ZOOM_FACTOR = 2.0

#: Most crops embedded in one encoder call.
ZOOM_BATCH = 16


class Zooming:
    """The zoom's switches of :class:`~napari_sam.predictor.Predictor` (a mixin).

    Needs ``zoom`` (``"auto"``/``"off"``), ``image_size``, ``_thread`` (a
    ``threading.local``) and ``embed_batch``.
    """

    zoom: str
    image_size: int
    _thread: threading.local
    embed_batch: Callable[..., list[Any]]

    @property
    def zooms(self) -> bool:
        """Whether small objects are decoded again on zoomed crops (see ``zoom``) in
        this thread (not inside :meth:`quick`)."""
        return self._zoom_on and not getattr(self._thread, "quick", False)

    @property
    def _zoom_on(self) -> bool:
        return self.zoom == "auto" and self.image_size <= 512

    @contextlib.contextmanager
    def quick(self) -> Iterator[None]:
        """Decoding in this thread without the zoom (hover previews on the GUI thread)."""
        before = getattr(self._thread, "quick", False)
        self._thread.quick = True
        try:
            yield
        finally:
            self._thread.quick = before

    def with_image(self, embedding: Any, image: np.ndarray) -> Any:
        """``embedding`` holding its slice ``image`` (one read back from a store has none),
        so that small objects can be zoomed into; unchanged when this predictor does not zoom."""
        return with_image(embedding, image, self.embed_batch) if self._zoom_on else embedding


def zoom_window(
    extent: Sequence[float], shape: tuple[int, int], side: int
) -> tuple[int, int, int, int] | None:
    """``(row_min, col_min, row_max, col_max)`` (max exclusive) of a crop around ``extent``.

    A ``side`` x ``side`` window centred on ``extent`` (inclusive
    ``(row_min, col_min, row_max, col_max)``), shifted inside the slice and
    clipped to it; None when it would cover the whole slice (no zoom).
    """
    h, w = shape
    if side >= h and side >= w:
        return None
    centre = ((extent[0] + extent[2]) / 2.0, (extent[1] + extent[3]) / 2.0)
    window = []
    for c, length in zip(centre, (h, w)):
        n = min(side, length)
        start = round(c + 0.5 - n / 2.0)
        window.append(max(0, min(start, length - n)))
    r0, c0 = window
    return r0, c0, min(r0 + side, h), min(c0 + side, w)


def zoom_predictions(
    embedding: Any,
    predictions: list[Prediction],
    points: Any,
    labels: Any,
    boxes: Any,
    *,
    input_size: int,
    decode: Callable[..., list[Prediction]],
    embed_batch: Callable[..., list[Any]],
    mask_prompt: Callable[[Any, np.ndarray], np.ndarray] | None = None,
    multimask: bool = True,
    cache: CropCache | None = None,
) -> list[Prediction]:
    """:func:`zoom_small` on the predictions of a ``predict_batch`` call.

    ``embedding`` is a :class:`~napari_sam.predictor.Embedding` holding its
    slice (its ``image``; without one the predictions are returned as they
    are) or a :class:`~napari_sam.tiling.TiledEmbedding` (its tiles are
    decoded at native scale; crops are embedded with its ``embed_fn``);
    ``points``, ``labels``, ``boxes`` are the call's prompt lists (no mask
    prompts); ``embed_batch(crops, contrast_limits=)`` embeds crops;
    ``mask_prompt(embedding, mask)`` turns a slice-shaped mask into low-res
    logits of an ordinary embedding, so that zoomed predictions' ``logits``
    are in its frame (a tiled embedding's stay in the crop's); ``cache``
    keeps crop embeddings for the next call on the same embedding. The
    slice's intensity mapping is computed only when some object is small.
    """
    from napari_sam.normalize import slice_mapping
    from napari_sam.tiling import TiledEmbedding

    tiled = isinstance(embedding, TiledEmbedding)
    if getattr(embedding, "image", None) is None or (tiled and embedding.embed_fn is None):
        return predictions
    h, w = embedding.original_size
    scale = 1.0 if tiled else max(embedding.input_size) / max(h, w)
    prompts = per_object_prompts(points, labels, boxes, len(predictions))
    jobs = plan_zoom(predictions, prompts, (int(h), int(w)), scale=scale, input_size=input_size)
    if not jobs:
        return predictions
    embed_crops: Callable[[list[np.ndarray]], list[Any]]
    frame_logits = None
    if tiled:
        image, embed_crops = embedding.image, embedding.embed_fn
    else:
        image, limits = slice_mapping(embedding.image, embedding.contrast_limits)
        embed_crops = partial(embed_batch, contrast_limits=limits)
        frame_logits = None if mask_prompt is None else partial(mask_prompt, embedding)
    if cache is not None:
        embed_crops = partial(cache.embed, embedding, embed_crops)
    return run_zoom(predictions, jobs, image, decode=decode, embed_crops=embed_crops,
                    multimask=multimask, frame_logits=frame_logits)


def zoom_small(
    predictions: list[Prediction],
    prompts: Sequence[tuple[Any, Any, Any]],
    image: np.ndarray,
    *,
    scale: float,
    input_size: int,
    decode: Callable[..., list[Prediction]],
    embed_crops: Callable[[list[np.ndarray]], list[Any]],
    multimask: bool = True,
    below: float = ZOOM_BELOW,
    factor: float = ZOOM_FACTOR,
    frame_logits: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[Prediction]:
    """``predictions`` with small objects replaced by their zoomed predictions.

    Parameters
    ----------
    predictions : one per object, masks at the slice size (``(H, W)``)
    prompts : one ``(points (N, 2), labels (N,), box (4,) or None)`` per object,
        ``(row, col)`` slice pixels (points may be None)
    image : the slice ``(H, W)`` or ``(H, W, C)``, as ``embed_crops`` expects it
    scale : model-input pixels per slice pixel of the decoding that made
        ``predictions`` (``input_size / max(H, W)``, or 1 for native tiles)
    input_size : the model's input size (crops are resized to it)
    decode : the whole-slice decoder, ``decode(embedding, points=, labels=,
        boxes=, multimask=)`` -> predictions
    embed_crops : ``crops -> embeddings``, with the whole slice's intensity
        mapping
    multimask : passed to ``decode``
    below, factor : see :data:`ZOOM_BELOW`, :data:`ZOOM_FACTOR`
    frame_logits : ``(H, W)`` mask -> low-res logits of the whole slice's frame,
        for the zoomed predictions' ``logits`` (None: the crop's logits)

    Returns
    -------
    list of Prediction
        The same objects in the same order; a zoomed prediction's masks are
        pasted into the slice (on access when ``frame_logits`` is None).
    """
    shape = (int(image.shape[0]), int(image.shape[1]))
    jobs = plan_zoom(predictions, prompts, shape, scale=scale, input_size=input_size,
                     below=below, factor=factor)
    return run_zoom(predictions, jobs, image, decode=decode, embed_crops=embed_crops,
                    multimask=multimask, frame_logits=frame_logits)


def plan_zoom(
    predictions: list[Prediction],
    prompts: Sequence[tuple[Any, Any, Any]],
    shape: tuple[int, int],
    *,
    scale: float,
    input_size: int,
    below: float = ZOOM_BELOW,
    factor: float = ZOOM_FACTOR,
) -> list[tuple[int, tuple[int, int, int, int], tuple]]:
    """The zoom jobs of :func:`zoom_small`: ``(object, crop window, prompts in the crop)``."""
    side = max(16, round(input_size / (scale * factor)))
    jobs = []
    for b, (pred, (pts, lab, box)) in enumerate(zip(predictions, prompts)):
        extent = _object_extent(shape, pred, pts, lab, box)
        if extent is None:
            continue
        longest = max(extent[2] - extent[0], extent[3] - extent[1]) + 1
        if longest * scale >= below:
            continue
        window = zoom_window(extent, shape, side)
        if window is None:
            continue
        shifted = _shift_prompts(window, pts, lab, box, None)
        if shifted is not None:
            jobs.append((b, window, shifted))
    return jobs


def run_zoom(
    predictions: list[Prediction],
    jobs: list[tuple[int, tuple[int, int, int, int], tuple]],
    image: np.ndarray,
    *,
    decode: Callable[..., list[Prediction]],
    embed_crops: Callable[[list[np.ndarray]], list[Any]],
    multimask: bool = True,
    frame_logits: Callable[[np.ndarray], np.ndarray] | None = None,
) -> list[Prediction]:
    """Carry out the jobs of :func:`plan_zoom` (see :func:`zoom_small`)."""
    shape = (int(image.shape[0]), int(image.shape[1]))
    out = list(predictions)
    for start in range(0, len(jobs), ZOOM_BATCH):
        chunk = jobs[start : start + ZOOM_BATCH]
        crops = [image[r0:r1, c0:c1] for _, (r0, c0, r1, c1), _ in chunk]
        for (b, window, (pts, lab, box, _)), emb in zip(chunk, embed_crops(crops)):
            zoomed = decode(
                emb,
                points=None if pts is None else [pts],
                labels=None if pts is None else [lab],
                boxes=None if box is None else [box],
                multimask=multimask,
            )[0]
            best = zoomed.best_mask
            if not best.any() or touches_inner_edge(window, shape, best):
                continue
            if float(np.max(zoomed.scores)) < float(np.max(out[b].scores)):
                continue
            paste = _paster(zoomed, window, shape)
            if frame_logits is None:
                out[b] = Prediction(None, zoomed.scores, zoomed.logits, upscaler=paste)
            else:  # logits usable as a mask prompt on the whole slice's embedding
                masks = paste(list(range(len(zoomed.scores))))
                logits = np.stack([frame_logits(m) for m in masks])
                out[b] = Prediction(masks, zoomed.scores, logits)
    return out


class CropCache:
    """Embeddings of zoomed crops, by slice embedding and crop (least recently used first out).

    Re-decoding the objects of a slice (every prompt edit decodes them all)
    then embeds only the crops of new or changed objects. Holds the slice
    embeddings weakly: an entry dies with its embedding's last reference.
    """

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._items: OrderedDict[tuple[int, bytes], tuple[Any, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def embed(self, owner: Any, embed_crops: Callable[[list[np.ndarray]], list[Any]],
              crops: list[np.ndarray]) -> list[Any]:
        """``embed_crops(crops)``, taking the crops of ``owner`` embedded before from here."""
        keys = [(id(owner), _crop_key(c)) for c in crops]
        found: list[Any] = [None] * len(crops)
        with self._lock:
            for i, key in enumerate(keys):
                item = self._items.get(key)
                if item is not None and item[0]() is owner:
                    self._items.move_to_end(key)
                    found[i] = item[1]
        missing = [i for i, f in enumerate(found) if f is None]
        if missing:
            for i, emb in zip(missing, embed_crops([crops[i] for i in missing])):
                found[i] = emb
            with self._lock:
                for i in missing:
                    self._items[keys[i]] = (weakref.ref(owner), found[i])
                    self._items.move_to_end(keys[i])
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return found


def _crop_key(crop: np.ndarray) -> bytes:
    """A crop's identity: its place in the slice is not known here, its pixels are."""
    return hashlib.blake2b(np.ascontiguousarray(crop).tobytes(), digest_size=16).digest()


def with_image(embedding: Any, image: np.ndarray, embed_batch: Callable[..., list[Any]]) -> Any:
    """``embedding`` with its slice, for embeddings read back from a store (they have none).

    An :class:`~napari_sam.predictor.Embedding` gets ``image``; a
    :class:`~napari_sam.tiling.TiledEmbedding` gets ``image`` mapped like its
    parts (:func:`napari_sam.normalize.slice_mapping` with its contrast
    limits) and an ``embed_fn`` from ``embed_batch(parts, contrast_limits=)``,
    so it can also embed missing tiles. Anything else, an embedding that has
    its slice, or an ``image`` of another shape than the embedding's slice is
    returned as it is.
    """
    from napari_sam.normalize import slice_mapping
    from napari_sam.predictor import Embedding
    from napari_sam.tiling import TiledEmbedding

    image = np.asarray(image)
    size = getattr(embedding, "original_size", None)
    if getattr(embedding, "image", None) is not None or size is None:
        return embedding
    if tuple(image.shape[:2]) != tuple(size):  # not this embedding's slice
        return embedding
    if isinstance(embedding, Embedding):
        return replace(embedding, image=image)
    if isinstance(embedding, TiledEmbedding):
        mapped, limits = slice_mapping(image, embedding.contrast_limits)
        return replace(embedding, image=mapped,
                       embed_fn=partial(embed_batch, contrast_limits=limits))
    return embedding


def _object_extent(
    shape: tuple[int, int], pred: Prediction, pts: Any, lab: Any, box: Any
) -> tuple[float, float, float, float] | None:
    """An object's extent (inclusive pixels): its box (and positive points) when it has a
    box, which says how large the object is; else its positive points and best mask."""
    spans = []
    prompted = prompt_extent(shape, pts, lab, box, None)
    if prompted is not None:
        spans.append(prompted)
    if box is not None:
        return prompted
    rows = np.flatnonzero(pred.best_mask.any(axis=1))
    if rows.size:
        cols = np.flatnonzero(pred.best_mask.any(axis=0))
        spans.append((float(rows[0]), float(cols[0]), float(rows[-1]), float(cols[-1])))
    if not spans:
        return None
    a = np.array(spans)
    return float(a[:, 0].min()), float(a[:, 1].min()), float(a[:, 2].max()), float(a[:, 3].max())
