"""Weights shipped inside the package (none yet: filled by the bundled-model work)."""

from __future__ import annotations

import torch

BUNDLED: dict[str, str] = {}


def is_bundled(name: str) -> bool:
    return name in BUNDLED


def read_bundled_state_dict(name: str) -> dict[str, torch.Tensor]:
    raise KeyError(name)
