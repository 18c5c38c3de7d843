"""What an embedding store was computed from, and how to tell the model of a predictor."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from napari_sam.signature import ImageSignature

#: ``format`` field of the store's metadata.
STORE_FORMAT = "napari-sam-embeddings"
#: Store layout written by this package, and the newest it reads: 1 = one feature
#: map per slice, 2 = tiled slices (the tiles then the overview in each slice's
#: chunk), 3 = each slice's ``done`` chunk holds ``(flag, checksum of its features)``.
#: Versions 1 and 2 are still read (without checksums).
STORE_VERSION = 3
#: Storage dtypes a store accepts.
STORE_DTYPES = ("float16", "float32")


class StoreMismatchError(ValueError):
    """An embedding store was computed from another model, image, normalization or geometry.

    Attributes
    ----------
    path : the store's path
    differences : one line per differing field
    """

    def __init__(self, path: Any, differences: list[str], hint: str | None = None) -> None:
        self.path = str(path)
        self.differences = list(differences)
        self.hint = hint
        lines = "\n".join(f"  - {d}" for d in self.differences)
        hint = hint or (
            "Use another store path, or recompute it (overwrite=True; "
            "`napari-sam embed --overwrite`)."
        )
        super().__init__(
            f"embedding store {self.path!r} was computed from something else; refusing to "
            f"use it:\n{lines}\n{hint}"
        )

    def __reduce__(self):  # picklable (raised on Dask workers)
        return (type(self), (self.path, self.differences, self.hint))


class StoreWriteError(OSError):
    """An embedding store cannot be created or written (read-only place, full disk...).

    An :class:`OSError` whose ``filename`` is the store's path; callers can fall
    back to keeping embeddings in memory.
    """

    def __init__(self, path: Any, reason: str, cause: BaseException | None = None) -> None:
        self.message = (
            f"cannot write the embedding store {str(path)!r}: {reason}. Choose a writable "
            "location with free space, or keep embeddings in memory."
        )
        super().__init__(self.message)
        self.filename = str(path)
        self.errno = getattr(cause, "errno", None)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # picklable (raised on Dask workers)
        return (_rebuild_write_error, (self.filename, self.message, self.errno))


def _rebuild_write_error(filename: str, message: str, err_no: int | None) -> StoreWriteError:
    err = StoreWriteError.__new__(StoreWriteError)
    OSError.__init__(err, message)
    err.message, err.filename, err.errno = message, filename, err_no
    return err


class NotAStoreError(ValueError):
    """A path exists but does not hold an embedding store written by this package."""


def _tensor_bytes(t: Any) -> memoryview:
    t = t.detach().to("cpu").contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    import torch

    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


def model_fingerprint(model: Any) -> str:
    """Hash of a model's weights: ``"blake2b:<32 hex digits>"``.

    Parameters
    ----------
    model : a ``torch.nn.Module`` or a state dict (``{name: tensor}``)

    Returns
    -------
    str
        Equal for equal weights (names, dtypes, shapes and values), whatever the
        device or the file they were loaded from. Reads every weight once
        (timed in docs/embedding_store.md); compute it once per loaded model.
    """
    state = model.state_dict() if hasattr(model, "state_dict") else model
    if not isinstance(state, Mapping):
        raise TypeError(
            f"model_fingerprint needs a torch module or a state dict, got {type(model).__name__}"
        )
    h = hashlib.blake2b(digest_size=16, person=b"napari-sam-model")
    for name in sorted(state):
        tensor = state[name]
        if not hasattr(tensor, "detach"):
            continue
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(_tensor_bytes(tensor))
    return "blake2b:" + h.hexdigest()


@dataclass(frozen=True)
class ModelIdentity:
    """Which model a predictor runs.

    Attributes
    ----------
    name : registry name, checkpoint path or class name (informational)
    fingerprint : :func:`model_fingerprint` of its weights (what is compared)
    precision : image-encoder precision (informational), e.g. ``"float32"``
    """

    name: str
    fingerprint: str
    precision: str | None = None


def predictor_identity(predictor: Any) -> ModelIdentity:
    """The :class:`ModelIdentity` of a predictor.

    A predictor's ``fingerprint`` string (:class:`~napari_sam.contract.BasePredictor`)
    is trusted; otherwise its ``model`` (a torch module) is hashed with
    :func:`model_fingerprint`.

    Raises
    ------
    TypeError
        If the predictor has neither (say how to identify it).
    """
    from napari_sam.contract import as_predictor

    p = as_predictor(predictor, need_embed=False, need_predict=False)
    name = str(p.model_name or type(predictor).__name__)
    precision = None if p.precision is None else str(p.precision)
    if p.fingerprint:
        return ModelIdentity(name, p.fingerprint, precision)
    if p.model is not None and hasattr(p.model, "state_dict"):
        return ModelIdentity(name, model_fingerprint(p.model), precision)
    raise TypeError(
        f"cannot tell which model the predictor {type(predictor).__name__} runs: give it a "
        "`model` attribute (a torch module) or a `fingerprint` string attribute"
    )


def predictor_geometry(
    predictor: Any, slice_shape: tuple[int, ...]
) -> tuple[tuple[int, int, int], tuple[int, int]] | None:
    """``(embedding_shape (C, e, e), input_size (h, w))`` for a slice, without running the model.

    The predictor's :meth:`~napari_sam.contract.BasePredictor.embedding_geometry`:
    known for :class:`~napari_sam.predictor.Predictor` (from the model's config);
    None for predictors that do not describe themselves (embed one slice instead).
    """
    from napari_sam.contract import as_predictor

    lifted = as_predictor(predictor, need_embed=False, need_predict=False)
    return lifted.embedding_geometry(slice_shape)


def _floats(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    low, high = (float(v) for v in value)
    if not (math.isfinite(low) and math.isfinite(high)) or high < low:
        raise ValueError(f"contrast limits must be finite with low <= high, got {value!r}")
    return (low, high)


def _ints(value: Any) -> tuple[int, ...] | None:
    return None if value is None else tuple(int(v) for v in value)


#: Keys of a tiled store's ``tiling`` record.
TILING_KEYS = ("tile", "overlap", "n_tiles")


def check_tiling(value: Any) -> dict | None:
    """``tiling`` as ``{"tile", "overlap", "n_tiles"}`` ints, or None (whole slices).

    Raises
    ------
    ValueError
        ``value`` is neither None nor such a mapping.
    """
    if value is None:
        return None
    try:
        out = {k: int(value[k]) for k in TILING_KEYS}
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(
            f"tiling must be None (whole slices) or a dict with int 'tile', 'overlap' and "
            f"'n_tiles' (TiledEmbedding.metadata['tiling']), got {value!r}"
        ) from err
    if out["tile"] < 1 or out["n_tiles"] < 1 or not 0 <= out["overlap"] < out["tile"]:
        raise ValueError(
            f"tiling needs tile >= 1, n_tiles >= 1 and 0 <= overlap < tile, got {value!r}"
        )
    return out


def describe_tiling(tiling: dict | None) -> str:
    """``tiling`` in words, for messages."""
    if tiling is None:
        return "untiled (one whole-slice embedding per slice)"
    return (
        f"tiled ({tiling['n_tiles']} tiles of {tiling['tile']} px, overlap "
        f"{tiling['overlap']} px, plus an overview)"
    )


def tiling_of_grid(grid: Any) -> dict | None:
    """The ``tiling`` record of a :class:`~napari_sam.tiling.TileGrid` (None for None)."""
    if grid is None:
        return None
    return {"tile": int(grid.tile), "overlap": int(grid.overlap), "n_tiles": len(grid)}


def predictor_tiling(predictor: Any, slice_shape: tuple[int, ...]) -> dict | None:
    """How ``predictor.embed`` tiles a slice of ``slice_shape``: a ``tiling`` record or None.

    None for predictors that do not tile (they embed whole slices).

    Raises
    ------
    TypeError
        ``plan_tiles`` returns something other than None or a ``TileGrid``.
    """
    from napari_sam.contract import as_predictor
    from napari_sam.tiling import TileGrid

    p = as_predictor(predictor, need_embed=False, need_predict=False)
    grid = p.plan_tiles((int(slice_shape[0]), int(slice_shape[1])))
    if grid is not None and not isinstance(grid, TileGrid):
        raise TypeError(
            f"{type(predictor).__name__}.plan_tiles returned {grid!r}; it must return None "
            "or a napari_sam.tiling.TileGrid"
        )
    return tiling_of_grid(grid)


@dataclass(frozen=True)
class StoreMetadata:
    """Everything an embedding store was computed from (stored as JSON in the zarr group).

    Attributes
    ----------
    stack_shape : shape of the image stack ``(*lead, Y, X)`` or ``(*lead, Y, X, C)``
    slice_ndim : 2 (slices ``(Y, X)``) or 3 (slices ``(Y, X, C)``, colour last)
    model_name : informational (registry name or checkpoint path)
    model_fingerprint : :func:`model_fingerprint` of the weights
    contrast_limits : ``(low, high)`` intensities mapped to 0 and 255, same for every slice,
        or None (the predictor's per-slice default)
    original_size : ``(H, W)`` of a slice (``Embedding.original_size``)
    input_size : ``(h, w)`` of the resized slice in the model input (``Embedding.input_size``)
    embedding_shape : ``(C, e, e)`` of one feature map (of a slice, or of one tile
        and of the overview of a tiled slice)
    image_signature : :class:`~napari_sam.signature.ImageSignature` of the stack
    tiling : None (one whole-slice feature map per slice) or
        ``{"tile", "overlap", "n_tiles"}`` (``TiledEmbedding.metadata["tiling"]``):
        each slice holds ``n_tiles`` tile feature maps, then the overview's
    precision : image-encoder precision used (informational, not compared)
    dtype : storage dtype of the features, ``"float16"`` or ``"float32"``
    """

    stack_shape: tuple[int, ...]
    slice_ndim: int
    model_name: str
    model_fingerprint: str
    contrast_limits: tuple[float, float] | None
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    embedding_shape: tuple[int, int, int]
    image_signature: ImageSignature
    tiling: dict | None = None
    precision: str | None = None
    dtype: str = "float16"
    format: str = field(default=STORE_FORMAT, repr=False)
    version: int | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "stack_shape", _ints(self.stack_shape))
        set_(self, "slice_ndim", int(self.slice_ndim))
        if self.slice_ndim not in (2, 3) or len(self.stack_shape) < self.slice_ndim:
            raise ValueError(
                f"stack_shape {self.stack_shape} with slice_ndim {self.slice_ndim}: need "
                "slice_ndim 2 ((Y, X) slices) or 3 ((Y, X, C) slices) and that many trailing axes"
            )
        set_(self, "contrast_limits", _floats(self.contrast_limits))
        set_(self, "original_size", _ints(self.original_size))
        set_(self, "input_size", _ints(self.input_size))
        set_(self, "embedding_shape", _ints(self.embedding_shape))
        if len(self.embedding_shape) != 3 or min(self.embedding_shape) < 1:
            raise ValueError(f"embedding_shape must be (C, e, e), got {self.embedding_shape}")
        if self.original_size != self.slice_shape[:2]:
            raise ValueError(
                f"original_size {self.original_size} does not match the slices "
                f"{self.slice_shape[:2]} of stack_shape {self.stack_shape}"
            )
        if isinstance(self.image_signature, Mapping):
            set_(self, "image_signature", ImageSignature.from_dict(dict(self.image_signature)))
        if str(self.dtype) not in STORE_DTYPES:
            raise ValueError(f"dtype must be one of {STORE_DTYPES}, got {self.dtype!r}")
        set_(self, "dtype", str(self.dtype))
        set_(self, "tiling", check_tiling(self.tiling))
        # new stores are STORE_VERSION; an old store's metadata keeps its version (tiled
        # stores are at least 2), which tells whether its slices carry checksums
        version = STORE_VERSION if self.version is None else int(self.version)
        set_(self, "version", max(version, 2) if self.tiling is not None else version)

    @property
    def parts_per_slice(self) -> int:
        """Feature maps per slice: 1, or ``n_tiles + 1`` (the tiles, then the overview)."""
        return 1 if self.tiling is None else self.tiling["n_tiles"] + 1

    @property
    def chunk_shape(self) -> tuple[int, ...]:
        """Shape of one slice's features: ``(C, e, e)`` or ``(n_tiles + 1, C, e, e)``."""
        if self.tiling is None:
            return tuple(self.embedding_shape)
        return (self.parts_per_slice, *self.embedding_shape)

    @property
    def lead_shape(self) -> tuple[int, ...]:
        """Shape of the slice index space (``()`` for one 2D image)."""
        return self.stack_shape[: len(self.stack_shape) - self.slice_ndim]

    @property
    def slice_shape(self) -> tuple[int, ...]:
        """Shape of one slice, ``(Y, X)`` or ``(Y, X, C)``."""
        return self.stack_shape[len(self.stack_shape) - self.slice_ndim :]

    @property
    def n_slices(self) -> int:
        """Number of slices (1 for a 2D image)."""
        return math.prod(self.lead_shape)

    def to_dict(self) -> dict:
        """JSON-compatible dict."""
        d = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, ImageSignature):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            d[f.name] = value
        return d

    @classmethod
    def from_dict(cls, d: Mapping, path: Any = "store") -> StoreMetadata:
        """Inverse of :meth:`to_dict`; refuses other formats and newer versions."""
        if d.get("format") != STORE_FORMAT:
            raise NotAStoreError(
                f"{str(path)!r} is not a napari-sam embedding store (format "
                f"{d.get('format')!r}, expected {STORE_FORMAT!r})"
            )
        if int(d.get("version", 0)) > STORE_VERSION:
            raise NotAStoreError(
                f"{str(path)!r} is an embedding store of version {d.get('version')}, newer than "
                f"this napari-sam-stack understands ({STORE_VERSION}); update napari-sam-stack"
            )
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in names})
        except (TypeError, ValueError) as err:
            raise NotAStoreError(f"{str(path)!r} has unreadable store metadata: {err}") from err

    def with_updates(self, **changes: Any) -> StoreMetadata:
        """A copy with some fields replaced."""
        return replace(self, **changes)

    def differences(self, expected: StoreMetadata | Mapping[str, Any]) -> list[str]:
        """Why this store cannot serve ``expected``: one line per differing field.

        ``expected`` is a full :class:`StoreMetadata` or a mapping of some fields
        (only those are compared; ``None`` values are skipped). Informational
        fields (``model_name``, ``precision``, ``dtype``) are never compared.
        """
        want = expected.to_dict() if isinstance(expected, StoreMetadata) else dict(expected)
        unknown = set(want) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown store metadata fields {sorted(unknown)}")
        out: list[str] = []
        if want.get("model_fingerprint") not in (None, self.model_fingerprint):
            other = want.get("model_name") or "the requested model"
            out.append(
                f"model: computed with {self.model_name!r} (weights {self.model_fingerprint}), "
                f"not {other!r} (weights {want['model_fingerprint']})"
            )
        if want.get("stack_shape") is not None and _ints(want["stack_shape"]) != self.stack_shape:
            out.append(f"image shape: store {self.stack_shape}, image {_ints(want['stack_shape'])}")
        if want.get("slice_ndim") is not None and int(want["slice_ndim"]) != self.slice_ndim:
            out.append(
                f"slice axes: store has {self.slice_ndim}-D slices, requested "
                f"{int(want['slice_ndim'])}-D"
            )
        sig = want.get("image_signature")
        if sig is not None:
            if not isinstance(sig, ImageSignature):
                sig = ImageSignature.from_dict(dict(sig))
            out += [f"image: {d}" for d in self.image_signature.differences(sig)]
        if "contrast_limits" in want and want["contrast_limits"] is not None:
            limits = _floats(want["contrast_limits"])
            if self.contrast_limits is None or limits is None or not np.allclose(
                limits, self.contrast_limits, rtol=1e-9, atol=0
            ):
                out.append(f"contrast limits: store {self.contrast_limits}, requested {limits}")
        for name, label in (
            ("original_size", "slice size"),
            ("input_size", "model input size"),
            ("embedding_shape", "embedding shape"),
        ):
            if want.get(name) is not None and _ints(want[name]) != getattr(self, name):
                out.append(f"{label}: store {getattr(self, name)}, requested {_ints(want[name])}")
        if "tiling" in want:
            tiling = check_tiling(want["tiling"])
            if tiling != self.tiling:
                out.append(
                    f"tiling: store {describe_tiling(self.tiling)}, requested "
                    f"{describe_tiling(tiling)}"
                )
        return out
