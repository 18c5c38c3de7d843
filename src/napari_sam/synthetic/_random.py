"""Random-number and smooth random-field helpers shared by the synthetic generators.

Every generator in :mod:`napari_sam.synthetic` draws all of its randomness from one
:class:`numpy.random.Generator`, so a given seed always gives the same output.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SeedLike = int | np.random.Generator | np.random.SeedSequence | None
"""Anything :func:`as_rng` accepts: ``None``, an integer seed, a SeedSequence or a Generator."""


def as_rng(seed: SeedLike) -> np.random.Generator:
    """Return a :class:`numpy.random.Generator` for ``seed``.

    Parameters
    ----------
    seed : int, numpy.random.SeedSequence, numpy.random.Generator or None
        A Generator is returned as is (and therefore advanced by the caller's draws);
        anything else is passed to :func:`numpy.random.default_rng`.

    Returns
    -------
    numpy.random.Generator
    """
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(seed)


def _bspline_taps(
    n: int, length: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, int]:
    """Cubic B-spline taps from a coarse lattice to ``n`` samples.

    Returns ``(index, weight, n_nodes)``: ``index`` and ``weight`` are ``(4, n)``;
    sample ``i`` is ``sum_k weight[k, i] * lattice[index[k, i]]``, the lattice
    spacing being ``length`` samples.
    """
    t = rng.uniform(1.0, 2.0) + np.arange(n, dtype=np.float64) / length
    i0 = np.floor(t).astype(np.intp)
    f = t - i0
    weight = np.stack(
        [
            (1.0 - f) ** 3 / 6.0,
            (3.0 * f**3 - 6.0 * f**2 + 4.0) / 6.0,
            (-3.0 * f**3 + 3.0 * f**2 + 3.0 * f + 1.0) / 6.0,
            f**3 / 6.0,
        ]
    ).astype(np.float32)
    index = i0[None, :] - 1 + np.arange(4)[:, None]
    return index, weight, int(i0.max()) + 3


def smooth_noise(
    shape: Sequence[int],
    rng: np.random.Generator,
    length: float | Sequence[float] | np.ndarray,
) -> np.ndarray:
    """Smooth, stationary random field with zero mean and unit variance.

    White Gaussian noise on a coarse lattice (node spacing ``length`` pixels along
    each axis) is interpolated with separable cubic B-splines. The result varies on
    a scale of about ``length`` pixels. Cost is four multiply-adds per output value
    and axis, so the field is cheap even for 3D stacks.

    Parameters
    ----------
    shape : sequence of int
        Output shape, any number of axes (e.g. ``(Y, X)`` or ``(Z, Y, X)``).
    rng : numpy.random.Generator
        Source of randomness.
    length : float or sequence of float
        Correlation length in pixels, scalar or one value per axis. Values below 1
        are treated as 1.

    Returns
    -------
    numpy.ndarray
        float32 array of ``shape``, normalized to zero mean and unit standard
        deviation over the array.
    """
    shape = tuple(int(s) for s in shape)
    lengths = np.broadcast_to(np.asarray(length, dtype=np.float64), (len(shape),))
    taps = [_bspline_taps(n, max(float(ln), 1.0), rng) for n, ln in zip(shape, lengths)]
    field = rng.standard_normal(tuple(t[2] for t in taps), dtype=np.float32)
    # Sparse separable interpolation (4 taps per axis); expand the axes that grow
    # the array least first so that intermediates stay small.
    order = sorted(range(len(shape)), key=lambda a: shape[a] / taps[a][2])
    for axis in order:
        index, weight, _ = taps[axis]
        bshape = [1] * field.ndim
        bshape[axis] = shape[axis]
        lead = (slice(None),) * axis
        taps_at = [(*lead, index[k]) for k in range(4)]  # (a subscript `[(*lead, i)]` trips mypy)
        out = field[taps_at[0]] * weight[0].reshape(bshape)
        for k in range(1, 4):
            out += field[taps_at[k]] * weight[k].reshape(bshape)
        field = out
    field = np.ascontiguousarray(field, dtype=np.float32)
    field -= field.mean()
    std = float(field.std())
    if std > 0:
        field /= std
    return field
