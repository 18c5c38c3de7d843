"""``napari-sam embed``: in-process, on a local Dask cluster, killed and resumed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_sam.cli import main
from napari_sam.model.sam import build_sam
from napari_sam.predictor import Predictor
from napari_sam.store import EmbeddingStore, embed_stack

N_SLICES = 16


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny checkpoint, a (16, 64, 64) uint16 stack and its reference store."""
    folder = tmp_path_factory.mktemp("embed_cli")
    torch.manual_seed(0)
    model = build_sam("vit_tiny")
    ckpt = folder / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    rng = np.random.default_rng(1)
    stack = rng.integers(0, 2000, (N_SLICES, 64, 64)).astype(np.uint16)
    stack[:, 20:40, 16:48] += 1500
    np.save(folder / "stack.npy", stack)
    reference = folder / "reference.zarr"
    embed_stack(stack, Predictor(str(ckpt), device="cpu", precision="float32"), reference)
    return {"folder": folder, "ckpt": ckpt, "stack": folder / "stack.npy", "ref": reference}


def embed_args(files, out: Path, *extra: str) -> list[str]:
    return [
        "embed",
        str(files["stack"]),
        "--out",
        str(out),
        "--model",
        str(files["ckpt"]),
        "--device",
        "cpu",
        "--precision",
        "float32",
        "-q",
        *extra,
    ]


def chunk_files(store: Path) -> dict[int, tuple[int, int]]:
    """``{slice: (inode, mtime_ns)}`` of the feature chunk files of a zarr 3 store."""
    out = {}
    for folder in (store / "features" / "c").iterdir():
        (f,) = [p for p in folder.rglob("*") if p.is_file()]
        st = f.stat()
        out[int(folder.name)] = (st.st_ino, st.st_mtime_ns)
    return out


def assert_same_store(path: Path, reference: Path) -> None:
    got = EmbeddingStore.open(path, mode="r")
    ref = EmbeddingStore.open(reference, mode="r")
    assert got.missing() == [] and got.metadata.differences(ref.metadata) == []
    for z in range(N_SLICES):
        np.testing.assert_allclose(
            got.read_features(z).astype(np.float32),
            ref.read_features(z).astype(np.float32),
            rtol=2e-3,
            atol=2e-3,
        )
        assert got.stored_digest(z) == ref.stored_digest(z)


def test_in_process_equals_library(files, tmp_path, capsys):
    out = tmp_path / "e.zarr"
    assert main(embed_args(files, out, "--workers", "0")) == 0
    assert f"{N_SLICES} slice(s) computed, 0 already done" in capsys.readouterr().out
    assert_same_store(out, files["ref"])


@pytest.fixture
def threaded_scheduler():
    """A running scheduler on loopback whose worker is a thread of this process (starts fast)."""
    import logging

    from distributed import LocalCluster

    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=logging.ERROR,
    ) as cluster:
        yield cluster.scheduler_address


def test_partial_run_on_a_scheduler_then_local_cluster_resumes(
    files, tmp_path, capsys, threaded_scheduler
):
    out = tmp_path / "e.zarr"
    assert threaded_scheduler.startswith("tcp://127.0.0.1:")
    args = embed_args(files, out, "--scheduler", threaded_scheduler, "--max-slices", "5")
    assert main(args) == 0
    assert "5 slice(s) computed, 0 already done" in capsys.readouterr().out
    done = EmbeddingStore.open(out, mode="r").completed()
    assert len(done) == 5
    before = chunk_files(out)

    # the default path: a LocalCluster of 2 worker processes on 127.0.0.1
    start = time.perf_counter()
    assert main(embed_args(files, out, "--workers", "2")) == 0
    report = capsys.readouterr().out
    assert f"{N_SLICES - 5} slice(s) computed, 5 already done (5 verified)" in report
    after = chunk_files(out)
    for (z,) in done:  # finished slices were not rewritten
        assert after[z] == before[z]
    assert_same_store(out, files["ref"])
    assert time.perf_counter() - start < 180  # a hang guard; ~15-40 s on 2 busy cores


def test_killed_run_resumes_without_recomputing(files, tmp_path, capsys):
    out = tmp_path / "e.zarr"
    cli = "import sys; from napari_sam.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", cli, *embed_args(files, out, "--workers", "0")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    flags = out / "done" / "c"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if flags.is_dir() and len(list(flags.iterdir())) >= 3:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the embed command ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate()
    killed = EmbeddingStore.open(out, mode="r")
    done = killed.completed()
    assert 3 <= len(done) < N_SLICES
    before = chunk_files(out)

    assert main(embed_args(files, out, "--workers", "0")) == 0  # the rerun, in this process
    report = capsys.readouterr().out
    assert f"{N_SLICES - len(done)} slice(s) computed, {len(done)} already done" in report
    after = chunk_files(out)
    assert all(after[z] == before[z] for (z,) in done)
    assert_same_store(out, files["ref"])


@pytest.mark.parametrize("where", ["in-process", "scheduler"])
def test_rerun_finds_damaged_chunks_and_recomputes_them(files, tmp_path, capsys, request, where):
    """A truncated and a deleted chunk (flags set) are not "verified": they are computed again."""
    out = tmp_path / "e.zarr"
    extra = ["--workers", "0"]
    if where == "scheduler":
        extra = ["--scheduler", request.getfixturevalue("threaded_scheduler")]
    assert main(embed_args(files, out, "--workers", "0", "--max-slices", "6")) == 0
    capsys.readouterr()
    for z, damage in ((1, "truncate"), (4, "delete")):
        (f,) = [p for p in (out / "features" / "c" / str(z)).rglob("*") if p.is_file()]
        if damage == "truncate":
            f.write_bytes(f.read_bytes()[:100])
        else:
            f.unlink()
    assert main(embed_args(files, out, *extra)) == 0
    captured = capsys.readouterr()
    assert (
        f"{N_SLICES - 6 + 2} slice(s) computed, 6 already done (4 verified, 2 damaged, computed "
        "again)" in captured.out
    )
    warning = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "was damaged" in warning[0] and str(out) in warning[0]
    assert_same_store(out, files["ref"])


def test_unreachable_scheduler_fails_fast(files, tmp_path, capsys):
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    code = main(
        embed_args(files, tmp_path / "e.zarr", "--scheduler", f"127.0.0.1:{port}", "--timeout", "2")
    )
    elapsed = time.perf_counter() - start
    assert code == 2
    err = capsys.readouterr().err
    assert f"no Dask scheduler answered at tcp://127.0.0.1:{port} within 2 s" in err
    assert elapsed < 15


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--contrast-limits", "0", "100"], "contrast limits: store"),
        (["--workers", "-1"], "--workers must be >= 0"),
        (["--max-slices", "-2"], "--max-slices must be >= 0"),
    ],
    ids=["mismatch", "bad-workers", "bad-max-slices"],
)
def test_user_errors(files, tmp_path, capsys, extra, message):
    out = tmp_path / "e.zarr"
    assert main(embed_args(files, out, "--workers", "0", "--max-slices", "1")) == 0
    capsys.readouterr()
    assert main(embed_args(files, out, "--workers", "0", *extra)) == 2
    assert message in capsys.readouterr().err


def test_unwritable_store_and_missing_stack(files, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(embed_args(files, blocker / "e.zarr", "--workers", "0")) == 2
    assert f"{str(blocker)!r} is a file, not a folder" in capsys.readouterr().err  # before work
    args = embed_args(files, tmp_path / "e.zarr", "--workers", "0")
    args[1] = str(tmp_path / "nothing.npy")
    assert main(args) == 2
    assert "image file not found" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "e.zarr")


def test_default_micro_model_stores_tiled_slices(tmp_path, threaded_scheduler, capsys):
    """``micro`` (256 px input) tiles 320 px slices: in process and on Dask, the same tiles."""
    from napari_sam.tiling import TiledEmbedding

    rng = np.random.default_rng(2)
    stack = rng.integers(0, 2000, (2, 320, 320)).astype(np.uint16)
    stack[:, 100:160, 40:120] += 1500
    np.save(tmp_path / "big.npy", stack)
    common = ["embed", str(tmp_path / "big.npy"), "--device", "cpu", "--precision", "float32"]
    local, dask = tmp_path / "local.zarr", tmp_path / "dask.zarr"
    assert main([*common, "--out", str(local), "--workers", "0", "-q"]) == 0
    assert main([*common, "--out", str(dask), "--scheduler", threaded_scheduler, "-q"]) == 0
    assert "2 slice(s) computed" in capsys.readouterr().out
    got = EmbeddingStore.open(local, mode="r")
    other = EmbeddingStore.open(dask, mode="r")
    assert got.metadata.model_name == "micro" and got.missing() == []
    assert got.metadata.tiling == {"tile": 256, "overlap": 64, "n_tiles": 4}
    assert got.metadata.differences(other.metadata) == []
    for z in range(2):
        features = got.read_features(z)
        assert features.shape == (5, *got.metadata.embedding_shape)
        np.testing.assert_allclose(
            features.astype(np.float32), other.read_features(z).astype(np.float32), atol=2e-3
        )
    assert isinstance(got[(1,)], TiledEmbedding)
