"""Automatic instance segmentation of one 2D slice ("segment everything").

See :func:`segment_everything` and ``docs/everything.md``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from napari_sam.boxes import near_crop_edge
from napari_sam.contract import BasePredictor, as_predictor
from napari_sam.everything._decoding import Decoder, point_grid
from napari_sam.everything._masks import CompactMask, clean_mask
from napari_sam.everything._params import (
    EverythingParams,
    EverythingResult,
    ProgressCallback,
    check_cancel,
)
from napari_sam.everything._resolve import (
    Candidates,
    box_nms,
    drop_contained_parts,
    labels_from_index,
    mask_dedup,
    resolve_overlaps,
)
from napari_sam.options import resolve
from napari_sam.tiling import TiledEmbedding, TileGrid


def resolve_contrast_limits(
    image: np.ndarray, contrast_limits: tuple[float, float] | None
) -> tuple[float, float]:
    """The ``(low, high)`` used for the whole slice and all of its crops.

    The given limits, else ``(0, 255)`` for uint8, ``(0, 1)`` for bool, else the
    robust percentile range of the slice (all channels together).
    """
    from napari_sam.normalize import check_contrast_limits, default_range, intensity_range

    if contrast_limits is not None:
        return check_contrast_limits(contrast_limits)
    default = default_range(image)
    return default if default is not None else intensity_range(image)


def is_flat(image: np.ndarray, limits: tuple[float, float]) -> bool:
    """True when the slice shows nothing after mapping ``limits`` to 0..255 (constant).

    Non-finite values count as ``low``, as in :func:`napari_sam.normalize.to_rgb_float`.
    """
    low, high = limits
    if high <= low:
        return True
    data = np.asarray(image)
    channels = data.reshape(data.shape[0] * data.shape[1], -1)
    for c in range(channels.shape[1]):
        x = channels[:, c]
        extra = []
        if x.dtype.kind == "f":
            finite = np.isfinite(x)
            if not finite.all():
                x = x[finite]
                extra = [low]
        values = [float(x.min()), float(x.max()), *extra] if x.size else extra
        clipped = np.clip(values, low, high)
        if clipped.max() > clipped.min():
            return False
    return True


def crop_boxes(
    shape: tuple[int, int], layers: int, overlap_ratio: float
) -> list[tuple[int, tuple[int, int, int, int]]]:
    """``(layer, (row_min, col_min, row_max, col_max))`` of the full image and its crops.

    Layer ``i >= 1`` tiles the image with ``2**i x 2**i`` overlapping crops
    (overlap ``overlap_ratio * min(H, W) * 2 / 2**i`` pixels). Crops smaller than
    the model's minimum slice side are left out.
    """
    from napari_sam.normalize import MIN_SIDE

    h, w = shape
    out = [(0, (0, 0, h, w))]
    for layer in range(1, layers + 1):
        n = 2**layer
        overlap = int(overlap_ratio * min(h, w) * 2 / n)
        ch = math.ceil((overlap * (n - 1) + h) / n)
        cw = math.ceil((overlap * (n - 1) + w) / n)
        if min(ch, cw) < MIN_SIDE:
            continue
        for i in range(n):
            for j in range(n):
                r0 = (ch - overlap) * i
                c0 = (cw - overlap) * j
                box = (r0, c0, min(r0 + ch, h), min(c0 + cw, w))
                if min(box[2] - box[0], box[3] - box[1]) >= MIN_SIDE:
                    out.append((layer, box))
    return out


def _compact(crop: np.ndarray, origin: tuple[int, int], min_area: int) -> CompactMask:
    """Clean (holes/islands) and encode a bool mask crop whose top-left pixel is ``origin``."""
    rows = np.flatnonzero(crop.any(axis=1))
    if rows.size == 0:
        return CompactMask.from_crop(np.zeros((0, 0), bool), origin)
    cols = np.flatnonzero(crop.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    tight = clean_mask(crop[r0:r1, c0:c1], min_area)
    return CompactMask.from_crop(tight, (origin[0] + r0, origin[1] + c0))


@dataclass(frozen=True)
class CropSpec:
    """One crop of everything mode: where it is and how it is prompted.

    Attributes
    ----------
    layer : 0 for the whole slice, ``i >= 1`` for crop layer ``i``,
        :data:`TILE_LAYER` for a tile of the predictor's tile grid
    box : ``(row_min, col_min, row_max, col_max)`` half-open, slice pixels
    points_per_side : side of the crop's ``n x n`` point grid
    tile : index of the tile in the grid (tiles only), else None
    """

    layer: int
    box: tuple[int, int, int, int]
    points_per_side: int
    tile: int | None = None


#: :attr:`CropSpec.layer` of the tiles (crops embedded at native resolution).
TILE_LAYER = -1


def tile_points_per_side(
    points_per_side: int, box: tuple[int, int, int, int], shape: tuple[int, int]
) -> int:
    """Points per side of a tile's grid: the whole slice's point spacing, at most doubled.

    ``points_per_side`` points across the slice's longest side give a spacing
    of ``max(H, W) / points_per_side`` pixels; a tile gets as many points as fit
    its longest side at that spacing, and at least ``points_per_side // 2``
    (at least 1). Tiles are at native resolution, where objects keep their
    size in pixels however large the slice is: without the floor, a 2048 px
    slice would get 4 points per 256 px tile (a 64 px spacing) and miss most
    nuclei (docs/everything.md, "Large slices").
    """
    side = max(box[2] - box[0], box[3] - box[1])
    return max(1, round(points_per_side * side / max(shape)), points_per_side // 2)


def plan_crops(
    shape: tuple[int, int], params: EverythingParams, grid: TileGrid | None = None
) -> list[CropSpec]:
    """The crops of one slice, from the least to the most zoomed-in.

    The whole slice first, then SAM's crop layers (:func:`crop_boxes`,
    ``points_per_side // crop_points_downscale**i`` points per side) and the
    tiles of ``grid`` (a :class:`~napari_sam.tiling.TileGrid` or None; the
    point spacing of the whole slice, at most doubled, see
    :func:`tile_points_per_side`), ordered
    by decreasing crop size: the later a crop, the larger the objects appear in
    its embedding, and cross-crop NMS prefers later crops.
    """
    crops = [
        CropSpec(
            layer, box, max(1, params.points_per_side // (params.crop_points_downscale**layer))
        )
        for layer, box in crop_boxes(shape, params.crop_layers, params.crop_overlap_ratio)
    ]
    if grid is not None:
        for i in range(len(grid)):
            r0, c0, r1, c1 = (int(v) for v in grid.window(i))
            box = (r0, c0, r1, c1)
            n = tile_points_per_side(params.points_per_side, box, shape)
            crops.append(CropSpec(TILE_LAYER, box, n, i))
        rest = sorted(crops[1:], key=lambda c: -max(c.box[2] - c.box[0], c.box[3] - c.box[1]))
        crops = [crops[0], *rest]
    return crops


def _tile_grid(predictor: BasePredictor, shape: tuple[int, int], params: EverythingParams,
               embedding: Any) -> Any:
    """The tile grid whose tiles become crops, or None (no tiles).

    With ``params.tiling == "auto"``: the grid of a given tiled embedding, else
    ``predictor.plan_tiles(shape)`` (None for slices that fit the model input,
    for a predictor made with ``tiling="off"`` and for predictors that do not tile).
    """
    if params.tiling == "off":
        return None
    if isinstance(embedding, TiledEmbedding):
        return embedding.grid
    return predictor.plan_tiles((int(shape[0]), int(shape[1])))


def _crop_embedding(crop: CropSpec, embedding: Any, grid: Any) -> Any:
    """The precomputed embedding usable for ``crop``, or None (embed the crop).

    A plain embedding serves the whole slice; a tiled one serves the whole
    slice (its overview, resized) and, when its grid is ``grid``, the tiles.
    """
    if embedding is None:
        return None
    if not isinstance(embedding, TiledEmbedding):
        return embedding if crop.layer == 0 else None
    if crop.layer == 0:
        return embedding.overview()
    if crop.tile is not None and embedding.grid == grid:
        return embedding.tile(crop.tile)
    return None


def _decode_crop(
    predictor: BasePredictor,
    image: np.ndarray,
    crop_index: int,
    crop: CropSpec,
    limits: tuple[float, float],
    embedding_of: Callable[[], Any],
    params: EverythingParams,
    candidates: Candidates,
    stats: dict[str, int],
    timings: dict[str, float],
    step: Callable[[], None],
    cancel: Any,
) -> None:
    """Embed one crop, decode its point grid and add the kept masks to ``candidates``.

    ``embedding_of()`` gives the crop's precomputed embedding (it may compute
    a tile of a tiled embedding), or None: the crop is embedded here, never tiled.
    """
    box = crop.box
    r0, c0, r1, c1 = box
    check_cancel(cancel)
    t0 = time.perf_counter()
    embedding = embedding_of()
    if embedding is None:
        embedding = predictor.embed_untiled(image[r0:r1, c0:c1], contrast_limits=limits)
    timings["embed"] += time.perf_counter() - t0
    step()
    points = point_grid(crop.points_per_side, (r1 - r0, c1 - c0))
    decoder = Decoder(predictor, embedding, params)
    is_full = box == (0, 0, image.shape[0], image.shape[1])
    min_area = max(1, int(params.min_area))
    for s in range(0, len(points), params.points_per_batch):
        check_cancel(cancel)
        batch = points[s : s + params.points_per_batch]
        t0 = time.perf_counter()
        kept = decoder(batch)
        t1 = time.perf_counter()
        timings["decode"] += t1 - t0
        stats["prompts"] += len(batch)
        stats["candidates"] += kept.n_candidates
        stats["passed_filters"] += len(kept.iou)
        for k, (mask_crop, (dr, dc)) in enumerate(decoder.kept_masks(kept)):
            m = _compact(mask_crop, (r0 + dr, c0 + dc), params.min_area)
            ok = m.area >= min_area and (params.max_area is None or m.area <= params.max_area)
            if ok and not is_full:
                ok = not near_crop_edge(np.asarray([m.bbox]), box, image.shape[:2])[0]
            if ok:
                candidates.add(m, kept.iou[k], kept.stability[k], crop_index)
        timings["masks"] += time.perf_counter() - t1
        step()


def _empty_result(shape: tuple[int, int], stats: dict[str, int]) -> EverythingResult:
    return EverythingResult(np.zeros(shape, dtype=np.uint32), [], stats, _new_timings())


def _new_timings() -> dict[str, float]:
    return dict.fromkeys(("embed", "decode", "masks", "resolve"), 0.0)


def _new_stats() -> dict[str, int]:
    keys = ("prompts", "candidates", "passed_filters", "after_area", "after_nms")
    return dict.fromkeys((*keys, "after_mask_dedup", "after_containment", "objects", "crops"), 0)


def make_predictor(model: str | os.PathLike, predictor: Any) -> BasePredictor:
    """``predictor`` behind the contract (:func:`~napari_sam.contract.as_predictor`) if
    given, else a :class:`~napari_sam.predictor.Predictor` for ``model``."""
    if predictor is not None:
        return as_predictor(predictor)
    from napari_sam.predictor import Predictor

    return Predictor(model)


def segment_everything(
    image: np.ndarray,
    predictor: Any = None,
    *,
    params: EverythingParams | Mapping[str, Any] | None = None,
    model: str | os.PathLike = "micro",
    contrast_limits: tuple[float, float] | None = None,
    embedding: Any = None,
    progress: ProgressCallback | None = None,
    cancel: Any = None,
    **options: Any,
) -> EverythingResult:
    """Segment every object of one 2D slice automatically (SAM's "everything" mode).

    A regular ``points_per_side x points_per_side`` grid of single positive
    points is decoded in batches; each point gives 3 candidate masks (SAM's
    multimask output), which all compete. Candidates are filtered by predicted
    IoU and stability score (on the low-res logits, before upscaling), cleaned
    (holes and islands smaller than ``min_area`` filled/removed), filtered by
    area, de-duplicated (box NMS, then mask IoU), rid of masks lying mostly
    inside a larger better-scored mask (sub-parts, ``containment_thresh``) and
    resolved into one label image in which each pixel belongs to the smallest
    mask covering it.

    Parameters
    ----------
    image : ``(H, W)`` or ``(H, W, C)`` with C <= 3, any numeric dtype
    predictor : a :class:`~napari_sam.predictor.Predictor` (or any predictor,
        see :mod:`napari_sam.contract`); reuse one to avoid reloading the model
    params : :class:`EverythingParams` (or a mapping of its fields); default:
        its defaults
    model : registry name or checkpoint path, used when ``predictor`` is None
    contrast_limits : ``(low, high)`` mapped to 0..255 for the whole slice and all
        crops (default: ``(0, 255)`` for uint8, else robust percentiles of the slice)
    embedding : a precomputed embedding of the whole slice (made with the same
        contrast limits) to skip the image encoder; a tiled embedding
        (:class:`~napari_sam.tiling.TiledEmbedding`) serves the whole slice (its
        overview) and the tiles, which are computed in it when missing
    progress : ``callback(done, total)`` called after each crop's embedding and
        each batch (``total`` counts them over all crops, tiles included)
    cancel : a ``threading.Event`` or a callable returning True to stop; checked
        before each crop's embedding and each batch
    **options : fields of :class:`EverythingParams` (``points_per_side``,
        ``pred_iou_thresh``, ``min_area``, ``tiling``, ...; each documented
        there), applied over ``params``

    Returns
    -------
    EverythingResult
        ``labels`` ``(H, W)`` uint32 (0 = background, 1..N in raster order of each
        object's first pixel) and one :class:`ObjectRecord` per object.

    Raises
    ------
    TypeError
        An option that :class:`EverythingParams` does not have (the message
        lists the valid ones); a predictor without ``embed``/``predict``.
    ValueError
        An option out of range.
    Cancelled
        When ``cancel`` was set; nothing is returned.

    Notes
    -----
    An empty or constant slice (nothing visible within the contrast limits)
    returns no objects without running the model. With ``tiling="auto"`` and
    a predictor that tiles the slice (``predictor.plan_tiles(shape)``, e.g. a
    512 x 512 slice and the bundled 256 px ``micro`` model), its tiles are
    added as crops, each embedded at native resolution, besides the whole
    slice resized (which finds objects larger than a tile).
    """
    from napari_sam.normalize import validate_slice

    resolved = resolve(EverythingParams, params, options, caller="segment_everything")
    return run_everything(
        image if isinstance(image, np.ndarray) else np.asarray(image),
        make_predictor(model, predictor),
        resolved,
        contrast_limits=contrast_limits,
        embedding=embedding,
        progress=progress,
        cancel=cancel,
        validate=validate_slice,
    )


def run_everything(
    image: np.ndarray,
    predictor: Any,
    params: EverythingParams,
    *,
    contrast_limits: tuple[float, float] | None = None,
    embedding: Any = None,
    progress: ProgressCallback | None = None,
    cancel: Any = None,
    validate: Callable[[np.ndarray], np.ndarray] | None = None,
) -> EverythingResult:
    """:func:`segment_everything` with validated parameters and a ready predictor."""
    if validate is not None:
        image = validate(image)
    shape = image.shape[:2]
    stats = _new_stats()
    predictor = as_predictor(predictor)
    params = params.for_model(predictor.model_name)
    check_cancel(cancel)
    limits = resolve_contrast_limits(image, contrast_limits)
    if is_flat(image, limits):
        if progress is not None:
            progress(1, 1)
        return _empty_result(shape, stats)
    grid = _tile_grid(predictor, shape, params, embedding)
    crops = plan_crops(shape, params, grid)
    n_steps = sum(1 + math.ceil(c.points_per_side**2 / params.points_per_batch) for c in crops)
    done = [0]

    def step() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], n_steps)

    cands = Candidates()
    timings = _new_timings()
    for ci, crop in enumerate(crops):
        _decode_crop(
            predictor,
            image,
            ci,
            crop,
            limits,
            partial(_crop_embedding, crop, embedding, grid),
            params,
            cands,
            stats,
            timings,
            step,
            cancel,
        )
    stats["crops"] = len(crops)
    t0 = time.perf_counter()
    stats["after_area"] = len(cands)
    check_cancel(cancel)
    cands = box_nms(cands, params, len(crops))
    stats["after_nms"] = len(cands)
    cands = mask_dedup(cands, params.resolved("box_nms_thresh"))
    stats["after_mask_dedup"] = len(cands)
    contained = params.containment_thresh  # None: the rule is off
    cands = drop_contained_parts(
        cands, None if contained is None else params.resolved("containment_thresh")
    )
    stats["after_containment"] = len(cands)
    index, _ = resolve_overlaps(
        cands.masks,
        np.asarray(cands.iou) + 1e-3 * np.asarray(cands.stability),
        shape,
        params.min_area,
        params.min_visible_fraction,
    )
    labels, objects = labels_from_index(index, cands)
    stats["objects"] = len(objects)
    timings["resolve"] = time.perf_counter() - t0
    return EverythingResult(labels, objects, stats, timings)
