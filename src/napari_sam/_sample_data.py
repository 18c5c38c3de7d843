"""npe2 sample data: a small synthetic fluorescence nuclei stack with its ground truth."""

from __future__ import annotations

from typing import Any

__all__ = ["SAMPLE_SCALE", "make_sample_nuclei"]

#: Voxel size (z, y, x) in µm of the sample stack: z is 4x coarser than xy.
SAMPLE_SCALE = (2.0, 0.5, 0.5)


def make_sample_nuclei() -> list[tuple[Any, dict, str]]:
    """The sample nuclei stack as napari layer data tuples.

    Returns
    -------
    list of ``(data, kwargs, layer_type)``
        ``(24, 192, 192)`` uint16 image ``"nuclei"`` and its uint32 ground-truth
        labels ``"nuclei ground truth"`` (hidden), both with
        ``scale=(2.0, 0.5, 0.5)`` (z, y, x) in µm.
    """
    from napari_sam.synthetic import sample_nuclei_stack

    image, labels = sample_nuclei_stack()
    common = {"scale": SAMPLE_SCALE, "units": ("um", "um", "um")}
    return [
        (image, {"name": "nuclei", "colormap": "gray", **common}, "image"),
        (labels, {"name": "nuclei ground truth", "visible": False, "opacity": 0.4, **common},
         "labels"),
    ]
