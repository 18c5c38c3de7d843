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

This is a layer of its own under :class:`napari_sam.predictor.Predictor`:
``Predictor.embed`` hands a slice that needs tiles to
:meth:`TiledEmbedding.from_image` with its whole-slice encoder
(``embed_batch``), and ``Predictor.predict_batch`` hands a tiled embedding
to :func:`predict_tiled` with its whole-slice decoder. Both functions take
these as plain callables, so any whole-slice predictor can be tiled, and
decoding a tile never goes back through ``predict_batch``.

Coordinates are napari's ``(row, col)`` slice pixels throughout; tiles only
shift them by the tile's origin. The ``(row, col)`` -> ``(x, y)`` conversion
stays in :meth:`napari_sam.predictor.Embedding.to_model_frame`.

This module imports neither torch nor Qt.
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
        return touches_inner_edge(self.window(index), self.shape, mask)


def touches_inner_edge(
    window: tuple[int, int, int, int], shape: Sequence[int], mask: np.ndarray
) -> bool:
    """Whether a window-shaped bool ``mask`` has pixels on an edge of ``window``
    (``(row_min, col_min, row_max, col_max)``, max exclusive) that lies inside a
    ``shape`` slice: the object may go on beyond the window there."""
    r0, c0, r1, c1 = window
    return bool(
        (r0 > 0 and mask[0].any())
        or (r1 < shape[0] and mask[-1].any())
        or (c0 > 0 and mask[:, 0].any())
        or (c1 < shape[1] and mask[:, -1].any())
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
            original_size=(int(original_size[0]), int(original_size[1])),
            contrast_limits=None if contrast_limits is None else _pair(contrast_limits),
            image=None,
            embed_fn=None,
            metadata=dict(metadata or {}),
        )
        emb._tiles.update({i: t for i, t in enumerate(tiles) if t is not None})
        emb._overview = overview
        return emb

    @classmethod
    def from_image(
        cls,
        image: np.ndarray,
        grid: TileGrid,
        contrast_limits: tuple[float, float] | None,
        embed_parts: Callable[..., list[Any]],
        *,
        batch_size: int = 1,
        metadata: dict | None = None,
    ) -> TiledEmbedding:
        """A tiled embedding of ``image`` whose tiles are embedded on first use.

        Every tile and the overview are normalized with one intensity mapping
        of the whole slice: ``contrast_limits``, else the slice's default
        range (:func:`napari_sam.normalize.default_range`, robust percentiles
        of a single-channel slice; a multichannel slice is normalized per
        channel once, here).

        Parameters
        ----------
        image : ``(H, W)`` or ``(H, W, C)`` slice
        grid : its tiles (:func:`plan_tiles`)
        contrast_limits : ``(low, high)`` or None (see above)
        embed_parts : ``embed_parts(parts, contrast_limits=limits) -> embeddings``:
            whole-slice embeddings of a list of image parts (a predictor's
            ``embed_batch``)
        batch_size : most tiles per ``embed_parts`` call in :meth:`compute`
        metadata : model name, precision...; the tiling is added
        """
        from napari_sam.normalize import slice_mapping

        # one intensity mapping for every tile, computed from the whole slice
        image, limits = slice_mapping(image, contrast_limits)

        def embed_fn(parts: list[np.ndarray]) -> list[Any]:
            return embed_parts(parts, contrast_limits=limits)

        h, w = np.shape(image)[:2]
        return cls(
            grid=grid,
            original_size=(int(h), int(w)),
            contrast_limits=None if contrast_limits is None else _pair(contrast_limits),
            image=image,
            embed_fn=embed_fn,
            batch_size=batch_size,
            metadata={
                **(metadata or {}),
                "tiling": {"tile": grid.tile, "overlap": grid.overlap, "n_tiles": len(grid)},
            },
        )

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

    def tile(self, index: int) -> Any:
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

    def overview(self) -> Any:
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


def _pair(values: Sequence[float]) -> tuple[float, float]:
    low, high = values
    return low, high


# the decoding side of the layer (re-exported: ``napari_sam.tiling.predict_tiled``)
from napari_sam.tiled_predict import Decode, predict_tiled, prompt_extent  # noqa: E402

__all__ = [
    "DEFAULT_TILE_THRESHOLD",
    "Decode",
    "TileGrid",
    "TiledEmbedding",
    "plan_tiles",
    "predict_tiled",
    "prompt_extent",
    "tile_starts",
    "touches_inner_edge",
]
