"""Damaged store chunks: never a crash, never served; recomputed and reported once."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam.store import (
    STORE_VERSION,
    DamagedSliceError,
    EmbeddingStore,
    StoreDamageWarning,
    embed_missing,
    embed_stack,
)
from napari_sam.store._integrity import chunk_problem, features_checksum
from napari_sam.store._layout import ATTRS_KEY
from test_store import StandIn


@pytest.fixture
def stack() -> np.ndarray:
    rng = np.random.default_rng(7)
    data = rng.integers(0, 3000, (5, 48, 64)).astype(np.uint16)
    data[:, 10:30, 20:40] += 1000
    data[:, 0, 0] = np.arange(5)  # first pixel = slice number, for StandIn.calls
    return data


def chunk_file(store: Path, z: int) -> Path:
    """The features chunk file of slice ``z`` (zarr 3 layout: ``features/c/z/...``)."""
    (f,) = [p for p in (store / "features" / "c" / str(z)).rglob("*") if p.is_file()]
    return f


def truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def empty(f: Path) -> None:
    f.write_bytes(b"")


def delete(f: Path) -> None:
    f.unlink()  # the flag stays set: zarr reads the fill value (zeros)


def random_bytes(f: Path) -> None:
    f.write_bytes(np.random.default_rng(5).bytes(64))


def random_bytes_inside(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[20:84] = np.random.default_rng(5).bytes(64)  # decodes, to different values
    f.write_bytes(bytes(data))


DAMAGE = [truncate, empty, delete, random_bytes, random_bytes_inside]


def fresh_features(store: EmbeddingStore, image: np.ndarray) -> torch.Tensor:
    emb = StandIn().embed(image, contrast_limits=store.metadata.contrast_limits)
    return emb.features.to(torch.float16).float()


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_damaged_chunk_is_never_served(stack, tmp_path, damage):
    path = tmp_path / "e.zarr"
    embed_stack(stack, StandIn(), path)
    damage(chunk_file(path, 2))
    store = EmbeddingStore.open(path)
    assert store.has(2)  # the flag alone cannot tell
    with pytest.raises(DamagedSliceError, match=r"slice \(2,\) of the embedding store .*damaged"):
        store[2]
    with pytest.raises(KeyError):  # a damaged slice is a missing one
        store.read_features(2)
    assert not store.has(2) and store.missing() == [(2,)]  # its flag was cleared
    assert store.damaged == [(2,)]
    np.testing.assert_array_equal(store[3].features, fresh_features(store, stack[3]))


@pytest.mark.parametrize("damage", DAMAGE, ids=lambda f: f.__name__)
def test_get_or_compute_recomputes_rewrites_and_says_so_once(stack, tmp_path, damage):
    path = tmp_path / "e.zarr"
    embed_stack(stack, StandIn(), path)
    damage(chunk_file(path, 1))
    damage(chunk_file(path, 3))
    store = EmbeddingStore.open(path)
    predictor = StandIn()
    with pytest.warns(StoreDamageWarning, match=r"slice \(1,\) was damaged.*recomputed") as rec:
        emb = store.get_or_compute(1, stack[1], predictor)
        again = store.get_or_compute(3, stack[3], predictor)
    assert len(rec) == 1  # once per store
    assert predictor.calls == [1, 3]
    np.testing.assert_array_equal(emb.features, fresh_features(store, stack[1]))
    np.testing.assert_array_equal(again.features, fresh_features(store, stack[3]))
    reopened = EmbeddingStore.open(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert reopened.check_slice(1) is None and reopened.check_slice(3) is None
        np.testing.assert_array_equal(reopened[1].features, emb.features)


def test_on_damage_callback_and_bound_embeddings(stack, tmp_path):
    path = tmp_path / "e.zarr"
    store = embed_stack(stack, StandIn(), path)
    random_bytes_inside(chunk_file(path, 4))
    messages: list[str] = []
    emb = store.get_or_compute(4, stack[4], StandIn(), on_damage=messages.append)
    assert len(messages) == 1 and "slice (4,) was damaged" in messages[0]
    np.testing.assert_array_equal(emb.features, fresh_features(store, stack[4]))
    with pytest.raises(ValueError, match="on_damage must be"):
        store.get_or_compute(4, stack[4], StandIn(), on_damage="shout")
    # the unverified fast path of bound embeddings recomputes too
    delete(chunk_file(path, 0))
    bound = EmbeddingStore.open(path).bound(stack, StandIn(), verify=False)
    with pytest.warns(StoreDamageWarning, match=r"slice \(0,\)"):
        got = bound[0]
    np.testing.assert_array_equal(got.features, fresh_features(store, stack[0]))


def test_read_only_store_recomputes_without_writing(stack, tmp_path):
    path = tmp_path / "e.zarr"
    embed_stack(stack, StandIn(), path)
    truncate(chunk_file(path, 2))
    store = EmbeddingStore.open(path, mode="r")
    with pytest.warns(StoreDamageWarning, match=r"recomputed \(the store is not written\)"):
        emb = store.get_or_compute(2, stack[2], StandIn(), on_write_error="ignore")
    np.testing.assert_array_equal(emb.features, fresh_features(store, stack[2]))
    assert store.has(2)  # a read-only store is left as it is


def test_rerun_verification_finds_and_recomputes_damage(stack, tmp_path):
    path = tmp_path / "e.zarr"
    embed_stack(stack, StandIn(), path)
    delete(chunk_file(path, 1))
    empty(chunk_file(path, 4))
    store = EmbeddingStore.open(path)
    predictor = StandIn()
    with pytest.warns(StoreDamageWarning) as rec:
        report = embed_missing(store, stack, predictor)
    assert len(rec) == 1
    assert (report.already_done, report.verified, report.damaged, report.computed) == (5, 3, 2, 2)
    assert report.missing == 0 and predictor.calls == [1, 4]
    assert "(3 verified, 2 damaged, computed again)" in report.summary()
    assert all(store.check_slice(z) is None for z in range(5))
    quiet = embed_missing(store, stack, StandIn())
    assert (quiet.verified, quiet.damaged, quiet.computed) == (5, 0, 0)


def test_checksum_catches_features_changed_behind_the_flag(stack, tmp_path):
    store = embed_stack(stack, StandIn(), tmp_path / "e.zarr")
    assert store.metadata.version == STORE_VERSION == 3 and store.checksums
    data = store.read_features(2).copy()
    data[0, 0, 0] += 1  # plausible values, but not those written
    store._features[(2,)] = data
    with pytest.raises(DamagedSliceError, match="checksum of the stored features"):
        store[2]


def test_checksum_function():
    a = np.arange(24, dtype=np.float16).reshape(2, 3, 4)
    assert features_checksum(a) == features_checksum(a.copy())
    assert features_checksum(a) == features_checksum(a.astype(">f2"))  # byte order
    assert features_checksum(a) == features_checksum(np.asfortranarray(a))  # C order
    b = a.copy()
    b[1, 2, 3] = -b[1, 2, 3]
    assert features_checksum(b) != features_checksum(a)
    assert chunk_problem(a, (2, 3, 4), "float16", features_checksum(a)) is None
    assert "decodes to (2, 3, 4) float16, not (2, 3, 5)" in chunk_problem(
        a, (2, 3, 5), "float16", None
    )


# ------------------------------------------------------- stores of versions 1 and 2
def legacy_store(path: Path, stack: np.ndarray, version: int) -> EmbeddingStore:
    """A store in the layout of napari-sam-stack before checksums: ``done`` is ``(*lead,)``."""
    import zarr

    current = embed_stack(stack, StandIn(), path.with_name("current.zarr"))
    meta = current.metadata.to_dict() | {"version": version}
    group = zarr.open_group(str(path), mode="w")
    n, shape = stack.shape[0], current.metadata.chunk_shape
    features = group.create_array(
        "features", shape=(n, *shape), chunks=(1, *shape), dtype="float16", fill_value=0
    )
    done = group.create_array("done", shape=(n,), chunks=(1,), dtype="uint64", fill_value=0)
    for z in range(n):
        features[z] = current.read_features(z)
        done[z] = current.stored_digest(z)
    group.attrs.update({ATTRS_KEY: meta})
    return EmbeddingStore.open(path)


@pytest.mark.parametrize("version", [1, 2])
def test_old_stores_are_read_without_checksums(stack, tmp_path, version):
    store = legacy_store(tmp_path / "old.zarr", stack, version)
    assert store.metadata.version == version and not store.checksums
    np.testing.assert_array_equal(store[1].features, fresh_features(store, stack[1]))
    assert embed_missing(store, stack, StandIn()).verified == 5
    # what can be told without a checksum: undecodable, missing (zeros), non-finite
    truncate(chunk_file(tmp_path / "old.zarr", 0))
    delete(chunk_file(tmp_path / "old.zarr", 1))
    store._features[(2,)] = np.full(store.metadata.chunk_shape, np.nan, np.float16)
    predictor = StandIn()
    with pytest.warns(StoreDamageWarning, match="cannot be decoded"):
        emb = store.get_or_compute(0, stack[0], predictor)
    np.testing.assert_array_equal(emb.features, fresh_features(store, stack[0]))
    for z, reason in [(1, "all zeros"), (2, "NaN")]:
        with pytest.raises(DamagedSliceError, match=reason):
            store[z]
    assert store.missing() == [(1,), (2,)]
    assert embed_missing(store, stack, predictor).computed == 2
    assert predictor.calls == [0, 1, 2]
    assert EmbeddingStore.open(tmp_path / "old.zarr").metadata.version == version  # kept


def test_overwrite_of_an_old_store_writes_the_current_version(stack, tmp_path):
    old = legacy_store(tmp_path / "old.zarr", stack, 1)
    new = EmbeddingStore.create_from(tmp_path / "old.zarr", old.metadata, overwrite=True)
    assert new.metadata.version == STORE_VERSION and new.checksums


def test_newer_store_version_is_refused_clearly(stack, tmp_path):
    import json

    from napari_sam.store import NotAStoreError

    path = tmp_path / "e.zarr"
    embed_stack(stack, StandIn(), path)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"][ATTRS_KEY]["version"] = STORE_VERSION + 1
    (path / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(NotAStoreError, match=r"version 4, newer than .* \(3\); update"):
        EmbeddingStore.open(path)


def test_damaged_flag_chunk_reads_as_not_computed(stack, tmp_path):
    path = tmp_path / "e.zarr"
    embed_stack(stack, StandIn(), path)
    (flag,) = [p for p in (path / "done" / "c" / "3").rglob("*") if p.is_file()]
    flag.write_bytes(b"\x00garbage")
    store = EmbeddingStore.open(path)
    assert not store.has(3) and store.missing() == [(3,)]
    predictor = StandIn()
    assert embed_missing(store, stack, predictor).computed == 1 and predictor.calls == [3]
    assert store.check_slice(3) is None
