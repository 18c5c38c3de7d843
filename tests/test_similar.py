"""find_similar ("find all like this"): exact tests with stand-ins, plus the bundled model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

import napari_sam
from napari_sam.predictor import Embedding
from napari_sam.similar import SimilarResult, find_similar, pooled_features
from stand_ins import OraclePredictor

H = W = 96
#: (centre, radius, intensity, feature channel) of the objects; ids follow the list
OBJECTS = [
    ((14, 14), 7, 100, 0), ((14, 46), 7, 110, 0), ((14, 78), 7, 95, 0),   # kind A
    ((46, 14), 7, 105, 0), ((46, 46), 7, 100, 0),                          # kind A
    ((46, 78), 3, 250, 1), ((78, 14), 3, 240, 1),                          # kind B: small, bright
    ((78, 46), 7, 100, 2), ((78, 78), 7, 102, 2),                          # kind C: looks like A
]
KIND_A = [1, 2, 3, 4, 5]


def _scene(objects=OBJECTS, shape=(H, W)):
    labels = np.zeros(shape, np.uint16)
    image = np.full(shape, 10, np.uint16)
    channel = np.full(shape, -1, np.int64)
    rr, cc = np.indices(shape)
    for k, ((r, c), radius, value, ch) in enumerate(objects, start=1):
        disk = (rr - r) ** 2 + (cc - c) ** 2 <= radius**2
        labels[disk], image[disk], channel[disk] = k, value + k % 3, ch
    return labels, image, channel


@dataclass(frozen=True)
class FeatureEmbedding:
    """The oracle's embedding plus a feature map: one channel per kind, 1 px cells."""

    z: int
    original_size: tuple[int, int]
    contrast_limits: tuple[float, float] | None
    features: np.ndarray
    input_size: tuple[int, int]


class FeatureOracle(OraclePredictor):
    """The oracle whose embeddings carry a feature map: channel ``kind`` is 1 on the
    objects of that kind, a constant channel 0.1 everywhere (background)."""

    def __init__(self, labels, images, channels, n_channels: int = 3):
        super().__init__(labels, images)
        channels = np.asarray(channels)
        self.channels = channels[None] if channels.ndim == 2 else channels
        self.n_channels = n_channels

    def embed(self, image, *, contrast_limits=None):
        tok = super().embed(image, contrast_limits=contrast_limits)
        ch = self.channels[tok.z]
        feats = np.zeros((1, self.n_channels + 1, *ch.shape), np.float32)
        feats[0, -1] = 0.1
        for k in range(self.n_channels):
            feats[0, k][ch == k] = 1.0
        return FeatureEmbedding(tok.z, tok.original_size, tok.contrast_limits, feats,
                                tok.original_size)


def _ids_of(result: SimilarResult, labels: np.ndarray, threshold=None) -> set[int]:
    """The true ids that the proposed candidates are (exactly)."""
    chosen = result.labels_above(threshold)
    found = set()
    for cid in np.unique(chosen[chosen > 0]):
        (true_id,) = np.unique(labels[chosen == cid])
        np.testing.assert_array_equal(chosen == cid, labels == true_id)  # pixel-exact
        found.add(int(true_id))
    return found


def test_finds_the_other_objects_of_the_exemplars_kind():
    labels, image, channel = _scene()
    oracle = FeatureOracle(labels, image, channel)
    res = find_similar(image, [labels == 1, labels == 2, labels == 4], oracle)
    # candidates: every object but the exemplars, each exactly its true mask
    assert res.labels.max() == len(res.candidates) == len(OBJECTS) - 3
    assert _ids_of(res, labels, threshold=0.0) == set(range(1, 10)) - {1, 2, 4}
    assert _ids_of(res, labels) == {3, 5}
    assert res.excluded == 3
    by_true = {int(np.unique(labels[res.labels == c.id])[0]): c for c in res.candidates}
    assert by_true[3].cosine == pytest.approx(1.0) and by_true[3].size_distance == 0
    assert by_true[8].cosine < 0.1  # kind C: same size and brightness, other features
    assert by_true[6].size_distance > 1.0 and by_true[6].intensity_distance > 0.3
    assert res.selected.tolist() == [c.score >= 0.5 for c in res.candidates]
    np.testing.assert_array_equal(res.scores, [c.score for c in res.candidates])


def test_exemplars_as_integer_labels_and_existing_labels_left_out():
    labels, image, channel = _scene()
    oracle = FeatureOracle(labels, image, channel)
    exemplar_labels = np.where(np.isin(labels, [1, 2]), labels, 0)
    existing = np.where(labels == 5, 7, 0)
    res = find_similar(image, exemplar_labels, oracle, labels=existing)
    assert _ids_of(res, labels) == {3, 4}
    assert res.excluded == 3


def test_without_features_size_and_intensity_rank():
    labels, image, _ = _scene()
    oracle = OraclePredictor(labels, image)  # embeddings without a feature map
    res = find_similar(image, [labels == 1, labels == 2, labels == 4], oracle)
    assert _ids_of(res, labels) == {3, 5, 8, 9}  # kind C cannot be told from A
    assert all(np.isnan(c.cosine) for c in res.candidates)


def test_candidates_are_reused():
    labels, image, channel = _scene()
    oracle = FeatureOracle(labels, image, channel)
    first = find_similar(image, [labels == 1], oracle)
    calls = oracle.decoder_calls
    again = find_similar(image, [labels == 6], oracle, candidates=first.everything)
    assert oracle.decoder_calls == calls  # everything mode did not run again
    assert _ids_of(again, labels) == {7}


def test_pooled_features_plain_resized_and_tiled():
    from napari_sam.tiling import TiledEmbedding, TileGrid

    # a 2x2 grid of cells over a 64x32 slice resized into a 16 px input (8x16 used)
    feats = np.arange(2 * 4, dtype=np.float32).reshape(1, 2, 2, 2)
    emb = Embedding(features=feats, original_size=(64, 32), input_size=(16, 8))
    mask = np.zeros((64, 32), bool)
    mask[0:32, 0:32] = True  # rows 0..31 -> input rows 0..7 -> cell row 0; cols -> cell col 0
    np.testing.assert_allclose(pooled_features(emb, mask), feats[0, :, 0, 0])
    mask[32:, :] = True  # rows 32..63 -> cell row 1
    np.testing.assert_allclose(pooled_features(emb, mask), feats[0, :, :, 0].mean(axis=1))
    assert pooled_features(emb, np.zeros((64, 32), bool)) is None
    # tiled: a small object routes to its tile, a large one to the overview
    grid = TileGrid((48, 48), 32, 16)
    tile = [Embedding(np.full((1, 1, 4, 4), float(i), np.float32), (32, 32), (32, 32))
            for i in range(len(grid))]
    overview = Embedding(np.full((1, 1, 4, 4), 9.0, np.float32), (48, 48), (32, 32))
    tiled = TiledEmbedding.from_features(grid, tile, overview, (48, 48))
    small = np.zeros((48, 48), bool)
    small[36:40, 36:40] = True
    index, _ = grid.route((36, 36, 39, 39))
    assert pooled_features(tiled, small)[0] == float(index)
    big = np.ones((48, 48), bool)
    assert pooled_features(tiled, big)[0] == 9.0


def test_stack_mode_scores_3d_objects():
    from stand_ins import ellipsoid_labels

    shape = (8, 64, 64)
    objects = [((4, 16, 16), (3, 7, 7)), ((4, 16, 48), (3, 7, 7)), ((4, 48, 16), (3, 7, 7)),
               ((4, 48, 48), (2, 3, 3))]
    labels = ellipsoid_labels(shape, objects)
    image = (np.where(labels > 0, 100 + labels, 10) + np.arange(8)[:, None, None]).astype(
        np.uint16
    )
    image[labels == 4] += 150  # the small one is bright too
    channel = np.where(labels > 0, 0, -1)
    channel[labels == 4] = 1
    oracle = FeatureOracle(labels, image, channel)
    res = find_similar(image, labels == 1, oracle, stack=True, min_z_extent=1)
    assert res.labels.shape == shape
    chosen = res.labels_above()
    found = {int(np.unique(labels[chosen == c])[0]) for c in np.unique(chosen[chosen > 0])}
    assert found == {2, 3}
    for true_id in (2, 3):
        truth = labels == true_id
        truth[truth.sum(axis=(1, 2)) < 16] = False  # caps below everything's min_area
        (cid,) = np.unique(chosen[truth])
        np.testing.assert_array_equal(chosen == cid, truth)


def test_bad_input_says_what_to_do():
    labels, image, channel = _scene()
    oracle = FeatureOracle(labels, image, channel)
    with pytest.raises(ValueError, match="exemplar 1 is empty"):
        find_similar(image, [labels == 1, labels == 99], oracle)
    with pytest.raises(ValueError, match="exemplar labels are empty"):
        find_similar(image, np.zeros_like(labels), oracle)
    with pytest.raises(ValueError, match=r"exemplar_masks has shape \(5, 5\)"):
        find_similar(image, np.ones((5, 5), bool), oracle)
    with pytest.raises(ValueError, match="not a bool mask"):
        find_similar(image, [labels.astype(np.int32)[None][0] * 2], oracle)
    with pytest.raises(ValueError, match=r"pass one slice \(image\[z\]\) or stack=True"):
        find_similar(np.stack([image, image]), [labels == 1], oracle)
    with pytest.raises(ValueError, match="stack=True needs a"):
        find_similar(image, [labels == 1], oracle, stack=True)
    with pytest.raises(ValueError, match="threshold must be in"):
        find_similar(image, [labels == 1], oracle, threshold=2)
    with pytest.raises(ValueError, match="labels has shape"):
        find_similar(image, [labels == 1], oracle, labels=np.zeros((3, 3), int))


def test_public_lazy_name():
    assert napari_sam.find_similar is find_similar
    assert "find_similar" in napari_sam.__all__


def test_micro_three_exemplars_beat_everything_mode():
    """The bundled model on one generated scene of nuclei, bright cells and debris
    (benchmarks/find_similar.py): higher F1 than everything mode alone, with less
    than half its false positives."""
    import sys
    from pathlib import Path

    pytest.importorskip("torch")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from find_similar import f1, match, scene

    from napari_sam.everything import segment_everything
    from napari_sam.predictor import Predictor

    image, nuclei, _ = scene(11, 256, 12, 25)
    predictor = Predictor("micro", device="cpu", precision="float32")
    emb = predictor.embed(image)
    everything = segment_everything(image, predictor=predictor, embedding=emb)
    rng = np.random.default_rng(1)
    for _ in range(3):
        ids = rng.choice(np.arange(1, nuclei.max() + 1), 3, replace=False)
        exemplars = [nuclei == i for i in ids]
        res = find_similar(image, exemplars, predictor, candidates=everything, embedding=emb)
        # everything mode alone: its objects other than the exemplars' own
        alone = np.where(np.isin(everything.labels, _on(everything.labels, exemplars)), 0,
                         everything.labels)
        base = match(alone, nuclei, set(ids.tolist()))
        ours = match(res.labels_above(), nuclei, set(ids.tolist()))
        assert f1(*ours) >= f1(*base)
        assert ours[1] < base[1] / 2


def _on(labels: np.ndarray, masks: list[np.ndarray]) -> list[int]:
    """Ids of ``labels`` lying more than 20 % on the masks."""
    taken = np.logical_or.reduce(masks)
    area = np.bincount(labels.ravel())
    over = np.bincount(labels[taken].ravel(), minlength=len(area))
    return [i for i in range(1, len(area)) if area[i] and over[i] > 0.2 * area[i]]


def test_similar_imports_no_gui_and_no_torch():
    import subprocess
    import sys

    code = ("import sys, napari_sam.similar, napari_sam.similar_stack; "
            "print([m for m in ('torch', 'napari', 'qtpy', 'PyQt6') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
