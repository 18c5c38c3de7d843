"""Object geometry with exact masks, and their placement into a label image.

Objects are built in *physical* units where one unit is one xy pixel; a ``spacing``
of ``(anisotropy, 1, 1)`` samples a 3D object on an anisotropic ``(Z, Y, X)`` grid.
Every object is an :class:`ObjectShape`: a boolean mask cropped to its bounding
box plus a reference point inside it. ``place_objects`` pastes objects into a
``uint32`` label image without overlap (touching is allowed, and produced on
purpose for clustered placement). ``tessellation`` builds space-filling cell
labels (warped Voronoi cells) for membrane-stained tissue. Both are in
:mod:`.placement` (and importable from here).

Axis order is ``(Y, X)`` in 2D and ``(Z, Y, X)`` in 3D throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "ObjectShape",
    "Placement",
    "dividing",
    "ellipsoid",
    "random_nucleus",
    "random_rotation",
    "star_convex",
]

_MIN_FACTOR, _MAX_FACTOR = 0.55, 1.6


@dataclass(frozen=True, eq=False)
class ObjectShape:
    """One object: an exact mask in its own bounding box.

    Attributes
    ----------
    mask : numpy.ndarray
        bool array ``(h, w)`` or ``(d, h, w)``, cropped to the object.
    center : numpy.ndarray
        float64 ``(ndim,)``: reference point in voxel coordinates of ``mask``; the
        voxel nearest to it always belongs to the object.
    radius : float
        Bounding radius in physical units (xy pixels).
    profile : numpy.ndarray
        float32 array like ``mask``: 0 outside, rising from ~0 at the boundary to 1 at
        the centre (a dome: ``sqrt(1 - rho)`` of the normalized radial coordinate).
    kind : str
        ``"ellipsoid"``, ``"blob"`` or ``"dividing"``.
    """

    mask: np.ndarray
    center: np.ndarray
    radius: float
    profile: np.ndarray
    kind: str = "ellipsoid"
    area: int = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "area", int(np.count_nonzero(self.mask)))

    @property
    def ndim(self) -> int:
        """Number of axes (2 or 3)."""
        return self.mask.ndim


@dataclass(frozen=True, eq=False)
class Placement:
    """An object pasted into a label image.

    Attributes
    ----------
    label : int
        Its id in the label image.
    offset : tuple of int
        Image coordinates of ``obj.mask[0, ..., 0]`` (may be negative at the border).
    obj : ObjectShape
        The object.
    """

    label: int
    offset: tuple[int, ...]
    obj: ObjectShape

    @property
    def center(self) -> np.ndarray:
        """Reference point in image voxel coordinates (float64 ``(ndim,)``)."""
        return np.asarray(self.offset, dtype=np.float64) + self.obj.center

    def slices(self, shape: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
        """``(image_slices, mask_slices)`` of the part inside an image of ``shape``."""
        return _clip_slices(self.offset, self.obj.mask.shape, shape)


def _clip_slices(
    offset: Sequence[int], mshape: Sequence[int], shape: Sequence[int]
) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    img, loc = [], []
    for o, m, s in zip(offset, mshape, shape):
        a, b = max(int(o), 0), min(int(o) + int(m), int(s))
        if b <= a:
            return None
        img.append(slice(a, b))
        loc.append(slice(a - int(o), b - int(o)))
    return tuple(img), tuple(loc)


def _axis_angle(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def random_rotation(ndim: int, rng: np.random.Generator, max_tilt: float = 180.0) -> np.ndarray:
    """Random rotation matrix acting on ``(y, x)`` or ``(z, y, x)`` vectors.

    Parameters
    ----------
    ndim : {2, 3}
        Dimensionality.
    rng : numpy.random.Generator
        Source of randomness.
    max_tilt : float
        3D only: largest tilt (degrees) of the object's z axis away from the stack's
        z axis, on top of a uniform in-plane rotation. 90 or more gives a uniformly
        random orientation.

    Returns
    -------
    numpy.ndarray
        float64 ``(ndim, ndim)`` orthonormal matrix with determinant 1.
    """
    if ndim == 2:
        a = rng.uniform(0.0, 2.0 * np.pi)
        return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    if ndim != 3:
        raise ValueError("ndim must be 2 or 3")
    if max_tilt >= 90.0:
        q = rng.standard_normal(4)
        w, x, y, z = q / np.linalg.norm(q)
        return np.array(
            [
                [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
            ]
        )
    spin = _axis_angle(np.array([1.0, 0.0, 0.0]), rng.uniform(0.0, 2.0 * np.pi))
    beta = rng.uniform(0.0, 2.0 * np.pi)
    tilt = _axis_angle(
        np.array([0.0, np.cos(beta), np.sin(beta)]), np.deg2rad(rng.uniform(0.0, max_tilt))
    )
    return tilt @ spin


_TABLE_2D = 512
_TABLE_3D = (64, 128)


def _table_directions(ndim: int) -> np.ndarray:
    """Unit vectors ``(ndim, *table_shape)`` (float32) at the centres of the table bins."""
    if ndim == 2:
        theta = -np.pi + (np.arange(_TABLE_2D) + 0.5) * (2.0 * np.pi / _TABLE_2D)
        return np.stack([np.sin(theta), np.cos(theta)]).astype(np.float32)
    na, nb = _TABLE_3D
    alpha = ((np.arange(na) + 0.5) * (np.pi / na))[:, None]
    beta = (-np.pi + (np.arange(nb) + 0.5) * (2.0 * np.pi / nb))[None, :]
    u = np.broadcast_arrays(
        np.cos(alpha), np.sin(alpha) * np.sin(beta), np.sin(alpha) * np.cos(beta)
    )
    return np.stack(u).astype(np.float32)


_DIRECTIONS = {2: _table_directions(2), 3: _table_directions(3)}


def _modes(
    ndim: int, rng: np.random.Generator | None, irregularity: float, n_modes: int
) -> np.ndarray | None:
    """Tabulated radius factor over directions, or None for a smooth ellipsoid.

    The factor ``1 + sum_k a_k cos(w_k . u + phi_k)`` is sampled on a grid of
    directions ``u``: polar angle ``atan2(y, x)`` in 2D (``_TABLE_2D`` bins), and
    (angle from the body z axis, azimuth ``atan2(y, x)``) in 3D (``_TABLE_3D``).
    """
    if rng is None or irregularity <= 0 or n_modes <= 0:
        return None
    freqs = rng.standard_normal((n_modes, ndim))
    freqs *= rng.uniform(1.0, 3.0, (n_modes, 1)) / np.sqrt((freqs * freqs).sum(1, keepdims=True))
    phases = rng.uniform(0.0, 2.0 * np.pi, n_modes)
    amps = irregularity * rng.uniform(0.5, 1.5, n_modes) / np.sqrt(n_modes)
    u = _DIRECTIONS[ndim].reshape(ndim, -1)
    arg = freqs.astype(np.float32) @ u
    arg += phases.astype(np.float32)[:, None]
    table = 1.0 + amps.astype(np.float32) @ np.cos(arg)
    table = table.reshape(_DIRECTIONS[ndim].shape[1:])
    return np.clip(table, _MIN_FACTOR, _MAX_FACTOR, out=table)


def _radius_factor(p: np.ndarray, table: np.ndarray | None) -> np.ndarray | float:
    """Star-convex radius factor for body-frame coordinates ``p`` (ndim, ...)."""
    if table is None:
        return 1.0
    if p.shape[0] == 2:
        theta = np.arctan2(p[0], p[1])
        i = ((theta + np.pi) * (_TABLE_2D / (2.0 * np.pi))).astype(np.intp)
        return table[np.clip(i, 0, _TABLE_2D - 1)]
    na, nb = _TABLE_3D
    rho = np.sqrt(p[1] * p[1] + p[2] * p[2])
    alpha = np.arctan2(rho, p[0])  # angle from the body z axis, in [0, pi]
    beta = np.arctan2(p[1], p[2])
    i = np.clip((alpha * (na / np.pi)).astype(np.intp), 0, na - 1)
    j = np.clip(((beta + np.pi) * (nb / (2.0 * np.pi))).astype(np.intp), 0, nb - 1)
    return table[i, j]


def _to_body(rot: np.ndarray, grids: list[np.ndarray]) -> np.ndarray:
    """Rotate broadcastable image-frame coordinates into the body frame (``rot.T @ x``).

    ``grids`` are sparse per-axis coordinate arrays; returns ``(ndim, *shape)`` float32.
    """
    ndim = rot.shape[0]
    shape = tuple(g.size for g in grids)
    out = np.empty((ndim, *shape), dtype=np.float32)
    for i in range(ndim):
        out[i] = np.float32(rot[0, i]) * grids[0]
        for j in range(1, ndim):
            out[i] += np.float32(rot[j, i]) * grids[j]
    return out


def _grid(extent: float, spacing: np.ndarray, rng: np.random.Generator | None):
    """Sparse physical coordinates of a box of half-size ``extent`` and its centre voxel."""
    half = np.ceil(extent / spacing).astype(int) + 1
    jitter = rng.uniform(-0.5, 0.5, spacing.size) if rng is not None else np.zeros(spacing.size)
    center = half + jitter
    ndim = spacing.size
    grids = []
    for axis, (h, c, sp) in enumerate(zip(half, center, spacing)):
        shape = [1] * ndim
        shape[axis] = 2 * h + 1
        grids.append(((np.arange(2 * h + 1) - c) * sp).astype(np.float32).reshape(shape))
    return grids, center


def _level(p: np.ndarray, radii: np.ndarray, modes) -> np.ndarray:
    """Normalized radial coordinate: < 1 inside the (perturbed) ellipsoid, 0 at its centre."""
    q = (p[0] / np.float32(radii[0])) ** 2
    for i in range(1, p.shape[0]):
        q += (p[i] / np.float32(radii[i])) ** 2
    return np.sqrt(q) / _radius_factor(p, modes)


def _finish(level: np.ndarray, center: np.ndarray, radius: float, kind: str) -> ObjectShape:
    inside = level <= 1.0
    if not inside.any():  # degenerate: keep at least the centre voxel
        inside[tuple(np.clip(np.rint(center).astype(int), 0, np.array(inside.shape) - 1))] = True
    idx = np.nonzero(inside)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    mask = np.ascontiguousarray(inside[box])
    center = center - np.array([b.start for b in box], dtype=np.float64)
    nearest = np.rint(center).astype(int)
    if np.any(nearest < 0) or np.any(nearest >= mask.shape) or not mask[tuple(nearest)]:
        # e.g. the waist of a dividing nucleus: use the deepest voxel instead
        center = np.array(np.unravel_index(int(np.argmin(level[box])), mask.shape), float)
    profile = np.sqrt(np.clip(1.0 - level[box], 0.0, 1.0)) * mask
    return ObjectShape(
        mask=mask,
        center=center,
        radius=float(radius),
        profile=profile.astype(np.float32),
        kind=kind,
    )


def _spacing(ndim: int, spacing: Sequence[float] | None) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape != (ndim,) or np.any(sp <= 0):
        raise ValueError(f"spacing must be {ndim} positive numbers, got {spacing!r}")
    return sp


def star_convex(
    radii: Sequence[float],
    rotation: np.ndarray | None = None,
    *,
    rng: np.random.Generator | None = None,
    irregularity: float = 0.0,
    n_modes: int = 5,
    spacing: Sequence[float] | None = None,
) -> ObjectShape:
    """Ellipse/ellipsoid whose radius is perturbed by low-frequency angular noise.

    The boundary in direction ``u`` lies at the ellipsoid's radius times
    ``1 + sum_k a_k cos(w_k . u + phi_k)`` (clipped to ``[0.55, 1.6]``), with a few
    random low frequencies ``w_k``; the shape is star-convex about its centre.

    Parameters
    ----------
    radii : sequence of float
        Semi-axes in physical units (xy pixels), body frame, ``(ry, rx)`` or
        ``(rz, ry, rx)``.
    rotation : numpy.ndarray, optional
        ``(ndim, ndim)`` rotation from body frame to image axes.
    rng : numpy.random.Generator, optional
        Randomness for the perturbation and a sub-pixel shift of the centre; without
        it the shape is a centred, exact ellipse/ellipsoid.
    irregularity : float
        Standard scale of the radius perturbation (0 = smooth ellipsoid, 0.3 = very
        irregular).
    n_modes : int
        Number of angular noise modes.
    spacing : sequence of float, optional
        Voxel size in physical units per axis, e.g. ``(anisotropy, 1, 1)``.

    Returns
    -------
    ObjectShape
    """
    r = np.asarray(radii, dtype=np.float64)
    ndim = r.size
    sp = _spacing(ndim, spacing)
    rot = np.eye(ndim) if rotation is None else np.asarray(rotation, dtype=np.float64)
    modes = _modes(ndim, rng, irregularity, n_modes)
    factor_max = 1.0 if modes is None else float(modes.max())
    extent = float(r.max()) * factor_max
    grids, center = _grid(extent, sp, rng)
    level = _level(_to_body(rot, grids), r, modes)
    return _finish(level, center, extent, "blob" if modes is not None else "ellipsoid")


def ellipsoid(
    radii: Sequence[float],
    rotation: np.ndarray | None = None,
    *,
    rng: np.random.Generator | None = None,
    spacing: Sequence[float] | None = None,
) -> ObjectShape:
    """Exact ellipse (2D) or ellipsoid (3D); see :func:`star_convex` for parameters."""
    return star_convex(radii, rotation, rng=rng, irregularity=0.0, spacing=spacing)


def dividing(
    radius: float,
    rotation: np.ndarray | None = None,
    *,
    rng: np.random.Generator | None = None,
    lobe: float = 0.72,
    separation: float = 0.58,
    flatness: float = 1.0,
    irregularity: float = 0.05,
    spacing: Sequence[float] | None = None,
) -> ObjectShape:
    """Dividing nucleus: two overlapping lobes joined by a waist, one object.

    Parameters
    ----------
    radius : float
        Radius of the mother nucleus in physical units.
    rotation : numpy.ndarray, optional
        ``(ndim, ndim)`` body-to-image rotation; the lobes are split along the body's
        y axis (first axis of ``(y, x)``, second of ``(z, y, x)``). Also sets the
        dimensionality; without it, ``len(spacing)`` or 2 is used.
    rng : numpy.random.Generator, optional
        Randomness for lobe size asymmetry, irregularity and sub-pixel shift.
    lobe : float
        Lobe radius as a fraction of ``radius``.
    separation : float
        Distance of each lobe centre from the waist as a fraction of ``radius``;
        must stay below ``lobe`` so that the lobes connect.
    flatness : float
        3D only: z semi-axis of the lobes relative to their in-plane radius.
    irregularity : float
        Radius perturbation of each lobe (see :func:`star_convex`).
    spacing : sequence of float, optional
        Voxel size per axis in physical units.

    Returns
    -------
    ObjectShape
        ``kind="dividing"``; the reference point is on the waist when that lies
        inside the mask, else at the centre of a lobe.
    """
    if rotation is not None:
        ndim = int(np.shape(rotation)[0])
    else:
        ndim = 2 if spacing is None else len(spacing)
    sp = _spacing(ndim, spacing)
    rot = np.eye(ndim) if rotation is None else np.asarray(rotation, dtype=np.float64)
    separation = min(separation, 0.9 * lobe)
    split_axis = 0 if ndim == 2 else 1
    sizes = [lobe * radius, lobe * radius]
    if rng is not None:
        sizes = [s * rng.uniform(0.9, 1.1) for s in sizes]
    tables = [_modes(ndim, rng, irregularity, 4) for _ in sizes]
    factor = max(1.0 if t is None else float(t.max()) for t in tables)
    extent = separation * radius + max(sizes) * factor
    grids, center = _grid(extent, sp, rng)
    p = _to_body(rot, grids)
    level = np.full(p.shape[1:], np.inf, dtype=np.float32)
    for sign, size, table in zip((-1.0, 1.0), sizes, tables):
        radii = np.full(ndim, size)
        if ndim == 3:
            radii[0] *= flatness
        lobe_p = p.copy()
        lobe_p[split_axis] -= np.float32(sign * separation * radius)
        np.minimum(level, _level(lobe_p, radii, table), out=level)
    return _finish(level, center, extent, "dividing")


def random_nucleus(
    rng: np.random.Generator,
    ndim: int = 2,
    *,
    radius: tuple[float, float] = (6.0, 14.0),
    elongation: tuple[float, float] = (1.0, 1.6),
    irregularity: float = 0.15,
    dividing_prob: float = 0.0,
    flatness: tuple[float, float] = (0.65, 0.95),
    max_tilt: float = 30.0,
    spacing: Sequence[float] | None = None,
) -> ObjectShape:
    """Random nucleus-like object: smooth ellipse to irregular blob, or dividing.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    ndim : {2, 3}
        Dimensionality.
    radius : (float, float)
        Range of the equivalent in-plane radius in physical units.
    elongation : (float, float)
        Range of the in-plane long/short axis ratio.
    irregularity : float
        Largest boundary irregularity; each object draws a value in
        ``[0, irregularity]`` so smooth and irregular shapes are mixed.
    dividing_prob : float
        Probability of a two-lobed dividing nucleus.
    flatness : (float, float)
        3D only: range of the z semi-axis relative to the in-plane radius.
    max_tilt : float
        3D only: see :func:`random_rotation`.
    spacing : sequence of float, optional
        Voxel size per axis in physical units.

    Returns
    -------
    ObjectShape
    """
    r = rng.uniform(*radius)
    e = rng.uniform(*elongation)
    rot = random_rotation(ndim, rng, max_tilt=max_tilt)
    flat = rng.uniform(*flatness) if ndim == 3 else 1.0
    if dividing_prob > 0 and rng.random() < dividing_prob:
        return dividing(r, rot, rng=rng, flatness=flat, spacing=spacing)
    inplane = (r * np.sqrt(e), r / np.sqrt(e))
    radii = inplane if ndim == 2 else (r * flat, *inplane)
    irr = irregularity * rng.uniform(0.0, 1.0) ** 0.7
    return star_convex(radii, rot, rng=rng, irregularity=irr, spacing=spacing)


_PLACEMENT = ("interior_points", "place_objects", "relabel_consecutive", "tessellation")


def __getattr__(name: str) -> Any:
    """Placement and tessellation live in :mod:`.placement` (imported on first use)."""
    if name in _PLACEMENT:
        from napari_sam.synthetic import placement

        return getattr(placement, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
