"""Intensity normalization of microscopy slices to SAM's 0-255 RGB input.

Torch-free: numpy only. Normalization is explicit so that every slice of a
stack can be mapped with the *same* ``(low, high)`` (napari's contrast limits,
or :func:`stack_intensity_range` computed once for the stack); per-slice
min-max would show the model a different image on every z.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

#: Percentiles used for the default, robust intensity range.
DEFAULT_PERCENTILES = (0.5, 99.8)
#: Smallest slice side the model can use.
MIN_SIDE = 16


def validate_slice(image: np.ndarray) -> np.ndarray:
    """Check a 2D slice ``(H, W)`` or ``(H, W, C)`` with C <= 3 and return it as an array."""
    image = np.asarray(image)
    if image.dtype.kind not in "biuf":
        raise TypeError(
            f"image dtype {image.dtype} is not numeric; pass a bool, integer or float array"
        )
    if image.ndim not in (2, 3):
        raise ValueError(
            f"expected one 2D slice, shape (H, W) or (H, W, C), got shape {image.shape}; "
            "index a stack first, e.g. stack[z]"
        )
    if image.size == 0:
        raise ValueError(f"image is empty (shape {image.shape})")
    if image.ndim == 3 and image.shape[2] > 3:
        raise ValueError(
            f"image has {image.shape[2]} channels (shape {image.shape}); SAM takes at most 3. "
            "Choose the channels to use, e.g. image[..., [0, 2]] or image[..., :3]"
        )
    if min(image.shape[:2]) < MIN_SIDE:
        raise ValueError(
            f"image is {image.shape[0]}x{image.shape[1]} pixels; both sides must be at least "
            f"{MIN_SIDE} px"
        )
    return image


def default_range(image: np.ndarray) -> tuple[float, float] | None:
    """The range used when the caller gives none, or None for "per channel percentiles".

    uint8 data keeps its display range (0, 255), which is also what the
    official SAM preprocessing does with 8-bit RGB; bool maps to (0, 1);
    everything else (uint16, int, float) uses robust percentiles.
    """
    if image.dtype == np.uint8:
        return (0.0, 255.0)
    if image.dtype == np.bool_:
        return (0.0, 1.0)
    return None


def intensity_range(
    image: np.ndarray, percentiles: Sequence[float] = DEFAULT_PERCENTILES
) -> tuple[float, float]:
    """Robust ``(low, high)`` of the finite values of ``image`` (any shape)."""
    values = np.asarray(image, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (0.0, 1.0)
    low, high = np.percentile(finite, percentiles)
    if high <= low:  # nearly constant: fall back to the full range
        low, high = float(finite.min()), float(finite.max())
    return float(low), float(high)


def stack_intensity_range(
    stack, percentiles: Sequence[float] = DEFAULT_PERCENTILES, max_samples: int = 2_000_000
) -> tuple[float, float]:
    """One ``(low, high)`` for a whole stack, from a bounded sample of its slices.

    ``stack`` may be numpy, dask or zarr with the slice axes last; at most about
    ``max_samples`` values are read (slices spread evenly through the stack).
    """
    shape = stack.shape
    n_slices = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    slice_size = shape[-2] * shape[-1]
    n_pick = max(1, min(n_slices, max_samples // max(1, slice_size)))
    picks = np.unique(np.linspace(0, n_slices - 1, n_pick).round().astype(int))
    samples = []
    for flat in picks:
        idx = np.unravel_index(flat, shape[:-2]) if len(shape) > 2 else ()
        samples.append(np.asarray(stack[tuple(idx)], dtype=np.float64).ravel())
    return intensity_range(np.concatenate(samples), percentiles)


def check_contrast_limits(limits) -> tuple[float, float]:
    """``limits`` as a float ``(low, high)``; ValueError unless finite with low <= high."""
    low, high = (float(v) for v in limits)
    if not (np.isfinite(low) and np.isfinite(high)) or high < low:
        raise ValueError(
            f"contrast_limits must be finite (low, high) with low <= high, got {limits!r}"
        )
    return low, high


def stack_contrast_limits(
    stack, contrast_limits: tuple[float, float] | None = None
) -> tuple[float, float]:
    """The one ``(low, high)`` used for every slice of ``stack``.

    The given limits (checked), else ``(0, 255)`` for uint8 and ``(0, 1)`` for
    bool (nothing read), else :func:`stack_intensity_range` (a bounded sample).
    """
    if contrast_limits is not None:
        return check_contrast_limits(contrast_limits)
    fixed = default_range(np.empty((0, 0), dtype=np.dtype(stack.dtype)))
    return fixed if fixed is not None else stack_intensity_range(stack)


def slice_mapping(
    image: np.ndarray, contrast_limits: tuple[float, float] | None = None
) -> tuple[np.ndarray, tuple[float, float]]:
    """One intensity mapping for a whole slice, so that its parts are normalized alike.

    Parts of a slice (tiles, zoomed crops) normalized on their own would each
    get their own default range; normalized with this mapping they look as
    they do in the whole slice.

    Returns
    -------
    image : the slice, or for a multichannel slice without ``contrast_limits``
        its per-channel normalization (float32 ``(H, W, 3)`` in ``[0, 255]``)
    limits : ``contrast_limits`` (checked), else the slice's default range
        (:func:`default_range`, else :func:`intensity_range` of a
        single-channel slice, else ``(0, 255)`` for the normalized channels)
    """
    image = validate_slice(image)
    if contrast_limits is not None:
        return image, check_contrast_limits(contrast_limits)
    limits = default_range(image)
    if limits is not None:
        return image, limits
    if image.ndim == 2:
        return image, intensity_range(image)
    return to_rgb_float(image), (0.0, 255.0)  # several channels, each with its percentiles


def to_rgb_float(
    image: np.ndarray, contrast_limits: tuple[float, float] | None = None
) -> np.ndarray:
    """Map a validated slice to float32 ``(H, W, 3)`` in ``[0, 255]``.

    Grayscale is repeated to 3 channels; 2 channels get an empty third.
    NaN and -inf are set to the low end of the range, +inf to the high end
    (with a warning); a constant image maps to zeros (with a warning). Data
    whose values or contrast limits lie beyond float32's range is normalized
    in float64 (with a warning), so large values are not lost to overflow.
    """
    image = validate_slice(image)
    limits = contrast_limits if contrast_limits is not None else default_range(image)
    work = _working_dtype(image, limits)
    data: np.ndarray = image.astype(work, copy=False)
    non_finite = ~np.isfinite(data) if data.dtype.kind == "f" else None
    if non_finite is not None and non_finite.any():
        n_nan = int(np.isnan(data).sum())
        n_pos = int(np.isposinf(data).sum())
        n_bad = int(non_finite.sum())
        warnings.warn(
            f"image has {n_bad} NaN/inf values ({n_nan} NaN, {n_bad - n_nan} infinite): NaN "
            f"and -inf are set to the lowest intensity of the range, +inf ({n_pos}) to the "
            "highest",
            stacklevel=3,
        )
    if data.ndim == 2:
        data = data[..., None]
    channels = []
    for c in range(data.shape[2]):
        low, high = check_contrast_limits(
            limits if limits is not None else intensity_range(data[..., c])
        )
        if high == low:
            warnings.warn(f"image is constant (value {low:g}): nothing to segment", stacklevel=3)
            channels.append(np.zeros(data.shape[:2], np.float32))
            continue
        chan = (data[..., c] - work(low)) * work(255.0 / (high - low))
        if non_finite is not None:  # +inf -> 255 by the clip; NaN and -inf -> 0
            chan = np.where(np.isnan(chan) | np.isneginf(chan), 0.0, chan)
        channels.append(np.clip(chan, 0.0, 255.0).astype(np.float32, copy=False))
    if len(channels) == 1:
        channels = channels * 3
    elif len(channels) == 2:
        channels.append(np.zeros_like(channels[0]))
    return np.stack(channels, axis=-1)


#: Largest finite float32.
_F32_MAX = float(np.finfo(np.float32).max)


def _working_dtype(image: np.ndarray, limits: tuple[float, float] | None) -> type:
    """float32, or float64 when the data or the limits go beyond float32 (said in a warning)."""
    big = limits is not None and max(abs(float(v)) for v in limits) > _F32_MAX / 2
    if image.dtype.kind == "f" and image.dtype.itemsize > 4:
        finite = image[np.isfinite(image)]
        peak = float(np.abs(finite).max()) if finite.size else 0.0
        big = big or peak > _F32_MAX / 2
        if big:
            warnings.warn(
                f"image values or contrast limits reach {max(peak, _limit_peak(limits)):.3g}, "
                "near or beyond float32's largest value (3.4e38): the slice is normalized in "
                "float64",
                stacklevel=4,
            )
        return np.float64 if big else np.float32
    if big:
        warnings.warn(
            f"contrast limits {tuple(limits or ())} go near or beyond float32's largest value "
            "(3.4e38): the slice is normalized in float64",
            stacklevel=4,
        )
        return np.float64
    return np.float32


def _limit_peak(limits: tuple[float, float] | None) -> float:
    return 0.0 if limits is None else max(abs(float(v)) for v in limits)
