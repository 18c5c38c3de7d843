"""Segment Anything for microscopy stacks, in napari and from Python.

The public API is imported lazily: ``import napari_sam`` imports neither torch,
Qt nor napari. Each name below is loaded from its module on first access.

Coordinates follow napari everywhere in the public API: points are
``(row, col)`` and boxes ``(row_min, col_min, row_max, col_max)`` in pixels of
the 2D slice they belong to. Only :mod:`napari_sam.predictor` converts them to
SAM's ``(x, y)`` frame.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "Predictor": "napari_sam.predictor",
    "Prediction": "napari_sam.predictor",
    "Embedding": "napari_sam.predictor",
    "PredictorProtocol": "napari_sam.predictor",
    "segment_slice": "napari_sam.predictor",
    "load_model": "napari_sam.model.checkpoint",
    "available_models": "napari_sam.model.registry",
    "propagate": "napari_sam.propagation",
    "segment_everything": "napari_sam.everything",
    "segment_everything_stack": "napari_sam.everything",
    "Annotator": "napari_sam.annotator",
    "EmbeddingStore": "napari_sam.store",
    "embed_stack": "napari_sam.store",
    "adapt": "napari_sam.adaptation",
    "find_similar": "napari_sam.similar",
    "AdaptationResult": "napari_sam.adaptation",
}

__all__ = [
    "AdaptationResult",
    "Annotator",
    "Embedding",
    "EmbeddingStore",
    "Prediction",
    "Predictor",
    "PredictorProtocol",
    "__version__",
    "adapt",
    "available_models",
    "embed_stack",
    "find_similar",
    "load_model",
    "propagate",
    "segment_everything",
    "segment_everything_stack",
    "segment_slice",
]

if TYPE_CHECKING:  # pragma: no cover
    from napari_sam.adaptation import AdaptationResult, adapt
    from napari_sam.annotator import Annotator
    from napari_sam.everything import segment_everything, segment_everything_stack
    from napari_sam.model.checkpoint import load_model
    from napari_sam.model.registry import available_models
    from napari_sam.predictor import (
        Embedding,
        Prediction,
        Predictor,
        PredictorProtocol,
        segment_slice,
    )
    from napari_sam.propagation import propagate
    from napari_sam.similar import find_similar
    from napari_sam.store import EmbeddingStore, embed_stack


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_sam' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
