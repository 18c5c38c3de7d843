"""The annotator's intensity range: robust (one range per image, measured once) or display."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam.annotation.intensity import ROBUST, IntensityRange, sample_view
from napari_sam.normalize import stack_contrast_limits


class Counting:
    """An array wrapper that counts the values read."""

    def __init__(self, data):
        self.data, self.read = data, 0
        self.shape, self.dtype = data.shape, data.dtype

    def __getitem__(self, key):
        out = np.asarray(self.data[key])
        self.read += out.size
        return out


def test_robust_is_measured_once_per_image_and_display_follows_the_layer():
    data = np.random.default_rng(0).integers(0, 4000, (6, 40, 50)).astype(np.uint16)
    display = [(0.0, 100.0)]
    counting = Counting(data)
    rng = IntensityRange(counting, "image-1", lambda: display[0])
    assert rng.token() == ROBUST and rng.needs_measuring(ROBUST)
    assert rng.resolve(ROBUST) == stack_contrast_limits(data)
    read = counting.read
    assert IntensityRange(counting, "image-1", lambda: (0, 1)).robust() == rng.robust()
    assert counting.read == read  # remembered per image (a second annotator reuses it)
    rng.mode = "display"
    assert rng.token() == (0.0, 100.0) and rng.resolve(rng.token()) == (0.0, 100.0)
    display[0] = (5, 6)
    assert rng.token() == (5.0, 6.0) and "display contrast limits (5, 6)" in rng.describe()
    rng.forget()
    assert rng.measured is None
    with pytest.raises(ValueError, match="normalization must be one of"):
        IntensityRange(counting, "image-1", lambda: (0, 1), "percentile")


def test_a_huge_slice_is_measured_from_a_strided_view():
    big = np.zeros((3000, 2000), np.uint16)
    big[::7] = 1000
    view = sample_view(big)
    assert view.size <= 1_100_000 and np.shares_memory(view, big)
    rgb = np.zeros((2, 1500, 1500, 3), np.uint16)
    view = sample_view(rgb, rgb=True)
    assert view.shape[-1] == 3 and view.shape[1] * view.shape[2] <= 1_000_000
    assert sample_view(np.zeros((64, 64))).shape == (64, 64)  # small: as it is
