"""Reading images, writing label TIFFs, and saving/loading prompt files.

Free of Qt, napari and torch. Arrays follow napari's axis order: leading
non-spatial axes first, then ``(Y, X)`` (rows, columns); scales are napari
layer scales, one float per axis in the same order.

Label TIFF formats written by :func:`write_labels_tiff`
-------------------------------------------------------
* uint8 / uint16: ImageJ hyperstack (opens as a calibrated stack in
  Fiji/ImageJ). Y/X pixel size in the resolution tags (``1/scale``), Z
  spacing in ``spacing``, T interval in ``finterval``, plus ``unit``.
* uint32, int8, int16, int32 (ImageJ cannot store these): OME-TIFF with
  ``PhysicalSizeX/Y/Z`` and ``TimeIncrement`` (Fiji opens it via
  Bio-Formats), plus the resolution tags.
* int64 / uint64 (OME cannot store these): plain tifffile "shaped" TIFF with
  JSON metadata.

In every format the exact axes, shape and scale are also stored under the
key ``"napari_sam"`` (ImageJ ``Properties``, an OME ``MapAnnotation``, or the
shaped JSON) so :func:`read_labels_tiff` round-trips them exactly, including
size-1 axes that ImageJ drops. Files without that key (e.g. saved by Fiji)
are read from their standard metadata. Data is zlib (deflate) compressed,
which ImageJ, Bio-Formats and tifffile read.

Prompt file schema (JSON, ``version`` 1)
----------------------------------------
::

    {
      "format": "napari-sam-prompts",
      "version": 1,
      "ndim": 3,                      # axes of every coordinate
      "coordinates": "data",          # "data" (pixels) or "world" (scaled)
      "points": [[z, y, x], ...],     # (N, ndim), leading slice axes first
      "point_positive": [true, ...],  # (N,), true = foreground prompt
      "shapes": [                     # napari Shapes vertices, (M, ndim)
        {"type": "rectangle", "vertices": [[z, y, x], ...]},
        ...
      ],
      "metadata": {}                  # free-form JSON object (image path...)
    }

Coordinates use napari's row/column convention: for a ZYX image a point is
``[z, row, col]``. Shape types are ``"rectangle"`` and ``"ellipse"`` (2 or
4 vertices: napari stores the 4 corners of the (bounding) box) and
``"polygon"`` (>= 3 vertices).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "IMAGE_EXTENSIONS",
    "PROMPT_FORMAT",
    "PROMPT_VERSION",
    "SHAPE_TYPES",
    "PromptSet",
    "TiffInfo",
    "load_prompts",
    "read_image",
    "read_labels_tiff",
    "read_points_csv",
    "read_tiff_info",
    "save_prompts",
    "write_labels_tiff",
]

PathLike = str | os.PathLike

#: File name endings :func:`read_image` accepts.
IMAGE_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff", ".zarr", ".npy")
#: ``format`` field of prompt JSON files.
PROMPT_FORMAT = "napari-sam-prompts"
#: Current (and only readable) prompt JSON schema version.
PROMPT_VERSION = 1
#: Shape types a :class:`PromptSet` may hold.
SHAPE_TYPES: tuple[str, ...] = ("rectangle", "polygon", "ellipse")

#: Files larger than this are opened lazily by :func:`read_image` by default.
LAZY_THRESHOLD_BYTES = 2**30

_META_KEY = "napari_sam"
_DEFAULT_AXES = {2: "YX", 3: "ZYX", 4: "TZYX", 5: "TZCYX"}
_IMAGEJ_DTYPES = frozenset({np.dtype(np.uint8), np.dtype(np.uint16)})
_OME_DTYPES = (
    frozenset(np.dtype(t) for t in (np.uint32, np.int8, np.int16, np.int32)) | _IMAGEJ_DTYPES
)


def _tifffile():
    import tifffile

    return tifffile


def _existing(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: {str(p)!r}")
    return p


# --------------------------------------------------------------------------
# label TIFFs
# --------------------------------------------------------------------------


def _check_axes(axes: str | None, ndim: int) -> str:
    if axes is None:
        if ndim not in _DEFAULT_AXES:
            raise ValueError(
                f"labels have {ndim} dimensions; pass axes= explicitly "
                f"(2 to 5 of 'TZCYX' in that order, ending in 'YX')"
            )
        return _DEFAULT_AXES[ndim]
    axes = str(axes).upper()
    if len(axes) != ndim:
        raise ValueError(f"axes {axes!r} has {len(axes)} letters but labels have {ndim} dims")
    order = "TZCYX"
    if (
        len(set(axes)) != len(axes)
        or any(a not in order for a in axes)
        or [order.index(a) for a in axes] != sorted(order.index(a) for a in axes)
        or not axes.endswith("YX")
    ):
        raise ValueError(
            f"axes {axes!r} must be letters of 'TZCYX' in that order ending in 'YX' "
            f"(e.g. 'YX', 'ZYX', 'TZYX'); transpose the labels to that order first"
        )
    return axes


def _check_scale(scale: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if scale is None:
        return (1.0,) * ndim
    values = tuple(float(s) for s in scale)
    if len(values) != ndim:
        raise ValueError(f"scale {values} has {len(values)} entries for {ndim}-D labels")
    for s in values:
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"scale entries must be finite and > 0, got {values}")
    return values


def _ome_unit(unit: str) -> str:
    return "µm" if unit.lower() in {"um", "micron", "microns", "µm", "μm"} else unit


def write_labels_tiff(
    path: PathLike,
    labels: Any,
    *,
    scale: Sequence[float] | None = None,
    axes: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    unit: str = "um",
    compression: str | None = "zlib",
) -> Path:
    """Write a label array to a TIFF file, with its pixel spacing.

    Parameters
    ----------
    path : str or os.PathLike
        Output file (``.tif``/``.tiff``; uint32 and signed labels are
        OME-TIFF, so ``.ome.tif`` is a fitting name for them). Overwritten.
    labels : array of int, 2 to 5 dims
        numpy, dask or zarr array (loaded into memory to write). dtype
        uint8/uint16 (ImageJ hyperstack), uint32/int8/int16/int32
        (OME-TIFF) or int64/uint64 (plain TIFF); the dtype is kept.
    scale : sequence of float, optional
        napari layer scale, one positive number per axis in the order of
        ``labels.shape`` (e.g. ``(dz, dy, dx)`` for ZYX). Default all 1.
    axes : str, optional
        Axis letters, a subsequence of ``'TZCYX'`` in that order ending in
        ``'YX'``. Default by ndim: ``'YX'``, ``'ZYX'``, ``'TZYX'``,
        ``'TZCYX'``.
    metadata : mapping of str to str, optional
        Extra key/value annotations (values are stored with ``str()``), in
        ImageJ ``Properties`` / an OME ``MapAnnotation`` / the shaped JSON;
        returned by :func:`read_tiff_info`. The key ``"napari_sam"`` is
        reserved.
    unit : str, default "um"
        Unit of ``scale`` for X, Y and Z ("um" is written as ``µm`` in OME).
        The T scale (``finterval``/``TimeIncrement``) is in seconds.
    compression : str or None, default "zlib"
        tifffile compression; None for uncompressed.

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    TypeError
        Non-integer (float or bool) labels.
    ValueError
        Bad ``axes`` or ``scale``, reserved metadata key.
    """
    tifffile = _tifffile()
    path = Path(path)
    if hasattr(labels, "compute"):
        labels = labels.compute()
    data = np.asarray(labels)
    if data.dtype == np.bool_ or not np.issubdtype(data.dtype, np.integer):
        raise TypeError(
            f"labels must have an integer dtype, got {data.dtype}; "
            f"convert first, e.g. labels.astype(np.uint16)"
        )
    if data.ndim < 2:
        raise ValueError(f"labels must have at least 2 dims (Y, X), got shape {data.shape}")
    axes = _check_axes(axes, data.ndim)
    scales = _check_scale(scale, data.ndim)
    extra = {str(k): str(v) for k, v in (metadata or {}).items()}
    if _META_KEY in extra:
        raise ValueError(f"metadata key {_META_KEY!r} is reserved; rename it")
    record = {"axes": axes, "shape": list(data.shape), "scale": list(scales), "unit": unit}
    size = dict(zip(axes, scales))
    resolution = (1.0 / size["X"], 1.0 / size["Y"])

    if data.dtype in _IMAGEJ_DTYPES:
        ij: dict[str, Any] = {"axes": axes, "unit": unit}
        if "Z" in size:
            ij["spacing"] = size["Z"]
        if "T" in size:
            ij["finterval"] = size["T"]
        ij["Properties"] = {**extra, _META_KEY: json.dumps(record)}
        tifffile.imwrite(
            path,
            data,
            imagej=True,
            resolution=resolution,
            metadata=ij,
            compression=compression,
        )
    elif data.dtype in _OME_DTYPES:
        ome_unit = _ome_unit(unit)
        ome: dict[str, Any] = {
            "axes": axes,
            "PhysicalSizeX": size["X"],
            "PhysicalSizeXUnit": ome_unit,
            "PhysicalSizeY": size["Y"],
            "PhysicalSizeYUnit": ome_unit,
            "MapAnnotation": {**extra, _META_KEY: json.dumps(record)},
        }
        if "Z" in size:
            ome["PhysicalSizeZ"] = size["Z"]
            ome["PhysicalSizeZUnit"] = ome_unit
        if "T" in size:
            ome["TimeIncrement"] = size["T"]
        tifffile.imwrite(
            path,
            data,
            ome=True,
            photometric="minisblack",
            resolution=resolution,
            metadata=ome,
            compression=compression,
        )
    else:
        tifffile.imwrite(
            path,
            data,
            photometric="minisblack",
            metadata={"axes": axes, _META_KEY: record, "extra": extra},
            compression=compression,
        )
    return path


@dataclass(frozen=True)
class TiffInfo:
    """What :func:`read_tiff_info` found about a TIFF's first image series.

    Attributes
    ----------
    shape : tuple of int
        Array shape (as written by :func:`write_labels_tiff` when it wrote
        the file; otherwise tifffile's series shape).
    dtype : numpy.dtype
    axes : str
        One letter per axis (tifffile codes, e.g. ``'ZYX'``).
    scale : tuple of float
        Pixel size per axis; 1.0 where the file has none.
    format : str
        ``"imagej"``, ``"ome"``, ``"shaped"`` or ``"tiff"``.
    metadata : dict of str to str
        The extra annotations given to :func:`write_labels_tiff` (ImageJ
        ``Properties`` / OME map annotations).
    unit : str or None
        Unit of the X/Y/Z scale if the file names one (e.g. ``'um'``).
    """

    shape: tuple[int, ...]
    dtype: np.dtype
    axes: str
    scale: tuple[float, ...]
    format: str
    metadata: dict[str, str] = field(default_factory=dict)
    unit: str | None = None


def _ome_annotations(ome: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    annotations = ome.get("StructuredAnnotations") or {}
    maps = annotations.get("MapAnnotation", [])
    for amap in maps if isinstance(maps, list) else [maps]:
        entries = (amap.get("Value") or {}).get("M", [])
        for entry in entries if isinstance(entries, list) else [entries]:
            if isinstance(entry, Mapping) and "K" in entry:
                out[str(entry["K"])] = str(entry.get("value", ""))
    return out


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) else value


def read_tiff_info(path: PathLike) -> TiffInfo:
    """Read shape, dtype, axes, scale and annotations of a TIFF without its pixels.

    Parameters
    ----------
    path : str or os.PathLike
        A TIFF file (any flavour tifffile reads).

    Returns
    -------
    TiffInfo

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the stored napari_sam record is malformed.
    """
    tifffile = _tifffile()
    path = _existing(path, "TIFF file")
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shape = tuple(int(s) for s in series.shape)
        axes = str(series.axes)
        dtype = np.dtype(series.dtype)
        page = tif.pages.first
        size: dict[str, float] = {}
        try:
            xres = page.tags["XResolution"].value
            yres = page.tags["YResolution"].value
            if xres[0] and yres[0]:
                size["X"] = xres[1] / xres[0]
                size["Y"] = yres[1] / yres[0]
        except KeyError:
            pass
        extra: dict[str, str] = {}
        record: Any = None
        unit: str | None = None
        if tif.is_imagej:
            fmt = "imagej"
            ij = tif.imagej_metadata or {}
            if ij.get("spacing"):
                size["Z"] = float(ij["spacing"])
            if ij.get("finterval"):
                size["T"] = float(ij["finterval"])
            unit = str(ij["unit"]) if ij.get("unit") else None
            extra = {str(k): str(v) for k, v in (ij.get("Properties") or {}).items()}
            record = extra.pop(_META_KEY, None)
        elif tif.is_ome:
            fmt = "ome"
            ome = tifffile.xml2dict(tif.ome_metadata).get("OME", {})
            pixels = _first(ome.get("Image", {})).get("Pixels", {})
            for key, axis in (
                ("PhysicalSizeX", "X"),
                ("PhysicalSizeY", "Y"),
                ("PhysicalSizeZ", "Z"),
                ("TimeIncrement", "T"),
            ):
                if pixels.get(key):
                    size[axis] = float(pixels[key])
            unit = str(pixels["PhysicalSizeXUnit"]) if pixels.get("PhysicalSizeXUnit") else None
            extra = _ome_annotations(ome)
            record = extra.pop(_META_KEY, None)
        elif tif.is_shaped and tif.shaped_metadata:
            fmt = "shaped"
            shaped = tif.shaped_metadata[0]
            record = shaped.get(_META_KEY)
            extra = {str(k): str(v) for k, v in (shaped.get("extra") or {}).items()}
        else:
            fmt = "tiff"

    if record is not None:
        try:
            if isinstance(record, str):
                record = json.loads(record)
            r_axes = str(record["axes"])
            r_shape = tuple(int(s) for s in record["shape"])
            r_scale = tuple(float(s) for s in record["scale"])
            unit = str(record["unit"]) if record.get("unit") else unit
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(
                f"{str(path)!r}: malformed {_META_KEY!r} metadata {record!r} ({err})"
            ) from err
        if len(r_axes) == len(r_shape) == len(r_scale) and math.prod(r_shape) == math.prod(shape):
            return TiffInfo(r_shape, dtype, r_axes, r_scale, fmt, extra, unit)
    scale = tuple(float(size.get(a, 1.0)) for a in axes)
    return TiffInfo(shape, dtype, axes, scale, fmt, extra, unit)


def read_labels_tiff(path: PathLike) -> tuple[np.ndarray, tuple[float, ...]]:
    """Read a label TIFF written by :func:`write_labels_tiff` (or by Fiji).

    Parameters
    ----------
    path : str or os.PathLike
        TIFF file.

    Returns
    -------
    labels : numpy.ndarray
        The labels, with the shape and dtype they were written with
        (size-1 axes restored).
    scale : tuple of float
        One pixel size per axis of ``labels`` (napari layer scale); 1.0 for
        axes without spacing information. Y/X sizes of files not written
        here come from rational resolution tags (~1e-9 relative precision).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    """
    tifffile = _tifffile()
    info = read_tiff_info(path)
    data = tifffile.imread(Path(path))
    if data.shape != info.shape:
        data = data.reshape(info.shape)
    return data, info.scale


# --------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------


def _suffix(path: Path) -> str:
    name = path.name.lower().rstrip("/")
    for ext in IMAGE_EXTENSIONS:
        if name.endswith(ext):
            return ext
    return path.suffix.lower()


def _zarr_array(group: Any, path: Path) -> Any:
    import zarr

    if isinstance(group, zarr.Array):
        return group
    attrs = dict(group.attrs)
    multiscales = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
    if multiscales:
        return group[multiscales[0]["datasets"][0]["path"]]
    arrays = [name for name, _ in group.arrays()]
    if len(arrays) == 1:
        return group[arrays[0]]
    raise ValueError(
        f"{str(path)!r} is a zarr group with arrays {sorted(arrays)} and no OME-NGFF "
        f"'multiscales'; open the wanted array with zarr.open({str(path)!r})[name]"
    )


def read_image(path: PathLike, *, lazy: bool | None = None) -> Any:
    """Read an image as a numpy array, or lazily as a zarr array.

    Parameters
    ----------
    path : str or os.PathLike
        ``.tif``/``.tiff`` (first series, via tifffile), ``.zarr`` directory
        store (a zarr array, or a group holding one array or OME-NGFF
        multiscales, whose full-resolution level is used) or ``.npy``.
    lazy : bool, optional
        True: return without loading pixels (TIFF: ``zarr.Array`` over
        ``tifffile.imread(path, aszarr=True)``, full-resolution level;
        ``.npy``: read-only ``numpy.memmap``). False: load into memory.
        Default: lazy for files larger than 1 GiB. ``.zarr`` stores are
        always returned as a read-only ``zarr.Array``.

    Returns
    -------
    numpy.ndarray, numpy.memmap or zarr.Array
        Axis order as stored (for napari-style data: leading axes, then
        Y, X).

    Raises
    ------
    ValueError
        Unsupported extension (lists the supported ones), or a zarr group
        with no single array to choose.
    FileNotFoundError
        If ``path`` does not exist.
    """
    path = Path(path)
    ext = _suffix(path)
    if ext not in IMAGE_EXTENSIONS:
        raise ValueError(
            f"unsupported image file {str(path)!r} (extension {ext or 'none'!r}); "
            f"supported: {', '.join(IMAGE_EXTENSIONS)}"
        )
    path = _existing(path, "image file")
    if ext == ".zarr":
        import zarr

        return _zarr_array(zarr.open(str(path), mode="r"), path)
    if lazy is None:
        lazy = path.stat().st_size > LAZY_THRESHOLD_BYTES
    if ext == ".npy":
        return np.load(path, mmap_mode="r" if lazy else None, allow_pickle=False)
    tifffile = _tifffile()
    if not lazy:
        return tifffile.imread(path)
    import zarr

    store = tifffile.imread(path, aszarr=True)
    return _zarr_array(zarr.open(store, mode="r"), path)


# --------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------


def _coords(value: Any, ndim: int, what: str) -> np.ndarray:
    arr = np.asarray(value, dtype=float)
    if arr.size == 0:
        arr = arr.reshape(0, ndim)
    if arr.ndim != 2 or arr.shape[1] != ndim:
        raise ValueError(f"{what} must have shape (N, {ndim}), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contains non-finite coordinates")
    arr = np.array(arr, dtype=np.float64, copy=True)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class PromptSet:
    """Point and shape prompts of an annotation session.

    Attributes
    ----------
    ndim : int
        Number of axes of every coordinate (the image's ndim).
    points : numpy.ndarray
        ``(N, ndim)`` float64, napari row/col order, leading slice axes
        first (e.g. ``[z, y, x]``). Read-only.
    point_positive : numpy.ndarray
        ``(N,)`` bool, True for foreground points. Read-only.
    shapes : tuple of numpy.ndarray
        Vertices ``(M_i, ndim)`` float64 of each shape, as in napari's
        ``Shapes.data``. Read-only.
    shape_types : tuple of str
        One of :data:`SHAPE_TYPES` per shape.
    coordinates : str
        ``"data"`` (pixel indices) or ``"world"`` (layer scale applied).
    metadata : dict
        Free-form JSON-serialisable information (image path, model...).
    """

    ndim: int
    points: Any = ()
    point_positive: Any = ()
    shapes: Any = ()
    shape_types: Any = ()
    coordinates: str = "data"
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ndim = self.ndim
        if isinstance(ndim, bool) or not isinstance(ndim, (int, np.integer)) or ndim < 1:
            raise ValueError(f"ndim must be a positive int, got {ndim!r}")
        ndim = int(ndim)
        points = _coords(self.points, ndim, "points")
        positive = np.asarray(self.point_positive)
        if positive.size == 0:
            positive = np.zeros(0, dtype=bool)
        if positive.ndim != 1 or positive.shape[0] != points.shape[0]:
            raise ValueError(
                f"point_positive must have shape ({points.shape[0]},) to match points, "
                f"got {positive.shape}"
            )
        if positive.dtype != np.bool_:
            if not np.isin(positive, (0, 1)).all():
                raise ValueError(
                    f"point_positive must be booleans (or 0/1), got {positive.tolist()}"
                )
            positive = positive.astype(bool)
        positive = positive.copy()
        positive.setflags(write=False)
        types = tuple(str(t) for t in self.shape_types)
        shapes = tuple(_coords(s, ndim, f"shapes[{k}] vertices") for k, s in enumerate(self.shapes))
        if len(types) != len(shapes):
            raise ValueError(f"got {len(shapes)} shapes but {len(types)} shape_types")
        for k, (kind, verts) in enumerate(zip(types, shapes)):
            if kind not in SHAPE_TYPES:
                raise ValueError(
                    f"shape_types[{k}] is {kind!r}; supported: {', '.join(SHAPE_TYPES)}"
                )
            n = verts.shape[0]
            if kind == "polygon" and n < 3:
                raise ValueError(f"shapes[{k}] polygon needs >= 3 vertices, got {n}")
            if kind != "polygon" and n not in (2, 4):
                raise ValueError(f"shapes[{k}] {kind} needs 2 or 4 vertices, got {n}")
        if self.coordinates not in ("data", "world"):
            raise ValueError(f"coordinates must be 'data' or 'world', got {self.coordinates!r}")
        metadata = dict(self.metadata)
        try:
            json.dumps(metadata)
        except (TypeError, ValueError) as err:
            raise ValueError(f"metadata must be JSON-serialisable: {err}") from err
        object.__setattr__(self, "ndim", ndim)
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "point_positive", positive)
        object.__setattr__(self, "shapes", shapes)
        object.__setattr__(self, "shape_types", types)
        object.__setattr__(self, "metadata", metadata)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PromptSet):
            return NotImplemented
        return (
            self.ndim == other.ndim
            and self.coordinates == other.coordinates
            and self.shape_types == other.shape_types
            and self.metadata == other.metadata
            and np.array_equal(self.points, other.points)
            and np.array_equal(self.point_positive, other.point_positive)
            and len(self.shapes) == len(other.shapes)
            and all(np.array_equal(a, b) for a, b in zip(self.shapes, other.shapes))
        )

    __hash__ = None  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready dict of the documented schema."""
        return {
            "format": PROMPT_FORMAT,
            "version": PROMPT_VERSION,
            "ndim": self.ndim,
            "coordinates": self.coordinates,
            "points": self.points.tolist(),
            "point_positive": self.point_positive.tolist(),
            "shapes": [
                {"type": t, "vertices": s.tolist()} for t, s in zip(self.shape_types, self.shapes)
            ],
            "metadata": dict(self.metadata),
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        """Serialise to JSON text (floats are written exactly)."""
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PromptSet:
        """Build from a dict of the documented schema; see :meth:`from_json`."""
        if not isinstance(data, Mapping):
            raise ValueError(f"prompt data must be a JSON object, got {type(data).__name__}")
        if data.get("format", PROMPT_FORMAT) != PROMPT_FORMAT:
            raise ValueError(
                f"not a prompt file: format is {data.get('format')!r}, expected {PROMPT_FORMAT!r}"
            )
        if "version" not in data:
            raise ValueError(f"prompt data has no 'version' field (expected {PROMPT_VERSION})")
        if data["version"] != PROMPT_VERSION:
            raise ValueError(
                f"unsupported prompt file version {data['version']!r}; this napari-sam "
                f"reads version {PROMPT_VERSION} (upgrade napari-sam-stack for newer files)"
            )
        if "ndim" not in data:
            raise ValueError("prompt data has no 'ndim' field")
        shapes = data.get("shapes", [])
        if not isinstance(shapes, list) or not all(
            isinstance(s, Mapping) and "type" in s and "vertices" in s for s in shapes
        ):
            raise ValueError("'shapes' must be a list of objects with 'type' and 'vertices' fields")
        return cls(
            ndim=data["ndim"],
            points=data.get("points", []),
            point_positive=data.get("point_positive", []),
            shapes=[s["vertices"] for s in shapes],
            shape_types=[s["type"] for s in shapes],
            coordinates=data.get("coordinates", "data"),
            metadata=data.get("metadata") or {},
        )

    @classmethod
    def from_json(cls, text: str) -> PromptSet:
        """Parse JSON text of the documented schema.

        Raises
        ------
        ValueError
            Invalid JSON, wrong ``format``/``version``, or malformed fields.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"prompt file is not valid JSON: {err}") from err
        return cls.from_dict(data)


def save_prompts(
    path: PathLike,
    points: Any,
    point_positive: Any,
    shapes: Sequence[Any],
    shape_types: Sequence[str],
    ndim: int,
    *,
    coordinates: str = "data",
    metadata: Mapping[str, Any] | None = None,
) -> PromptSet:
    """Save prompts to a JSON file (schema in the module docstring).

    Parameters
    ----------
    path : str or os.PathLike
        Output ``.json`` file; replaced atomically (written to a temporary
        file first), so an interrupted save keeps the old file.
    points : array-like, shape (N, ndim)
        Point coordinates, e.g. napari ``Points.data``.
    point_positive : array-like of bool, shape (N,)
        True for foreground points.
    shapes : sequence of array-like, each (M_i, ndim)
        Shape vertices, e.g. napari ``Shapes.data``.
    shape_types : sequence of str
        One of ``'rectangle'``, ``'polygon'``, ``'ellipse'`` per shape
        (napari ``Shapes.shape_type``).
    ndim : int
        Number of axes of the coordinates.
    coordinates : {"data", "world"}, default "data"
    metadata : mapping, optional
        Free-form JSON-serialisable information.

    Returns
    -------
    PromptSet
        What was written.
    """
    prompts = PromptSet(
        ndim=ndim,
        points=points,
        point_positive=point_positive,
        shapes=list(shapes),
        shape_types=list(shape_types),
        coordinates=coordinates,
        metadata=metadata or {},
    )
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(prompts.to_json() + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return prompts


def load_prompts(path: PathLike) -> PromptSet:
    """Load prompts saved by :func:`save_prompts`.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        Invalid JSON, wrong format/version or malformed data (the message
        names the file).
    """
    path = _existing(path, "prompt file")
    try:
        return PromptSet.from_json(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{str(path)!r}: {err}") from err


_AXIS_NAMES = ("t", "z", "y", "x")
_TRUE = frozenset({"1", "1.0", "true", "t", "yes", "y", "positive", "pos", "foreground", "fg"})
_FALSE = frozenset({"0", "0.0", "false", "f", "no", "n", "negative", "neg", "background", "bg"})


def read_points_csv(path: PathLike) -> PromptSet:
    """Read point prompts from a CSV file.

    Accepted layouts (header row required, column names case-insensitive):

    * napari's Points export: ``index,axis-0,axis-1,...`` (``index`` is
      ignored; ``axis-N`` columns give the coordinates in axis order);
    * named axes: any of ``t, z, y, x`` (``y`` and ``x`` required), in any
      column order; coordinates are returned in ``t, z, y, x`` order
      (napari row/col convention).

    An optional ``positive`` or ``label`` column gives the polarity:
    ``1/true/positive/foreground`` vs ``0/false/negative/background``
    (``label`` follows SAM: 1 foreground, 0 background; SAM's -1 padding
    label is rejected). Without one, all
    points are positive. Other columns are ignored.

    Parameters
    ----------
    path : str or os.PathLike
        CSV file.

    Returns
    -------
    PromptSet
        Points only (no shapes), ``coordinates="data"``; ``metadata``
        holds ``{"source": path, "columns": [...]}`` naming the coordinate
        columns used.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        No header / no coordinate columns, mixed or gapped axis columns,
        non-numeric coordinates or unknown polarity values (row and value
        named).
    """
    path = _existing(path, "points CSV file")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise ValueError(f"{str(path)!r} is empty; expected a header row like 'z,y,x,positive'")
    header = [h.strip().lower() for h in rows[0]]
    axis_cols = {h: i for i, h in enumerate(header) if h.startswith("axis-")}
    named_cols = {h: i for i, h in enumerate(header) if h in _AXIS_NAMES}
    if axis_cols and named_cols:
        raise ValueError(
            f"{str(path)!r}: header {rows[0]} mixes 'axis-N' and named axis columns; use one style"
        )
    if axis_cols:
        try:
            numbers = sorted(int(h[5:]) for h in axis_cols)
        except ValueError as err:
            raise ValueError(f"{str(path)!r}: bad axis column in header {rows[0]}") from err
        if numbers != list(range(len(numbers))):
            raise ValueError(
                f"{str(path)!r}: axis columns must be axis-0..axis-{len(numbers) - 1}, "
                f"got {sorted(axis_cols)}"
            )
        names = [f"axis-{n}" for n in numbers]
        coord_idx = [axis_cols[n] for n in names]
    elif named_cols:
        if "y" not in named_cols or "x" not in named_cols:
            raise ValueError(
                f"{str(path)!r}: named coordinate columns need at least 'y' and 'x', "
                f"got {sorted(named_cols)}"
            )
        names = [a for a in _AXIS_NAMES if a in named_cols]
        coord_idx = [named_cols[a] for a in names]
    else:
        raise ValueError(
            f"{str(path)!r}: no coordinate columns in header {rows[0]}; expected "
            f"'axis-0,axis-1,...' (napari export) or 'z,y,x' style names"
        )
    pol_col = next((header.index(c) for c in ("positive", "label") if c in header), None)

    points, positive = [], []
    for line, row in enumerate(rows[1:], start=2):
        try:
            points.append([float(row[i]) for i in coord_idx])
        except (ValueError, IndexError) as err:
            raise ValueError(
                f"{str(path)!r} line {line}: bad coordinates in row {row} ({err})"
            ) from err
        if pol_col is None:
            positive.append(True)
            continue
        cell = row[pol_col].strip().lower() if pol_col < len(row) else ""
        if cell in _TRUE:
            positive.append(True)
        elif cell in _FALSE:
            positive.append(False)
        else:
            raise ValueError(
                f"{str(path)!r} line {line}: {header[pol_col]!r} value {cell!r} is not "
                f"a polarity; use 1/true/positive or 0/false/negative"
            )
    return PromptSet(
        ndim=len(coord_idx),
        points=np.array(points, dtype=float).reshape(-1, len(coord_idx)),
        point_positive=np.array(positive, dtype=bool),
        coordinates="data",
        metadata={"source": str(path), "columns": names},
    )
