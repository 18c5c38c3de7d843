"""Prompt files: the JSON prompt schema (:class:`PromptSet`) and points CSV files.

Re-exported by :mod:`napari_sam.io`.

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
        {"type": "path", "vertices": [[z, y, x], ...], "negative": true},
        ...
      ],
      "metadata": {}                  # free-form JSON object (image path...)
    }

Coordinates use napari's row/column convention: for a ZYX image a point is
``[z, row, col]``. Shape types are ``"rectangle"`` and ``"ellipse"`` (2 or
4 vertices: napari stores the 4 corners of the (bounding) box),
``"polygon"`` (>= 3 vertices), and the strokes ``"path"`` (>= 1 vertex) and
``"line"`` (2 vertices). ``"negative": true`` marks a background stroke
(optional, written only when true; the annotator draws it magenta).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PROMPT_FORMAT",
    "PROMPT_VERSION",
    "SHAPE_TYPES",
    "STROKE_SHAPES",
    "PromptSet",
    "load_prompts",
    "read_points_csv",
    "save_prompts",
]

PathLike = str | os.PathLike

#: ``format`` field of prompt JSON files.
PROMPT_FORMAT = "napari-sam-prompts"
#: Current (and only readable) prompt JSON schema version.
PROMPT_VERSION = 1
#: Shape types that are strokes (paths and lines; only they can be background strokes).
STROKE_SHAPES: tuple[str, ...] = ("path", "line")
#: Shape types a :class:`PromptSet` may hold.
SHAPE_TYPES: tuple[str, ...] = ("rectangle", "polygon", "ellipse", *STROKE_SHAPES)


def _existing(path: PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: {str(p)!r}")
    return p


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
    shape_negative : numpy.ndarray
        ``(M,)`` bool per shape: True for a background stroke (a ``path`` or
        ``line``); empty input means all False. Read-only.
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
    shape_negative: Any = ()

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
            need = {"polygon": (n >= 3, ">= 3"), "path": (n >= 1, ">= 1"),
                    "line": (n == 2, "2")}.get(kind, (n in (2, 4), "2 or 4"))
            if not need[0]:
                raise ValueError(f"shapes[{k}] {kind} needs {need[1]} vertices, got {n}")
        negative = np.asarray(self.shape_negative)
        if negative.size == 0:
            negative = np.zeros(len(shapes), dtype=bool)
        if negative.shape != (len(shapes),) or not np.isin(negative, (0, 1)).all():
            raise ValueError(f"shape_negative must hold one bool per shape ({len(shapes)}), "
                             f"got {negative.tolist()}")
        negative = negative.astype(bool)
        for k, (kind, neg) in enumerate(zip(types, negative)):
            if neg and kind not in STROKE_SHAPES:
                raise ValueError(f"shapes[{k}] is a {kind}: only strokes (path, line) can be "
                                 "negative")
        negative.setflags(write=False)
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
        object.__setattr__(self, "shape_negative", negative)
        object.__setattr__(self, "metadata", metadata)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PromptSet):
            return NotImplemented
        return (
            self.ndim == other.ndim
            and self.coordinates == other.coordinates
            and self.shape_types == other.shape_types
            and np.array_equal(self.shape_negative, other.shape_negative)
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
                {"type": t, "vertices": s.tolist(), **({"negative": True} if neg else {})}
                for t, s, neg in zip(self.shape_types, self.shapes, self.shape_negative)
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
            shape_negative=[s.get("negative", False) for s in shapes],
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
    shape_negative: Sequence[bool] | None = None,
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
        One of :data:`SHAPE_TYPES` per shape (napari ``Shapes.shape_type``).
    ndim : int
        Number of axes of the coordinates.
    coordinates : {"data", "world"}, default "data"
    metadata : mapping, optional
        Free-form JSON-serialisable information.
    shape_negative : sequence of bool, optional
        True for background strokes (paths, lines); default all False.

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
        shape_negative=() if shape_negative is None else list(shape_negative),
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
