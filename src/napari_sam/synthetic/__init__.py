"""Procedural microscopy-like images with exact instance ground truth.

Pure numpy/scipy/scikit-image (no torch, Qt or napari). Each generator returns
``(image, labels)``: ``image`` is ``(Y, X)`` or ``(Z, Y, X)`` (uint8, uint16 or
float32), ``labels`` is uint32 of the same shape with 0 = background and objects
``1..N``; output is deterministic for a given seed.

Modules: :mod:`.imaging` (PSF blur, illumination, background, camera noise and
quantization), :mod:`.shapes` (exact object masks), :mod:`.placement`
(non-overlapping placement, tessellation), :mod:`.scenes` and :mod:`.stacks`
(the generators below), :mod:`.appearance` and :mod:`.stress` (appearance
changes for training and the stress sweep).

Examples
--------
>>> from napari_sam.synthetic import nuclei_2d
>>> image, labels = nuclei_2d((128, 128), seed=1)
>>> image.dtype.name, labels.dtype.name
('uint16', 'uint32')
"""

from __future__ import annotations

from .imaging import render, stack_psf_sigma
from .scenes import (
    SCENES_2D,
    cells_membrane_2d,
    nuclei_2d,
    phase_contrast_2d,
    puncta_2d,
    random_scene_2d,
)
from .stacks import nuclei_stack, sample_nuclei_stack

__all__ = [
    "SCENES_2D",
    "cells_membrane_2d",
    "nuclei_2d",
    "nuclei_stack",
    "phase_contrast_2d",
    "puncta_2d",
    "random_scene_2d",
    "render",
    "sample_nuclei_stack",
    "stack_psf_sigma",
]
