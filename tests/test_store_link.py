"""The annotator's store choice without napari: automatic store names, validation, callbacks."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from faults import FullDisk
from napari_sam.annotation.slicing import ImageGeometry
from napari_sam.annotation.store_link import StoreLink, auto_store_path
from napari_sam.signature import image_signature
from napari_sam.store import EmbeddingStore
from test_store import StandIn


@pytest.fixture
def data():
    return np.random.default_rng(0).integers(0, 1000, (3, 32, 40)).astype(np.uint16)


def test_auto_store_path_is_deterministic(tmp_path, monkeypatch, data):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    sig = image_signature(data)
    path = auto_store_path(tmp_path / "my cells.tif", "micro", (0, 1000), sig)
    assert path.parent == tmp_path / "cache" / "embeddings"
    assert path.name.startswith("my_cells-") and path.suffix == ".zarr"
    assert path == auto_store_path(str(tmp_path / "my cells.tif"), "micro", (0.0, 1000.0), sig)
    others = {
        auto_store_path(tmp_path / "other.tif", "micro", (0, 1000), sig),
        auto_store_path(tmp_path / "my cells.tif", "vit_b", (0, 1000), sig),
        auto_store_path(tmp_path / "my cells.tif", "micro", (0, 900), sig),
        auto_store_path(tmp_path / "my cells.tif", "micro", (0, 1000), image_signature(data[:2])),
    }
    assert path not in others and len(others) == 4


def test_link_choices(tmp_path, data):
    geometry = ImageGeometry(shape=data.shape)
    assert not StoreLink(None, data, geometry).enabled
    assert not StoreLink(False, data, geometry).enabled
    assert not StoreLink("auto", data, geometry).enabled  # not opened from a file
    assert StoreLink("auto", data, geometry, source_path=tmp_path / "a.tif").enabled
    link = StoreLink(tmp_path / "s.zarr", data, geometry)
    assert link.enabled and link.path == tmp_path / "s.zarr"
    with pytest.raises(ValueError, match=r"store must be .*got 1\.5"):
        StoreLink(1.5, data, geometry)


def test_link_opens_creates_and_reuses(tmp_path, data):
    geometry = ImageGeometry(shape=data.shape)
    told = []
    link = StoreLink(tmp_path / "s.zarr", data, geometry, on_message=lambda *m: told.append(m))
    pred = StandIn()
    store = link.store_for(pred, (0, 1000), "model")
    assert isinstance(store, EmbeddingStore) and store.metadata.contrast_limits == (0.0, 1000.0)
    assert link.store_for(pred, (0.0, 1000.0), "model") is store
    assert link.current("model", (0, 1000)) is store and told == []


def test_get_or_compute_reports_write_errors_through_a_callable(tmp_path, data):
    store = EmbeddingStore.for_stack(tmp_path / "e.zarr", data, StandIn())

    store._features = FullDisk(store._features)
    errors = []
    emb = store.get_or_compute(2, data[2], StandIn(), on_write_error=errors.append)
    assert emb.features.shape == (1, 8, 16, 16) and not store.has(2)
    assert len(errors) == 1 and errors[0].errno == errno.ENOSPC
    with pytest.raises(ValueError, match="on_write_error must be"):
        store.get_or_compute(2, data[2], StandIn(), on_write_error="skip")
