"""Options and helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import errno
import os
import sys
import tempfile
from pathlib import Path


class UserError(Exception):
    """A problem with the user's input, reported without a traceback."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    ValueError,
    KeyError,
    FileNotFoundError,
    RuntimeError,  # CheckpointError derives from it
)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--device``, ``--precision``: the same in every subcommand."""
    from napari_sam.model.registry import DEFAULT_MODEL

    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"registry name (see `napari-sam models`) or checkpoint path [{DEFAULT_MODEL}]",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps [auto]")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16", "int8"],
        help="image-encoder precision [auto]",
    )


def progress_printer(label: str):
    """A ``callback(done, total)`` that draws a one-line progress bar on stderr."""

    def callback(done: int, total: int) -> None:
        if total:
            width = 30
            filled = int(width * done / total)
            sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
            if done >= total:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(f"\r{label} {done}")
        sys.stderr.flush()

    return callback


def describe_os_error(err: OSError) -> str:
    """An ``OSError`` in one line: what failed, on which file, and the system's reason."""
    if not isinstance(err, OSError) or type(err).__str__ is not OSError.__str__:
        return str(err)  # our own OSErrors (StoreWriteError) carry their message
    reason = err.strerror or str(err)
    where = f" {err.filename!r}" if err.filename else ""
    if err.filename2:
        where += f" -> {err.filename2!r}"
    hint = {
        errno.EACCES: "check the permissions, or choose another place",
        errno.EPERM: "check the permissions, or choose another place",
        errno.EROFS: "the file system is read-only: choose another place",
        errno.ENOSPC: "the disk is full: free space or choose another place",
        errno.EISDIR: "give a file name, not a folder",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
    }.get(err.errno or -1, "")
    return f"{reason}:{where}" + (f" ({hint})" if hint else "")


def _writable_folder(folder: Path, what: str) -> None:
    """Raise :class:`UserError` unless files can be created in ``folder``."""
    try:
        if not folder.exists():
            raise UserError(f"{what}: the folder {str(folder)!r} does not exist; create it first")
        if not folder.is_dir():
            raise UserError(f"{what}: {str(folder)!r} is a file, not a folder")
    except PermissionError as err:
        raise UserError(
            f"{what}: cannot enter the folder {str(folder)!r} (permission denied); choose a "
            "folder you can write to"
        ) from err
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(
            f"{what}: the folder {str(folder)!r} is not writable (or cannot be entered); "
            "choose a folder you can write to"
        )
    try:  # permissions can pass while the file system is read-only or full
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".napari-sam-probe-"):
            pass
    except OSError as err:
        raise UserError(
            f"{what}: cannot write in {str(folder)!r}: {describe_os_error(err)}"
        ) from err


def check_output_file(path: str | os.PathLike, option: str = "--out") -> None:
    """Fail fast (before any computing) unless ``path`` can be written as a file.

    Raises
    ------
    UserError
        ``path`` is a folder, an existing file that is not writable, or in a
        folder that does not exist, cannot be entered or written.
    """
    p = Path(path)
    what = f"{option} {str(p)!r}"
    try:
        if p.is_dir():
            raise UserError(
                f"{what} is a folder; give a file name, e.g. {str(p / 'labels.tif')!r}"
            )
        exists = p.exists()
    except PermissionError as err:
        raise UserError(
            f"{what}: cannot reach it, a folder on the way cannot be entered (permission "
            "denied); choose a folder you can write to"
        ) from err
    if exists and not os.access(p, os.W_OK):
        raise UserError(f"{what} exists and is not writable; choose another file name")
    _writable_folder(p.parent if str(p.parent) else Path("."), what)


def check_output_folder(path: str | os.PathLike, option: str = "--out") -> None:
    """Fail fast unless ``path`` is (or can be created as) a writable folder."""
    p = Path(path)
    what = f"{option} {str(p)!r}"
    try:
        exists = p.exists()
        is_dir = p.is_dir()
    except PermissionError as err:
        raise UserError(
            f"{what}: cannot reach it, a folder on the way cannot be entered (permission "
            "denied); choose a folder you can write to"
        ) from err
    if exists and not is_dir:
        raise UserError(f"{what} is a file; give a folder for the outputs")
    if exists:
        _writable_folder(p, what)
        return
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    _writable_folder(parent, what)


def check_store_path(path: str | os.PathLike, option: str = "--out") -> None:
    """Fail fast unless an embedding store can be opened or created at ``path``.

    An existing store is checked when it is opened (read-only stores are told
    then); a new one needs a folder that can be entered and written.
    """
    p = Path(path)
    what = f"{option} {str(p)!r}"
    try:
        exists = p.exists()
    except PermissionError as err:
        raise UserError(
            f"{what}: cannot reach the store, a folder on the way cannot be entered "
            "(permission denied); choose a store path in a folder you can write to"
        ) from err
    if exists:
        if not os.access(p, os.R_OK | os.X_OK):
            raise UserError(
                f"{what}: the store cannot be read (permission denied); choose another path"
            )
        return
    parent = p.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    _writable_folder(parent, what)


def check_device_option(device: str) -> None:
    """``--device``: refused with what to use instead when torch cannot use it."""
    from napari_sam.prompt_checks import check_device

    try:
        check_device(device)
    except ValueError as err:  # "device 'cuda': ..." -> "--device 'cuda': ..."
        raise UserError(f"--{err}") from err


def check_dask_scratch() -> None:
    """Fail before starting a local Dask cluster whose workers cannot write their scratch."""
    import dask

    base = dask.config.get("temporary-directory", None) or tempfile.gettempdir()
    scratch = Path(base) / "dask-scratch-space"
    try:
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=scratch, prefix=".napari-sam-probe-"):
            pass
    except OSError as err:
        raise UserError(
            f"the Dask workers cannot write their scratch space {str(scratch)!r} "
            f"({describe_os_error(err)}); set DASK_TEMPORARY_DIRECTORY to a writable folder, "
            "or compute in this process with --workers 0"
        ) from err
