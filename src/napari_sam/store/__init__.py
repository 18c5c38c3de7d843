"""Slice embeddings of a stack kept on disk (zarr), computed once and reused.

An :class:`EmbeddingStore` holds one chunk per slice (float16 by default),
written as soon as the slice is computed, plus a completion flag per slice
written after the data: a stopped computation resumes where it stopped, a
half-written slice is never returned, and a reopened stack needs no
recomputation. The store records what it was computed from (model weights,
contrast limits, slice shape, model input geometry, a signature of the image)
and refuses to serve another model, image or normalization, saying what
differs. Each slice's flag carries a checksum of its features: a damaged chunk
is never served; it counts as not computed and is recomputed.

Typical use::

    from napari_sam.predictor import Predictor
    from napari_sam.store import EmbeddingStore, embed_stack

    predictor = Predictor("vit_b")
    store = embed_stack(stack, predictor, "stack.embeddings.zarr", progress=print)
    emb = store[(12,)]                                   # one slice, read from disk

    # or compute on demand while annotating:
    store = EmbeddingStore.for_stack("stack.embeddings.zarr", stack, predictor)
    embeddings = store.bound(stack, predictor)           # embeddings[z] computes if missing

Slice indices are tuples of the leading (non-spatial) indices: ``(z,)`` for a
``(Z, Y, X)`` stack, ``(t, z)`` for ``(T, Z, Y, X)``, ``()`` for one 2D image.

The parallel path (:func:`embed_stack_distributed`, ``napari-sam embed``)
needs ``distributed`` and is imported on first use.
"""

from __future__ import annotations

from typing import Any

from napari_sam.store._embed import (
    EmbedReport,
    SliceEvent,
    default_contrast_limits,
    describe_stack,
    embed_missing,
    embed_stack,
    iter_embed,
)
from napari_sam.store._integrity import DamagedSliceError, StoreDamageWarning
from napari_sam.store._metadata import (
    STORE_FORMAT,
    STORE_VERSION,
    ModelIdentity,
    NotAStoreError,
    StoreMetadata,
    StoreMismatchError,
    StoreWriteError,
    model_fingerprint,
    predictor_geometry,
    predictor_identity,
)
from napari_sam.store._zarr import BoundEmbeddings, EmbeddingStore

__all__ = [
    "STORE_FORMAT",
    "STORE_VERSION",
    "BoundEmbeddings",
    "DamagedSliceError",
    "EmbedReport",
    "EmbeddingStore",
    "ModelIdentity",
    "NotAStoreError",
    "SliceEvent",
    "StoreDamageWarning",
    "StoreMetadata",
    "StoreMismatchError",
    "StoreWriteError",
    "default_contrast_limits",
    "describe_stack",
    "embed_missing",
    "embed_stack",
    "embed_stack_distributed",
    "iter_embed",
    "model_fingerprint",
    "predictor_geometry",
    "predictor_identity",
]


def __getattr__(name: str) -> Any:
    if name == "embed_stack_distributed":
        from napari_sam.store._distributed import embed_stack_distributed

        return embed_stack_distributed
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
