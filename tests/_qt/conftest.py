"""Fixtures of the napari tests."""

from __future__ import annotations

import time
import types

import numpy as np
import pytest


@pytest.fixture
def viewer_model():
    """napari's Qt-free ViewerModel (enough for the annotator's scripted API)."""
    from napari.components import ViewerModel

    return ViewerModel()


@pytest.fixture
def fake_propagate(monkeypatch):
    """A stand-in ``napari_sam.propagation.propagate_iter`` following its contract.

    ``propagate_iter`` yields, for each z in order (up first, then down), the
    seed mask shifted one column per slice away from the seed, after asking
    ``embeddings(z)``; it sleeps ``delay`` seconds per slice. The returned
    list records each call (stack shape, contrast limits, extra options).
    """
    calls: list[dict] = []

    def propagate_iter(stack, seeds, predictor, *, direction="both", z_range=None,
                       contrast_limits=None, embeddings=None, **options):
        delay = options.pop("delay", 0.0)
        calls.append({"shape": stack.shape, "cl": contrast_limits, "options": options})
        z0 = next(iter(next(iter(seeds.values()))))
        lo, stop = z_range if z_range is not None else (0, stack.shape[0])  # stop exclusive
        order = []
        if direction in ("both", "up"):
            order += list(range(z0 + 1, stop))
        if direction in ("both", "down"):
            order += list(range(z0 - 1, lo - 1, -1))
        for z in order:
            time.sleep(delay)
            embeddings(z)
            masks = {oid: np.roll(m[z0], z - z0, axis=1) for oid, m in seeds.items()}
            yield types.SimpleNamespace(z=z, masks=masks, records={})

    monkeypatch.setattr("napari_sam.propagation.propagate_iter", propagate_iter)
    return calls
