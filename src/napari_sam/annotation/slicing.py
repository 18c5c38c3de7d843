"""Image geometry, world <-> data coordinates and slice indices.

Conventions
-----------
* An image layer of ``ndim`` spatial axes (napari's ``layer.ndim``; the colour
  axis of an RGB layer is *not* counted) is a stack of 2D slices: the last two
  axes are the slice's ``(Y, X)`` = ``(row, col)``, the ``ndim - 2`` axes
  before them are the *leading* axes (``()`` for YX, ``(Z,)`` for ZYX,
  ``(T, Z)`` for TZYX). A *slice index* is a tuple of one int per leading
  axis; ``layer.data[slice_index]`` is the slice, ``(Y, X)`` or ``(Y, X, C)``.
* World coordinates are the viewer's (scale, translate and any other layer
  transform applied); data coordinates are continuous pixel coordinates of
  the image, where pixel ``i`` covers ``[i - 0.5, i + 0.5)``.
* Affine maps are ``(D + 1, D + 1)`` homogeneous matrices acting on column
  vectors; :func:`apply_affine` maps ``(N, D)`` row-stacked coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ImageGeometry",
    "apply_affine",
    "describe_slice",
    "layer_affine",
    "lead_axis_names",
    "nearest_index",
    "neighbour_indices",
    "world_slice_index",
]


def lead_axis_names(axis_labels: Sequence[str] | None, n_lead: int) -> tuple[str, ...]:
    """Names of the leading axes for messages: the layer's axis labels, where given.

    napari's default labels (``"-3"``, ``"0"``...) are replaced by the usual
    names: the last leading axis is ``z``, the one before ``t``, earlier ones
    ``axis 0``, ``axis 1``...
    """
    given = list(axis_labels or [])[:n_lead]
    names = []
    for i in range(n_lead):
        label = str(given[i]).strip() if i < len(given) else ""
        if not label or label.lstrip("-").isdigit():
            from_end = n_lead - i
            label = {1: "z", 2: "t"}.get(from_end, f"axis {i}")
        names.append(label)
    return tuple(names)


def describe_slice(index: Sequence[int], names: Sequence[str]) -> str:
    """A slice for people: ``"t=1, z=14"``; ``"the image"`` for a 2D image (``()``)."""
    if not len(index):
        return "the image"
    return ", ".join(f"{name}={int(i)}" for name, i in zip(names, index))


def nearest_index(values: Any) -> np.ndarray:
    """Round continuous data coordinates to pixel indices (halves round up), as int64."""
    return np.floor(np.asarray(values, dtype=np.float64) + 0.5).astype(np.int64)


@dataclass(frozen=True)
class ImageGeometry:
    """Shape and transform of one image layer, as the annotator needs them.

    Attributes
    ----------
    shape : tuple of int
        Spatial shape, one entry per layer axis (``layer.ndim`` entries; the
        colour axis of RGB data is excluded). At least 2 entries.
    rgb : bool
        True when the data has a trailing colour axis (napari ``layer.rgb``).
    channels : int
        Size of the colour axis (3 or 4) for RGB data, else 1.
    scale, translate : tuple of float
        The layer's ``scale`` and ``translate`` (one entry per axis of ``shape``).
    """

    shape: tuple[int, ...]
    rgb: bool = False
    channels: int = 1
    scale: tuple[float, ...] | None = None
    translate: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if len(shape) < 2:
            raise ValueError(
                f"an image needs at least 2 spatial axes (Y, X), got shape {shape}"
            )
        if min(shape[-2:]) < 1:
            raise ValueError(f"image slices are empty: shape {shape}")
        object.__setattr__(self, "shape", shape)
        for name in ("scale", "translate"):
            value = getattr(self, name)
            default = 1.0 if name == "scale" else 0.0
            value = (default,) * len(shape) if value is None else tuple(float(v) for v in value)
            if len(value) != len(shape):
                raise ValueError(f"{name} {value} must have {len(shape)} entries (one per axis)")
            object.__setattr__(self, name, value)

    @classmethod
    def from_layer(cls, layer: Any) -> ImageGeometry:
        """Geometry of a napari Image layer (duck-typed: ``data``, ``ndim``, ``rgb``...)."""
        data_shape = tuple(int(s) for s in layer.data.shape)
        rgb = bool(getattr(layer, "rgb", False))
        ndim = int(layer.ndim)
        return cls(
            shape=data_shape[:ndim],
            rgb=rgb,
            channels=data_shape[-1] if rgb else 1,
            scale=tuple(layer.scale),
            translate=tuple(layer.translate),
        )

    @property
    def ndim(self) -> int:
        """Number of spatial axes (leading axes + 2)."""
        return len(self.shape)

    @property
    def n_lead(self) -> int:
        """Number of leading (non-slice) axes."""
        return len(self.shape) - 2

    @property
    def lead_shape(self) -> tuple[int, ...]:
        """Sizes of the leading axes."""
        return self.shape[:-2]

    @property
    def slice_shape(self) -> tuple[int, int]:
        """``(Y, X)`` shape of one slice."""
        return self.shape[-2], self.shape[-1]

    def check_slice_index(self, index: Any) -> tuple[int, ...]:
        """Validate a slice index: a tuple of one in-range int per leading axis.

        Raises
        ------
        ValueError
            Wrong length, non-integer entry, or an entry out of range.
        """
        if index is None:
            raise ValueError("slice index is None; pass a tuple of ints, e.g. (7,)")
        if isinstance(index, (int, np.integer)):
            index = (int(index),)
        try:
            items = tuple(index)
        except TypeError:
            raise ValueError(
                f"slice index must be a tuple of ints (one per leading axis), got {index!r}"
            ) from None
        if len(items) != self.n_lead:
            raise ValueError(
                f"slice index {items} has {len(items)} entries but the image of shape "
                f"{self.shape} has {self.n_lead} leading axis/axes before (Y, X); "
                f"pass {self.n_lead} int(s)"
            )
        out = []
        for axis, (i, size) in enumerate(zip(items, self.lead_shape)):
            if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
                raise ValueError(f"slice index entries must be ints, got {i!r} in {items}")
            if not 0 <= int(i) < size:
                raise ValueError(
                    f"slice index {items}: entry {int(i)} for axis {axis} is outside "
                    f"[0, {size}) of the image shape {self.shape}"
                )
            out.append(int(i))
        return tuple(out)


def layer_affine(layer: Any, direction: str = "world_to_data") -> np.ndarray:
    """The homogeneous affine matrix of a layer's world <-> data transform.

    Built from the layer's public ``world_to_data`` / ``data_to_world``
    methods (which include scale, translate, rotate, shear and affine), by
    mapping the origin and the unit vectors.

    Parameters
    ----------
    layer : napari layer (or any object with ``ndim``, ``world_to_data`` and
        ``data_to_world`` taking and returning a length-``ndim`` position)
    direction : ``"world_to_data"`` or ``"data_to_world"``

    Returns
    -------
    numpy.ndarray
        ``(ndim + 1, ndim + 1)`` float64 matrix ``A`` with
        ``A @ [*x, 1] = [*f(x), 1]``.
    """
    if direction not in ("world_to_data", "data_to_world"):
        raise ValueError(
            f"direction must be 'world_to_data' or 'data_to_world', got {direction!r}"
        )
    func = getattr(layer, direction)
    ndim = int(layer.ndim)
    origin = np.asarray(func(np.zeros(ndim)), dtype=np.float64)
    matrix = np.eye(ndim + 1)
    for i in range(ndim):
        unit = np.zeros(ndim)
        unit[i] = 1.0
        matrix[:ndim, i] = np.asarray(func(unit), dtype=np.float64) - origin
    matrix[:ndim, ndim] = origin
    return matrix


def apply_affine(matrix: np.ndarray, coords: Any) -> np.ndarray:
    """Map ``(N, D)`` coordinates (or one ``(D,)`` position) with a ``(D+1, D+1)`` affine."""
    matrix = np.asarray(matrix, dtype=np.float64)
    pts = np.asarray(coords, dtype=np.float64)
    single = pts.ndim == 1
    pts = np.atleast_2d(pts)
    d = matrix.shape[0] - 1
    if pts.shape[-1] != d:
        raise ValueError(f"coordinates have {pts.shape[-1]} axes but the affine maps {d}")
    out = pts @ matrix[:d, :d].T + matrix[:d, d]
    return out[0] if single else out


def world_slice_index(
    geometry: ImageGeometry, world_to_data: np.ndarray, world_point: Sequence[float] | np.ndarray
) -> tuple[int, ...] | None:
    """The slice index the viewer shows, from its world position.

    Parameters
    ----------
    geometry : the image's geometry
    world_to_data : ``(D+1, D+1)`` affine of the image (:func:`layer_affine`)
    world_point : the viewer's position (``viewer.dims.point``); when it has
        more axes than the image, the last ``D`` are used (napari's rule)

    Returns
    -------
    tuple of int or None
        The leading-axes index, or None when the position lies outside the
        image along a leading axis.
    """
    d = geometry.ndim
    point = np.asarray(world_point, dtype=np.float64)
    if point.shape[0] < d:
        point = np.concatenate([np.zeros(d - point.shape[0]), point])
    data = apply_affine(world_to_data, point[-d:])
    index = nearest_index(data[: geometry.n_lead])
    if np.any(index < 0) or np.any(index >= np.asarray(geometry.lead_shape, dtype=np.int64)):
        return None
    return tuple(int(i) for i in index)


def neighbour_indices(
    geometry: ImageGeometry, index: tuple[int, ...], radius: int = 1
) -> list[tuple[int, ...]]:
    """Slice indices next to ``index`` along the last leading axis (z), nearest first.

    For a TZYX image only z changes (the time point stays). Returns ``[]`` for
    2D images. Order: ``z+1, z-1, z+2, z-2, ...`` within the image.
    """
    if geometry.n_lead == 0:
        return []
    size = geometry.lead_shape[-1]
    z = index[-1]
    out = []
    for step in range(1, radius + 1):
        for cand in (z + step, z - step):
            if 0 <= cand < size:
                out.append((*index[:-1], cand))
    return out
