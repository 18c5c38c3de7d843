"""Shared test fixtures. Keep them small and general."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest

from napari_sam.predictor import Prediction


@dataclass(frozen=True)
class DiskEmbedding:
    """Stand-in embedding: the slice's size, its mean intensity and the limits used."""

    original_size: tuple[int, int]
    mean: float
    contrast_limits: tuple[float, float] | None


class DiskPredictor:
    """Stand-in predictor with exactly known answers (no torch, no model).

    * ``embed(image)`` records the call (``embed_calls``: list of slice means,
      ``embed_threads``: thread names) and sleeps ``embed_delay`` seconds in
      10 ms steps (to test responsiveness).
    * ``predict``: the object is a disk of radius ``radius`` around the first
      positive point (rounded to the pixel), else the filled box, else the mask
      prompt itself. Candidate ``k`` has radius ``radius + 2 * k`` and score
      ``0.9 - 0.1 * k`` (so the best is candidate 0). A negative point inside
      the object removes a disk of radius 2 around it.
    """

    def __init__(self, radius: int = 6, embed_delay: float = 0.0) -> None:
        self.radius = radius
        self.embed_delay = embed_delay
        self.embed_calls: list[float] = []
        self.embed_threads: list[str] = []
        self.predict_calls = 0

    def embed(self, image, *, contrast_limits=None):
        image = np.asarray(image)
        end = time.perf_counter() + self.embed_delay
        while time.perf_counter() < end:
            time.sleep(0.01)
        self.embed_calls.append(float(image.mean()))
        self.embed_threads.append(threading.current_thread().name)
        limits = None if contrast_limits is None else tuple(contrast_limits)
        return DiskEmbedding(tuple(image.shape[:2]), float(image.mean()), limits)

    def disk(self, shape, centre, radius) -> np.ndarray:
        rr, cc = np.ogrid[: shape[0], : shape[1]]
        return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2

    def predict(self, embedding, points=None, labels=None, box=None, mask=None, multimask=True):
        self.predict_calls += 1
        shape = embedding.original_size
        k_count = 3 if multimask else 1
        masks = []
        pts = None if points is None else np.asarray(points, dtype=float).reshape(-1, 2)
        lab = None if pts is None else (
            np.ones(len(pts), int) if labels is None else np.asarray(labels).ravel()
        )
        for k in range(k_count):
            if pts is not None and (lab == 1).any():
                centre = np.floor(pts[np.argmax(lab == 1)] + 0.5)
                m = self.disk(shape, centre, self.radius + 2 * k)
            elif box is not None:
                r0, c0, r1, c1 = np.floor(np.asarray(box, float) + 0.5).astype(int)
                m = np.zeros(shape, bool)
                m[r0 : r1 + 1, c0 : c1 + 1] = True
            elif mask is not None:
                m = np.asarray(mask, bool).copy()
            else:
                m = np.zeros(shape, bool)
            if pts is not None:
                for p in pts[lab == 0]:
                    m &= ~self.disk(shape, np.floor(p + 0.5), 2)
            masks.append(m)
        masks = np.stack(masks)
        scores = np.array([0.9 - 0.1 * k for k in range(k_count)], dtype=np.float32)
        logits = np.where(masks, 8.0, -8.0).astype(np.float32)
        return Prediction(masks, scores, logits)


@pytest.fixture
def disk_predictor():
    """A fresh :class:`DiskPredictor` (radius 6, no delay)."""
    return DiskPredictor()


@pytest.fixture
def make_disk_predictor():
    """Factory: ``make_disk_predictor(radius=6, embed_delay=0.0)``."""
    return DiskPredictor


@pytest.fixture
def tiny_predictor():
    """The random-weight ``vit_tiny`` SAM in float32 (256 px input), for real-model paths."""
    import torch

    from napari_sam.model.sam import build_sam
    from napari_sam.predictor import Predictor

    torch.manual_seed(0)
    return Predictor(build_sam("vit_tiny"), precision="float32")


@pytest.fixture
def blob_stack():
    """``(12, 64, 80)`` uint16 stack with one bright ellipsoid around (6, 30, 40)."""
    zz, yy, xx = np.ogrid[:12, :64, :80]
    inside = ((zz - 6) / 4.0) ** 2 + ((yy - 30) / 10.0) ** 2 + ((xx - 40) / 12.0) ** 2 <= 1
    return (100 + 900 * inside).astype(np.uint16)
