"""napari glue: the scribble Labels layer of an annotator (imports napari inside functions).

The layer is ``"<image> scribbles"``: uint8 labels of the image's shape, scale
and translate, 1 = object stroke (green), 2 = background stroke (magenta),
tagged ``metadata["napari_sam"] = {"role": "scribble", "image": <uid>}`` so
that a later annotator of the image finds it again.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_sam.annotation.layer_set import NEGATIVE_COLOR, POSITIVE_COLOR, layer_role
from napari_sam.annotation.scribbling import SCRIBBLE_ROLE

__all__ = ["find_scribble_layer", "scribble_layer"]


def find_scribble_layer(layers: Any) -> Any:
    """The scribble layer an annotator of this image made (in the viewer), or None."""
    for layer in layers.viewer.layers:
        if layer_role(layer, layers.image) == SCRIBBLE_ROLE:
            return layer
    return None


def scribble_layer(layers: Any) -> Any:
    """The scribble layer of ``layers.image``: found, or created (and added to the viewer)."""
    from napari.utils.colormaps import DirectLabelColormap

    found = find_scribble_layer(layers)
    if found is not None:
        return found
    kwargs = layers.kwargs("preview")
    kwargs["name"] = f"{layers.image.name} scribbles"
    kwargs["metadata"] = {"napari_sam": {"role": SCRIBBLE_ROLE, "image": layers.image.unique_id}}
    h, w = layers.geometry.slice_shape
    colors = {None: "transparent", 0: "transparent", 1: POSITIVE_COLOR, 2: NEGATIVE_COLOR}
    layer = layers.viewer.add_labels(
        np.zeros(layers.geometry.shape, dtype=np.uint8), opacity=0.8,
        colormap=DirectLabelColormap(color_dict=colors), **kwargs,
    )
    layer.brush_size = max(2, round(min(h, w) / 64))
    return layer
