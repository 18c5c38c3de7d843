"""Bad inputs on the command line: one line naming the file or value and the fix, exit 2.

Checked before anything is computed: the predictor factory of every command is
replaced by one that fails the test if it is called. As root, permissions do
not stop anything, so unwritable or unenterable folders are simulated through
``os.access`` (and, for a folder that cannot be entered, ``Path.exists``).
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

import napari_sam.cli.embed  # noqa: F401 - registers the command
import napari_sam.cli.everything as cli_everything
import napari_sam.cli.propagate as cli_propagate
from napari_sam.cli import main


@pytest.fixture
def files(tmp_path, monkeypatch):
    """A valid stack and seeds, and a predictor factory that must not be reached."""

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded although the input is wrong")

    monkeypatch.setattr(cli_propagate, "make_predictor", never)
    monkeypatch.setattr(cli_everything, "make_predictor", never)
    stack = np.random.default_rng(0).integers(0, 255, (3, 32, 32)).astype(np.uint8)
    np.save(tmp_path / "stack.npy", stack)
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    seeds = np.zeros(stack.shape, np.uint16)
    seeds[1, 10:20, 10:20] = 1
    tifffile.imwrite(tmp_path / "seeds.tif", seeds)
    return tmp_path


def run(capsys, *argv: str) -> str:
    """Run the CLI; assert exit 2 and a one-line error; return that line."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("napari-sam ") and ": error: " in lines[0]
    assert "Traceback" not in err
    return lines[0]


def propagate(folder: Path, stack="stack.npy", out="out.tif", *extra: str) -> list[str]:
    return ["propagate", folder / stack, "--seeds", folder / "seeds.tif", "--out", out, *extra]


# ------------------------------------------------------------------- inputs
def _bad_file(folder: Path, name: str) -> Path:
    path = folder / name
    good = (folder / ("stack.npy" if name.endswith(".npy") else "stack.tif")).read_bytes()
    if name.startswith("dir") or name == "empty.zarr":
        path.mkdir()
    elif name.startswith("empty"):
        path.write_bytes(b"")
    elif name.startswith("truncated"):
        path.write_bytes(good[: len(good) // 2])
    elif name.startswith("garbage"):
        path.write_bytes(np.random.default_rng(1).bytes(300))
    return path


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("dir.tif", "is a folder, not a TIFF file; give the path of the file itself"),
        ("dir.npy", "is a folder, not a NumPy .npy file"),
        ("empty.tif", "cannot read the TIFF file .*: the file is empty \\(0 bytes\\)"),
        ("truncated.tif", "cannot read the TIFF file .*: it is truncated \\(its pixel data ends"),
        ("garbage.tif", "is not a TIFF file \\(it does not start with a TIFF header"),
        ("empty.npy", "cannot read the NumPy .npy file .*: the file is empty"),
        ("truncated.npy", "cannot read the NumPy .npy file .*: it is truncated or damaged"),
        ("garbage.npy", "is not a NumPy .npy file \\(it does not start with the .npy signature"),
        ("empty.zarr", "is not a zarr store: no zarr.json, .zarray or .zgroup inside \\(it is "
         "empty\\)"),
    ],
)
@pytest.mark.parametrize("command", ["propagate", "everything", "embed"])
def test_bad_image_files_are_named_with_the_problem(files, capsys, command, name, message):
    path = _bad_file(files, name)
    argv = {
        "propagate": propagate(files, name, files / "out.tif"),
        "everything": ["everything", path, "--out", files / "out.tif"],
        "embed": ["embed", path, "--out", files / "e.zarr", "--workers", "0"],
    }[command]
    line = run(capsys, *argv)
    assert repr(str(path)) in line
    assert re.search(message, line), line
    assert not (files / "out.tif").exists() and not (files / "e.zarr").exists()


def test_bad_seeds_file_is_named(files, capsys):
    (files / "garbage.tif").write_bytes(b"GIF89a" + bytes(200))
    line = run(capsys, "propagate", files / "stack.npy", "--seeds", files / "garbage.tif",
               "--out", files / "out.tif")
    assert "garbage.tif' is not a TIFF file" in line and "GIF89a" in line


# ------------------------------------------------------------------ outputs
def test_out_that_is_a_folder_fails_before_computing(files, capsys):
    (files / "result.tif").mkdir()
    for argv in (propagate(files, "stack.npy", files / "result.tif"),
                 ["everything", files / "stack.npy", "--out", files / "result.tif"]):
        line = run(capsys, *argv)
        assert "--out " in line and "result.tif' is a folder; give a file name" in line


def test_out_in_a_missing_or_file_folder(files, capsys):
    (files / "a_file").write_text("x")
    line = run(capsys, *propagate(files, "stack.npy", files / "a_file" / "out.tif"))
    assert "a_file' is a file, not a folder" in line
    line = run(capsys, *propagate(files, "stack.npy", files / "nowhere" / "out.tif"))
    assert "the folder" in line and "nowhere' does not exist; create it first" in line


def test_out_in_a_read_only_folder_fails_before_computing(files, capsys, monkeypatch):
    ro = files / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == ro else real(p, mode))
    for argv in (propagate(files, "stack.npy", ro / "out.tif"),
                 ["everything", files / "stack.npy", "--out", ro / "out.tif"],
                 ["embed", files / "stack.npy", "--out", ro / "e.zarr", "--workers", "0"],
                 ["demo", "--out", ro / "demo"]):
        line = run(capsys, *argv)
        assert f"the folder {str(ro)!r} is not writable" in line and "choose a folder" in line


def test_out_on_a_full_or_read_only_file_system(files, capsys, monkeypatch):
    """Permissions pass, but creating a file fails (EROFS): the probe write says so."""
    import tempfile

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(files))

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    line = run(capsys, *propagate(files, "stack.npy", files / "out.tif"))
    assert "cannot write in" in line and "the file system is read-only" in line


def test_embed_out_in_a_folder_that_cannot_be_entered(files, capsys, monkeypatch):
    locked = files / "locked"
    locked.mkdir()
    real_exists = Path.exists

    def exists(self, *args, **kwargs):
        if locked in self.parents:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_exists(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", exists)
    line = run(capsys, "embed", files / "stack.npy", "--out", locked / "e.zarr", "--workers", "0")
    assert "cannot reach the store, a folder on the way cannot be entered" in line
    assert str(locked / "e.zarr") in line


def test_embed_workers_without_dask_scratch_space(files, capsys):
    import dask

    blocker = files / "not_a_folder"
    blocker.write_text("x")
    with dask.config.set({"temporary-directory": str(blocker)}):
        line = run(capsys, "embed", files / "stack.npy", "--out", files / "e.zarr",
                   "--workers", "2")
    assert "the Dask workers cannot write their scratch space" in line
    assert "DASK_TEMPORARY_DIRECTORY" in line and "--workers 0" in line
    assert not (files / "e.zarr").exists()


# ------------------------------------------------------------------ options
@pytest.mark.parametrize(
    ("device", "message"),
    [("cuda", "--device 'cuda': "), ("gpu", "--device 'gpu' is unknown: use 'auto', 'cpu'")],
)
def test_unusable_device(files, capsys, device, message):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    for argv in (propagate(files, "stack.npy", files / "out.tif", "--device", device),
                 ["everything", files / "stack.npy", "--out", files / "o.tif", "--device", device],
                 ["embed", files / "stack.npy", "--out", files / "e.zarr", "--device", device],
                 ["demo", "--out", files / "demo", "--device", device]):
        line = run(capsys, *argv)
        assert message in line
        if device == "cuda":
            assert "use device 'cpu'" in line


def test_os_errors_are_one_line(files, capsys, monkeypatch):
    """Any OSError that escapes a command is one line naming the file."""

    def fail(*args, **kwargs):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", "/some/where.tif")

    monkeypatch.setattr(cli_everything, "image_kind", fail)
    line = run(capsys, "everything", files / "stack.npy", "--out", files / "o.tif")
    assert "Is a directory: '/some/where.tif' (give a file name, not a folder)" in line
