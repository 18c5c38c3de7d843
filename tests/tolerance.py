"""Tolerances for float results that two code paths, or two thread counts, round differently.

Two computations of the same sums in another order (a chunked attention, a
batched matmul, a kernel picked for one thread or for two) differ by rounding
only: about ``eps`` of the dtype times the magnitude of the values, growing
like ``sqrt(n)`` for a sum of ``n`` terms. :func:`rounding_atol` turns that
into a tolerance, so a test holds on any CPU and thread count (the CI runs
the ``numerics`` tests at 1 and 2 threads) yet still catches a real error,
which is many orders of magnitude larger.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; float16/bfloat16 widened for numpy
        x = x.detach().cpu()
        return x.float().numpy() if x.dtype.is_floating_point else x.numpy()
    return np.asarray(x)


def eps_of(x: Any, dtype: Any = None) -> float:
    """Machine epsilon of ``dtype`` (default: ``x``'s dtype; float32 for non-floats)."""
    if dtype is None:
        dtype = getattr(x, "dtype", np.float32)
    if hasattr(dtype, "is_floating_point"):  # a torch dtype
        import torch

        return float(torch.finfo(dtype if dtype.is_floating_point else torch.float32).eps)
    dtype = np.dtype(dtype)
    return float(np.finfo(dtype if dtype.kind == "f" else np.float32).eps)


def rounding_atol(
    reference: Any, reduction_length: int = 1, k: float = 2.0, dtype: Any = None
) -> float:
    """``k * eps(dtype) * max|reference| * sqrt(reduction_length)``.

    Parameters
    ----------
    reference : the expected values (numpy array or torch tensor)
    reduction_length : terms of the longest sum behind each value (a matmul's
        inner dimension, the keys of an attention, the taps of an interpolation)
    k : stages of such sums whose rounding adds up, and headroom
    dtype : the dtype the computation runs in (default: ``reference``'s)
    """
    ref = _numpy(reference)
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    return k * eps_of(reference, dtype) * max(scale, 1e-30) * math.sqrt(max(1, reduction_length))


def assert_close_rounding(
    actual: Any, expected: Any, reduction_length: int = 1, k: float = 2.0, dtype: Any = None
) -> None:
    """Assert ``max|actual - expected| <= rounding_atol(expected, ...)``, saying by how much."""
    a, e = _numpy(actual), _numpy(expected)
    assert a.shape == e.shape, f"shapes differ: {a.shape} vs {e.shape}"
    atol = rounding_atol(expected, reduction_length, k, dtype)
    diff = float(np.abs(a.astype(np.float64) - e.astype(np.float64)).max()) if a.size else 0.0
    assert diff <= atol, (
        f"max difference {diff:.3g} > rounding tolerance {atol:.3g} (k={k}, "
        f"eps={eps_of(expected, dtype):.3g}, max|expected|={float(np.abs(e).max()):.3g}, "
        f"reduction length {reduction_length})"
    )


def assert_masks_equal_near_threshold(
    mask: Any, logits: Any, threshold: float = 0.0, atol: float | None = None
) -> None:
    """``mask == (logits > threshold)`` except where ``|logits - threshold| <= atol``.

    For masks thresholded from logits that another code path rounded
    differently: a pixel whose logit lies within rounding of the threshold may
    go either way. ``atol`` defaults to :func:`rounding_atol` of ``logits`` with
    ``reduction_length=4`` (the taps of a bilinear interpolation) and ``k=4``.
    """
    logits = _numpy(logits).astype(np.float64)
    mask = _numpy(mask).astype(bool)
    if atol is None:
        atol = rounding_atol(logits, 4, 4.0, dtype=np.float32)
    ref = logits > threshold
    differ = mask != ref
    near = np.abs(logits - threshold) <= atol
    assert not (differ & ~near).any(), (
        f"{int((differ & ~near).sum())} pixel(s) differ away from the threshold "
        f"(|logit - {threshold}| > {atol:.3g}); {int(differ.sum())} differ in all"
    )
