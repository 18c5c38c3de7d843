"""Simulated disk faults for the store tests: a full disk and a read-only folder."""

from __future__ import annotations

import errno
import os


class FullDisk:
    """Wraps a zarr array: reads pass through, every write fails with ENOSPC."""

    def __init__(self, array):
        self.array = array

    def __getitem__(self, key):
        return self.array[key]

    def __setitem__(self, key, value):
        raise OSError(errno.ENOSPC, "No space left on device")


def read_only_folder(tmp_path, monkeypatch):
    """A new folder ``tmp_path / "ro"`` where nothing can be created (chmod 0o555).

    As root, directory permissions are ignored, so ``os.mkdir`` inside it is
    refused through ``monkeypatch`` instead. Restore with ``folder.chmod(0o755)``.
    """
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() == 0:
        real_mkdir = os.mkdir

        def refuse(path, *args, **kwargs):
            if str(path).startswith(str(folder)):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "mkdir", refuse)
    return folder
