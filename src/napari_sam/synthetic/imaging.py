"""Image formation: turn an ideal intensity map into a camera image.

The pipeline of :func:`render`, in order:

1. **Optics** – blur with a Gaussian PSF (:func:`blur`); for stacks the PSF is much
   wider along z than in xy (:func:`stack_psf_sigma`).
2. **Illumination** – multiply by a smooth field with vignetting and uneven
   excitation (:func:`illumination_field`), plus optional attenuation with depth.
3. **Background** – add smooth autofluorescence / out-of-focus haze
   (:func:`background_field`).
4. **Camera** – Poisson shot noise on the expected photon counts, Gaussian read
   noise, gain, dark offset, clipping and quantization (:func:`camera`) into an
   8-, 12- (stored as uint16) or 16-bit range, or float32 output.

Arrays are ``(Y, X)`` for 2D images and ``(Z, Y, X)`` for stacks. Intensity maps
given to :func:`render` are relative: 1.0 is a typical bright object.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from ._random import as_rng, smooth_noise

__all__ = [
    "BIT_DEPTHS",
    "auto_gain",
    "background_field",
    "blur",
    "camera",
    "illumination_field",
    "max_value",
    "output_dtype",
    "render",
    "stack_psf_sigma",
]

BIT_DEPTHS = (8, 12, 16)
"""Supported camera bit depths. 12-bit images are stored as uint16."""

DEFAULT_FILL = {8: 0.7, 12: 0.4, 16: 0.07}
"""Default fraction of the range reached by bright pixels (most of a 16-bit range is unused)."""

DEFAULT_OFFSET = {8: 6.0, 12: 100.0, 16: 100.0}
"""Default camera dark offset in ADU per bit depth."""


def _check_bit_depth(bit_depth: int) -> int:
    if int(bit_depth) not in BIT_DEPTHS:
        raise ValueError(f"bit_depth must be one of {BIT_DEPTHS}, got {bit_depth!r}")
    return int(bit_depth)


def max_value(bit_depth: int) -> int:
    """Largest value a camera of ``bit_depth`` bits can record (``2**bit_depth - 1``)."""
    return 2 ** _check_bit_depth(bit_depth) - 1


def output_dtype(bit_depth: int, dtype: str | np.dtype | type | None = None) -> np.dtype:
    """Array dtype of a rendered image.

    Parameters
    ----------
    bit_depth : {8, 12, 16}
        Camera bit depth.
    dtype : str, numpy.dtype or None
        ``None`` picks the natural storage type (uint8 for 8 bits, uint16 for 12 and
        16 bits). ``"float32"`` is allowed for any bit depth; ``"uint16"`` also for 8 bits.

    Returns
    -------
    numpy.dtype
    """
    bit_depth = _check_bit_depth(bit_depth)
    natural = np.dtype(np.uint8 if bit_depth == 8 else np.uint16)
    if dtype is None:
        return natural
    dt = np.dtype(dtype)
    if dt == np.float32 or dt == natural or (dt == np.uint16 and bit_depth == 8):
        return dt
    raise ValueError(f"dtype {dt} is not supported for bit_depth={bit_depth}")


def stack_psf_sigma(
    sigma_xy: float = 1.2, anisotropy: float = 1.0, axial_ratio: float = 3.5
) -> tuple[float, float, float]:
    """Gaussian PSF widths in voxels for a ``(Z, Y, X)`` stack.

    Parameters
    ----------
    sigma_xy : float
        Lateral PSF standard deviation in xy pixels.
    anisotropy : float
        z step divided by the xy pixel size (e.g. 4.0 for ``scale=(2.0, 0.5, 0.5)``).
    axial_ratio : float
        Axial over lateral PSF width in physical units; 3 to 5 for widefield and
        confocal microscopes, so the PSF is much wider along z than in xy.

    Returns
    -------
    tuple of float
        ``(sigma_z, sigma_y, sigma_x)`` in voxels of the stack.
    """
    if anisotropy <= 0:
        raise ValueError("anisotropy must be positive")
    return (float(sigma_xy) * axial_ratio / anisotropy, float(sigma_xy), float(sigma_xy))


def blur(expected: np.ndarray, sigma: float | Sequence[float] | None) -> np.ndarray:
    """Convolve with a Gaussian PSF.

    Parameters
    ----------
    expected : numpy.ndarray
        Intensity map ``(Y, X)`` or ``(Z, Y, X)``.
    sigma : float, sequence of float or None
        PSF standard deviation in pixels, scalar or one per axis (see
        :func:`stack_psf_sigma`). ``None`` or 0 returns a float32 copy.

    Returns
    -------
    numpy.ndarray
        float32 array of the same shape.
    """
    out = np.asarray(expected, dtype=np.float32)
    if sigma is None or np.all(np.asarray(sigma, dtype=float) <= 0):
        return out.copy()
    return ndi.gaussian_filter(out, sigma=sigma, mode="nearest", truncate=3.5)


def illumination_field(
    shape: Sequence[int], rng: np.random.Generator, strength: float = 0.25
) -> np.ndarray:
    """Multiplicative illumination: vignetting plus smooth unevenness.

    Parameters
    ----------
    shape : sequence of int
        Image shape; only the last two axes ``(Y, X)`` are used.
    rng : numpy.random.Generator
        Source of randomness.
    strength : float
        Roughly the relative intensity loss from the brightest to the dimmest
        corner, in ``[0, 1)``; 0 gives a flat field.

    Returns
    -------
    numpy.ndarray
        float32 array ``(Y, X)`` with maximum 1.0 that broadcasts against ``shape``.
    """
    ny, nx = (int(s) for s in shape[-2:])
    strength = float(np.clip(strength, 0.0, 0.95))
    if strength == 0:
        return np.ones((ny, nx), dtype=np.float32)
    split = rng.uniform(0.3, 0.8)
    cy, cx = rng.uniform(0.3, 0.7) * ny, rng.uniform(0.3, 0.7) * nx
    yy = ((np.arange(ny, dtype=np.float32) - cy) / (0.5 * max(ny, nx)))[:, None]
    xx = ((np.arange(nx, dtype=np.float32) - cx) / (0.5 * max(ny, nx)))[None, :]
    r2 = (yy**2 + xx**2) / 2.0
    vignette = 1.0 - strength * split * np.clip(r2, 0.0, 1.0)
    uneven = smooth_noise((ny, nx), rng, 0.6 * max(ny, nx))
    field = vignette * (1.0 + 0.35 * strength * (1.0 - split) * uneven)
    field = np.clip(field, 0.05, None)
    return (field / field.max()).astype(np.float32)


def background_field(
    shape: Sequence[int], rng: np.random.Generator, level: float = 0.05, variation: float = 0.3
) -> np.ndarray:
    """Smooth additive background (autofluorescence, out-of-focus haze).

    Parameters
    ----------
    shape : sequence of int
        Image shape; only the last two axes ``(Y, X)`` are used.
    rng : numpy.random.Generator
        Source of randomness.
    level : float
        Mean background relative to a bright object (1.0).
    variation : float
        Relative standard deviation of the smooth fluctuations.

    Returns
    -------
    numpy.ndarray
        float32 array ``(Y, X)``, non-negative, broadcastable against ``shape``.
    """
    ny, nx = (int(s) for s in shape[-2:])
    if level <= 0:
        return np.zeros((ny, nx), dtype=np.float32)
    noise = smooth_noise((ny, nx), rng, 0.25 * max(ny, nx))
    return (level * np.clip(1.0 + variation * noise, 0.1, None)).astype(np.float32)


def auto_gain(
    photon_map: np.ndarray,
    bit_depth: int,
    fill: float | None = None,
    offset: float = 0.0,
    floor: float = 1.0,
) -> float:
    """Gain (ADU per electron) that puts bright pixels at ``fill`` of the range.

    Parameters
    ----------
    photon_map : numpy.ndarray
        Expected photons per pixel.
    bit_depth : {8, 12, 16}
        Camera bit depth.
    fill : float, optional
        Fraction of the ``bit_depth`` range reached by the 99.9th percentile of the
        expected signal; defaults to :data:`DEFAULT_FILL` (most of a 16-bit range is
        left unused, as with real sCMOS data).
    offset : float
        Dark offset in ADU, subtracted from the usable range.
    floor : float
        Lower bound for the reference signal, so that nearly empty images are not
        amplified until their background fills the range.

    Returns
    -------
    float
    """
    fill = DEFAULT_FILL[_check_bit_depth(bit_depth)] if fill is None else float(fill)
    sample = np.asarray(photon_map).ravel()[::7]
    peak = float(np.percentile(sample, 99.9)) if sample.size else 1.0
    return fill * max(max_value(bit_depth) - offset, 1.0) / max(peak, floor, 1.0)


POISSON_EXACT_BELOW = 25.0
"""Expected counts below which shot noise is drawn exactly from a Poisson law; above,
the (indistinguishable, much faster) rounded Gaussian approximation is used."""


def _shot_noise(lam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Photon counts for expected counts ``lam`` (float64 array) as float32."""
    out = lam.astype(np.float32)
    out += np.sqrt(out) * rng.standard_normal(lam.shape, dtype=np.float32)
    np.rint(out, out=out)
    low = lam < POISSON_EXACT_BELOW
    if low.any():
        out[low] = rng.poisson(lam[low])
    return out


def camera(
    photon_map: np.ndarray,
    rng: np.random.Generator,
    *,
    bit_depth: int = 16,
    read_noise: float = 2.0,
    gain: float | None = None,
    offset: float | None = None,
    fill: float | None = None,
    dtype: str | np.dtype | type | None = None,
) -> np.ndarray:
    """Simulate the camera: shot noise, read noise, gain, offset, quantization.

    Shot noise is Poisson (see :data:`POISSON_EXACT_BELOW` for bright pixels).

    Parameters
    ----------
    photon_map : numpy.ndarray
        Expected detected photons (electrons) per pixel, ``(Y, X)`` or ``(Z, Y, X)``.
    rng : numpy.random.Generator
        Source of randomness.
    bit_depth : {8, 12, 16}
        Recorded range ``[0, 2**bit_depth - 1]``; 12-bit data are stored as uint16.
    read_noise : float
        Standard deviation of the Gaussian read noise in electrons.
    gain : float, optional
        ADU per electron; by default chosen by :func:`auto_gain`.
    offset : float, optional
        Dark offset in ADU; defaults to :data:`DEFAULT_OFFSET`.
    fill : float, optional
        Passed to :func:`auto_gain` when ``gain`` is None.
    dtype : str or numpy.dtype, optional
        See :func:`output_dtype`. Integer output is rounded; ``float32`` output keeps
        the un-rounded ADU values (same clipping).

    Returns
    -------
    numpy.ndarray
        Image of the same shape with values in ``[0, 2**bit_depth - 1]``.
    """
    bit_depth = _check_bit_depth(bit_depth)
    out_dtype = output_dtype(bit_depth, dtype)
    offset = DEFAULT_OFFSET[bit_depth] if offset is None else float(offset)
    lam = np.clip(np.asarray(photon_map, dtype=np.float64), 0.0, None)
    if gain is None:
        gain = auto_gain(lam, bit_depth, fill, offset)
    electrons = _shot_noise(lam, rng)
    if read_noise > 0:
        electrons += rng.normal(0.0, read_noise, size=lam.shape).astype(np.float32)
    adu = electrons * np.float32(gain) + np.float32(offset)
    np.clip(adu, 0.0, max_value(bit_depth), out=adu)
    if out_dtype == np.float32:
        return adu
    return np.rint(adu).astype(out_dtype)


def render(
    expected: np.ndarray,
    rng: np.random.Generator | int | None = None,
    *,
    bit_depth: int = 16,
    photons: float = 500.0,
    background: float | np.ndarray = 0.05,
    illumination: float | np.ndarray = 0.25,
    psf_sigma: float | Sequence[float] | None = 1.2,
    read_noise: float = 2.0,
    depth_attenuation: float = 0.0,
    gain: float | None = None,
    offset: float | None = None,
    fill: float | None = None,
    dtype: str | np.dtype | type | None = None,
) -> np.ndarray:
    """Form a noisy microscope image from an ideal relative intensity map.

    Parameters
    ----------
    expected : numpy.ndarray
        Ideal fluorophore density (or transmitted light), ``(Y, X)`` or
        ``(Z, Y, X)``, non-negative; 1.0 is a typical bright object.
    rng : numpy.random.Generator, int or None
        Source of randomness (see :func:`~napari_sam.synthetic._random.as_rng`).
    bit_depth : {8, 12, 16}
        Camera bit depth; 12-bit images are stored as uint16.
    photons : float
        Expected photons per pixel for intensity 1.0 after blurring, at the
        brightest point of the illumination; controls the shot-noise level.
    background : float or numpy.ndarray
        Additive background relative to intensity 1.0: a float gives a smooth field
        of that mean (:func:`background_field`), an array is used as is.
    illumination : float or numpy.ndarray
        Vignetting / uneven illumination strength (:func:`illumination_field`), or
        a multiplicative field broadcastable to ``expected``.
    psf_sigma : float, sequence of float or None
        Gaussian PSF width in pixels, scalar or per axis (``(z, y, x)`` for stacks,
        see :func:`stack_psf_sigma`).
    read_noise : float
        Camera read noise in electrons.
    depth_attenuation : float
        For stacks, fractional intensity loss from the first to the last slice
        (light scattering/absorption with depth); ignored for 2D.
    gain, offset, fill, dtype
        Camera settings, see :func:`camera`. The automatic gain never treats less
        than ``photons / 2`` as the bright reference, so a nearly empty field stays dark.

    Returns
    -------
    numpy.ndarray
        Image with the shape of ``expected``: uint8 (8-bit), uint16 (12/16-bit) or
        float32 when ``dtype="float32"``.
    """
    rng = as_rng(rng)
    expected = np.asarray(expected)
    if expected.ndim not in (2, 3):
        raise ValueError(f"expected must be 2D or 3D, got shape {expected.shape}")
    signal = blur(expected, psf_sigma)
    if isinstance(illumination, np.ndarray):
        illum = illumination.astype(np.float32, copy=False)
    else:
        illum = illumination_field(expected.shape, rng, float(illumination))
    if isinstance(background, np.ndarray):
        bg = background.astype(np.float32, copy=False)
    else:
        bg = background_field(expected.shape, rng, float(background))
    signal += bg
    signal *= illum
    if expected.ndim == 3 and depth_attenuation > 0 and expected.shape[0] > 1:
        z = np.linspace(0.0, 1.0, expected.shape[0], dtype=np.float32)
        signal *= (1.0 - float(depth_attenuation) * z)[:, None, None]
    signal *= np.float32(photons)
    if gain is None:
        offset_adu = DEFAULT_OFFSET[_check_bit_depth(bit_depth)] if offset is None else offset
        gain = auto_gain(signal, bit_depth, fill, offset_adu, floor=0.5 * float(photons))
    return camera(
        signal,
        rng,
        bit_depth=bit_depth,
        read_noise=read_noise,
        gain=gain,
        offset=offset,
        fill=fill,
        dtype=dtype,
    )
