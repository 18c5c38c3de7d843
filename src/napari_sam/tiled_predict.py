"""Decoding on a :class:`~napari_sam.tiling.TiledEmbedding`: the other half of the tiling layer.

:func:`predict_tiled` routes each object to the tile that holds its prompts
with the widest margin, decodes it there (prompts shifted into the tile's
frame) and on the overview with the predictor's whole-slice decoder, and
keeps the better prediction, its tile masks pasted back at the slice's size.
See :mod:`napari_sam.tiling` for the whole picture. Imports neither torch nor Qt.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam.contract import Prediction

if TYPE_CHECKING:  # pragma: no cover
    from napari_sam.tiling import TiledEmbedding


def prompt_extent(
    shape: tuple[int, int],
    points: np.ndarray | None,
    labels: np.ndarray | None,
    box: np.ndarray | None,
    mask: np.ndarray | None,
) -> tuple[float, float, float, float] | None:
    """``(row_min, col_min, row_max, col_max)`` spanned by an object's positive prompts.

    Positive points, the box and a slice-shaped mask count; negative points
    count only when nothing else is given. None when the prompts span nothing.
    """
    spans: list[np.ndarray] = []
    if points is not None and len(points):
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        lab = np.ones(len(pts), bool) if labels is None else np.asarray(labels).ravel() == 1
        if lab.any():
            spans.append(pts[lab])
    if box is not None:
        b = np.asarray(box, dtype=np.float64).ravel()
        spans.append(b.reshape(2, 2))
    if mask is not None:
        rows, cols = np.nonzero(mask)
        if rows.size:
            spans.append(np.array([[rows.min(), cols.min()], [rows.max(), cols.max()]], float))
    if not spans and points is not None and len(points):
        spans.append(np.asarray(points, dtype=np.float64).reshape(-1, 2))
    if not spans:
        return None
    allp = np.concatenate(spans)
    lo = np.clip(allp.min(axis=0), 0, [shape[0] - 1, shape[1] - 1])
    hi = np.clip(allp.max(axis=0), 0, [shape[0] - 1, shape[1] - 1])
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


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


def _shift_prompts(
    window: tuple[int, int, int, int],
    points: np.ndarray | None,
    labels: np.ndarray | None,
    box: np.ndarray | None,
    mask: np.ndarray | None,
) -> tuple | None:
    """An object's prompts in the frame of a tile; None when nothing usable falls inside.

    Points outside the tile are dropped (they are far from the object);
    the box is clipped to the tile; a slice-shaped mask is cropped.
    """
    r0, c0, r1, c1 = window
    origin = np.array([r0, c0], dtype=np.float64)
    pts = lab = None
    if points is not None and len(points):
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2) - origin
        lb = np.ones(len(p), np.int64) if labels is None else np.asarray(labels).ravel()
        inside = (p[:, 0] >= 0) & (p[:, 0] <= r1 - r0 - 1) & (p[:, 1] >= 0)
        inside &= p[:, 1] <= c1 - c0 - 1
        if inside.any():
            pts, lab = p[inside], lb[inside]
    bx = None
    if box is not None:
        b = np.asarray(box, dtype=np.float64).ravel() - np.r_[origin, origin]
        bx = np.clip(b, 0, [r1 - r0 - 1, c1 - c0 - 1, r1 - r0 - 1, c1 - c0 - 1])
        if bx[2] <= bx[0] or bx[3] <= bx[1]:
            bx = None
    mk = None if mask is None else np.asarray(mask)[r0:r1, c0:c1]
    has_positive = (lab is not None and (lab == 1).any()) or bx is not None
    has_positive = has_positive or (mk is not None and bool(mk.any()))
    if not has_positive:
        return None
    return pts, lab, bx, mk


def _check_mask_prompt(emb: TiledEmbedding, mask: Any) -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask)
    if m.shape != tuple(emb.original_size):
        raise ValueError(
            f"mask prompt has shape {m.shape}; a tiled embedding (slice "
            f"{emb.original_size[0]}x{emb.original_size[1]}, {emb.n_tiles} tiles) needs a "
            "mask of the slice's shape, not low-res logits"
        )
    return m.astype(bool) if m.dtype != bool else m


#: A whole-slice decoder: ``decode(embedding, points=, labels=, boxes=, masks=, multimask=)``
#: -> one :class:`~napari_sam.contract.Prediction` per object (a ``predict_batch``).
Decode = Callable[..., list[Any]]


def _decode_groups(decode: Decode, embedding_of: Callable[[Any], Any], jobs: dict,
                   multimask: bool) -> dict:
    """Decode objects grouped by embedding and prompt kind: ``{object: (key, Prediction)}``.

    ``jobs`` maps ``(key, n_points, has_box, has_mask)`` to a list of
    ``(object index, points, labels, box, mask)``; ``embedding_of(key)`` gives
    the embedding of group key ``key``.
    """
    out = {}
    for (key, n_pts, has_box, has_mask), members in jobs.items():
        preds = decode(
            embedding_of(key),
            points=[m[1] for m in members] if n_pts else None,
            labels=[m[2] for m in members] if n_pts else None,
            boxes=[m[3] for m in members] if has_box else None,
            masks=[m[4] for m in members] if has_mask else None,
            multimask=multimask,
        )
        for m, pred in zip(members, preds):
            out[m[0]] = (key, pred)
    return out


def _paster(
    pred: Prediction, window: tuple[int, int, int, int], shape: tuple[int, int]
) -> Callable[[list[int]], np.ndarray]:
    """Upscaler of a stitched prediction: tile masks pasted into slice-sized arrays on demand."""
    r0, c0, r1, c1 = window

    def paste(indices: list[int]) -> np.ndarray:
        full = np.zeros((len(indices), *shape), dtype=bool)
        for k, i in enumerate(indices):
            full[k, r0:r1, c0:c1] = pred.mask(i)
        return full

    return paste


def _add_job(jobs: dict, key: Any, index: int, pts: Any, lab: Any, box: Any, mask: Any) -> None:
    n_pts = 0 if pts is None else len(pts)
    group = (key, n_pts, box is not None, mask is not None)
    jobs.setdefault(group, []).append((index, pts, lab, box, mask))


def predict_tiled(
    decode: Decode,
    embedding: TiledEmbedding,
    points: list | None,
    labels: list | None,
    boxes: list | None,
    masks: list | None,
    multimask: bool,
) -> list:
    """Predictions for B objects on a :class:`TiledEmbedding`, masks at the slice's size.

    ``decode`` is the predictor's whole-slice decoder (:data:`Decode`); it
    gets the tiles' and the overview's embeddings. Each object is decoded on
    the tile that best contains its prompts (see :meth:`TileGrid.route`;
    objects sharing a tile and a prompt kind are decoded in one batch) and
    its masks are pasted into the slice. Every object is also decoded on the
    overview (the whole slice resized), and the prediction with the higher
    best predicted IoU is kept: the tile wins for objects that shrink too
    much in the overview, the overview for objects too large for the model
    at native resolution (measured in docs/benchmarks.md, "Tiles or
    overview"). When the prompts fit no tile, or the tile's best mask touches
    an inner tile edge, only the overview's prediction is used. The returned
    predictions' ``logits`` are in the frame of the embedding that produced
    them; use slice-shaped masks as mask prompts on tiled embeddings.
    """
    (bsz,) = {len(x) for x in (points, boxes, masks) if x is not None}
    h, w = embedding.original_size
    shape = (int(h), int(w))
    grid = embedding.grid
    prompts = [
        (pts, lab, box, None if masks is None else _check_mask_prompt(embedding, masks[b]))
        for b, (pts, lab, box) in enumerate(per_object_prompts(points, labels, boxes, bsz))
    ]

    tile_jobs: dict = {}
    for b, (pts, lab, box, mask) in enumerate(prompts):
        extent = prompt_extent(shape, pts, lab, box, mask)
        if extent is None:
            continue
        index, margin = grid.route(extent)
        shifted = _shift_prompts(grid.window(index), pts, lab, box, mask) if margin >= 0 else None
        if shifted is not None:
            _add_job(tile_jobs, index, b, *shifted)
    results: dict = {}
    for b, (index, pred) in _decode_groups(decode, embedding.tile, tile_jobs, multimask).items():
        if grid.touches_inner_edge(index, pred.best_mask):
            continue  # the object may go on beyond the tile: the overview decides
        results[b] = Prediction(
            None, pred.scores, pred.logits, upscaler=_paster(pred, grid.window(index), shape)
        )
    overview_jobs: dict = {}
    for b in range(bsz):
        _add_job(overview_jobs, "overview", b, *prompts[b])
    decoded = _decode_groups(decode, lambda _: embedding.overview(), overview_jobs, multimask)
    for b, (_, pred) in decoded.items():
        tiled = results.get(b)
        if tiled is None or float(np.max(pred.scores)) > float(np.max(tiled.scores)):
            results[b] = pred
    return [results[b] for b in range(bsz)]
