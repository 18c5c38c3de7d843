"""Per-slice checksums: a damaged features chunk is found when read, never served.

From store version 3 on, each slice's completion flag chunk (``done``) holds two
uint64 values: the flag (0 = not complete, else the slice's pixel digest) and
the CRC-32 of the slice's features as stored (storage dtype, C order). A read
decodes the chunk, recomputes its CRC-32 and compares: a few percent of reading
and decompressing it (measured in docs/embedding_store.md).

Stores of versions 1 and 2 have no checksums; their chunks are still checked
for what can be told without one: a chunk that cannot be decoded, has another
size, holds non-finite values or only zeros (what a deleted chunk reads as).

A damaged slice counts as not computed: :meth:`EmbeddingStore.read_features`
raises :class:`DamagedSliceError` (a ``KeyError``, like a missing slice) and
clears the slice's flag when the store is writable; ``get_or_compute``, the
``embed`` functions and ``napari-sam embed`` recompute and rewrite it and say
so once per store.
"""

from __future__ import annotations

import warnings
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

#: First store version whose ``done`` chunks hold ``(flag, checksum)``.
CHECKSUM_VERSION = 3

#: What ``on_damage`` may be: ``"warn"``, ``"ignore"`` or ``callback(message)``.
OnDamage = str | Callable[[str], None]


class DamagedSliceError(KeyError):
    """A slice is flagged complete but its stored features are damaged.

    A ``KeyError``, as for a slice that is not stored: callers that compute
    missing slices recompute it. The slice's flag is cleared when the store is
    writable, so it also shows in ``store.missing()``.

    Attributes
    ----------
    path : the store's path
    index : the slice index
    reason : what is wrong with the chunk
    """

    def __init__(self, path: Any, index: tuple[int, ...], reason: str) -> None:
        self.path = str(path)
        self.index = tuple(index)
        self.reason = reason
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return (
            f"slice {self.index} of the embedding store {self.path!r} is damaged ({self.reason}); "
            "it counts as not computed: get_or_compute or `napari-sam embed` recompute it"
        )

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message

    def __reduce__(self):  # picklable (raised on Dask workers)
        return (type(self), (self.path, self.index, self.reason))


class StoreDamageWarning(UserWarning):
    """A damaged slice was found in an embedding store and is being recomputed."""


def features_checksum(data: np.ndarray) -> int:
    """CRC-32 of one slice's features as stored (their dtype, C order, little-endian).

    Parameters
    ----------
    data : the slice's chunk, in the store's dtype

    Returns
    -------
    int
        In ``[0, 2**32)``.
    """
    data = np.ascontiguousarray(data)
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("<"))
    return zlib.crc32(data.data.cast("B"))


def chunk_problem(
    data: np.ndarray, shape: tuple[int, ...], dtype: str, checksum: int | None
) -> str | None:
    """What is wrong with a decoded chunk, or None when it is sound.

    Parameters
    ----------
    data : the decoded chunk
    shape, dtype : what the store's chunks are
    checksum : the stored :func:`features_checksum`, or None for stores without
        checksums (versions 1 and 2: only non-finite and all-zero chunks are caught)
    """
    if data.shape != tuple(shape) or data.dtype != np.dtype(dtype):
        return f"its chunk decodes to {data.shape} {data.dtype}, not {tuple(shape)} {dtype}"
    if checksum is not None:
        found = features_checksum(data)
        if found != checksum:
            return (
                f"checksum of the stored features {found:#010x}, written {checksum:#010x}: "
                "the chunk was changed, truncated or deleted after it was written"
            )
        return None
    if not np.isfinite(data).all():
        return "its features hold NaN or infinite values"
    if not data.any():
        return "its features are all zeros (the chunk file is missing)"
    return None


def damage_message(err: DamagedSliceError, repaired: bool) -> str:
    """The one message about a store's damaged slices."""
    action = (
        "it is recomputed and rewritten"
        if repaired
        else "it is recomputed (the store is not written)"
    )
    return (
        f"embedding store {err.path!r}: slice {err.index} was damaged ({err.reason}); "
        f"{action}. Further damaged slices of this store are recomputed without another message."
    )


def report_damage(on_damage: OnDamage, message: str, stacklevel: int = 3) -> None:
    """Say ``message`` the way ``on_damage`` asks (``"warn"``, ``"ignore"`` or a callable)."""
    if callable(on_damage):
        on_damage(message)
    elif on_damage == "warn":
        warnings.warn(message, StoreDamageWarning, stacklevel=stacklevel + 1)


def check_on_damage(on_damage: Any) -> None:
    """Raise ``ValueError`` unless ``on_damage`` is ``"warn"``, ``"ignore"`` or a callable."""
    if not callable(on_damage) and on_damage not in ("warn", "ignore"):
        raise ValueError(
            "on_damage must be 'warn', 'ignore' or a callable taking the message, got "
            f"{on_damage!r}"
        )


__all__ = [
    "CHECKSUM_VERSION",
    "DamagedSliceError",
    "StoreDamageWarning",
    "chunk_problem",
    "damage_message",
    "features_checksum",
]
