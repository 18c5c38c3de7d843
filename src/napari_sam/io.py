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

Prompt files (JSON schema, points CSV) are in :mod:`napari_sam.prompt_files`,
re-exported here.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam._file_errors import (
    KINDS,
    UnreadableFile,
    check_file,
    check_tiff_complete,
    check_zarr_folder,
    load_npy,
    reading_tiff,
)
from napari_sam.prompt_files import (
    PROMPT_FORMAT,
    PROMPT_VERSION,
    SHAPE_TYPES,
    PromptSet,
    load_prompts,
    read_points_csv,
    save_prompts,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "PROMPT_FORMAT",
    "PROMPT_VERSION",
    "SHAPE_TYPES",
    "PromptSet",
    "TiffInfo",
    "UnreadableFile",
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
        If the stored napari_sam record is malformed, or the file is not a
        readable TIFF (a folder, empty, truncated, damaged, another format).
    """
    tifffile = _tifffile()
    path = Path(path)
    nbytes = check_file(path, KINDS[".tif"])
    with reading_tiff(path), tifffile.TiffFile(path) as tif:
        check_tiff_complete(tif, path, nbytes)
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
    ValueError
        The file is not a readable TIFF (see :func:`read_tiff_info`), or its
        pixels are not labels: float values that are not whole numbers, NaN or
        infinite. Whole-number floats (as some tools save labels) are accepted
        and converted to the smallest integer type that holds them, with a
        ``UserWarning`` saying so.
    """
    tifffile = _tifffile()
    info = read_tiff_info(path)
    with reading_tiff(Path(path)):
        data = tifffile.imread(Path(path))
    if data.shape != info.shape:
        data = data.reshape(info.shape)
    return _as_labels(data, Path(path)), info.scale


def _as_labels(data: np.ndarray, path: Path) -> np.ndarray:
    """Integer labels of ``data``; whole-number floats converted (with a warning), else refused."""
    kind = data.dtype.kind
    if kind in "iub":
        return data.astype(np.uint8) if kind == "b" else data
    if kind != "f":
        raise ValueError(
            f"{str(path)!r} holds {data.dtype} pixels, not labels; labels are integers "
            "(0 = background, 1, 2, ... = objects)"
        )
    finite = np.isfinite(data)
    if not finite.all():
        raise ValueError(
            f"{str(path)!r} holds float pixels with NaN or infinite values, not labels; "
            "labels are whole numbers (0 = background, 1, 2, ... = objects)"
        )
    whole = data == np.round(data)
    if not whole.all():
        example = float(data[~whole].flat[0])
        raise ValueError(
            f"{str(path)!r} holds {data.dtype} pixels that are not whole numbers (e.g. "
            f"{example!r}): an intensity image, not labels? Labels are integers "
            "(0 = background, 1, 2, ... = objects)"
        )
    low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    candidates = (np.uint8, np.uint16, np.uint32, np.uint64) if low >= 0 else (
        np.int8, np.int16, np.int32, np.int64)
    dtype = next((t for t in candidates if np.iinfo(t).min <= low and high <= np.iinfo(t).max),
                 None)
    if dtype is None or high >= 2.0**53:
        raise ValueError(
            f"{str(path)!r} holds {data.dtype} label values up to {high:g}, beyond what floats "
            "hold exactly; save the labels as integers"
        )
    import warnings

    warnings.warn(
        f"{str(path)!r} stores labels as {data.dtype}; they are whole numbers and were "
        f"converted to {np.dtype(dtype).name}",
        UserWarning,
        stacklevel=3,
    )
    return data.astype(dtype)


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
    if not arrays:
        raise ValueError(f"{str(path)!r} is a zarr group without arrays: it holds no image")
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
        Unsupported extension (lists the supported ones), a zarr group with
        no single array to choose, or a file that cannot be read: a folder
        given for a file, an empty, truncated or damaged file, another format
        under the extension, a folder that is not a zarr store (the message
        names the file and the problem).
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
    if ext == ".zarr":
        import zarr

        check_zarr_folder(path)
        try:
            node = zarr.open(str(path), mode="r")
        except Exception as err:  # zarr's errors on damaged metadata vary by version
            raise ValueError(
                f"cannot open the zarr store {str(path)!r}: {type(err).__name__}: {err}"
            ) from err
        return _zarr_array(node, path)
    size = check_file(path, KINDS[ext])
    if lazy is None:
        lazy = size > LAZY_THRESHOLD_BYTES
    if ext == ".npy":
        return load_npy(path, lazy)
    tifffile = _tifffile()
    with reading_tiff(path):
        with tifffile.TiffFile(path) as tif:
            check_tiff_complete(tif, path, size)
        if not lazy:
            return tifffile.imread(path)
        import zarr

        store = tifffile.imread(path, aszarr=True)
        return _zarr_array(zarr.open(store, mode="r"), path)
