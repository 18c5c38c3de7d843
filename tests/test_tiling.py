"""Tiled embeddings: grid geometry, routing, stitching, fallback, and real quality."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sam.predictor import Prediction
from napari_sam.tiling import TiledEmbedding, TileGrid, plan_tiles, predict_tiled, tile_starts
from tolerance import assert_close_rounding


# ------------------------------------------------------------------ geometry
@pytest.mark.parametrize("length", [256, 257, 300, 512, 1000, 4096])
@pytest.mark.parametrize("overlap", [0, 64, 128])
def test_tile_starts_cover_with_overlap(length, overlap):
    tile = 256
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0
    assert starts[-1] == max(0, length - tile)
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all()
    for a, b in itertools.pairwise(starts):
        assert a + tile - b >= overlap  # neighbours overlap by at least `overlap`


def test_plan_tiles_threshold_and_defaults():
    assert plan_tiles((256, 256), 256) is None
    assert plan_tiles((384, 300), 256) is None  # <= 1.5x by default
    grid = plan_tiles((512, 512), 256)
    assert grid == TileGrid((512, 512), 256, 64)
    assert len(grid) == 9
    assert plan_tiles((300, 200), 256, threshold=1.0).origins == [(0, 0), (44, 0)]


def test_grid_rejects_bad_overlap():
    with pytest.raises(ValueError, match="overlap"):
        TileGrid((512, 512), 256, 256)


def test_route_prefers_inner_margin_and_centre():
    grid = TileGrid((512, 512), 256, 64)  # starts 0, 192, 256 per axis
    # an object around (250, 250): the centre tile (192..448) holds it with most margin
    index, margin = grid.route((240, 240, 260, 260))
    assert grid.origins[index] == (192, 192)
    assert margin == pytest.approx(48)
    # near the slice's corner: the corner tile, whose outer edges are the slice border
    index, margin = grid.route((2, 2, 10, 10))
    assert grid.origins[index] == (0, 0)
    # larger than any tile: negative margin
    _, margin = grid.route((10, 10, 400, 400))
    assert margin < 0


def test_touches_inner_edge():
    grid = TileGrid((512, 512), 256, 64)
    corner = grid.origins.index((0, 0))
    mask = np.zeros((256, 256), bool)
    mask[0, 5] = True  # top edge is the slice border: fine
    assert not grid.touches_inner_edge(corner, mask)
    mask[100, 255] = True  # right edge is inside the slice
    assert grid.touches_inner_edge(corner, mask)


# ------------------------------------------------------- stitching, stand-in
@dataclass
class _Part:
    """Stand-in embedding: the (contrast-mapped) pixels it was computed from."""

    image: np.ndarray
    original_size: tuple[int, int]


class _ThresholdPredictor:
    """Answers a prompt with the bright connected component under its first positive cue.

    Works on whatever it was embedded on (a tile or the whole slice), so
    stitched tile masks can be compared with the answer on the whole slice.
    """

    def __init__(self, tile_score: float = 1.0):
        self.embedded: list[tuple[int, int]] = []
        self.tile_score = tile_score  # predicted IoU on tiles; 1.0 on the whole slice

    def decode(self, emb, **prompts):
        """The whole-slice decoder that the tiling layer is given."""
        return self.predict_batch(emb, **prompts)

    def embed_parts(self, parts: list[np.ndarray]) -> list[_Part]:
        self.embedded.extend(p.shape for p in parts)
        return [_Part(p, p.shape) for p in parts]

    def predict_batch(self, emb, points=None, labels=None, boxes=None, masks=None,
                      multimask=True):
        comps, _ = ndi.label(emb.image > 0.5)
        n = len(points if points is not None else boxes if boxes is not None else masks)
        out = []
        for b in range(n):
            if points is not None:
                lab = np.asarray(labels[b])
                r, c = np.asarray(points[b])[lab == 1][0]
            elif boxes is not None:
                r0, c0, r1, c1 = boxes[b]
                r, c = (r0 + r1) / 2, (c0 + c1) / 2
            else:
                r, c = np.argwhere(masks[b]).mean(axis=0)
            k = comps[round(r), round(c)]
            m = (comps == k) if k else np.zeros(emb.image.shape, bool)
            k_masks = np.repeat(m[None], 3 if multimask else 1, axis=0)
            on_tile = emb.image.shape == (256, 256)
            scores = np.full(len(k_masks), self.tile_score if on_tile else 1.0, np.float32)
            out.append(Prediction(k_masks, scores, k_masks.astype(np.float32)))
        return out


def _scene(shape=(512, 512)):
    image = np.zeros(shape, np.float32)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    blobs = [(40, 40, 12), (250, 250, 15), (255, 130, 10), (470, 470, 20), (300, 300, 150)]
    truth = np.zeros(shape, np.int32)
    for i, (r, c, rad) in enumerate(blobs, start=1):
        disc = (rr - r) ** 2 + (cc - c) ** 2 <= rad**2
        truth[disc & (truth == 0)] = i
    image[truth > 0] = 1.0
    return image, truth


def _tiled(image, predictor):
    grid = plan_tiles(image.shape, 256)
    return TiledEmbedding(grid, image.shape, None, image, predictor.embed_parts)


def test_small_objects_decoded_on_tiles_and_stitched():
    image, truth = _scene()
    truth[truth == 5] = 0  # no big object here
    image = (truth > 0).astype(np.float32)
    pred = _ThresholdPredictor()
    emb = _tiled(image, pred)
    assert pred.embedded == []  # lazy: nothing embedded before the first prompt
    ids = [1, 2, 3, 4]
    centres = [np.argwhere(truth == i).mean(axis=0) for i in ids]
    out = predict_tiled(pred.decode, emb, [c[None] for c in centres], [[1]] * 4, None, None, True)
    for i, p in zip(ids, out):
        assert p.masks.shape == (3, 512, 512)
        np.testing.assert_array_equal(p.best_mask, truth == i)
    assert pred.embedded.count((512, 512)) == 1  # the overview, once, for the comparison
    assert len(emb.computed) < emb.n_tiles  # only the tiles that held a prompt


def test_the_higher_predicted_iou_wins_between_tile_and_overview():
    image, truth = _scene()
    truth[truth == 5] = 0
    image = (truth > 0).astype(np.float32)
    centre = np.argwhere(truth == 1).mean(axis=0)[None]
    for tile_score, from_tile in ((1.0, True), (0.5, False)):
        pred = _ThresholdPredictor(tile_score)
        emb = _tiled(image, pred)
        (p,) = predict_tiled(pred.decode, emb, [centre], [[1]], None, None, True)
        np.testing.assert_array_equal(p.best_mask, truth == 1)
        assert float(p.scores.max()) == (tile_score if from_tile else 1.0)


def test_object_larger_than_a_tile_falls_back_to_overview():
    image, _ = _scene()
    pred = _ThresholdPredictor()
    emb = _tiled(image, pred)
    # a click inside the big disc (id 5), far from the small ones
    (p,) = predict_tiled(pred.decode, emb, [np.array([[300.0, 380.0]])], [[1]], None, None, False)
    comps, _ = ndi.label(image > 0.5)
    np.testing.assert_array_equal(p.best_mask, comps == comps[300, 380])
    assert p.best_mask.sum() > 256 * 256  # bigger than any tile
    assert (512, 512) in pred.embedded  # the overview was computed


def test_box_larger_than_tiles_goes_to_overview_and_masks_are_cropped():
    image, truth = _scene()
    pred = _ThresholdPredictor()
    emb = _tiled(image, pred)
    (p,) = predict_tiled(pred.decode, emb, None, None, [np.array([150, 150, 450, 450])], None, True)
    assert p.best_mask[300, 300]
    with pytest.raises(ValueError, match="slice's shape"):
        predict_tiled(pred.decode, emb, None, None, None, [np.zeros((64, 64), np.float32)], True)
    (m,) = predict_tiled(pred.decode, emb, None, None, None, [truth == 1], True)
    np.testing.assert_array_equal(m.best_mask, truth == 1)


# ----------------------------------------------------- through the Predictor
@pytest.fixture(scope="module")
def micro_predictor():
    from napari_sam.model.bundled import read_bundled_state_dict
    from napari_sam.model.checkpoint import model_from_state_dict
    from napari_sam.predictor import Predictor

    return Predictor(model_from_state_dict(read_bundled_state_dict("micro")), device="cpu",
                     precision="float32")


@pytest.mark.numerics
def test_predictor_tiles_large_slices_lazily(micro_predictor):
    from napari_sam.synthetic import nuclei_2d

    image, _ = nuclei_2d((512, 512), seed=77, radius=(4.0, 15.0))
    emb = micro_predictor.embed(image)
    assert isinstance(emb, TiledEmbedding)
    assert emb.n_tiles == 9 and emb.computed == []
    assert emb.metadata["tiling"] == {"tile": 256, "overlap": 64, "n_tiles": 9}
    plain = micro_predictor.embed(image, tiling="off")
    assert not isinstance(plain, TiledEmbedding)
    assert micro_predictor.embed(image[:256, :256]).__class__ is plain.__class__
    # every tile uses the whole slice's intensity mapping
    from napari_sam.normalize import intensity_range

    r0, c0, r1, c1 = emb.grid.window(4)
    tile = emb.tile(4)
    direct = micro_predictor.embed(image[r0:r1, c0:c1], contrast_limits=intensity_range(image))
    tokens = direct.features.shape[-1] ** 2  # the encoder's longest sum (attention)
    assert_close_rounding(tile.features, direct.features, reduction_length=tokens)
    with pytest.raises(ValueError, match="tiling"):
        micro_predictor.embed(image, tiling="yes")
    # compute(): every tile and the overview, in batches, equal to one at a time
    steps = []
    emb.compute(progress=lambda done, total: steps.append((done, total)))
    assert emb.computed == list(range(9)) and steps[-1] == (10, 10)
    # batched tiles: other kernels, the same sums
    assert_close_rounding(emb.tile(4).features, direct.features, reduction_length=tokens, k=4)
    batch = micro_predictor.embed_batch([image[:256, :256], image[:100, :300]])
    assert [b.original_size for b in batch] == [(256, 256), (100, 300)]


def test_tiling_recovers_small_nuclei_in_a_large_slice(micro_predictor, monkeypatch):
    """Real quality: centre clicks on 512x512 nuclei, tiled vs whole-slice resize."""
    from napari_sam.synthetic import nuclei_2d
    from napari_sam.training.validation import object_prompts

    # tiling alone: zooming into small objects (tests/test_zoom.py) rescues the resize too
    monkeypatch.setattr(micro_predictor, "zoom", "off")
    image, labels = nuclei_2d((512, 512), seed=4242, radius=(4.0, 15.0))
    ids, points, _ = object_prompts(labels, 30)
    scores = {}
    for mode in ("auto", "off"):
        emb = micro_predictor.embed(image, tiling=mode)
        preds = micro_predictor.predict_batch(
            emb, points=[p[None] for p in points], labels=[[1]] * len(points)
        )
        ious = []
        for k, p in zip(ids, preds):
            m, t = p.best_mask, labels == k
            ious.append((m & t).sum() / max(1, (m | t).sum()))
        scores[mode] = float(np.mean(ious))
    assert scores["auto"] >= 0.75, scores
    assert scores["auto"] > scores["off"] + 0.1, scores
