"""Reading files that may be wrong: one message that names the file and what is wrong.

Used by :mod:`napari_sam.io`: a folder given for a file, an empty file, a file
of another format under a ``.tif``/``.npy`` name, a truncated or damaged TIFF or
``.npy``, a folder that is not a zarr store. Each raises :class:`UnreadableFile`
(a ``ValueError``; ``FileNotFoundError`` for a missing file) with the path, the
problem and what to do, instead of the reader library's own error.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


class UnreadableFile(ValueError):
    """A file that cannot be read as what it should be; the message names it and the problem."""


#: What a file of each extension is called in messages.
KINDS = {".tif": "TIFF file", ".tiff": "TIFF file", ".npy": "NumPy .npy file"}
_NPY_MAGIC = b"\x93NUMPY"
_TIFF_MAGICS = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def check_file(path: Path, kind: str) -> int:
    """Raise unless ``path`` is an existing, non-empty file; return its size in bytes."""
    if not path.exists():
        raise FileNotFoundError(f"{kind} not found: {str(path)!r}")
    if path.is_dir():
        raise UnreadableFile(
            f"{str(path)!r} is a folder, not a {kind}; give the path of the file itself"
        )
    size = path.stat().st_size
    if size == 0:
        raise UnreadableFile(f"cannot read the {kind} {str(path)!r}: the file is empty (0 bytes)")
    return size


def _head(path: Path, n: int = 8) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def tiff_error(path: Path, err: BaseException) -> UnreadableFile:
    """The message for a TIFF that tifffile could not read."""
    if _head(path, 4) not in _TIFF_MAGICS:
        return UnreadableFile(
            f"{str(path)!r} is not a TIFF file (it does not start with a TIFF header: "
            f"{_head(path)!r}); is it another format under a .tif name? Convert it to TIFF"
        )
    return UnreadableFile(
        f"cannot read the TIFF file {str(path)!r}: it is truncated or damaged "
        f"({type(err).__name__}: {err}); copy or export it again"
    )


#: Errors of tifffile (and numpy/zarr under it) on a damaged file.
TIFF_ERRORS = (ValueError, OSError, EOFError, struct.error, KeyError, IndexError, RuntimeError)


@contextmanager
def reading_tiff(path: Path) -> Iterator[None]:
    """Turn tifffile's errors on a bad file into :func:`tiff_error` messages."""
    try:
        yield
    except FileNotFoundError:
        raise
    except UnreadableFile:
        raise
    except TIFF_ERRORS as err:
        raise tiff_error(path, err) from err


def check_tiff_complete(tif: Any, path: Path, size: int) -> None:
    """Raise if the first series' pixel data reaches past the end of the file (truncated).

    Checks the contiguous data block, or the strips/tiles of the series' last
    page (a truncated file loses its end first). Reading a lazily opened TIFF
    would otherwise fail only when the missing slices are read.
    """
    series = tif.series[0]
    end = 0
    offset = getattr(series, "dataoffset", None)
    if offset is not None:
        end = int(offset) + int(series.nbytes)
    else:
        pages = series.pages
        last = pages[len(pages) - 1] if len(pages) else None
        if last is not None and len(last.dataoffsets):
            end = max(int(o) + int(c) for o, c in zip(last.dataoffsets, last.databytecounts))
    if end > size:
        raise UnreadableFile(
            f"cannot read the TIFF file {str(path)!r}: it is truncated (its pixel data ends at "
            f"byte {end:,}, the file has {size:,} bytes); copy or export it again"
        )


def load_npy(path: Path, lazy: bool) -> np.ndarray:
    """``numpy.load`` of a ``.npy`` file, with a clear message for a wrong or damaged one."""
    check_file(path, KINDS[".npy"])
    if _head(path, 6) != _NPY_MAGIC:
        raise UnreadableFile(
            f"{str(path)!r} is not a NumPy .npy file (it does not start with the .npy "
            f"signature: {_head(path)!r}); save the array with numpy.save"
        )
    try:
        return np.load(path, mmap_mode="r" if lazy else None, allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err):
            raise UnreadableFile(
                f"{str(path)!r} holds Python objects (pickled data), not an image array; "
                "save a numeric array with numpy.save"
            ) from err
        raise UnreadableFile(
            f"cannot read the NumPy .npy file {str(path)!r}: it is truncated or damaged ({err})"
        ) from err
    except (EOFError, OSError) as err:
        raise UnreadableFile(
            f"cannot read the NumPy .npy file {str(path)!r}: it is truncated or damaged "
            f"({type(err).__name__}: {err})"
        ) from err


def check_zarr_folder(path: Path) -> None:
    """Raise unless ``path`` is a folder holding zarr metadata (v3 or v2)."""
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {str(path)!r}")
    if not path.is_dir():
        raise UnreadableFile(
            f"{str(path)!r} is a file, not a zarr store (a .zarr store is a folder)"
        )
    if not any((path / name).is_file() for name in ("zarr.json", ".zarray", ".zgroup")):
        inside = sorted(p.name for p in path.iterdir())[:5]
        what = "it is empty" if not inside else f"it holds {inside}"
        raise UnreadableFile(
            f"{str(path)!r} is not a zarr store: no zarr.json, .zarray or .zgroup inside "
            f"({what}); give the path of a zarr array or group"
        )
