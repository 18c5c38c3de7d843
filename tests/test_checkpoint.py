"""Checkpoint download (pooch, from a loopback HTTP server), verification and loading."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch

from napari_sam.model import checkpoint, registry
from napari_sam.model.checkpoint import (
    CheckpointError,
    fetch_checkpoint,
    load_model,
    read_state_dict,
)
from napari_sam.model.registry import ModelInfo
from napari_sam.model.sam import build_sam


@pytest.fixture(scope="module")
def tiny_state():
    torch.manual_seed(0)
    return build_sam("vit_tiny").state_dict()


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_state):
    """A loopback HTTP server serving a tiny checkpoint; yields (base_url, file)."""
    root = tmp_path_factory.mktemp("www")
    path = root / "tiny.pth"
    torch.save(tiny_state, path)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", path
    server.shutdown()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(folder))
    return folder


def _register(monkeypatch, url: str, known_hash: str | None, arch="infer") -> str:
    info = ModelInfo("test_tiny", arch, url, known_hash, None, "test_tiny.pth", "test model")
    monkeypatch.setitem(registry.REGISTRY, info.name, info)
    return info.name


def _sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_cache_dir_env_override(cache):
    assert checkpoint.cache_dir() == cache


def test_download_verify_and_load(served, cache, monkeypatch, tiny_state):
    base, path = served
    name = _register(monkeypatch, base + "tiny.pth", _sha(path))
    calls = []
    model = load_model(name, "cpu", progress=lambda done, total: calls.append((done, total)))
    assert (cache / "test_tiny.pth").is_file()
    assert calls and calls[-1][0] == path.stat().st_size
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, tiny_state[key])
    # second call uses the cache (server not needed)
    assert fetch_checkpoint(name) == cache / "test_tiny.pth"


def test_hash_mismatch_leaves_nothing(served, cache, monkeypatch):
    base, _ = served
    name = _register(monkeypatch, base + "tiny.pth", "sha256:" + "0" * 64)
    with pytest.raises(CheckpointError, match="failed verification"):
        fetch_checkpoint(name)
    assert not (cache / "test_tiny.pth").exists()


def test_offline_download_says_how_to_place_file(cache, monkeypatch):
    # a closed loopback port: the connection is refused at once
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}/missing.pth"
    name = _register(monkeypatch, url, "sha256:" + "1" * 64)
    with pytest.raises(CheckpointError) as info:
        fetch_checkpoint(name)
    message = str(info.value)
    assert url in message
    assert str(cache / "test_tiny.pth") in message
    assert "NAPARI_SAM_CACHE" in message
    assert not any(cache.glob("*.pth")) if cache.exists() else True


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_file_is_a_clear_error(tmp_path, tiny_state, damage):
    path = tmp_path / "model.pth"
    torch.save(tiny_state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a checkpoint")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(path, "cpu")


def test_micro_sam_wrapper_and_prefix(tmp_path, tiny_state):
    path = tmp_path / "vit_t_lm.pt"
    torch.save({"model_state": {"sam." + k: v for k, v in tiny_state.items()}, "epoch": 3}, path)
    model = load_model(path, "cpu")
    torch.testing.assert_close(
        model.state_dict()["mask_decoder.iou_token.weight"],
        tiny_state["mask_decoder.iou_token.weight"],
    )


def test_checkpoint_for_another_architecture(served, cache, monkeypatch):
    base, path = served
    name = _register(monkeypatch, base + "tiny.pth", _sha(path), arch="vit_b")
    with pytest.raises(CheckpointError, match="is it the checkpoint of another model"):
        load_model(name, "cpu")


def test_not_a_sam_checkpoint(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"layer.weight": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="does not look like a SAM checkpoint"):
        read_state_dict(path)


def test_unknown_name_lists_known_models():
    with pytest.raises(KeyError, match=r"vit_b.*vit_l"):
        load_model("vit_z")


def test_missing_path():
    with pytest.raises(CheckpointError, match="not found"):
        load_model("/nonexistent/model.pth")


def test_registry_entries_are_complete():
    for info in registry.REGISTRY.values():
        assert info.filename and info.description
        if info.url is not None:
            assert info.url.startswith("https://")
            assert info.known_hash and ":" in info.known_hash
    assert registry.DEFAULT_MODEL in registry.REGISTRY
    assert set(registry.available_models()) == set(registry.REGISTRY)
