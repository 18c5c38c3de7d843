"""Tiled embeddings: large slices segmented at their native resolution.

SAM resizes every slice so that its longest side fits the model input (1024
px for SAM, 256 px for the bundled ``micro`` model). A 4096 x 4096 slice of
small nuclei, or a 512 x 512 slice given to ``micro``, is then shrunk until
the objects are a few pixels across and are lost. Instead, such a slice is
covered by overlapping square tiles of the model's input size, each embedded
at native resolution (no resize):

* :class:`TileGrid` places the tiles (a fixed overlap, the last tile of each
  axis flush with the slice's edge) and routes a prompt to the tile whose
  interior holds it with the widest margin.
* :class:`TiledEmbedding` holds the slice and embeds tiles **lazily**, on the
  first prompt routed to them (or all at once with
  :meth:`TiledEmbedding.compute`), plus an *overview*: the ordinary embedding
  of the whole, resized slice, used for objects larger than a tile.
* :func:`predict_tiled` decodes each object on its tile (prompts shifted into
  the tile's frame) and on the overview, and keeps the prediction with the
  higher predicted IoU (tile masks are stitched back into the slice); an
  object whose tile mask reaches an inner edge of its tile (so it may
  continue beyond it) takes the overview's.

Coordinates are napari's ``(row, col)`` slice pixels throughout; tiles only
shift them by the tile's origin. The ``(row, col)`` -> ``(x, y)`` conversion
stays in :meth:`napari_sam.predictor.Embedding.to_model_frame`.

This module imports neither torch nor Qt; it drives a
:class:`~napari_sam.predictor.Predictor`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Slices whose longest side exceeds this multiple of the model input are tiled.
DEFAULT_TILE_THRESHOLD = 1.5


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """First pixels of the tiles covering ``length`` pixels, the last one flush with the end.

    Consecutive tiles overlap by at least ``overlap`` pixels.
    """
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


@dataclass(frozen=True)
class TileGrid:
    """Square tiles of side ``tile`` covering a ``shape`` slice with ``overlap`` pixels.

    Attributes
    ----------
    shape : ``(H, W)`` of the slice
    tile : side of each tile in slice pixels (the model's input size)
    overlap : minimum overlap of neighbouring tiles in pixels; any object at
        most ``overlap`` pixels across lies wholly inside some tile
    """

    shape: tuple[int, int]
    tile: int
    overlap: int

    def __post_init__(self) -> None:
        if self.tile < 16:
            raise ValueError(f"tile must be at least 16 pixels, got {self.tile}")
        if not 0 <= self.overlap < self.tile:
            raise ValueError(
                f"overlap must be >= 0 and smaller than the tile ({self.tile}), "
                f"got {self.overlap}"
            )

    @property
    def origins(self) -> list[tuple[int, int]]:
        """``(row, col)`` of each tile's top-left pixel, row-major."""
        rows = tile_starts(self.shape[0], self.tile, self.overlap)
        cols = tile_starts(self.shape[1], self.tile, self.overlap)
        return [(r, c) for r in rows for c in cols]

    def __len__(self) -> int:
        return len(self.origins)

    def window(self, index: int) -> tuple[int, int, int, int]:
        """``(row_min, col_min, row_max, col_max)`` of tile ``index``, max exclusive."""
        r, c = self.origins[index]
        return r, c, min(r + self.tile, self.shape[0]), min(c + self.tile, self.shape[1])

    def inner_edges(self, index: int) -> tuple[bool, bool, bool, bool]:
        """Whether the top, left, bottom and right edges of a tile lie inside the slice."""
        r0, c0, r1, c1 = self.window(index)
        return r0 > 0, c0 > 0, r1 < self.shape[0], c1 < self.shape[1]

    def margin(self, index: int, extent: Sequence[float]) -> float:
        """Distance in pixels from ``extent`` to the nearest inner edge of tile ``index``.

        ``extent`` is ``(row_min, col_min, row_max, col_max)`` (inclusive
        pixel coordinates). Negative when the extent leaves the tile through an
        inner edge; ``inf`` when every side is the slice's own border.
        """
        r0, c0, r1, c1 = self.window(index)
        er0, ec0, er1, ec1 = (float(v) for v in extent)
        top, left, bottom, right = self.inner_edges(index)
        gaps = [
            er0 - r0 if top else np.inf,
            ec0 - c0 if left else np.inf,
            (r1 - 1) - er1 if bottom else np.inf,
            (c1 - 1) - ec1 if right else np.inf,
        ]
        # an extent outside the tile through a slice border is impossible (extents are clipped)
        return float(min(gaps))

    def route(self, extent: Sequence[float]) -> tuple[int, float]:
        """The tile that best contains ``extent``, and its margin (see :meth:`margin`).

        Prefers the widest margin up to a quarter tile, then the tile whose
        centre is nearest the extent's centre (more context on every side).
        """
        er0, ec0, er1, ec1 = (float(v) for v in extent)
        centre = ((er0 + er1) / 2.0, (ec0 + ec1) / 2.0)
        cap = self.tile / 4.0
        best, best_key, best_margin = 0, None, -np.inf
        for i in range(len(self)):
            m = self.margin(i, extent)
            r0, c0, r1, c1 = self.window(i)
            dist = np.hypot((r0 + r1 - 1) / 2.0 - centre[0], (c0 + c1 - 1) / 2.0 - centre[1])
            key = (min(m, cap), -dist)
            if best_key is None or key > best_key:
                best, best_key, best_margin = i, key, m
        return best, best_margin

    def touches_inner_edge(self, index: int, mask: np.ndarray) -> bool:
        """Whether a tile-shaped bool ``mask`` has pixels on an inner edge of tile ``index``."""
        top, left, bottom, right = self.inner_edges(index)
        return bool(
            (top and mask[0].any())
            or (bottom and mask[-1].any())
            or (left and mask[:, 0].any())
            or (right and mask[:, -1].any())
        )


def plan_tiles(
    shape: Sequence[int],
    tile: int,
    *,
    overlap: int | None = None,
    threshold: float = DEFAULT_TILE_THRESHOLD,
) -> TileGrid | None:
    """The tile grid for a ``(H, W)`` slice, or None when the slice needs no tiling.

    Parameters
    ----------
    shape : ``(H, W)`` of the slice
    tile : model input size (tile side)
    overlap : overlap of neighbouring tiles; default a quarter of the tile
    threshold : tile only when ``max(H, W) > threshold * tile``

    Raises
    ------
    ValueError
        ``shape`` has fewer than 2 axes (a 1-D image is not a slice).
    """
    if len(shape) < 2:
        raise ValueError(
            f"expected one 2D slice, shape (H, W) or (H, W, C), got shape {tuple(shape)}; "
            "a 1-D image is not a slice (reshape it to (1, N) if it is one row)"
        )
    h, w = int(shape[0]), int(shape[1])
    if max(h, w) <= threshold * tile:
        return None
    return TileGrid((h, w), int(tile), int(tile // 4 if overlap is None else overlap))


@dataclass
class TiledEmbedding:
    """Lazily computed embeddings of a slice's tiles, and of the whole slice resized.

    Made by :meth:`napari_sam.predictor.Predictor.embed` for slices larger than
    the model input (see :func:`plan_tiles`); decode it with the same
    ``Predictor.predict``/``predict_batch`` calls as an ordinary embedding.

    Attributes
    ----------
    grid : the tile layout
    original_size : ``(H, W)`` of the slice
    contrast_limits : ``(low, high)`` shared by every tile (from the whole
        slice), or None for uint8/RGB data mapped as is
    metadata : model name, precision, tiling
    image : the slice (after a multichannel slice's normalization), or None for
        an embedding read back with every part present (:meth:`from_features`)
    embed_fn : ``parts -> embeddings``: whole-slice embeddings of a list of
        image parts (tiles, or the slice itself for the overview); None with
        ``image=None``
    batch_size : most tiles embedded in one ``embed_fn`` call by :meth:`compute`
    """

    grid: TileGrid
    original_size: tuple[int, int]
    contrast_limits: tuple[float, float] | None
    image: np.ndarray | None = field(repr=False)
    embed_fn: Callable[[list[np.ndarray]], list[Any]] | None = field(repr=False)
    metadata: dict = field(default_factory=dict)
    batch_size: int = 1
    _tiles: dict[int, Any] = field(default_factory=dict, repr=False)
    _overview: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_features(
        cls,
        grid: TileGrid,
        tiles: Sequence[Any],
        overview: Any,
        original_size: Sequence[int],
        contrast_limits: tuple[float, float] | None = None,
        metadata: dict | None = None,
    ) -> TiledEmbedding:
        """A tiled embedding from embeddings computed before (e.g. read from a store).

        Parameters
        ----------
        grid : the tile layout
        tiles : one :class:`~napari_sam.predictor.Embedding` per tile, in grid
            order (None for a tile that was not computed)
        overview : the embedding of the whole, resized slice (or None)
        original_size : ``(H, W)`` of the slice
        contrast_limits : ``(low, high)`` the parts were normalized with
        metadata : model name, precision, tiling...

        Returns
        -------
        TiledEmbedding
            Without an image: asking for a part that was not given raises
            ``ValueError``.
        """
        tiles = list(tiles)
        if len(tiles) != len(grid):
            raise ValueError(
                f"got {len(tiles)} tile embeddings for a grid of {len(grid)} tiles "
                f"({grid.shape[0]}x{grid.shape[1]} px, tile {grid.tile}, overlap "
                f"{grid.overlap}); pass one per tile, in grid order"
            )
        emb = cls(
            grid=grid,
            original_size=tuple(int(v) for v in original_size),
            contrast_limits=None if contrast_limits is None else tuple(contrast_limits),
            image=None,
            embed_fn=None,
            metadata=dict(metadata or {}),
        )
        emb._tiles.update({i: t for i, t in enumerate(tiles) if t is not None})
        emb._overview = overview
        return emb

    def _embed_parts(self, parts: list[np.ndarray], what: str) -> list[Any]:
        if self.embed_fn is None:
            raise ValueError(
                f"{what} cannot be embedded: this tiled embedding has no embed_fn; make it "
                "with Predictor.embed(image)"
            )
        return self.embed_fn(parts)

    def _no_image(self, what: str) -> ValueError:
        h, w = self.original_size
        return ValueError(
            f"{what} of this {h}x{w} tiled embedding was not computed, and it has no image "
            "to embed it from (it was built from stored features); embed the slice again "
            "with Predictor.embed(image), or store every tile and the overview"
        )

    @property
    def n_tiles(self) -> int:
        """Number of tiles in the grid."""
        return len(self.grid)

    @property
    def computed(self) -> list[int]:
        """Indices of the tiles embedded so far."""
        return sorted(self._tiles)

    def tile(self, index: int):
        """The :class:`~napari_sam.predictor.Embedding` of tile ``index`` (made on first use)."""
        with self._lock:
            emb = self._tiles.get(index)
            if emb is None:
                emb = self._embed_parts([self._part(index)], f"tile {index}")[0]
                self._tiles[index] = emb
            return emb

    def _part(self, index: int) -> np.ndarray:
        if self.image is None:
            raise self._no_image(f"tile {index}")
        r0, c0, r1, c1 = self.grid.window(index)
        return self.image[r0:r1, c0:c1]

    def overview(self):
        """The embedding of the whole slice resized to the model input (for large objects)."""
        with self._lock:
            if self._overview is None:
                if self.image is None:
                    raise self._no_image("the overview")
                self._overview = self._embed_parts([self.image], "the overview")[0]
            return self._overview

    def compute(
        self,
        indices: Sequence[int] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> TiledEmbedding:
        """Embed the given tiles (default: all) and the overview now.

        Tiles are embedded ``batch_size`` at a time; ``progress(done, total)``
        is called after each batch (``total`` counts the tiles and the overview).
        """
        todo = list(range(self.n_tiles)) if indices is None else [int(i) for i in indices]
        total = len(todo) + 1
        self.overview()
        done = 1
        for start in range(0, len(todo), max(1, self.batch_size)):
            chunk = todo[start : start + max(1, self.batch_size)]
            with self._lock:
                missing = [i for i in chunk if i not in self._tiles]
                if missing:
                    parts = [self._part(i) for i in missing]
                    embs = self._embed_parts(parts, f"tiles {missing}")
                    self._tiles.update(zip(missing, embs))
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        return self


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


def _check_mask_prompt(emb: TiledEmbedding, mask) -> np.ndarray | None:
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


def _decode_groups(predictor, embedding_of, jobs: dict, multimask: bool) -> dict:
    """Decode objects grouped by embedding and prompt kind: ``{object: (key, Prediction)}``.

    ``jobs`` maps ``(key, n_points, has_box, has_mask)`` to a list of
    ``(object index, points, labels, box, mask)``; ``embedding_of(key)`` gives
    the embedding of group key ``key``.
    """
    out = {}
    for (key, n_pts, has_box, has_mask), members in jobs.items():
        preds = predictor.predict_batch(
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


def _paster(pred, window: tuple[int, int, int, int], shape: tuple[int, int]):
    """Upscaler of a stitched prediction: tile masks pasted into slice-sized arrays on demand."""
    r0, c0, r1, c1 = window

    def paste(indices: list[int]) -> np.ndarray:
        full = np.zeros((len(indices), *shape), dtype=bool)
        for k, i in enumerate(indices):
            full[k, r0:r1, c0:c1] = pred.mask(i)
        return full

    return paste


def _add_job(jobs: dict, key, index: int, pts, lab, box, mask) -> None:
    n_pts = 0 if pts is None else len(pts)
    group = (key, n_pts, box is not None, mask is not None)
    jobs.setdefault(group, []).append((index, pts, lab, box, mask))


def predict_tiled(
    predictor,
    embedding: TiledEmbedding,
    points: list | None,
    labels: list | None,
    boxes: list | None,
    masks: list | None,
    multimask: bool,
) -> list:
    """Predictions for B objects on a :class:`TiledEmbedding`, masks at the slice's size.

    Each object is decoded on the tile that best contains its prompts (see
    :meth:`TileGrid.route`; objects sharing a tile and a prompt kind are decoded
    in one batch) and its masks are pasted into the slice. Every object is also
    decoded on the overview (the whole slice resized), and the prediction with
    the higher best predicted IoU is kept: the tile wins for objects that
    shrink too much in the overview, the overview for objects too large for
    the model at native resolution (measured with ``micro``: 512 px nuclei
    8-30 px across 0.80 / 0.79 point IoU tile / both; objects 60-120 px across
    0.37 / 0.84). When the prompts fit no tile, or the tile's best mask touches
    an inner tile edge, only the overview's prediction is used. The returned
    predictions' ``logits`` are in the frame of the embedding that produced
    them; use slice-shaped masks as mask prompts on tiled embeddings.
    """
    from napari_sam.predictor import Prediction

    (bsz,) = {len(x) for x in (points, boxes, masks) if x is not None}
    shape = tuple(embedding.original_size)
    grid = embedding.grid
    prompts = []
    for b in range(bsz):
        pts = None if points is None else np.asarray(points[b], dtype=np.float64).reshape(-1, 2)
        lab = None if labels is None or points is None else np.asarray(labels[b]).ravel()
        box = None if boxes is None else np.asarray(boxes[b], dtype=np.float64).ravel()
        mask = None if masks is None else _check_mask_prompt(embedding, masks[b])
        prompts.append((pts, lab, box, mask))

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
    for b, (index, pred) in _decode_groups(predictor, embedding.tile, tile_jobs, multimask).items():
        if grid.touches_inner_edge(index, pred.best_mask):
            continue  # the object may go on beyond the tile: the overview decides
        results[b] = Prediction(
            None, pred.scores, pred.logits, upscaler=_paster(pred, grid.window(index), shape)
        )
    overview_jobs: dict = {}
    for b in range(bsz):
        _add_job(overview_jobs, "overview", b, *prompts[b])
    decoded = _decode_groups(predictor, lambda _: embedding.overview(), overview_jobs, multimask)
    for b, (_, pred) in decoded.items():
        tiled = results.get(b)
        if tiled is None or float(np.max(pred.scores)) > float(np.max(tiled.scores)):
            results[b] = pred
    return [results[b] for b in range(bsz)]


def embed_untiled(predictor, image: np.ndarray, contrast_limits=None):
    """``predictor.embed(image)`` as one whole-slice embedding, never tiled.

    For consumers that need one feature map per slice (the embedding store)
    or tile on their own (everything mode's crops). Predictors without a
    ``tiling`` option (stand-ins) are called as they are.
    """
    if hasattr(predictor, "plan_tiles"):
        return predictor.embed(image, contrast_limits=contrast_limits, tiling="off")
    return predictor.embed(image, contrast_limits=contrast_limits)
