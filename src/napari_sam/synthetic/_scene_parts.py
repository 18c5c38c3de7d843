"""Parts shared by the scene generators (:mod:`.scenes`, :mod:`.stacks`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._random import smooth_noise
from .placement import interior_points
from .shapes import Placement


def _shape(shape: Sequence[int], ndim: int) -> tuple[int, ...]:
    out = tuple(int(s) for s in shape)
    if len(out) != ndim or min(out) < 1:
        raise ValueError(f"shape must be {ndim} positive integers, got {shape!r}")
    return out


def _profile_map(shape: tuple[int, ...], placements: list[Placement]) -> np.ndarray:
    """Paint each object's interior profile (0 at the edge, 1 deep inside)."""
    profile = np.zeros(shape, dtype=np.float32)
    for p in placements:
        sl = p.slices(shape)
        if sl is None:
            continue
        img, loc = sl
        m = p.obj.mask[loc]
        profile[img][m] = p.obj.profile[loc][m]
    return profile


def _lut(values: np.ndarray) -> np.ndarray:
    """Lookup table indexed by label: entry 0 (background) is 0."""
    return np.concatenate([[0.0], np.asarray(values, dtype=np.float32)]).astype(np.float32)


def _nuclear_fluorescence(
    labels: np.ndarray,
    placements: list[Placement],
    rng: np.random.Generator,
    *,
    brightness: tuple[float, float],
    texture: float,
    texture_length: float | Sequence[float],
) -> np.ndarray:
    """Ideal DNA-stain intensity: per-nucleus brightness, dome profile, chromatin texture."""
    n = len(placements)
    bright = rng.uniform(*brightness, n)
    for k, p in enumerate(placements):
        if p.obj.kind == "dividing":  # condensed chromatin is brighter
            bright[k] = min(1.4 * bright[k], 1.2)
    tex = texture * rng.uniform(0.4, 1.4, n)
    profile = _profile_map(labels.shape, placements)
    fine = smooth_noise(labels.shape, rng, texture_length)
    coarse_len = 2.5 * np.asarray(texture_length, dtype=float)
    spots = smooth_noise(labels.shape, rng, coarse_len)
    expected = _lut(bright)[labels]
    expected *= 0.7 + 0.3 * profile
    expected *= 1.0 + _lut(tex)[labels] * fine
    expected *= np.where(spots > 1.7, np.float32(0.6), np.float32(1.0))  # nucleoli
    np.clip(expected, 0.0, None, out=expected)
    return expected


def _finish(
    image: np.ndarray,
    labels: np.ndarray,
    info: dict[str, Any],
    return_info: bool,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    if not return_info:
        return image, labels
    info["n_objects"] = int(labels.max()) if labels.size else 0
    info["interior_points"] = interior_points(labels, info.get("scale"))
    return image, labels, info
