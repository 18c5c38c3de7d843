"""Signatures of image stacks, computed slice by slice, never by loading the whole stack.

An embedding store must know which image it was computed from, and stacks may
be larger than memory (numpy memmaps, dask arrays, zarr arrays, TIFFs opened
through ``tifffile``'s ``aszarr``). Three tools, all reading at most one slice
at a time:

* :func:`slice_digest` -- a 64-bit hash of every pixel of one slice. The
  embedding store keeps one per slice, computed while the slice is read for
  embedding anyway, and checks it whenever the slice is read again.
* :func:`image_signature` -- a cheap :class:`ImageSignature` for opening a
  store: shape, dtype and a hash of a strided sample of a few slices. It reads
  at most ``n_slices`` strided slices, so it is fast on any stack; it detects
  another image or a changed shape, but not a change in a pixel it did not
  sample (the per-slice digests catch those).
* :func:`stack_digest` -- a hash of every pixel of the stack, read slice by
  slice: one changed pixel anywhere changes it. Costs one pass over the data.

Axis convention
---------------
A stack is ``(*lead, *slice)``: the leading axes (e.g. ``(Z,)`` or ``(T, Z)``)
index slices, the last ``slice_ndim`` axes form one slice: ``(Y, X)`` when
``slice_ndim`` is 2, ``(Y, X, C)`` (colour last) when it is 3. A slice index
is the tuple of leading indices, e.g. ``(z,)`` or ``(t, z)``; a single 2D
image has the one index ``()``.

Digests are independent of the container: the same pixels give the same
digest from numpy, dask or zarr, in either byte order.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ImageSignature",
    "image_signature",
    "iter_slices",
    "read_slice",
    "slice_digest",
    "slice_indices",
    "stack_digest",
]

#: Number of slices sampled by :func:`image_signature` by default.
DEFAULT_SAMPLED_SLICES = 8
#: Largest number of pixels per sampled slice (the slice is strided down to this).
DEFAULT_SAMPLE_PIXELS = 65_536


def _check_slice_ndim(shape: tuple[int, ...], slice_ndim: int) -> None:
    if slice_ndim not in (2, 3):
        raise ValueError(
            f"slice_ndim must be 2 (slices are (Y, X)) or 3 (slices are (Y, X, C)), "
            f"got {slice_ndim!r}"
        )
    if len(shape) < slice_ndim:
        raise ValueError(
            f"the image has shape {shape}, fewer than the {slice_ndim} slice axes; "
            "pass at least a 2D (Y, X) image"
        )


def slice_indices(shape: tuple[int, ...], slice_ndim: int = 2) -> Iterator[tuple[int, ...]]:
    """Every slice index of a stack of ``shape``, in C order (``()`` for one 2D image)."""
    shape = tuple(int(s) for s in shape)
    _check_slice_ndim(shape, slice_ndim)
    for flat in range(math.prod(shape[: len(shape) - slice_ndim])):
        yield tuple(int(i) for i in np.unravel_index(flat, shape[: len(shape) - slice_ndim]))


def read_slice(stack: Any, index: tuple[int, ...]) -> np.ndarray:
    """One slice ``stack[index]`` as a numpy array (computes a dask slice, reads a zarr chunk).

    Only that slice is read: ``stack`` is indexed first, then converted.
    """
    part = stack[tuple(index)] if index else stack[...]
    compute = getattr(part, "compute", None)
    if callable(compute) and not isinstance(part, np.ndarray):
        part = compute()
    return np.asarray(part)


def iter_slices(
    stack: Any,
    slice_ndim: int = 2,
    indices: Iterable[tuple[int, ...]] | None = None,
) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    """Yield ``(index, slice)`` for the given slice indices (default: all), one read at a time.

    Memory holds one slice at a time whatever the number of slices.
    """
    if indices is None:
        indices = slice_indices(tuple(stack.shape), slice_ndim)
    for index in indices:
        yield tuple(index), read_slice(stack, tuple(index))


def _native(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.byteorder not in ("=", "|"):
        a = a.astype(a.dtype.newbyteorder("="))
    return np.ascontiguousarray(a)


def slice_digest(image: Any) -> int:
    """64-bit BLAKE2b hash of one slice's pixels, shape and dtype (an int in ``[0, 2**64)``).

    Parameters
    ----------
    image : array-like, one slice (any shape and numeric dtype); numpy, dask or zarr

    Returns
    -------
    int
        The same for the same pixels and dtype whatever the container or byte order;
        different after any change of a single pixel (up to hash collisions, 2**-64).
    """
    a = _native(read_slice(image, ()) if not isinstance(image, np.ndarray) else image)
    h = hashlib.blake2b(digest_size=8, person=b"napari-sam-slice")
    h.update(f"{a.dtype.str}|{a.shape}|".encode())
    h.update(a.reshape(-1).view(np.uint8).data if a.size else b"")
    return int.from_bytes(h.digest(), "little")


def stack_digest(
    stack: Any,
    slice_ndim: int = 2,
    progress: Callable[[int, int], None] | None = None,
) -> str:
    """Hex hash of every pixel of a stack, computed one slice at a time.

    Parameters
    ----------
    stack : ``(*lead, Y, X)`` or ``(*lead, Y, X, C)`` numpy, dask or zarr array
    slice_ndim : 2 for ``(Y, X)`` slices, 3 for ``(Y, X, C)`` colour slices
    progress : called as ``progress(done, total)`` after each slice

    Returns
    -------
    str
        32 hex digits; changes when any pixel, the shape or the dtype changes.
    """
    shape = tuple(int(s) for s in stack.shape)
    _check_slice_ndim(shape, slice_ndim)
    total = math.prod(shape[: len(shape) - slice_ndim])
    h = hashlib.blake2b(digest_size=16, person=b"napari-sam-stack")
    h.update(f"{np.dtype(stack.dtype).newbyteorder('=').str}|{shape}|".encode())
    for done, (_, image) in enumerate(iter_slices(stack, slice_ndim), start=1):
        h.update(slice_digest(image).to_bytes(8, "little"))
        if progress is not None:
            progress(done, total)
    return h.hexdigest()


@dataclass(frozen=True)
class ImageSignature:
    """What a stack looks like, cheaply: shape, dtype and a hash of a strided sample.

    Attributes
    ----------
    shape : the full stack shape
    dtype : numpy dtype name in native byte order (e.g. ``"uint16"``)
    sample : 32 hex digits, hash of the sampled pixels
    sampled_slices : flat (C-order) indices of the sampled slices
    step : stride along Y and X inside each sampled slice
    """

    shape: tuple[int, ...]
    dtype: str
    sample: str
    sampled_slices: tuple[int, ...]
    step: int

    def to_dict(self) -> dict:
        """JSON-compatible dict (for store metadata)."""
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "sample": self.sample,
            "sampled_slices": list(self.sampled_slices),
            "step": self.step,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ImageSignature:
        """Inverse of :meth:`to_dict`."""
        try:
            return cls(
                shape=tuple(int(s) for s in d["shape"]),
                dtype=str(d["dtype"]),
                sample=str(d["sample"]),
                sampled_slices=tuple(int(s) for s in d["sampled_slices"]),
                step=int(d["step"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"not an image signature: {d!r} ({err})") from err

    def differences(self, other: ImageSignature) -> list[str]:
        """Human-readable differences from ``other`` (empty when they describe the same image)."""
        if self.shape != other.shape:
            return [f"image shape {other.shape} is not {self.shape}"]
        if self.dtype != other.dtype:
            return [f"image dtype {other.dtype} is not {self.dtype}"]
        if (self.sampled_slices, self.step) != (other.sampled_slices, other.step):
            return ["the image signatures were sampled differently; recompute the store"]
        if self.sample != other.sample:
            return [
                "pixel values differ (a sample of slices "
                f"{list(self.sampled_slices)} (flat indices) hashes differently)"
            ]
        return []


def image_signature(
    stack: Any,
    slice_ndim: int = 2,
    *,
    n_slices: int = DEFAULT_SAMPLED_SLICES,
    max_pixels: int = DEFAULT_SAMPLE_PIXELS,
) -> ImageSignature:
    """Cheap signature of a stack from a strided sample of a few slices.

    Reads at most ``n_slices`` slices (evenly spaced, first and last included),
    each strided along Y and X so that at most about ``max_pixels`` pixels are
    kept; one slice is read at a time. For a numpy array this copies only the
    sample; for dask only the sampled slices are computed; for zarr only their
    chunks are read.

    Parameters
    ----------
    stack : ``(*lead, Y, X)`` or ``(*lead, Y, X, C)`` numpy, dask or zarr array
    slice_ndim : 2 for ``(Y, X)`` slices, 3 for ``(Y, X, C)`` colour slices
    n_slices : number of sampled slices
    max_pixels : pixels kept per sampled slice

    Returns
    -------
    ImageSignature
        Equal for equal images. Small stacks (at most ``n_slices`` slices of at
        most ``max_pixels`` pixels) are hashed completely, so any change shows.
    """
    shape = tuple(int(s) for s in stack.shape)
    _check_slice_ndim(shape, slice_ndim)
    if n_slices < 1 or max_pixels < 1:
        raise ValueError(f"n_slices and max_pixels must be >= 1, got {n_slices}, {max_pixels}")
    lead = shape[: len(shape) - slice_ndim]
    ny, nx = shape[len(lead)], shape[len(lead) + 1]
    total = math.prod(lead)
    step = max(1, math.ceil(math.sqrt(ny * nx / max_pixels)))
    picks = tuple(
        int(i)
        for i in np.unique(np.linspace(0, total - 1, min(n_slices, total)).round().astype(np.int64))
    )
    dtype = np.dtype(stack.dtype).newbyteorder("=")
    h = hashlib.blake2b(digest_size=16, person=b"napari-sam-sign")
    h.update(f"{dtype.str}|{shape}|{step}|".encode())
    strided = (slice(None, None, step), slice(None, None, step))
    for flat in picks:
        index = tuple(int(i) for i in np.unravel_index(flat, lead)) if lead else ()
        where: tuple[Any, ...] = (*index, *strided)
        sample = _native(read_slice(stack, where))
        h.update(flat.to_bytes(8, "little"))
        h.update(sample.reshape(-1).view(np.uint8).data if sample.size else b"")
    return ImageSignature(
        shape=shape, dtype=dtype.name, sample=h.hexdigest(), sampled_slices=picks, step=step
    )
