"""Placing objects into a label image, space-filling cells, relabelling, interior points.

The second half of :mod:`.shapes` (importable from there too): objects are
:class:`~napari_sam.synthetic.shapes.ObjectShape`; axis order is ``(Y, X)`` in
2D and ``(Z, Y, X)`` in 3D.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy import ndimage as ndi

from ._random import smooth_noise
from .shapes import ObjectShape, Placement, _clip_slices, _spacing


def _random_direction(ndim: int, rng: np.random.Generator) -> np.ndarray:
    d = rng.standard_normal(ndim)
    return d / max(float(np.linalg.norm(d)), 1e-9)


def place_objects(
    shape: Sequence[int],
    objects: Iterable[ObjectShape],
    rng: np.random.Generator,
    *,
    cluster_prob: float = 0.3,
    min_visible: float = 0.6,
    inside_axes: Sequence[int] = (),
    margin: int = 0,
    spacing: Sequence[float] | None = None,
    density: np.ndarray | None = None,
    max_tries: int = 25,
    labels: np.ndarray | None = None,
) -> tuple[np.ndarray, list[Placement]]:
    """Paste objects into a label image without overlap.

    Each object gets up to ``max_tries`` candidate positions. With probability
    ``cluster_prob`` a candidate starts inside a random already placed object and
    moves outward until it no longer overlaps anything, refined by bisection to
    within a pixel, which leaves it touching (or nearly) its neighbour;
    otherwise the position is random (uniform, or following ``density``). Objects
    that cannot be placed are skipped, so fewer objects than given may be placed.

    Parameters
    ----------
    shape : sequence of int
        Label image shape, ``(Y, X)`` or ``(Z, Y, X)``.
    objects : iterable of ObjectShape
        Objects with the same number of axes as ``shape``.
    rng : numpy.random.Generator
        Source of randomness.
    cluster_prob : float
        Probability that a candidate position is next to an existing object.
    min_visible : float
        Smallest fraction of an object's voxels that must lie inside the image
        (objects may be cut by the border along the other axes).
    inside_axes : sequence of int
        Axes along which objects must lie entirely inside the image, at least
        ``margin`` voxels from its ends (e.g. ``(0,)``: objects start and end inside
        a stack).
    margin : int
        See ``inside_axes``.
    spacing : sequence of float, optional
        Voxel size per axis in physical units (used for cluster directions).
    density : numpy.ndarray, optional
        Non-negative array of ``shape``: relative probability of random centres.
    max_tries : int
        Candidate positions per object.
    labels : numpy.ndarray, optional
        Existing uint32 label image to add to (modified in place); new ids continue
        from its maximum.

    Returns
    -------
    labels : numpy.ndarray
        uint32 array of ``shape``; 0 is background, ids are consecutive in order of
        placement.
    placements : list of Placement
        One per placed object, in id order.
    """
    shape = tuple(int(s) for s in shape)
    ndim = len(shape)
    sp = _spacing(ndim, spacing)
    if labels is None:
        labels = np.zeros(shape, dtype=np.uint32)
    next_id = int(labels.max()) + 1 if labels.size else 1
    cdf = None
    if density is not None:
        cdf = np.cumsum(np.asarray(density, dtype=np.float64).ravel())
        cdf = cdf / cdf[-1] if cdf[-1] > 0 else None
    inside_axes = tuple(int(a) % ndim for a in inside_axes)
    placements: list[Placement] = []

    def status(obj: ObjectShape, offset: Sequence[int]) -> str:
        mshape = obj.mask.shape
        for a in inside_axes:
            if offset[a] < margin or offset[a] + mshape[a] > shape[a] - margin:
                return "invalid"
        if all(o >= 0 and o + m <= s for o, m, s in zip(offset, mshape, shape)):
            region = labels[tuple(slice(o, o + m) for o, m in zip(offset, mshape))]
            return "overlap" if region[obj.mask].any() else "ok"
        sl = _clip_slices(offset, mshape, shape)
        if sl is None:
            return "invalid"
        img, loc = sl
        part = obj.mask[loc]
        if np.count_nonzero(part) < min_visible * obj.area:
            return "invalid"
        return "overlap" if labels[img][part].any() else "ok"

    def march(obj: ObjectShape, anchor: Placement) -> tuple[int, ...] | None:
        """Move outward from inside ``anchor`` until ``obj`` fits; None if it cannot."""
        direction = _random_direction(ndim, rng) / sp
        direction /= max(float(np.linalg.norm(direction * sp)), 1e-9)
        start = anchor.center - obj.center

        def at(dist: float) -> tuple[int, ...]:
            return tuple(int(v) for v in np.rint(start + dist * direction))

        reach = anchor.obj.radius + obj.radius
        step = max(1.0, reach / 6.0)
        inside_at = 0.25 * reach
        dist = inside_at
        while dist <= reach + 2.0:
            st = status(obj, at(dist))
            if st == "invalid":
                return None
            if st == "ok":
                best = dist
                lo, hi = inside_at, dist  # refine: touching rather than a gap
                while hi - lo > 0.75:
                    mid = 0.5 * (lo + hi)
                    if status(obj, at(mid)) == "ok":
                        hi = best = mid
                    else:
                        lo = mid
                return at(best)
            inside_at = dist
            dist += step
        return None

    def random_offset(obj: ObjectShape) -> tuple[int, ...] | None:
        if cdf is not None:
            flat = int(np.searchsorted(cdf, rng.random(), side="right"))
            center = np.array(np.unravel_index(min(flat, cdf.size - 1), shape), float)
            center += rng.uniform(-0.5, 0.5, ndim)
        else:
            center = rng.uniform(0.0, 1.0, ndim) * np.array(shape)
        offset = np.rint(center - obj.center).astype(int)
        for a in inside_axes:
            lo, hi = margin, shape[a] - margin - obj.mask.shape[a]
            if hi < lo:
                return None
            if not lo <= offset[a] <= hi:
                offset[a] = rng.integers(lo, hi + 1)
        return tuple(int(v) for v in offset)

    for obj in objects:
        if obj.ndim != ndim:
            raise ValueError(f"object has {obj.ndim} axes, image has {ndim}")
        found: tuple[int, ...] | None = None
        for _ in range(max_tries):
            if placements and rng.random() < cluster_prob:
                found = march(obj, placements[int(rng.integers(len(placements)))])
            else:
                offset = random_offset(obj)
                if offset is not None and status(obj, offset) == "ok":
                    found = offset
            if found is not None:
                break
        if found is None:
            continue
        clipped = _clip_slices(found, obj.mask.shape, shape)
        assert clipped is not None  # status() accepted this offset
        img, loc = clipped
        labels[img][obj.mask[loc]] = next_id
        placements.append(Placement(next_id, tuple(int(v) for v in found), obj))
        next_id += 1
    return labels, placements


def tessellation(
    shape: Sequence[int],
    rng: np.random.Generator,
    *,
    cell_size: float = 28.0,
    jitter: float = 0.3,
    warp: float = 0.12,
    gap_fraction: float = 0.0,
    min_area: int = 20,
) -> np.ndarray:
    """Space-filling cell labels: warped Voronoi cells of a jittered hexagonal lattice.

    Parameters
    ----------
    shape : (int, int)
        ``(Y, X)``.
    rng : numpy.random.Generator
        Source of randomness.
    cell_size : float
        Distance between neighbouring seeds in pixels (about the cell diameter).
    jitter : float
        Random displacement of the seeds as a fraction of ``cell_size`` (keep below
        0.35 to avoid tiny cells).
    warp : float
        Amplitude of a smooth deformation of the cell borders as a fraction of
        ``cell_size``; values up to ~0.15 keep every cell connected.
    gap_fraction : float
        Approximate fraction of cells removed (set to background) in smooth patches,
        leaving gaps such as lumens or empty substrate.
    min_area : int
        Cells cut by the image border to fewer pixels are removed.

    Returns
    -------
    numpy.ndarray
        uint32 ``(Y, X)`` labels with consecutive ids (0 only in gaps).
    """
    ny, nx = (int(s) for s in shape)
    pad = int(np.ceil(cell_size))
    py, px = ny + 2 * pad, nx + 2 * pad
    angle = rng.uniform(0.0, np.pi / 3.0)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    reach = int(np.ceil(np.hypot(py, px) / cell_size)) + 1
    i, j = np.meshgrid(np.arange(-reach, reach + 1), np.arange(-reach, reach + 1), indexing="ij")
    lattice = np.stack([i * np.sqrt(3.0) / 2.0, j + 0.5 * (i % 2)], axis=-1).reshape(-1, 2)
    seeds = (lattice * cell_size) @ rot.T + np.array([py, px]) / 2.0
    seeds += rng.uniform(-jitter, jitter, seeds.shape) * cell_size
    seeds = np.rint(seeds).astype(int)
    keep = (seeds[:, 0] >= 0) & (seeds[:, 0] < py) & (seeds[:, 1] >= 0) & (seeds[:, 1] < px)
    seeds = seeds[keep]
    seed_img = np.zeros((py, px), dtype=np.int32)
    seed_img[seeds[:, 0], seeds[:, 1]] = np.arange(1, len(seeds) + 1)
    idx = ndi.distance_transform_edt(seed_img == 0, return_distances=False, return_indices=True)
    cells = seed_img[idx[0], idx[1]]
    if warp > 0:
        amp = warp * cell_size
        dy = amp * smooth_noise((py, px), rng, cell_size)
        dx = amp * smooth_noise((py, px), rng, cell_size)
        yy = np.clip(np.rint(np.arange(py)[:, None] + dy), 0, py - 1).astype(np.intp)
        xx = np.clip(np.rint(np.arange(px)[None, :] + dx), 0, px - 1).astype(np.intp)
        cells = cells[yy, xx]
    cells = cells[pad : pad + ny, pad : pad + nx]
    cells, _ = relabel_consecutive(cells)
    n = int(cells.max())
    if n == 0:
        return cells
    index = np.arange(1, n + 1)
    areas = np.bincount(cells.ravel(), minlength=n + 1)[1:]
    drop = areas < min_area
    if gap_fraction > 0:
        region = smooth_noise((ny, nx), rng, 3.0 * cell_size)
        means = np.asarray(ndi.mean(region, cells, index))
        drop |= means < np.quantile(means, min(gap_fraction, 0.95))
    lut = np.where(np.concatenate([[True], drop]), 0, np.arange(n + 1)).astype(np.uint32)
    return relabel_consecutive(lut[cells])[0]


def relabel_consecutive(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber labels to ``1..N`` keeping their order; 0 stays background.

    Parameters
    ----------
    labels : numpy.ndarray
        Integer label image of any shape.

    Returns
    -------
    relabelled : numpy.ndarray
        uint32 array of the same shape.
    old_ids : numpy.ndarray
        ``old_ids[k - 1]`` is the original id of new label ``k``.
    """
    lut_size = int(labels.max()) + 1 if labels.size else 1
    if lut_size <= 4 * labels.size + 1024:
        ids = np.flatnonzero(np.bincount(labels.ravel(), minlength=lut_size))
    else:
        ids = np.unique(labels)
    ids = ids[ids != 0]
    lut = np.zeros(lut_size, dtype=np.uint32)
    lut[ids] = np.arange(1, ids.size + 1, dtype=np.uint32)
    return lut[labels], ids


def interior_points(labels: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """A voxel deep inside each labelled object (e.g. a point prompt).

    Parameters
    ----------
    labels : numpy.ndarray
        Label image ``(Y, X)`` or ``(Z, Y, X)`` with ids ``1..N``.
    spacing : sequence of float, optional
        Voxel size per axis, used to measure distances (e.g. ``(anisotropy, 1, 1)``).

    Returns
    -------
    numpy.ndarray
        int64 ``(N, ndim)``; row ``k - 1`` is the voxel of object ``k`` farthest from
        its boundary (which always belongs to object ``k``); ``-1`` for ids absent
        from ``labels``.
    """
    n = int(labels.max()) if labels.size else 0
    points = np.full((n, labels.ndim), -1, dtype=np.int64)
    for k, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        mask = np.pad(labels[box] == k, 1)
        dist = ndi.distance_transform_edt(mask, sampling=spacing)
        pos = np.unravel_index(int(np.argmax(dist)), dist.shape)
        points[k - 1] = [p - 1 + b.start for p, b in zip(pos, box)]
    return points
