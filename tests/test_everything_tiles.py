"""Everything mode on tiles: large slices segmented at native resolution.

``_ZoomOracle`` is a stand-in predictor that models what resizing costs: its
"model input" is ``size`` pixels, ``embed`` shrinks the slice to fit it, and a
point finds the object under it only when the object keeps at least
``min_px`` pixels at model resolution. Like ``Predictor`` it has
``plan_tiles``, so everything mode adds the tiles as crops. The last test runs
the bundled ``micro`` model on a generated 384 x 384 slice.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import pytest
from skimage.draw import disk

from napari_sam.everything import Cancelled, segment_everything, segment_everything_stack
from napari_sam.everything._core import TILE_LAYER, plan_crops, tile_points_per_side
from napari_sam.everything._params import EverythingParams
from napari_sam.predictor import Prediction
from napari_sam.tiling import TiledEmbedding, TileGrid, plan_tiles


@dataclass(frozen=True)
class _Token:
    labels: np.ndarray
    original_size: tuple[int, int]
    zoom: float


class _ZoomOracle:
    """A point finds the object under it if the object is large enough after resizing."""

    def __init__(self, size: int = 64, min_px: int = 20, has_tiles: bool = True):
        self.size = size
        self.min_px = min_px
        self.embedded: list[tuple[int, int]] = []
        self.tiling_args: list = []
        if has_tiles:
            self.plan_tiles = lambda shape: plan_tiles(shape, self.size, threshold=1.0)

    def embed(self, image, *, contrast_limits=None, tiling="auto"):
        lab = np.asarray(image).astype(np.int64)
        self.embedded.append(lab.shape)
        self.tiling_args.append(tiling)
        return _Token(lab, lab.shape, min(1.0, self.size / max(lab.shape)))

    def _one(self, tok: _Token, point) -> Prediction:
        h, w = tok.original_size
        r = min(h - 1, int(np.floor(point[0] + 0.5)))
        c = min(w - 1, int(np.floor(point[1] + 0.5)))
        obj = int(tok.labels[r, c])
        m = tok.labels == obj if obj else np.zeros((h, w), bool)
        if m.sum() * tok.zoom**2 < self.min_px:  # lost at model resolution
            m = np.zeros((h, w), bool)
        logits = np.repeat(np.where(m, 10.0, -10.0).astype(np.float32)[None], 3, axis=0)
        return Prediction(logits > 0, np.full(3, 1.0 if m.any() else 0.1), logits)

    def predict_batch(
        self,
        embedding,
        points=None,
        labels=None,
        boxes=None,
        masks=None,
        multimask=True,
        upscale=True,
    ):
        return [self._one(embedding, np.asarray(p, float).reshape(-1, 2)[0]) for p in points]

    def upscale(self, embedding, logits):
        return np.asarray(logits)


def _small_and_large(shape=(128, 128)) -> np.ndarray:
    """Small disks (lost when 128 px shrink to 64), one large disk cut by every tile.

    The small disks are centred on points of the prompt grids (spacing 8 px
    with 16 points per side, in the whole slice and in the tiles alike).
    """
    lab = np.zeros(shape, np.int32)
    k = 1
    for r in range(12, shape[0], 24):
        for c in range(12, shape[1], 24):
            if (r - 64) ** 2 + (c - 64) ** 2 > 30**2:
                lab[disk((r, c), 4, shape=shape)] = k
                k += 1
    lab[disk((64, 64), 22, shape=shape)] = k  # wider than the tiles' 16 px overlap
    return lab


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]).astype(np.int64), axis=1)
    fa, fb = pairs
    if ((fa == 0) != (fb == 0)).any():
        return False
    return len(np.unique(fa)) == len(np.unique(fb)) == pairs.shape[1]


def test_crop_plan_whole_slice_then_tiles_at_the_slice_point_spacing():
    grid = TileGrid((512, 512), 256, 64)
    crops = plan_crops((512, 512), EverythingParams(points_per_side=32), grid)
    assert crops[0].layer == 0 and crops[0].box == (0, 0, 512, 512)
    assert crops[0].points_per_side == 32
    tiles = crops[1:]
    assert [c.tile for c in tiles] == list(range(len(grid))) == list(range(9))
    assert all(c.layer == TILE_LAYER and c.points_per_side == 16 for c in tiles)
    assert [c.box for c in tiles] == [grid.window(i) for i in range(9)]
    # crop layers keep SAM's meaning; crops are ordered from large to small
    crops = plan_crops((512, 512), EverythingParams(points_per_side=32, crop_layers=2), grid)
    sides = [max(c.box[2] - c.box[0], c.box[3] - c.box[1]) for c in crops]
    assert sides == sorted(sides, reverse=True) and len(crops) == 1 + 4 + 16 + 9
    # at least half the slice's points per side: 8 at the slice spacing, raised to 16
    assert tile_points_per_side(32, (0, 0, 200, 256), (200, 1024)) == 16
    assert tile_points_per_side(32, (0, 0, 256, 256), (4096, 4096)) == 16
    assert tile_points_per_side(32, (0, 0, 256, 256), (300, 300)) == 27  # slice spacing
    assert tile_points_per_side(2, (0, 0, 64, 64), (1000, 1000)) == 1
    with pytest.raises(ValueError, match="tiling"):
        EverythingParams(tiling="on")


def test_tiles_find_small_objects_that_resizing_loses():
    lab = _small_and_large()
    n_small = int(lab.max()) - 1
    off = segment_everything(lab, predictor=_ZoomOracle(), points_per_side=16, tiling="off")
    assert len(off.objects) == 1  # only the large disk survives the 2x shrink
    oracle = _ZoomOracle()
    res = segment_everything(lab, predictor=oracle, points_per_side=16, contrast_limits=(0, 99))
    # every object once: small ones from the tiles, the large one (cut by every
    # tile, so dropped there) from the whole slice; no duplicates from tile overlaps
    assert len(res.objects) == n_small + 1
    assert _same_partition(res.labels, lab)
    assert res.stats["crops"] == 1 + 9
    # the whole slice resized, the tiles at native size, never tiled again
    assert oracle.embedded == [(128, 128)] + [(64, 64)] * 9
    assert set(oracle.tiling_args) == {"off"}
    assert res.stats["prompts"] == 16 * 16 + 9 * 8 * 8


def test_without_plan_tiles_or_when_the_slice_fits_nothing_changes():
    lab = _small_and_large()
    plain = _ZoomOracle(has_tiles=False)
    res = segment_everything(lab, predictor=plain, points_per_side=16)
    assert res.stats["crops"] == 1 and len(plain.embedded) == 1
    small = lab[:64, :64]
    oracle = _ZoomOracle()
    res = segment_everything(small, predictor=oracle, points_per_side=16)
    assert res.stats["crops"] == 1 and oracle.embedded == [(64, 64)]


def test_progress_and_cancel_count_tiles():
    lab = _small_and_large()
    calls = []
    segment_everything(
        lab,
        predictor=_ZoomOracle(),
        points_per_side=16,
        points_per_batch=64,
        progress=lambda d, t: calls.append((d, t)),
    )
    per_tile = 1 + math.ceil(8 * 8 / 64)
    total = (1 + 16 * 16 // 64) + 9 * per_tile
    assert calls == [(i, total) for i in range(1, total + 1)]

    event = threading.Event()
    oracle = _ZoomOracle()

    def progress(done, total):
        if done == 8:  # inside the tiles
            event.set()

    with pytest.raises(Cancelled):
        segment_everything(
            lab, predictor=oracle, points_per_side=16, progress=progress, cancel=event
        )
    assert len(oracle.embedded) < 10


def test_a_tiled_embedding_is_reused_for_the_whole_slice_and_its_tiles():
    lab = _small_and_large()
    oracle = _ZoomOracle()
    grid = oracle.plan_tiles(lab.shape)
    emb = TiledEmbedding(grid, lab.shape, None, lab, lambda parts: [oracle.embed(p) for p in parts])
    emb.tile(4)
    res = segment_everything(lab, predictor=oracle, points_per_side=16, embedding=emb)
    assert _same_partition(res.labels, lab)
    assert emb.computed == list(range(9))  # the missing tiles were computed in it
    assert len(oracle.embedded) == 1 + 9  # overview + tiles, each once
    # tiling="off" uses only its overview
    again = segment_everything(
        lab, predictor=oracle, points_per_side=16, embedding=emb, tiling="off"
    )
    assert len(again.objects) == 1 and len(oracle.embedded) == 10


def test_stack_passes_tiling_through():
    lab = np.stack([_small_and_large()] * 2)
    on = segment_everything_stack(lab, predictor=_ZoomOracle(), points_per_side=16)
    off = segment_everything_stack(lab, predictor=_ZoomOracle(), points_per_side=16, tiling="off")
    assert len(on.objects) == int(lab.max()) and len(off.objects) == 1


# --------------------------------------------------------------------------- real model

#: The micro model on the slice below (384 x 384, 16 points per side, pred_iou_thresh
#: 0.7, the rest micro's recommended options), measured: F1@0.5 0.791 tiled vs 0.641
#: resized; mean best-match IoU per true nucleus 0.625 vs 0.478. With SAM's generic
#: options (stability 0.9, box NMS 0.7, containment 0.8) tiled: F1 0.692, IoU 0.523.
#: The floors leave room for float rounding (threads). Stage 4 of the model
#: (docs/bundled_model.md) does better with the generic options than stage 3 did:
#: tiled F1 0.806 with micro's options vs 0.756 generic, so the options' margin is
#: asked separately (smaller than tiling's). Stage 5 (shipped): F1 0.823 tiled, 0.694
#: resized, 0.724 generic; best-match IoU 0.679 / 0.502 / 0.547.
MICRO_F1_FLOOR = 0.72
MICRO_MIN_GAIN = 0.06
MICRO_OPTIONS_GAIN = 0.02


def _scores(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """F1 at IoU 0.5 and the mean best-match IoU per true object."""
    g = gt.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    n_p = int(p.max()) + 1
    both = (g > 0) & (p > 0)
    keys, inter = np.unique(g[both] * n_p + p[both], return_counts=True)
    area_g = np.bincount(g)
    area_p = np.bincount(p, minlength=n_p)
    ig = keys // n_p
    iou = inter / (area_g[ig] + area_p[keys % n_p] - inter)
    tp = int((iou > 0.5).sum())
    n_true = int((area_g[1:] > 0).sum())
    n_pred = int((area_p[1:] > 0).sum())
    best = np.zeros(len(area_g))
    np.maximum.at(best, ig, iou)
    return 2 * tp / max(1, n_true + n_pred), float(best[1:][area_g[1:] > 0].mean())


def test_micro_model_tiles_beat_resizing_on_small_nuclei():
    torch = pytest.importorskip("torch")
    from napari_sam.predictor import Predictor
    from napari_sam.synthetic import nuclei_2d

    predictor = Predictor("micro", precision="float32")
    image, gt = nuclei_2d((384, 384), seed=9913, radius=(4.0, 15.0))
    kw = {"predictor": predictor, "points_per_side": 16, "pred_iou_thresh": 0.7}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ~12 s; several threads on a shared 2-core machine take longer
    generic = {"stability_score_thresh": 0.9, "box_nms_thresh": 0.7, "containment_thresh": 0.8}
    try:
        tiled = segment_everything(image, **kw)
        resized = segment_everything(image, tiling="off", **kw)
        tiled_generic = segment_everything(image, **kw, **generic)
    finally:
        torch.set_num_threads(threads)
    assert tiled.stats["crops"] == 1 + 4 and resized.stats["crops"] == 1
    (f1_tiled, best_tiled), (f1_resized, best_resized), (f1_generic, best_generic) = (
        _scores(gt, tiled.labels),
        _scores(gt, resized.labels),
        _scores(gt, tiled_generic.labels),
    )
    assert f1_tiled >= MICRO_F1_FLOOR, (f1_tiled, f1_resized)
    assert f1_tiled > f1_resized + MICRO_MIN_GAIN, (f1_tiled, f1_resized)
    assert best_tiled > best_resized + MICRO_MIN_GAIN, (best_tiled, best_resized)
    # the model's recommended options (registry) beat SAM's generic ones
    assert f1_tiled > f1_generic + MICRO_OPTIONS_GAIN, (f1_tiled, f1_generic)
    assert best_tiled > best_generic + MICRO_OPTIONS_GAIN, (best_tiled, best_generic)
