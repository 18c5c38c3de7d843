"""Weights shipped inside the package, so the plugin works offline out of the box.

The bundled model ``"micro"`` is a small SAM (compact conv encoder, SAM's prompt
encoder and mask decoder) trained on procedurally generated microscopy scenes;
see ``docs/bundled_model.md``. Its weights file lives in ``napari_sam/weights/``
next to a JSON record of how it was trained. The file's sha256 is recorded
here and checked on every load, so a missing, truncated or modified file gives
a clear :class:`~napari_sam.model.checkpoint.CheckpointError` naming the file
instead of a silently different model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class BundledWeights:
    """One weights file shipped in ``napari_sam/weights/``.

    Attributes
    ----------
    filename : the ``.pt`` file (a plain state dict, loadable with ``weights_only=True``)
    sha256 : hex digest the file must have
    record : the JSON file with the training record
    """

    filename: str
    sha256: str
    record: str


#: Models whose weights ship with the package, by registry name.
BUNDLED: dict[str, BundledWeights] = {
    "micro": BundledWeights(
        filename="micro_sam.pt",
        sha256="f461a38da1402e71f42d3c0d835b523f7f32b2cbe5be0c5946d5aff699c92965",
        record="micro_sam.json",
    ),
}


def weights_dir() -> Path:
    """The package folder holding the bundled weights."""
    return Path(__file__).resolve().parents[1] / "weights"


def _entry(name: str) -> BundledWeights:
    try:
        return BUNDLED[name]
    except KeyError:
        raise KeyError(
            f"model {name!r} is not bundled with the package; bundled: {', '.join(BUNDLED)}"
        ) from None


def is_bundled(name: str) -> bool:
    """True when the weights of registry model ``name`` ship inside the package."""
    return name in BUNDLED


def bundled_path(name: str) -> Path:
    """Where the weights file of bundled model ``name`` is."""
    return weights_dir() / _entry(name).filename


def sha256_of(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_bundled_state_dict(
    name: str, path: str | os.PathLike | None = None
) -> dict[str, torch.Tensor]:
    """The verified state dict of bundled model ``name``.

    Parameters
    ----------
    name : a key of :data:`BUNDLED` (e.g. ``"micro"``)
    path : read this file instead of the packaged one (it must still have the
        recorded sha256; used to check the verification itself)

    Raises
    ------
    KeyError
        ``name`` is not bundled.
    CheckpointError
        The file is missing, its sha256 differs from the recorded one (modified
        or corrupt), or it is not a readable state dict.
    """
    from napari_sam.model.checkpoint import CheckpointError, unwrap_state_dict

    entry = _entry(name)
    path = Path(path) if path is not None else weights_dir() / entry.filename
    if not path.is_file():
        raise CheckpointError(
            f"the bundled weights of model {name!r} are missing: {path} does not exist. "
            "Reinstall napari-sam-stack (pip install --force-reinstall napari-sam-stack)."
        )
    digest = sha256_of(path)
    if digest != entry.sha256:
        raise CheckpointError(
            f"the bundled weights file {path} of model {name!r} is modified or corrupt: "
            f"sha256 {digest} != expected {entry.sha256}. Reinstall napari-sam-stack to "
            "restore it; the file is not loaded."
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pragma: no cover - only with a matching hash
        raise CheckpointError(f"{path} is not a readable torch checkpoint: {err}") from err
    return unwrap_state_dict(obj, source=str(path))


def bundled_record(name: str) -> dict:
    """The training record (JSON) shipped with bundled model ``name``."""
    path = weights_dir() / _entry(name).record
    if not path.is_file():
        from napari_sam.model.checkpoint import CheckpointError

        raise CheckpointError(f"the training record of model {name!r} is missing: {path}")
    return json.loads(path.read_text())
