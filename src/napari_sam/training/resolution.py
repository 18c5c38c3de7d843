"""The resolution curriculum: early phases at a smaller input size, same weights.

A phase of ``TrainConfig.resolution_schedule`` runs the model at a smaller
input size (:func:`training_resolution`) on scenes scaled to match
(:func:`scaled_data`: same object sizes in pixels, smaller fields of view).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

from napari_sam.training.data import DataConfig

__all__ = ["phase_size", "scaled_data", "training_resolution"]


def phase_size(schedule, progress: float, default: int) -> int:
    """The input size of the resolution phase that ``progress`` (0-1) falls in."""
    for end, size in schedule:
        if progress < end:
            return int(size)
    return int(schedule[-1][1]) if schedule else int(default)


def scaled_data(data: DataConfig, factor: float) -> DataConfig:
    """``data`` with its scene shapes scaled by ``factor`` (object sizes unchanged)."""
    if factor == 1:
        return data
    height, width = data.base_shape
    return replace(
        data,
        base_shape=(max(16, round(height * factor)), max(16, round(width * factor))),
        other_sides=tuple(max(16, round(s * factor)) for s in data.other_sides),
    )


@contextmanager
def training_resolution(model, img_size: int):
    """Temporarily run ``model`` at another (smaller) input size, sharing all weights.

    The micro encoder is convolutional (its attention position table is
    interpolated), SAM's decoder attends over any number of tokens, and the
    prompt encoder's geometry is plain attributes; only those attributes and
    the encoder's ``img_size`` change, so a cheap low-resolution warm-up phase
    trains exactly the parameters used at full size.
    """
    enc, pe = model.image_encoder, model.prompt_encoder
    saved = (enc.img_size, pe.image_embedding_size, pe.input_image_size, pe.mask_input_size)
    stride = model.config.patch_size if model.config is not None else 16
    if img_size % stride:
        raise ValueError(f"img_size {img_size} must be a multiple of the stride {stride}")
    e = img_size // stride
    enc.img_size = img_size
    pe.image_embedding_size = (e, e)
    pe.input_image_size = (img_size, img_size)
    pe.mask_input_size = (4 * e, 4 * e)
    try:
        yield model
    finally:
        enc.img_size, pe.image_embedding_size, pe.input_image_size, pe.mask_input_size = saved
