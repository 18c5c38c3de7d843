"""The annotator's embedding store: reuse across annotators, refusals, write failures, tiles.

Scripted (blocking) API on napari's Qt-free ``ViewerModel``, except the last
test, which checks that messages of worker threads reach the main thread.
"""

from __future__ import annotations

import errno
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from faults import read_only_folder
from napari_sam.annotator import Annotator
from napari_sam.predictor import Embedding, Prediction, resized_shape
from napari_sam.store import EmbeddingStore


class FeaturePredictor:
    """A stand-in predictor whose embeddings have features the store can hold.

    It describes its model (``fingerprint``) and geometry (``image_size``,
    ``model.config``) like a real ``Predictor``, so opening a store embeds
    nothing; ``embed_calls`` lists the mean of every embedded slice.
    ``predict`` answers a disk of radius 6 around the first point.
    """

    model_name = "stand-in"
    precision = "float32"
    image_size = 256

    def __init__(self, fingerprint: str = "stand-in:1") -> None:
        self.fingerprint = fingerprint
        self.embed_calls: list[float] = []
        self.model = SimpleNamespace(
            config=SimpleNamespace(embedding_size=8, prompt_embed_dim=4)
        )

    def plan_tiles(self, shape, tiling=None):
        return None

    def embed(self, image, *, contrast_limits=None, tiling=None):
        image = np.asarray(image)
        self.embed_calls.append(float(image.mean()))
        h, w = image.shape[:2]
        features = torch.full((1, 4, 8, 8), float(image.mean()) / 1000.0)
        limits = None if contrast_limits is None else tuple(contrast_limits)
        return Embedding(features, (h, w), resized_shape(h, w, 256), limits)

    def predict(self, embedding, points=None, labels=None, box=None, mask=None, multimask=True):
        h, w = embedding.original_size
        r, c = np.floor(np.asarray(points, float).reshape(-1, 2)[0] + 0.5)
        rr, cc = np.ogrid[:h, :w]
        masks = ((rr - r) ** 2 + (cc - c) ** 2 <= 36)[None]
        return Prediction(masks, np.array([0.9], np.float32), np.where(masks, 8.0, -8.0))


def stack(seed=0, shape=(4, 40, 48)):
    data = np.random.default_rng(seed).integers(100, 1000, shape).astype(np.uint16)
    data[:, 0, 0] = np.arange(shape[0]) * 7 + 100  # distinct slice means
    return data


def file_layer(viewer, data, path, **kwargs):
    """An image layer as a reader makes it: ``layer.source.path`` is set."""
    from napari.layers._source import layer_source

    with layer_source(path=str(path)):
        return viewer.add_image(data, contrast_limits=(0, 1000), **kwargs)


def messages(ann):
    """The notifications (not the status lines) of ``ann`` from now on."""
    got = []
    ann.events.message.connect(
        lambda e: got.append((e.level, e.message)) if e.level != "status" else None
    )
    return got


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(folder))
    return folder


@pytest.fixture
def viewer(viewer_model, cache_dir):  # never the user's cache directory
    return viewer_model


def test_second_annotator_reuses_the_store(viewer, tmp_path):
    data = stack()
    image = viewer.add_image(data, contrast_limits=(0, 1000))
    path = tmp_path / "s.embeddings.zarr"
    first = FeaturePredictor()
    ann = Annotator(viewer, image, predictor=first, store=path, normalization="display")
    ann.add_point((2, 20, 20))
    masks = ann.segment((2,))
    ann.embedding((3,))
    assert len(first.embed_calls) == 2
    assert ann.embedding_store.path == path and ann.embedding_store.completed() == [(2,), (3,)]
    ann.close(remove_layers=True)

    again = FeaturePredictor()  # same weights (fingerprint), a fresh call counter
    ann2 = Annotator(viewer, image, predictor=again, store=str(path), normalization="display")
    ann2.add_point((2, 20, 20))
    masks2 = ann2.segment((2,))
    emb = ann2.embedding((3,))
    assert again.embed_calls == []  # both read from the store
    np.testing.assert_array_equal(masks2[0], masks[0])
    assert emb.metadata["store"] == str(path) and emb.contrast_limits == (0.0, 1000.0)
    ann2.embedding((1,))
    assert len(again.embed_calls) == 1 and (1,) in ann2.embedding_store


@pytest.mark.parametrize("damage", ["truncated", "empty", "deleted"])
def test_damaged_chunk_is_recomputed_not_raised(viewer, tmp_path, damage):
    """issue 16: a damaged features chunk crashed segment() (zstd error) or gave zeros.

    The damage is said to the user as an annotator message (a notification), not as
    a ``StoreDamageWarning``."""
    import warnings

    from napari_sam.store import StoreDamageWarning

    image = viewer.add_image(stack(), contrast_limits=(0, 1000))
    path = tmp_path / "s.embeddings.zarr"
    ann = Annotator(viewer, image, predictor=FeaturePredictor(), store=path)
    ann.add_point((2, 20, 20))
    masks = ann.segment((2,))
    ann.close(remove_layers=True)
    (chunk,) = [f for f in (path / "features" / "c" / "2").rglob("*") if f.is_file()]
    if damage == "truncated":
        chunk.write_bytes(chunk.read_bytes()[:10])
    elif damage == "empty":
        chunk.write_bytes(b"")
    else:
        chunk.unlink()

    again = FeaturePredictor()
    ann2 = Annotator(viewer, image, predictor=again, store=path)
    ann2.add_point((2, 20, 20))
    said = []
    ann2.events.message.connect(lambda e: said.append((e.level, e.message)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreDamageWarning)  # a message instead
        masks2 = ann2.segment((2,))
    damage = [m for m in said if "slice (2,) was damaged" in m[1]]
    assert len(damage) == 1 and damage[0][0] == "warning", said
    assert "recomputed and rewritten" in damage[0][1]
    np.testing.assert_array_equal(masks2[0], masks[0])
    assert len(again.embed_calls) == 1  # recomputed once, and rewritten:
    assert EmbeddingStore.open(path).check_slice((2,)) is None


def test_auto_store_only_for_images_opened_from_a_file(viewer, tmp_path, cache_dir):
    data = stack()
    memory_only = viewer.add_image(data, contrast_limits=(0, 1000), name="memory")
    pred = FeaturePredictor()
    ann = Annotator(viewer, memory_only, predictor=pred)  # store="auto" by default
    ann.embedding((1,))
    assert ann.embedding_store is None and not (cache_dir / "embeddings").exists()
    ann.close(remove_layers=True)

    layer = file_layer(viewer, data, tmp_path / "cells.tif", name="from file")
    ann = Annotator(viewer, layer, predictor=pred)
    ann.embedding((1,))
    store = ann.embedding_store
    assert store.path.parent == cache_dir / "embeddings"
    assert store.path.name.startswith("cells-") and store.path.suffix == ".zarr"
    assert store.completed() == [(1,)] and len(pred.embed_calls) == 2
    ann.close(remove_layers=True)

    # the same file opened again: same store, nothing recomputed
    reopened = file_layer(viewer, data.copy(), tmp_path / "cells.tif", name="again")
    again = FeaturePredictor()
    ann = Annotator(viewer, reopened, predictor=again)
    ann.embedding((1,))
    assert again.embed_calls == [] and ann.embedding_store.path == store.path
    # the display's contrast limits do not matter in robust mode (the default) ...
    reopened.contrast_limits = (0, 800)
    ann.embedding((1,))
    assert again.embed_calls == [] and ann.embedding_store.path == store.path
    # ... in display mode they do: a store of their own
    ann.normalization = "display"
    ann.embedding((1,))
    assert len(again.embed_calls) == 1 and ann.embedding_store.path != store.path
    # store=False: memory only even for a file
    ann.close(remove_layers=True)
    ann = Annotator(viewer, reopened, predictor=FeaturePredictor(), store=False)
    ann.embedding((1,))
    assert ann.embedding_store is None


def test_auto_store_of_other_weights_under_the_same_name_is_recomputed(viewer, tmp_path):
    data = stack()
    layer = file_layer(viewer, data, tmp_path / "a.tif")
    ann = Annotator(viewer, layer, predictor=FeaturePredictor("w:1"))
    ann.embedding((0,))
    path = ann.embedding_store.path
    ann.close(remove_layers=True)
    other = FeaturePredictor("w:2")  # same model_name, other weights
    ann = Annotator(viewer, layer, predictor=other)
    got = messages(ann)
    ann.embedding((0,))
    assert len(other.embed_calls) == 1 and ann.embedding_store.path == path
    assert ann.embedding_store.metadata.model_fingerprint == "w:2" and got == []


def test_mismatching_store_is_refused_with_one_notification(viewer, tmp_path):
    data = stack()
    image = viewer.add_image(data, contrast_limits=(0, 1000))
    path = tmp_path / "other.zarr"
    ann = Annotator(viewer, image, predictor=FeaturePredictor("w:1"), store=path)
    ann.embedding((0,))
    ann.close(remove_layers=True)

    other = FeaturePredictor("w:2")
    ann = Annotator(viewer, image, predictor=other, store=path)
    got = messages(ann)
    ann.add_point((1, 20, 20))
    assert ann.segment((1,))  # works from memory
    ann.embedding((0,))
    ann.embedding((2,))
    assert len(other.embed_calls) == 3 and ann.embedding_store is None
    assert len(got) == 1
    level, text = got[0]
    assert level == "warning" and str(path) in text and "model" in text and "memory" in text
    assert EmbeddingStore.open(path).completed() == [(0,)]  # untouched

    # another image for the same store: refused too
    ann.close(remove_layers=True)
    ann = Annotator(viewer, viewer.add_image(stack(seed=1)), predictor=FeaturePredictor("w:1"),
                    store=path)
    got = messages(ann)
    ann.embedding((0,))
    assert len(got) == 1 and "image" in got[0][1]


def test_store_keeps_its_contrast_limits(viewer, tmp_path):
    image = viewer.add_image(stack(), contrast_limits=(0, 1000))
    path = tmp_path / "s.zarr"
    pred = FeaturePredictor()
    ann = Annotator(viewer, image, predictor=pred, store=path, normalization="display")
    got = messages(ann)
    ann.embedding((0,))
    image.contrast_limits = (0, 500)
    ann.embedding((0,))
    ann.embedding((1,))
    assert ann.embedding_store is None and len(pred.embed_calls) == 3
    assert len(got) == 1 and "(0.0, 1000.0)" in got[0][1] and "(0.0, 500.0)" in got[0][1]
    image.contrast_limits = (0, 1000)  # back to the store's limits: read from it again
    ann.cache.clear()
    ann.embedding((0,))
    assert len(pred.embed_calls) == 3 and ann.embedding_store is not None


@pytest.fixture
def read_only_dir(tmp_path, monkeypatch):
    folder = read_only_folder(tmp_path, monkeypatch)
    yield folder
    folder.chmod(0o755)


def test_read_only_directory_falls_back_to_memory(viewer, read_only_dir):
    image = viewer.add_image(stack(), contrast_limits=(0, 1000))
    pred = FeaturePredictor()
    path = read_only_dir / "s.zarr"
    ann = Annotator(viewer, image, predictor=pred, store=path)
    got = messages(ann)
    ann.add_point((1, 20, 20))
    assert ann.segment((1,))
    for z in range(4):
        ann.embedding((z,))
    assert len(pred.embed_calls) == 4 and ann.embedding_store is None
    assert len(got) == 1 and got[0][0] == "warning"
    assert "cannot write the embedding store" in got[0][1] and str(path) in got[0][1]
    assert not path.exists()


def test_auto_store_in_a_read_only_cache_falls_back_to_memory(
    viewer, tmp_path, monkeypatch, read_only_dir
):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(read_only_dir))
    layer = file_layer(viewer, stack(), tmp_path / "a.tif")
    pred = FeaturePredictor()
    ann = Annotator(viewer, layer, predictor=pred)
    got = messages(ann)
    ann.embedding((0,))
    ann.embedding((1,))
    assert len(pred.embed_calls) == 2 and ann.embedding_store is None
    assert len(got) == 1 and "cannot write the embedding store" in got[0][1]


def test_full_disk_warns_once_and_keeps_working(viewer, tmp_path, monkeypatch):
    import zarr

    image = viewer.add_image(stack(), contrast_limits=(0, 1000))
    path = tmp_path / "s.zarr"
    pred = FeaturePredictor()
    ann = Annotator(viewer, image, predictor=pred, store=path)
    ann.embedding((0,))  # stored

    def full(self, key, value):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zarr.Array, "__setitem__", full)
    got = messages(ann)
    ann.add_point((1, 20, 20))
    assert ann.segment((1,))
    ann.embedding((2,))
    ann.embedding((3,))
    assert len(pred.embed_calls) == 4
    assert len(got) == 1 and got[0][0] == "warning" and "No space left" in got[0][1]
    store = ann.embedding_store
    assert store.completed() == [(0,)]
    ann.cache.clear()
    ann.embedding((0,))  # stored slices are still read
    assert len(pred.embed_calls) == 4


def test_real_predictor_stores_tiled_slices_and_small_ones(
    viewer, tmp_path, tiny_predictor, monkeypatch
):
    from napari_sam.tiling import TiledEmbedding

    calls = []
    embed = tiny_predictor.embed

    def counted(image, **kwargs):
        calls.append(kwargs.get("tiling"))
        return embed(image, **kwargs)

    monkeypatch.setattr(tiny_predictor, "embed", counted)
    big = viewer.add_image(stack(shape=(2, 300, 300)), contrast_limits=(0, 1000))
    grid = tiny_predictor.plan_tiles((300, 300))
    assert grid is not None
    ann = Annotator(viewer, big, predictor=tiny_predictor, store=tmp_path / "big.zarr")
    got = messages(ann)
    ann.add_point((1, 150, 150))
    masks = ann.segment((1,))
    store = ann.embedding_store
    assert store is not None and store.completed() == [(1,)] and got == []
    assert store.metadata.tiling == {"tile": 256, "overlap": 64, "n_tiles": len(grid)}
    assert calls == [None]  # one tiled embed: every tile and the overview, then stored
    ann.close(remove_layers=True)
    calls.clear()
    big = viewer.add_image(stack(shape=(2, 300, 300)), contrast_limits=(0, 1000))
    ann = Annotator(viewer, big, predictor=tiny_predictor, store=tmp_path / "big.zarr")
    ann.add_point((1, 150, 150))
    emb = ann.embedding((1,))
    assert isinstance(emb, TiledEmbedding) and emb.computed == list(range(len(grid)))
    assert emb.metadata["store"] == str(tmp_path / "big.zarr")
    np.testing.assert_array_equal(ann.segment((1,))[0], masks[0])
    assert calls == []  # reused: nothing embedded by the second annotator
    ann.close(remove_layers=True)

    small = viewer.add_image(stack(shape=(2, 64, 80)), contrast_limits=(0, 1000))
    ann = Annotator(viewer, small, predictor=tiny_predictor, store=tmp_path / "small.zarr")
    ann.add_point((1, 30, 40))
    masks = ann.segment((1,))
    ann.close(remove_layers=True)
    calls.clear()
    ann = Annotator(viewer, small, predictor=tiny_predictor, store=tmp_path / "small.zarr")
    ann.add_point((1, 30, 40))
    emb = ann.embedding((1,))
    assert calls == [] and emb.metadata["store"] == str(tmp_path / "small.zarr")
    np.testing.assert_array_equal(ann.segment((1,))[0], masks[0])


@pytest.mark.parametrize("bad", [True, 3, ""])
def test_invalid_store_argument(viewer, bad):
    image = viewer.add_image(stack())
    with pytest.raises(ValueError, match="store must be 'auto', a path"):
        Annotator(viewer, image, predictor=FeaturePredictor(), store=bad)


def test_given_store_object_is_checked(viewer, tmp_path):
    data = stack()
    image = viewer.add_image(data, contrast_limits=(0, 1000))
    pred = FeaturePredictor()
    store = EmbeddingStore.for_stack(tmp_path / "s.zarr", data, pred, contrast_limits=(0, 1000))
    ann = Annotator(viewer, image, predictor=pred, store=store, normalization="display")
    ann.embedding((2,))
    assert ann.embedding_store is store and store.has(2)
    ann.close(remove_layers=True)
    other = FeaturePredictor("w:9")
    ann = Annotator(viewer, image, predictor=other, store=store, normalization="display")
    got = messages(ann)
    ann.embedding((2,))
    assert len(other.embed_calls) == 1 and len(got) == 1 and "model" in got[0][1]


def test_worker_messages_reach_the_main_thread(make_napari_viewer_proxy, qtbot, read_only_dir):
    import threading

    viewer = make_napari_viewer_proxy()
    image = viewer.add_image(stack(), contrast_limits=(0, 1000))
    ann = Annotator(viewer, image, predictor=FeaturePredictor(), store=read_only_dir / "s.zarr")
    threads = []
    ann.events.message.connect(lambda e: threads.append((threading.current_thread(), e.level)))
    ann.add_point((1, 20, 20))
    ann.segment((1,), blocking=False)
    qtbot.waitUntil(lambda: ann.preview is not None and not ann.busy, timeout=5000)
    warnings = [t for t, level in threads if level == "warning"]
    assert warnings == [threading.main_thread()]


def test_an_embedding_read_back_from_the_store_keeps_its_slice(viewer, tmp_path):
    """Zooming into small objects needs the slice: a stored embedding gets it back."""
    from napari_sam.model.sam import build_sam
    from napari_sam.predictor import Predictor
    from napari_sam.training.loop import micro_config

    torch.manual_seed(0)
    model = build_sam(micro_config(img_size=64, embed_dim=32, widths=(8, 8, 16, 16)))
    data = stack(shape=(3, 64, 64))
    image = viewer.add_image(data, contrast_limits=(0, 1000))
    path = tmp_path / "z.embeddings.zarr"
    ann = Annotator(viewer, image, predictor=Predictor(model, precision="float32"), store=path,
                    normalization="display")
    assert ann.embedding((1,)).image is not None
    ann.close(remove_layers=True)
    ann2 = Annotator(viewer, image, predictor=Predictor(model, precision="float32"), store=path,
                     normalization="display")
    emb = ann2.embedding((1,))
    assert emb.metadata["store"] == str(path)
    np.testing.assert_array_equal(emb.image, data[1])
