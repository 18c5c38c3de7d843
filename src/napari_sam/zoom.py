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

from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np

from napari_sam.contract import Prediction
from napari_sam.tiled_predict import _paster, _shift_prompts, prompt_extent

#: Objects smaller than this many pixels of the model's input (the longest side
#: of their box, else of their positive clicks and best mask together) are
#: decoded again on a zoomed crop.
ZOOM_BELOW = 32

#: How many times more a zoomed crop is enlarged than the whole slice was.
ZOOM_FACTOR = 2.0

#: Most crops embedded in one encoder call.
ZOOM_BATCH = 16


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


def _touches_inner_edge(window: tuple[int, int, int, int], shape: tuple[int, int],
                        mask: np.ndarray) -> bool:
    r0, c0, r1, c1 = window
    return bool(
        (r0 > 0 and mask[0].any())
        or (c0 > 0 and mask[:, 0].any())
        or (r1 < shape[0] and mask[-1].any())
        or (c1 < shape[1] and mask[:, -1].any())
    )


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
    are in its frame (a tiled embedding's stay in the crop's).
    """
    from napari_sam.normalize import slice_mapping
    from napari_sam.tiling import TiledEmbedding

    embed_crops: Callable[[list[np.ndarray]], list[Any]] | None
    frame_logits = None
    if isinstance(embedding, TiledEmbedding):
        image, scale, embed_crops = embedding.image, 1.0, embedding.embed_fn
    elif getattr(embedding, "image", None) is not None:
        image, limits = slice_mapping(embedding.image, embedding.contrast_limits)
        scale = embedding.input_size[0] / embedding.original_size[0]
        embed_crops = partial(embed_batch, contrast_limits=limits)
        frame_logits = None if mask_prompt is None else partial(mask_prompt, embedding)
    else:
        return predictions
    if image is None or embed_crops is None:
        return predictions
    prompts = per_object_prompts(points, labels, boxes, len(predictions))
    return zoom_small(predictions, prompts, image, scale=scale, input_size=input_size,
                      decode=decode, embed_crops=embed_crops, multimask=multimask,
                      frame_logits=frame_logits)


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
            if not best.any() or _touches_inner_edge(window, shape, best):
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


def with_image(embedding: Any, image: np.ndarray, embed_batch: Callable[..., list[Any]]) -> Any:
    """``embedding`` with its slice, for embeddings read back from a store (they have none).

    An :class:`~napari_sam.predictor.Embedding` gets ``image``; a
    :class:`~napari_sam.tiling.TiledEmbedding` gets ``image`` mapped like its
    parts (:func:`napari_sam.normalize.slice_mapping` with its contrast
    limits) and an ``embed_fn`` from ``embed_batch(parts, contrast_limits=)``,
    so it can also embed missing tiles. Anything else, or an embedding that
    has its slice, is returned as it is.
    """
    from napari_sam.normalize import slice_mapping
    from napari_sam.predictor import Embedding
    from napari_sam.tiling import TiledEmbedding

    if getattr(embedding, "image", None) is not None:
        return embedding
    if isinstance(embedding, Embedding):
        return replace(embedding, image=np.asarray(image))
    if isinstance(embedding, TiledEmbedding):
        mapped, limits = slice_mapping(np.asarray(image), embedding.contrast_limits)
        return replace(embedding, image=mapped,
                       embed_fn=partial(embed_batch, contrast_limits=limits))
    return embedding


def per_object_prompts(
    points: Any, labels: Any, boxes: Any, n: int
) -> list[tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]]:
    """``predict_batch``'s prompt lists (checked) -> one ``(points, labels, box)`` per object.

    ``points`` ``(n, N, 2)`` or None, ``labels`` ``(n, N)`` or None (all
    positive), ``boxes`` ``(n, 4)`` or None; float64 ``(N, 2)`` points, int64
    ``(N,)`` labels, float64 ``(4,)`` boxes.
    """
    out = []
    for b in range(n):
        pts = lab = box = None
        if points is not None:
            pts = np.asarray(points[b], np.float64).reshape(-1, 2)
            lab = (np.ones(len(pts), np.int64) if labels is None
                   else np.asarray(labels[b], np.int64).ravel())
        if boxes is not None:
            box = np.asarray(boxes[b], np.float64).ravel()
        out.append((pts, lab, box))
    return out


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
