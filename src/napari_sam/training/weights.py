"""The weights file of a run: written atomically, named by its sha256."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["file_sha256", "save_weights"]


def save_weights(model, path: str | os.PathLike) -> str:
    """Write the model's state dict (tensors only, loadable with ``weights_only=True``).

    Written to a temporary file first and renamed, so a reader never sees a
    half-written checkpoint. Returns the file's sha256.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return file_sha256(path)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (the same digest the bundled-weights check uses)."""
    from napari_sam.model.bundled import sha256_of

    return sha256_of(path)
