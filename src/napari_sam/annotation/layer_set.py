"""The napari layers of one annotator: found, adopted or created; their transforms.

napari glue (``napari.layers`` is imported inside the functions that need it,
never at import). :class:`AnnotatorLayers` holds the image layer, the output
Labels layer, the prompt layers (points, boxes), the preview layer and the
everything review layer, and the affine maps between their data coordinates,
computed once and recomputed only when a layer's transform changes (its
``scale``, ``translate``, ``rotate``, ``shear``, ``affine`` or ``units``
events).

The prompt, preview and labels layers it creates get the image's ``scale``,
``translate``, ``units`` and ``axis_labels``, so their data is in the image's
pixel coordinates and they sit exactly on the image in world coordinates.
Each carries ``metadata["napari_sam"] = {"role": ..., "image": <image uid>}``,
so that a later annotator of the same image (e.g. the dock widget closed and
opened again) finds and adopts them (:func:`existing_layers`) instead of
creating a second set.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from napari_sam.annotation.layers import positive_feature
from napari_sam.annotation.slicing import ImageGeometry, apply_affine, layer_affine

__all__ = [
    "NEGATIVE_COLOR",
    "POSITIVE_COLOR",
    "PREVIEW_COLOR",
    "TRANSFORM_EVENTS",
    "AnnotatorLayers",
    "existing_layers",
]

#: Colour of positive (foreground) points.
POSITIVE_COLOR = "lime"
#: Colour of negative (background) points.
NEGATIVE_COLOR = "magenta"
#: Colour of the uncommitted preview (every object).
PREVIEW_COLOR = "yellow"
#: Layer events after which a layer's world <-> data transform is recomputed.
TRANSFORM_EVENTS = ("scale", "translate", "rotate", "shear", "affine", "units")
#: ``metadata`` key marking the layers an annotator made.
METADATA_KEY = "napari_sam"
#: Role of each layer an annotator makes: (Annotator argument, name suffix).
ROLES = {
    "labels": ("labels_layer", "labels"),
    "points": ("points_layer", "SAM points"),
    "shapes": ("shapes_layer", "SAM boxes"),
    "preview": ("preview_layer", "SAM preview"),
    "everything": ("everything_layer", "everything"),
}


def layer_role(layer: Any, image: Any) -> str | None:
    """The role (``"labels"``, ``"points"``...) of a layer an annotator of ``image``
    made, or None for any other layer."""
    tag = getattr(layer, "metadata", {}).get(METADATA_KEY)
    if isinstance(tag, dict) and tag.get("image") == image.unique_id:
        return tag.get("role")
    return None


def existing_layers(viewer: Any, image: Any) -> dict[str, Any]:
    """The layers an earlier annotator of ``image`` made, as Annotator arguments.

    Found by their ``metadata`` tag, else by their usual name
    (``"<image> labels"``...) when type and dimensionality fit; e.g.
    ``{"labels_layer": ..., "points_layer": ...}`` (missing roles are left out).
    """
    from napari.layers import Labels, Points, Shapes

    kinds = {"labels": Labels, "points": Points, "shapes": Shapes, "preview": Labels,
             "everything": Labels}
    found: dict[str, Any] = {}
    for role, (argument, suffix) in ROLES.items():
        tagged = [ly for ly in viewer.layers if layer_role(ly, image) == role]
        named = [ly for ly in viewer.layers if ly.name == f"{image.name} {suffix}"
                 and isinstance(ly, kinds[role]) and ly.ndim == image.ndim
                 and layer_role(ly, image) in (None, role)]
        if role in ("labels", "preview", "everything"):
            named = [ly for ly in named if not ly.multiscale
                     and tuple(ly.data.shape) == tuple(image.data.shape[: image.ndim])]
        if tagged or named:  # the latest tagged one (e.g. a "new labels layer" chosen)
            found[argument] = tagged[-1] if tagged else named[0]
    return found


def find_layer(viewer: Any, layer: Any, what: str) -> Any:
    """``layer`` (or the layer of that name) in ``viewer``, or a ``ValueError``."""
    if isinstance(layer, str):
        try:
            return viewer.layers[layer]
        except KeyError:
            names = [ly.name for ly in viewer.layers]
            raise ValueError(f"no layer named {layer!r}; layers: {names}") from None
    if layer not in viewer.layers:
        raise ValueError(f"{what} {getattr(layer, 'name', layer)!r} is not in the viewer")
    return layer


def image_geometry(layer: Any) -> ImageGeometry:
    """The geometry of an Image layer (multiscale: level 0), checked for SAM.

    Raises
    ------
    ValueError
        Not an Image layer, or slices smaller than SAM's minimum side.
    """
    from napari.layers import Image

    from napari_sam.normalize import MIN_SIDE

    if not isinstance(layer, Image):
        raise ValueError(
            f"image_layer must be an Image layer, got {type(layer).__name__} {layer.name!r}"
        )
    source = layer.data[0] if layer.multiscale else layer.data
    geometry = ImageGeometry(
        shape=tuple(int(s) for s in source.shape[: layer.ndim]),
        rgb=bool(layer.rgb),
        channels=int(source.shape[-1]) if layer.rgb else 1,
        scale=tuple(layer.scale),
        translate=tuple(layer.translate),
    )
    if min(geometry.slice_shape) < MIN_SIDE:
        raise ValueError(
            f"image {layer.name!r} has {geometry.slice_shape} (Y, X) slices; "
            f"SAM needs both sides >= {MIN_SIDE} px"
        )
    return geometry


class AnnotatorLayers:
    """The layers of one annotator.

    Parameters
    ----------
    viewer : napari ``Viewer`` or ``ViewerModel``
    image_layer : the Image layer (or its name)
    labels, points, shapes, preview : existing layers (or names) to adopt, or
        None to create ``"<image> labels"`` (uint32), ``"<image> SAM points"``,
        ``"<image> SAM boxes"``, ``"<image> SAM preview"``
    warn : ``warn(text)`` for what the user should know (e.g. an adopted
        labels layer with another scale)

    Attributes
    ----------
    image, labels, points, shapes, preview : the layers
    everything : the everything review layer (None until first needed)
    geometry : the image's :class:`~napari_sam.annotation.slicing.ImageGeometry`
    source : the image array (multiscale: level 0)
    owns_labels : True when the labels layer was created here (or by an earlier
        annotator of this image)
    axis_names : names of the leading axes for messages (``("t", "z")``)
    """

    def __init__(
        self,
        viewer: Any,
        image_layer: Any,
        *,
        labels: Any = None,
        points: Any = None,
        shapes: Any = None,
        preview: Any = None,
        everything: Any = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        from napari_sam.annotation.slicing import lead_axis_names

        self.viewer = viewer
        self.image = find_layer(viewer, image_layer, "image_layer")
        self.geometry = image_geometry(self.image)
        self.axis_names = lead_axis_names(getattr(self.image, "axis_labels", None),
                                          self.geometry.n_lead)
        self.source = self.image.data[0] if self.image.multiscale else self.image.data
        self.labels = self._labels(labels, warn or (lambda text: None))
        self.owns_labels = labels is None or layer_role(self.labels, self.image) == "labels"
        self.preview = self._preview(preview)
        self.shapes = self._shapes(shapes)
        self.points = self._points(points)
        self.everything: Any = None
        self.scribbles: Any = None  # the scribble layer, made on demand (annotation/extended)
        if everything is not None:
            from napari.layers import Labels

            self.everything = self._adopt(everything, Labels, "everything_layer")
        self._affines: dict[tuple[int, str], np.ndarray] = {}
        for layer in self.prompt_sources:
            for name in TRANSFORM_EVENTS:
                getattr(layer.events, name).connect(self._transform_changed)

    # ------------------------------------------------------------- creation
    def kwargs(self, role: str) -> dict:
        """Keyword arguments of a new layer of ``role`` (:data:`ROLES`) on the image."""
        return {
            "name": f"{self.image.name} {ROLES[role][1]}",
            "scale": self.geometry.scale,
            "translate": self.geometry.translate,
            "units": self.image.units,
            "axis_labels": self.image.axis_labels,
            "metadata": {METADATA_KEY: {"role": role, "image": self.image.unique_id}},
        }

    def where(self, index: Any) -> str:
        """A slice for people: ``"z=14"``, ``"t=1, z=14"``, ``"the image"`` (2D)."""
        from napari_sam.annotation.slicing import describe_slice

        return describe_slice(tuple(index), self.axis_names)

    @property
    def helpers(self) -> tuple[Any, ...]:
        """The annotator's own layers other than the labels: points, boxes, preview,
        everything review, scribbles (``scribbles``: set by the annotator once made)."""
        return tuple(ly for ly in (self.points, self.shapes, self.preview, self.everything,
                                   self.scribbles) if ly is not None)

    def _adopt(self, layer: Any, kind: type[Any], what: str) -> Any:
        layer = find_layer(self.viewer, layer, what)
        if not isinstance(layer, kind) or layer.ndim != self.geometry.ndim:
            raise ValueError(
                f"{what} must be a {kind.__name__} layer with {self.geometry.ndim} dims, got "
                f"{type(layer).__name__} {layer.name!r} with {layer.ndim}"
            )
        return layer

    def _labels(self, labels: Any, warn: Callable[[str], None]) -> Any:
        from napari.layers import Labels

        if labels is None:
            data = np.zeros(self.geometry.shape, dtype=np.uint32)
            return self.viewer.add_labels(data, **self.kwargs("labels"))
        layer = self._adopt(labels, Labels, "labels_layer")
        data = layer.data[0] if layer.multiscale else layer.data
        if tuple(data.shape) != self.geometry.shape:
            raise ValueError(
                f"labels layer {layer.name!r} has shape {tuple(data.shape)} but image "
                f"{self.image.name!r} has spatial shape {self.geometry.shape}; "
                "choose a Labels layer of the same shape (or none to create one)"
            )
        if layer.multiscale or type(data).__module__.split(".")[0] == "dask":
            raise ValueError(
                f"labels layer {layer.name!r} is read-only (multiscale or dask-backed); "
                "convert it first, e.g. layer.data = np.asarray(layer.data)"
            )
        scale, translate = self.geometry.scale, self.geometry.translate
        if scale is not None and translate is not None and not (
                np.allclose(layer.scale, scale) and np.allclose(layer.translate, translate)):
            warn(f"labels layer {layer.name!r} has another scale/translate than the image; "
                 "labels are written by pixel index")
        return layer

    def _preview(self, preview: Any) -> Any:
        from napari.layers import Labels
        from napari.utils.colormaps import DirectLabelColormap

        if preview is not None:
            return self._adopt(preview, Labels, "preview_layer")
        return self.viewer.add_labels(
            np.zeros(self.geometry.shape, dtype=np.uint8), opacity=0.6,
            colormap=DirectLabelColormap(color_dict={None: PREVIEW_COLOR, 0: "transparent"}),
            **self.kwargs("preview"),
        )

    def _shapes(self, shapes: Any) -> Any:
        from napari.layers import Shapes

        if shapes is not None:
            return self._adopt(shapes, Shapes, "shapes_layer")
        h, w = self.geometry.slice_shape
        return self.viewer.add_shapes(
            ndim=self.geometry.ndim, edge_color="yellow", face_color="transparent",
            edge_width=max(1.0, min(h, w) / 200), **self.kwargs("shapes"),
        )

    def _points(self, points: Any) -> Any:
        from napari.layers import Points

        if points is not None:
            layer = self._adopt(points, Points, "points_layer")
            if "positive" not in layer.features:
                layer.features = {"positive": positive_feature(layer)}
                layer.feature_defaults = {"positive": True}
        else:
            h, w = self.geometry.slice_shape
            layer = self.viewer.add_points(
                ndim=self.geometry.ndim,
                features={"positive": np.zeros(0, dtype=bool)},
                feature_defaults={"positive": True},
                face_color="positive",
                face_color_cycle={True: POSITIVE_COLOR, False: NEGATIVE_COLOR},
                size=max(3.0, min(h, w) / 40),
                **self.kwargs("points"),
            )
        layer.mode = "add"
        self.viewer.layers.selection.active = layer
        return layer

    def ensure_everything(self) -> Any:
        """The everything review layer, created (or added back) when needed.

        It goes just below the preview layer (previews and prompts stay on
        top), and the layer that was active (the points, normally) stays
        active, in its mode: the next click still adds a point.
        """
        layer = self.everything
        if layer is not None and layer in self.viewer.layers:
            return layer
        layers = self.viewer.layers
        active = layers.selection.active
        if layer is None:
            from napari.layers import Labels

            layer = self.everything = Labels(
                np.zeros(self.geometry.shape, dtype=np.uint32), opacity=0.6,
                **self.kwargs("everything"),
            )
        below = [layers.index(ly) for ly in (self.preview, self.shapes, self.points)
                 if ly in layers]
        layers.insert(min(below) if below else len(layers), layer)
        if active is not None and active in layers:
            layers.selection.active = active
        return layer

    def ensure_labels_shown(self) -> None:
        """Add the labels layer back if the user removed it (its labels are kept)."""
        if self.labels not in self.viewer.layers:
            self.viewer.layers.append(self.labels)

    @property
    def contrast_limits(self) -> tuple[float, float]:
        """The image layer's contrast limits, used to normalize every slice."""
        low, high = self.image.contrast_limits
        return float(low), float(high)

    # ------------------------------------------------------------ transforms
    @property
    def prompt_sources(self) -> tuple[Any, ...]:
        """The layers whose transforms the prompts go through."""
        return (self.image, self.points, self.shapes)

    def _transform_changed(self, event: Any = None) -> None:
        self._affines.clear()

    def affine(self, layer: Any, direction: str) -> np.ndarray:
        """``layer``'s ``"world_to_data"`` or ``"data_to_world"`` affine (cached)."""
        key = (id(layer), direction)
        matrix = self._affines.get(key)
        if matrix is None:
            matrix = self._affines[key] = layer_affine(layer, direction)
        return matrix

    def to_image(self, layer: Any) -> np.ndarray:
        """Affine from ``layer``'s data coordinates to the image's data coordinates."""
        return self.affine(self.image, "world_to_data") @ self.affine(layer, "data_to_world")

    def image_to_layer(self, layer: Any, coords: np.ndarray) -> np.ndarray:
        """``(N, D)`` image pixel coordinates -> ``layer``'s data coordinates."""
        matrix = self.affine(layer, "world_to_data") @ self.affine(self.image, "data_to_world")
        return apply_affine(matrix, coords)

    def world_to_image(self) -> np.ndarray:
        """Affine from world coordinates to the image's data coordinates."""
        return self.affine(self.image, "world_to_data")

    # --------------------------------------------------------------- closing
    def disconnect(self) -> None:
        """Stop following the layers' transforms."""
        for layer in self.prompt_sources:
            for name in TRANSFORM_EVENTS:
                getattr(layer.events, name).disconnect(self._transform_changed)

    def remove_helpers(self) -> None:
        """Remove the points, shapes, preview and everything layers (never the labels)."""
        for layer in self.helpers:
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
