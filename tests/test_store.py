"""The zarr embedding store: round trip, provenance checks, resume, memory, write failures."""

from __future__ import annotations

import errno
import tracemalloc

import numpy as np
import pytest
import torch

from faults import FullDisk, read_only_folder
from napari_sam.model.sam import build_sam
from napari_sam.predictor import Embedding, Predictor, resized_shape
from napari_sam.store import (
    EmbeddingStore,
    NotAStoreError,
    StoreMismatchError,
    StoreWriteError,
    embed_missing,
    embed_stack,
    iter_embed,
    model_fingerprint,
    predictor_identity,
)
from napari_sam.store._zarr import ATTRS_KEY


class StandIn:
    """A fast deterministic predictor: features are a block average of the slice.

    ``calls`` lists the slices it embedded (by their first pixel, for counting).
    """

    model_name = "stand-in"
    precision = "float32"

    def __init__(self, channels: int = 8, size: int = 16, fingerprint: str = "stand-in:1"):
        self.channels, self.size, self.fingerprint = channels, size, fingerprint
        self.calls: list[int] = []

    def embed(self, image, *, contrast_limits=None):
        from napari_sam.normalize import to_rgb_float

        image = np.asarray(image)
        self.calls.append(int(image.reshape(-1)[0]))
        rgb = to_rgb_float(image, contrast_limits)[..., 0]
        h, w = rgb.shape
        rows = np.linspace(0, h, self.size + 1).astype(int)
        cols = np.linspace(0, w, self.size + 1).astype(int)
        small = np.add.reduceat(np.add.reduceat(rgb, rows[:-1], 0), cols[:-1], 1) / 255.0
        scale = np.linspace(0.5, 1.5, self.channels, dtype=np.float32)[:, None, None]
        features = (small[None] * scale).astype(np.float32)
        return Embedding(
            features=torch.from_numpy(features)[None],
            original_size=(h, w),
            input_size=resized_shape(h, w, 256),
            contrast_limits=None if contrast_limits is None else tuple(contrast_limits),
        )

    def predict(self, *args, **kwargs):  # pragma: no cover - not used here
        raise NotImplementedError


def tiny_predictor(seed: int) -> Predictor:
    torch.manual_seed(seed)
    return Predictor(build_sam("vit_tiny"), precision="float32")


@pytest.fixture(scope="module")
def tiny():
    return tiny_predictor(0)


@pytest.fixture
def stack() -> np.ndarray:
    rng = np.random.default_rng(7)
    data = rng.integers(0, 3000, (6, 48, 64)).astype(np.uint16)
    data[:, 10:30, 20:40] += 1000  # a bright square, so slices are not pure noise
    data[:, 0, 0] = np.arange(6)  # first pixel = slice number, for StandIn.calls
    return data


LIMITS = (0.0, 4000.0)


# ------------------------------------------------------------------ round trip
@pytest.mark.parametrize(
    ("dtype", "atol"), [("float16", 2e-2), ("float32", 0)], ids=["float16", "float32"]
)
def test_round_trip_matches_predictor(tiny, stack, tmp_path, dtype, atol):
    store = embed_stack(stack, tiny, tmp_path / "e.zarr", contrast_limits=LIMITS, dtype=dtype)
    assert store.missing() == [] and store.n_complete == 6
    for z in (0, 3, 5):
        ref = tiny.embed(stack[z], contrast_limits=LIMITS)
        got = store[(z,)]
        assert got.features.dtype == torch.float32
        assert got.features.shape == ref.features.shape == (1, 64, 16, 16)
        assert got.original_size == ref.original_size == (48, 64)
        assert got.input_size == ref.input_size
        assert got.contrast_limits == LIMITS
        np.testing.assert_allclose(
            got.features.numpy(), ref.features.numpy(), rtol=1e-3 if atol else 0, atol=atol
        )
        # decoding against a stored embedding gives the same masks as against a fresh one
        p_ref = tiny.predict(ref, points=[[20, 30]], labels=[1])
        p_got = tiny.predict(got, points=[[20, 30]], labels=[1])
        assert (p_ref.masks != p_got.masks).mean() < 0.01


def test_index_forms(stack, tmp_path):
    store = embed_stack(stack, StandIn(), tmp_path / "e.zarr")
    ref = store[(5,)].features
    for index in (5, -1, np.int64(5), (5,), [5]):
        assert torch.equal(store[index].features, ref)
        assert torch.equal(store(index).features, ref)
    assert 5 in store and (9,) not in store and "x" not in store
    with pytest.raises(IndexError, match="out of range"):
        store[6]
    with pytest.raises(IndexError, match="1 leading axes"):
        store[(1, 2)]


def test_4d_and_2d_stacks(tmp_path):
    rng = np.random.default_rng(0)
    tzyx = rng.integers(0, 255, (2, 3, 32, 40)).astype(np.uint8)
    store = embed_stack(tzyx, StandIn(), tmp_path / "t.zarr")
    assert store.completed() == [(t, z) for t in range(2) for z in range(3)]
    assert store.metadata.contrast_limits == (0.0, 255.0)
    ref = StandIn().embed(tzyx[1, 2], contrast_limits=(0, 255)).features
    np.testing.assert_allclose(store[(1, 2)].features, ref, rtol=1e-3, atol=1e-3)

    image = tzyx[0, 0]
    store2 = embed_stack(image, StandIn(), tmp_path / "i.zarr")
    assert store2.completed() == [()] and store2.n_slices == 1
    assert store2[()].original_size == (32, 40)

    rgb = rng.integers(0, 255, (3, 32, 40, 3)).astype(np.uint8)
    store3 = embed_stack(rgb, StandIn(), tmp_path / "rgb.zarr", slice_axes=3)
    assert store3.completed() == [(0,), (1,), (2,)]
    assert store3.metadata.slice_shape == (32, 40, 3) and store3[2].original_size == (32, 40)
    with pytest.raises(ValueError, match="colour slices take at most 3"):
        embed_stack(
            rng.integers(0, 9, (2, 32, 40, 4)), StandIn(), tmp_path / "x.zarr", slice_axes=3
        )


def test_reopen_needs_no_recomputation(stack, tmp_path):
    first = StandIn()
    embed_stack(stack, first, tmp_path / "e.zarr")
    assert sorted(first.calls) == list(range(6))
    again = StandIn()
    store = embed_stack(stack, again, tmp_path / "e.zarr")
    assert again.calls == []
    assert store.n_complete == 6
    reopened = EmbeddingStore.open(tmp_path / "e.zarr", store.metadata, mode="r")
    assert torch.equal(reopened[2].features, store[2].features)


# -------------------------------------------------------------------- provenance
@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("model", "model: computed with"),
        ("pixels", "image: pixel values differ"),
        ("shape", "image shape"),
        ("contrast", "contrast limits: store (0.0, 4000.0), requested (0.0, 3000.0)"),
    ],
    ids=["other-model", "other-image", "other-shape", "other-contrast-limits"],
)
def test_mismatch_is_refused_with_the_reason(tiny, stack, tmp_path, change, reason):
    path = tmp_path / "e.zarr"
    embed_stack(stack, tiny, path, contrast_limits=LIMITS)
    predictor, image, limits = tiny, stack, LIMITS
    if change == "model":
        predictor = tiny_predictor(1)
    elif change == "pixels":
        image = stack.copy()
        image[0, 5, 5] += 1  # a sampled slice: the quick signature sees it
    elif change == "shape":
        image = stack[:5]
    else:
        limits = (0.0, 3000.0)
    with pytest.raises(StoreMismatchError) as info:
        embed_stack(image, predictor, path, contrast_limits=limits)
    assert reason in str(info.value)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
    # nothing was overwritten
    assert EmbeddingStore.open(path).n_complete == 6


def test_changed_unsampled_slice_is_found_by_verification(stack, tmp_path):
    path = tmp_path / "e.zarr"
    embed_stack(stack, StandIn(), path)
    store = EmbeddingStore.open(path)
    changed = stack.copy()
    changed[3, 40, 40] += 1
    # the quick signature samples every slice here; drop it to model a big stack
    # where slice 3 is not sampled, then the per-slice digests must catch it
    with pytest.raises(StoreMismatchError, match=r"1 stored slice\(s\) differ.*\(3,\)"):
        for _ in iter_embed(store, changed, StandIn()):
            pass
    with pytest.raises(StoreMismatchError, match=r"slice \(3,\) differs"):
        store.get_or_compute(3, changed[3], StandIn())


def test_open_with_partial_expectation(stack, tmp_path):
    path = tmp_path / "e.zarr"
    embed_stack(stack, StandIn(), path)
    assert EmbeddingStore.open(path, {"model_fingerprint": "stand-in:1"}).n_complete == 6
    with pytest.raises(StoreMismatchError, match="stand-in:2"):
        EmbeddingStore.open(path, {"model_fingerprint": "stand-in:2"})
    with pytest.raises(ValueError, match="unknown store metadata fields"):
        EmbeddingStore.open(path, {"colour": "red"})


def test_model_fingerprint():
    torch.manual_seed(0)
    a = build_sam("vit_tiny")
    b = build_sam("vit_tiny")
    b.load_state_dict(a.state_dict())
    assert model_fingerprint(a) == model_fingerprint(b) == model_fingerprint(a.state_dict())
    assert model_fingerprint(a).startswith("blake2b:")
    with torch.no_grad():
        b.mask_decoder.iou_token.weight[0, 0] += 1e-3
    assert model_fingerprint(b) != model_fingerprint(a)
    assert predictor_identity(Predictor(a)).fingerprint == model_fingerprint(a)
    with pytest.raises(TypeError, match="fingerprint"):
        predictor_identity(object())


# ----------------------------------------------------------------- resumption
def test_half_written_slice_is_not_returned_and_is_recomputed(stack, tmp_path):
    path = tmp_path / "e.zarr"
    store = embed_stack(stack, StandIn(), path, cancel=lambda: False)
    # simulate a kill between data and flag: slice 2 rewritten, flag cleared
    store._done[(2,)] = 0
    store._features[(2,)] = np.full(store.metadata.embedding_shape, 7.0, np.float16)
    reopened = EmbeddingStore.open(path)
    assert not reopened.has(2)
    assert reopened.missing() == [(2,)]
    with pytest.raises(KeyError, match=r"slice \(2,\) has no complete embedding"):
        reopened[2]
    again = StandIn()
    embed_stack(stack, again, path)
    assert again.calls == [2]
    np.testing.assert_allclose(
        reopened[2].features,
        StandIn().embed(stack[2], contrast_limits=reopened.metadata.contrast_limits).features,
        rtol=1e-3,
        atol=1e-3,
    )


def test_cancel_then_resume_computes_only_the_rest(stack, tmp_path):
    path = tmp_path / "e.zarr"
    first = StandIn()
    progress: list[tuple[int, int]] = []
    store = embed_stack(
        stack,
        first,
        path,
        cancel=lambda: len(first.calls) >= 2,
        progress=lambda d, t: progress.append((d, t)),
    )
    # creating the store embedded slice 0 (StandIn does not describe its geometry)
    assert len(store.missing()) == 4 and progress == [(1, 6), (2, 6)]
    second = StandIn()
    report = embed_missing(EmbeddingStore.open(path), stack, second)
    assert sorted(second.calls) == [2, 3, 4, 5]
    assert (report.already_done, report.computed, report.verified, report.missing) == (2, 4, 2, 0)


def test_get_or_compute_and_bound(stack, tmp_path):
    predictor = StandIn()
    store = EmbeddingStore.for_stack(tmp_path / "e.zarr", stack, predictor)
    # StandIn does not describe its geometry: creating the store embedded slice 0
    assert predictor.calls == [0] and store.completed() == [(0,)]
    emb = store.get_or_compute(4, stack[4], predictor)
    assert predictor.calls == [0, 4] and store.has(4)
    again = store.get_or_compute(4, stack[4], predictor)
    assert predictor.calls == [0, 4]
    assert torch.equal(emb.features, again.features)  # fresh result == stored (rounded) one
    lazy = store.bound(stack, predictor)
    assert 1 not in lazy
    assert lazy[1].original_size == (48, 64) and lazy(1) is not None
    assert predictor.calls == [0, 4, 1] and 1 in lazy
    with pytest.raises(StoreMismatchError, match="stand-in:9"):
        store.get_or_compute(2, stack[2], StandIn(fingerprint="stand-in:9"))
    with pytest.raises(ValueError, match="has shape"):
        store.get_or_compute(2, stack[2, :10], predictor)


def test_setitem_checks_geometry(stack, tmp_path):
    predictor = StandIn()
    store = EmbeddingStore.for_stack(tmp_path / "e.zarr", stack, predictor)
    emb = predictor.embed(stack[3], contrast_limits=store.metadata.contrast_limits)
    store[3] = emb
    assert store.has(3) and store.stored_digest(3) is None  # no image given: no digest
    with pytest.raises(StoreMismatchError, match="embedding shape"):
        store[3] = StandIn(channels=4).embed(stack[3])
    with pytest.raises(StoreMismatchError, match="contrast limits"):
        store[3] = predictor.embed(stack[3], contrast_limits=(1.0, 2.0))


def test_existing_path_is_never_clobbered(tmp_path, stack):
    other = tmp_path / "data"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(NotAStoreError, match="not a zarr embedding store"):
        embed_stack(stack, StandIn(), other)
    with pytest.raises(NotAStoreError):
        embed_stack(stack, StandIn(), other, overwrite=True)
    assert (other / "keep.txt").read_text() == "precious"
    path = tmp_path / "e.zarr"
    store = embed_stack(stack, StandIn(), path)
    with pytest.raises(FileExistsError, match="already exists"):
        EmbeddingStore.create_from(path, store.metadata)
    fresh = EmbeddingStore.create_from(path, store.metadata, overwrite=True)
    assert fresh.n_complete == 0
    assert ATTRS_KEY in __import__("zarr").open_group(str(path), mode="r").attrs


# ------------------------------------------------------------------- memory
def _peak(fn) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("n_slices", [4, 24], ids=["4-slices", "24-slices"])
def test_reading_one_slice_reads_only_that_slice(tmp_path, n_slices):
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 255, (n_slices, 64, 64)).astype(np.uint8)
    path = tmp_path / "e.zarr"
    embed_stack(stack, StandIn(channels=128, size=64), path)
    chunk_bytes = 128 * 64 * 64 * 2  # one slice's float16 features: 1 MiB
    z = n_slices // 2
    reopened = EmbeddingStore.open(path, mode="r")
    expected = reopened.read_features(z).copy()
    # corrupt every other slice's chunk file: reading slice z must not touch them
    chunks = sorted((path / "features" / "c").iterdir(), key=lambda p: int(p.name))
    assert len(chunks) == n_slices
    for folder in chunks:
        if int(folder.name) != z:
            for f in folder.rglob("*"):
                if f.is_file():
                    f.write_bytes(b"garbage")
    np.testing.assert_array_equal(reopened.read_features(z), expected)
    peak_raw = _peak(lambda: reopened.read_features(z))
    peak = _peak(lambda: reopened[z])
    # compressed + decoded chunk (+ float32 copy for an Embedding), never the whole stack
    assert peak_raw < 4 * chunk_bytes
    assert peak < 6 * chunk_bytes


@pytest.mark.parametrize("n_slices", [3, 24], ids=["3-slices", "24-slices"])
def test_embedding_memory_does_not_grow_with_depth(tmp_path, n_slices):
    stack = np.random.default_rng(0).integers(0, 255, (n_slices, 64, 64)).astype(np.uint8)
    predictor = StandIn(channels=128, size=64)
    peak = _peak(lambda: embed_stack(stack, predictor, tmp_path / "e.zarr"))
    assert peak < 6 * 128 * 64 * 64 * 4  # a few slices' features, whatever the depth


# ------------------------------------------------------------- write failures
def test_read_only_store_refuses_writes(stack, tmp_path):
    path = tmp_path / "e.zarr"
    embed_stack(stack, StandIn(), path, cancel=lambda: True)
    store = EmbeddingStore.open(path, mode="r")
    with pytest.raises(StoreWriteError, match="opened read-only") as info:
        store.get_or_compute(3, stack[3], StandIn())
    assert isinstance(info.value, OSError) and info.value.filename == str(path)
    emb = store.get_or_compute(3, stack[3], StandIn(), on_write_error="ignore")
    assert emb.features.shape == (1, 8, 16, 16) and not store.has(3)


def test_unwritable_location_is_a_clear_oserror(stack, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    target = blocker / "e.zarr"  # parent is a file: nothing can be created there
    with pytest.raises(StoreWriteError, match="cannot write the embedding store") as info:
        embed_stack(stack, StandIn(), target)
    assert str(target) in str(info.value) and isinstance(info.value, OSError)


def test_read_only_directory_is_a_clear_oserror(stack, tmp_path, monkeypatch):
    folder = read_only_folder(tmp_path, monkeypatch)
    try:
        with pytest.raises(StoreWriteError, match="cannot write the embedding store"):
            embed_stack(stack, StandIn(), folder / "e.zarr")
    finally:
        folder.chmod(0o755)


def test_full_disk_is_a_clear_oserror(stack, tmp_path):
    store = EmbeddingStore.for_stack(tmp_path / "e.zarr", stack, StandIn())

    store._features = FullDisk(store._features)
    with pytest.raises(StoreWriteError, match="No space left") as info:
        store.get_or_compute(2, stack[2], StandIn())
    assert info.value.errno == errno.ENOSPC
    assert not store.has(2)  # the flag is never written without the data


# ----------------------------------------------------------------- tiled slices
def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _tiled_stack(n: int = 2, size: int = 320) -> np.ndarray:
    rng = np.random.default_rng(3)
    data = rng.integers(0, 800, (n, size, size)).astype(np.uint16)
    rr, cc = np.ogrid[:size, :size]
    for z in range(n):
        for r, c in ((60, 70), (160, 200), (250, 90), (270, 280)):
            data[z][(rr - r - 3 * z) ** 2 + (cc - c) ** 2 <= 14**2] += 2500
    return data


def test_tiled_store_layout_and_round_trip(tiny, tmp_path):
    from napari_sam.tiling import TiledEmbedding

    data = _tiled_stack()
    grid = tiny.plan_tiles(data.shape[1:])
    assert grid is not None and len(grid) == 4
    path = tmp_path / "t.zarr"
    store = embed_stack(data, tiny, path, contrast_limits=(0, 4000))
    m = store.metadata
    assert m.tiling == {"tile": 256, "overlap": 64, "n_tiles": 4} and m.version == 3
    assert store.read_features((0,)).shape == (5, *m.embedding_shape)
    assert "4 tiles per slice" in repr(store)
    fresh = tiny.embed(data[1], contrast_limits=(0, 4000)).compute()
    stored = EmbeddingStore.open(path)[(1,)]
    assert isinstance(stored, TiledEmbedding) and stored.image is None
    assert stored.computed == [0, 1, 2, 3]
    assert stored.metadata["tiling"] == fresh.metadata["tiling"]
    for i in range(4):
        assert stored.tile(i).original_size == fresh.tile(i).original_size
        assert stored.tile(i).input_size == fresh.tile(i).input_size
        torch.testing.assert_close(
            stored.tile(i).features, fresh.tile(i).features, atol=2e-2, rtol=2e-3
        )
    torch.testing.assert_close(
        stored.overview().features, fresh.overview().features, atol=2e-2, rtol=2e-3
    )
    # get_or_compute returns what a later read returns
    again = EmbeddingStore.create_from(tmp_path / "u.zarr", m)
    first = again.get_or_compute((1,), data[1], tiny)
    torch.testing.assert_close(first.tile(2).features, again[(1,)].tile(2).features)
    for p in [(20, 30), (160, 160), (300, 300)]:
        a = tiny.predict(stored, points=[p], labels=[1])
        b = tiny.predict(first, points=[p], labels=[1])
        np.testing.assert_array_equal(a.best_mask, b.best_mask)


def test_tiled_store_write_forms_and_refusals(tiny, tmp_path):
    data = _tiled_stack(n=1, size=300)
    store = EmbeddingStore.for_stack(tmp_path / "t.zarr", data, tiny, contrast_limits=(0, 4000))
    emb = tiny.embed(data[0], contrast_limits=(0, 4000))  # lazy: write computes the tiles
    store.write((0,), emb)
    stacked = store.read_features((0,))
    store.write((0,), stacked.astype(np.float32))
    np.testing.assert_array_equal(store.read_features((0,)), stacked)
    store[(0,)] = emb
    untiled = tiny.embed(data[0], contrast_limits=(0, 4000), tiling="off")
    with pytest.raises(StoreMismatchError, match=r"\(5, 64, 16, 16\) \(tiled .*this embedding"):
        store.write((0,), untiled)
    other = Predictor(tiny.model, precision="float32", tile_overlap=32)
    with pytest.raises(StoreMismatchError, match=r"tiling: store tiled .*overlap 64.*overlap 32"):
        store.write((0,), other.embed(data[0], contrast_limits=(0, 4000)))
    with pytest.raises(StoreMismatchError, match=r"tiling: store tiled .*overlap 64.*overlap 32"):
        EmbeddingStore.for_stack(tmp_path / "t.zarr", data, other)
    flat = Predictor(tiny.model, precision="float32", tiling="off")
    with pytest.raises(StoreMismatchError, match=r"tiling: store tiled.*requested untiled"):
        embed_stack(data, flat, tmp_path / "t.zarr")
    embed_stack(data, flat, tmp_path / "flat.zarr", contrast_limits=(0, 4000))
    with pytest.raises(StoreMismatchError, match=r"tiling: store untiled.*requested tiled"):
        embed_stack(data, tiny, tmp_path / "flat.zarr")
    assert EmbeddingStore.open(tmp_path / "flat.zarr").metadata.version == 3


def test_tiled_embedding_from_features_without_image(tiny):
    from napari_sam.tiling import TiledEmbedding

    image = _tiled_stack(n=1, size=300)[0]
    full = tiny.embed(image, contrast_limits=(0, 4000)).compute()
    tiles = [full.tile(0), None, full.tile(2), full.tile(3)]
    part = TiledEmbedding.from_features(full.grid, tiles, None, (300, 300), (0, 4000))
    assert part.tile(2) is full.tile(2) and part.computed == [0, 2, 3]
    with pytest.raises(ValueError, match="tile 1 of this 300x300 tiled embedding"):
        part.tile(1)
    with pytest.raises(ValueError, match="the overview of this 300x300"):
        part.overview()
    with pytest.raises(ValueError, match="got 3 tile embeddings for a grid of 4"):
        TiledEmbedding.from_features(full.grid, tiles[:3], None, (300, 300))


def test_micro_tiled_store_masks_match_memory(tmp_path):
    """The default model on 320 px slices: stored tiles decode like fresh ones."""
    predictor = Predictor("micro", device="cpu", precision="float32")
    data = _tiled_stack(n=2, size=320)
    store = embed_stack(data, predictor, tmp_path / "m.zarr", contrast_limits=(0, 4000))
    assert store.metadata.tiling is not None and store.metadata.dtype == "float16"
    reopened = EmbeddingStore.open(tmp_path / "m.zarr")
    for z in range(2):
        fresh = predictor.embed(data[z], contrast_limits=(0, 4000))
        stored = reopened[(z,)]
        for p in [(60 + 3 * z, 70), (160 + 3 * z, 200), (250 + 3 * z, 90), (270 + 3 * z, 280)]:
            a = predictor.predict(fresh, points=[p], labels=[1]).best_mask
            b = predictor.predict(stored, points=[p], labels=[1]).best_mask
            assert a.any() and _iou(a, b) >= 0.99, (z, p, _iou(a, b))
