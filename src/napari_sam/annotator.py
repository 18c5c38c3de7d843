"""Interactive SAM annotation of 2D slices of an image layer in a napari viewer.

:class:`Annotator` is the scripted API; the dock widget in :mod:`napari_sam._qt`
is a thin face on it. The Qt- and napari-free parts live in
:mod:`napari_sam.annotation` (geometry, prompt collection, preview, embedding
queue, undoable writes, propagation bookkeeping).

Coordinates
-----------
The annotator's Points and Shapes layers get the image layer's ``scale`` and
``translate``, so their ``data`` is in the image's (continuous) pixel
coordinates and they sit exactly on the image in world coordinates. Prompts are
mapped generally (layer data -> world -> image data with the layers' public
``data_to_world`` / ``world_to_data``), so adopted layers with another
transform work too. A prompt belongs to the slice given by its leading
(non-``(Y, X)``) coordinates, rounded to the nearest pixel.

Threads
-------
With ``blocking=True`` (the default, for scripts) :meth:`Annotator.segment`,
:meth:`Annotator.propagate` and :meth:`Annotator.segment_everything` compute in
the calling thread and return results. The widget and key bindings call them
with ``blocking=False``: embeddings, model loading, propagation and everything
mode run in ``napari.qt.threading`` workers with a progress bar and
:meth:`Annotator.cancel`; layers change only on the main thread, and a result
is written to the slice it was computed for, or dropped when the annotator was
closed (e.g. the user switched image).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam.annotation.embedder import SliceEmbedder
from napari_sam.annotation.layers import (
    add_points,
    positive_feature,
    prompts_in_image_coords,
    remove_rows,
)
from napari_sam.annotation.preview import Preview
from napari_sam.annotation.prompts import (
    ObjectPrompt,
    SlicePrompts,
    collect_slice_prompts,
    decode_objects,
)
from napari_sam.annotation.slicing import (
    ImageGeometry,
    apply_affine,
    layer_affine,
    nearest_index,
    world_slice_index,
)
from napari_sam.annotation.stack_actions import StackActionsMixin
from napari_sam.annotation.store_link import AUTO, StoreLink
from napari_sam.annotation.workers import caught, unless_failed
from napari_sam.annotation.writing import resolve_label_ids, write_masks
from napari_sam.cache import DEFAULT_CACHE_SIZE, EmbeddingCache
from napari_sam.model.registry import DEFAULT_MODEL

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["NEGATIVE_COLOR", "POSITIVE_COLOR", "PREVIEW_COLOR", "USER_ERRORS", "Annotator"]

logger = logging.getLogger("napari_sam")

#: Colour of positive (foreground) points.
POSITIVE_COLOR = "lime"
#: Colour of negative (background) points.
NEGATIVE_COLOR = "magenta"
#: Colour of the uncommitted preview (every object).
PREVIEW_COLOR = "yellow"
#: Errors of the core that the widget and key bindings show as notifications.
USER_ERRORS = (ValueError, TypeError, KeyError, OSError, RuntimeError, ImportError)

Index = tuple[int, ...]


class Annotator(StackActionsMixin):
    """SAM annotation of one image layer: prompts -> preview -> labels.

    Parameters
    ----------
    viewer : napari.Viewer or napari.components.ViewerModel
    image_layer : napari Image layer (or its name) in ``viewer``. 2D ``(Y, X)``,
        3D ``(Z, Y, X)``, 4D ``(T, Z, Y, X)`` (any number of leading axes),
        RGB(A) ``(..., Y, X, 3|4)``; numpy, dask or zarr data (only the slice
        being segmented is read).
    predictor : an object with ``embed`` and ``predict`` (e.g.
        :class:`napari_sam.predictor.Predictor`), or None to load ``model``
        when first needed (in a worker for asynchronous calls).
    model : registry name or checkpoint path used when ``predictor`` is None.
    labels_layer : an existing Labels layer (or its name) to write into, of the
        image's spatial shape; adopted as it is (never replaced; upcast only
        when a new id does not fit). None creates ``"<image> labels"`` (uint32,
        the image's scale and translate).
    cache_size : number of slice embeddings kept in memory (LRU).
    device, precision : passed to :class:`~napari_sam.predictor.Predictor`.
    cache : share an :class:`~napari_sam.cache.EmbeddingCache` between annotators.
    background : embed the viewed slice in the background when the slice
        changes, and prefetch its neighbours (needs a running Qt event loop;
        the widget turns it on).
    auto_segment : segment (asynchronously) whenever the prompts of a slice change.
    points_layer, shapes_layer, preview_layer : existing layers (or names) to adopt
        instead of creating new ones (e.g. those of an earlier annotator); same
        dimensionality as the image.
    store : ``"auto"`` (default), a path, an :class:`~napari_sam.store.EmbeddingStore`,
        or None / False. Where slice embeddings are kept on disk, so that
        annotating the image again needs no recomputation (looked up after the
        in-memory cache, written as slices are embedded):

        * ``"auto"``: for an image opened from a file (``image_layer.source.path``
          is set), a store under ``napari_sam.model.checkpoint.cache_dir() /
          "embeddings"`` (``$NAPARI_SAM_CACHE/embeddings`` when set) named from a
          hash of the file path, the model name, the contrast limits and the
          image signature; one that no longer matches is recomputed. Other
          images: memory only.
        * a path (e.g. ``"stack.embeddings.zarr"``): opened if it exists (its
          model and image must match; it keeps its own contrast limits), else
          created with the layer's contrast limits.
        * an ``EmbeddingStore``: used after the same checks.
        * None or False: memory only.

        The store is opened when the first slice is embedded. A store that
        does not match, cannot be written (read-only place, full disk) or
        cannot hold this predictor's embeddings (slices embedded as tiles, see
        ``Predictor.plan_tiles``; RGBA images) gives one notification and the
        annotator keeps working from memory.

    Attributes
    ----------
    points_layer : Points layer of point prompts; the boolean feature
        ``positive`` (default True) says positive/negative, shown by colour.
    shapes_layer : Shapes layer: rectangles are box prompts, polygons and
        ellipses mask prompts.
    preview_layer : Labels layer showing the uncommitted result.
    labels_layer : the output Labels layer.
    preview : the uncommitted :class:`~napari_sam.annotation.preview.Preview` or None.
    last_message : the last notification or status text.
    events : napari ``EmitterGroup`` with ``segmented``, ``committed``,
        ``propagated``, ``propagation_step`` (a slice was written), ``embedded``,
        ``busy`` and ``message``.
    """

    def __init__(
        self,
        viewer: napari.Viewer | Any,
        image_layer: Any,
        predictor: Any = None,
        model: str = DEFAULT_MODEL,
        labels_layer: Any = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        *,
        device: str = "auto",
        precision: str = "auto",
        cache: EmbeddingCache | None = None,
        background: bool = False,
        auto_segment: bool = False,
        points_layer: Any = None,
        shapes_layer: Any = None,
        preview_layer: Any = None,
        store: Any = AUTO,
    ) -> None:
        from napari.layers import Image
        from napari.utils.events import EmitterGroup

        from napari_sam.normalize import MIN_SIDE

        self.viewer = viewer
        layer = self._find_layer(image_layer, "image_layer")
        if not isinstance(layer, Image):
            raise ValueError(
                f"image_layer must be an Image layer, got {type(layer).__name__} {layer.name!r}"
            )
        self.image_layer = layer
        source = layer.data[0] if layer.multiscale else layer.data
        self.geometry = ImageGeometry(
            shape=tuple(int(s) for s in source.shape[: layer.ndim]),
            rgb=bool(layer.rgb),
            channels=int(source.shape[-1]) if layer.rgb else 1,
            scale=tuple(layer.scale),
            translate=tuple(layer.translate),
        )
        if min(self.geometry.slice_shape) < MIN_SIDE:
            raise ValueError(
                f"image {layer.name!r} has {self.geometry.slice_shape} (Y, X) slices; "
                f"SAM needs both sides >= {MIN_SIDE} px"
            )
        self.events = EmitterGroup(
            source=self, segmented=None, committed=None, propagated=None,
            propagation_step=None, embedded=None, busy=None, message=None,
        )
        self.cache = cache if cache is not None else EmbeddingCache(cache_size)
        # messages of worker threads wait here for the main thread (see _flush_messages)
        self._pending_messages: deque[tuple[str, str]] = deque()
        self._closed = False
        link = StoreLink(store, source, self.geometry,
                         source_path=getattr(getattr(layer, "source", None), "path", None),
                         on_message=self._store_message)
        # the embedder reads the array, never the layer: workers touch no napari object
        self.embedder = SliceEmbedder(
            source, self.geometry, layer.unique_id, self.cache, self._start_worker,
            predictor=predictor, model=model, device=device, precision=precision,
            on_error=self._on_worker_error, on_embedded=self._on_embedded,
            store=link if link.enabled else None,
        )
        self.embedder.scheduler.on_idle = self._prefetch
        self.background = background
        self.auto_segment = auto_segment
        self.prefetch = True
        self.last_message = ""
        self.preview: Preview | None = None
        self._shown_slice: Index | None = None
        self._last_commit: tuple[Index, list[int]] | None = None
        self._propagation: Any = None
        self._everything: Any = None
        self._everything_layer: Any = None
        self._everything_slice: Index | None = None
        self._everything_stack = False  # the pending everything result is a whole stack

        self.owns_labels = labels_layer is None
        self.labels_layer = self._adopt_or_create_labels(labels_layer)
        self._create_prompt_layers(points_layer, shapes_layer, preview_layer)
        self._connect()

    # ================================================================ set-up
    def _find_layer(self, layer: Any, what: str) -> Any:
        if isinstance(layer, str):
            try:
                return self.viewer.layers[layer]
            except KeyError:
                names = [ly.name for ly in self.viewer.layers]
                raise ValueError(f"no layer named {layer!r}; layers: {names}") from None
        if layer not in self.viewer.layers:
            raise ValueError(f"{what} {getattr(layer, 'name', layer)!r} is not in the viewer")
        return layer

    def _layer_kwargs(self, name: str) -> dict:
        return {
            "name": f"{self.image_layer.name} {name}",
            "scale": self.geometry.scale,
            "translate": self.geometry.translate,
            "units": self.image_layer.units,
            "axis_labels": self.image_layer.axis_labels,
        }

    def _adopt(self, layer: Any, kind: type, what: str) -> Any:
        layer = self._find_layer(layer, what)
        if not isinstance(layer, kind) or layer.ndim != self.geometry.ndim:
            raise ValueError(
                f"{what} must be a {kind.__name__} layer with {self.geometry.ndim} dims, got "
                f"{type(layer).__name__} {layer.name!r} with {layer.ndim}"
            )
        return layer

    def _adopt_or_create_labels(self, labels_layer: Any) -> Any:
        from napari.layers import Labels

        if labels_layer is None:
            data = np.zeros(self.geometry.shape, dtype=np.uint32)
            return self.viewer.add_labels(data, **self._layer_kwargs("labels"))
        layer = self._adopt(labels_layer, Labels, "labels_layer")
        data = layer.data[0] if layer.multiscale else layer.data
        if tuple(data.shape) != self.geometry.shape:
            raise ValueError(
                f"labels layer {layer.name!r} has shape {tuple(data.shape)} but image "
                f"{self.image_layer.name!r} has spatial shape {self.geometry.shape}; "
                "choose a Labels layer of the same shape (or none to create one)"
            )
        if layer.multiscale or type(data).__module__.split(".")[0] == "dask":
            raise ValueError(
                f"labels layer {layer.name!r} is read-only (multiscale or dask-backed); "
                "convert it first, e.g. layer.data = np.asarray(layer.data)"
            )
        if not (np.allclose(layer.scale, self.geometry.scale)
                and np.allclose(layer.translate, self.geometry.translate)):
            self._notify("warning", f"labels layer {layer.name!r} has another scale/translate "
                         "than the image; labels are written by pixel index")
        return layer

    def _create_prompt_layers(self, points: Any, shapes: Any, preview: Any) -> None:
        from napari.layers import Labels, Points, Shapes
        from napari.utils.colormaps import DirectLabelColormap

        h, w = self.geometry.slice_shape
        nd = self.geometry.ndim
        if preview is not None:
            self.preview_layer = self._adopt(preview, Labels, "preview_layer")
        else:
            self.preview_layer = self.viewer.add_labels(
                np.zeros(self.geometry.shape, dtype=np.uint8),
                opacity=0.6,
                colormap=DirectLabelColormap(color_dict={None: PREVIEW_COLOR, 0: "transparent"}),
                **self._layer_kwargs("SAM preview"),
            )
        if shapes is not None:
            self.shapes_layer = self._adopt(shapes, Shapes, "shapes_layer")
        else:
            self.shapes_layer = self.viewer.add_shapes(
                ndim=nd, edge_color="yellow", face_color="transparent",
                edge_width=max(1.0, min(h, w) / 200), **self._layer_kwargs("SAM boxes"),
            )
        if points is not None:
            self.points_layer = self._adopt(points, Points, "points_layer")
            if "positive" not in self.points_layer.features:
                self.points_layer.features = {"positive": positive_feature(self.points_layer)}
                self.points_layer.feature_defaults = {"positive": True}
        else:
            self.points_layer = self.viewer.add_points(
                ndim=nd,
                features={"positive": np.zeros(0, dtype=bool)},
                feature_defaults={"positive": True},
                face_color="positive",
                face_color_cycle={True: POSITIVE_COLOR, False: NEGATIVE_COLOR},
                size=max(3.0, min(h, w) / 40),
                **self._layer_kwargs("SAM points"),
            )
        self.points_layer.mode = "add"
        self.viewer.layers.selection.active = self.points_layer

    def _connections(self) -> list[tuple[Any, Callable]]:
        return [
            (self.viewer.dims.events.current_step, self._on_step),
            (self.viewer.layers.events.removed, self._on_layer_removed),
            (self.image_layer.events.data, self._on_image_data),
            (self.points_layer.events.data, self._on_prompts_changed),
            (self.shapes_layer.events.data, self._on_prompts_changed),
        ]

    def _connect(self) -> None:
        for emitter, slot in self._connections():
            emitter.connect(slot)

    def close(self, remove_layers: bool = False) -> None:
        """Stop workers, disconnect from the viewer; results still in flight are dropped.

        The labels layer is never removed. ``remove_layers=True`` removes the
        points, shapes and preview layers.
        """
        if self._closed:
            return
        self.cancel(notify=False)
        self.embedder.close()
        self._closed = True
        for emitter, slot in self._connections():
            emitter.disconnect(slot)
        if remove_layers:
            for layer in (self.points_layer, self.shapes_layer, self.preview_layer):
                if layer in self.viewer.layers:
                    self.viewer.layers.remove(layer)

    @property
    def closed(self) -> bool:
        """True after :meth:`close` (or when the image layer was removed)."""
        return self._closed

    # ============================================================ messages
    def _notify(self, level: str, message: str) -> None:
        from napari.utils.notifications import show_error, show_info, show_warning

        self.last_message = message
        {"info": logger.info, "warning": logger.warning, "error": logger.error}[level](message)
        {"info": show_info, "warning": show_warning, "error": show_error}[level](message)
        self.events.message(level=level, message=message)

    def _store_message(self, level: str, message: str) -> None:
        """A message of the embedding store: shown now on the main thread, else queued."""
        if threading.current_thread() is threading.main_thread():
            if not self._closed:
                self._notify(level, message)
        else:
            self._pending_messages.append((level, message))

    def _flush_messages(self) -> None:
        """Show the messages that worker threads queued (main thread)."""
        while self._pending_messages:
            level, message = self._pending_messages.popleft()
            if not self._closed:
                self._notify(level, message)

    def _status(self, message: str) -> None:
        self.last_message = message
        self.viewer.status = message
        self.events.message(level="status", message=message)

    # ========================================================= model, slices
    @property
    def model(self) -> str:
        """Registry name or checkpoint path of the model loaded on demand."""
        return self.embedder.model

    @property
    def predictor(self) -> Any:
        """The predictor, or None when it is not loaded yet."""
        return self.embedder.predictor

    def set_model(self, model: str | None = None, **kwargs: Any) -> None:
        """Use another model or predictor (``device``, ``precision``, ``predictor``).

        Loaded on demand; cached embeddings of the previous model are dropped.
        Labels are untouched.
        """
        self.embedder.set_model(model, **kwargs)

    def load_predictor(self) -> Any:
        """The predictor, loading the model now if needed (blocking)."""
        return self.embedder.load_predictor()

    @property
    def embedding_store(self) -> Any:
        """The :class:`~napari_sam.store.EmbeddingStore` serving the current model and
        contrast limits, or None (memory only, or no slice embedded yet)."""
        return self.embedder.stored(self.contrast_limits)

    @property
    def contrast_limits(self) -> tuple[float, float]:
        """The image layer's contrast limits, used to normalize every slice."""
        low, high = self.image_layer.contrast_limits
        return float(low), float(high)

    def current_slice(self) -> Index | None:
        """Index of the slice the viewer shows (one int per leading axis), or None."""
        w2d = layer_affine(self.image_layer, "world_to_data")
        return world_slice_index(self.geometry, w2d, self.viewer.dims.point)

    def _resolve_slice(self, slice_index: Any) -> Index | None:
        if slice_index is not None:
            return self.geometry.check_slice_index(slice_index)
        idx = self.current_slice()
        if idx is None:
            self._notify("warning", "the viewer shows a position outside the image; "
                         "move the slider onto the image")
        return idx

    def read_slice(self, slice_index: Sequence[int]) -> np.ndarray:
        """Read one slice, ``(Y, X)`` or ``(Y, X, 3)`` (alpha dropped), as numpy."""
        return self.embedder.read_slice(tuple(slice_index))

    def embedding(self, slice_index: Sequence[int] | None = None) -> Any:
        """The embedding of a slice (cached; computed here, blocking, if missing)."""
        idx = self._resolve_slice(slice_index)
        return None if idx is None else self.embedder.embedding(idx, self.contrast_limits)

    def is_ready(self, slice_index: Sequence[int] | None = None) -> bool:
        """True when the slice's embedding is cached (a prompt then decodes at once)."""
        idx = self.current_slice() if slice_index is None else tuple(slice_index)
        return idx is not None and self.embedder.is_cached(idx, self.contrast_limits)

    # ============================================================= prompts
    @property
    def positive(self) -> bool:
        """Whether new points are positive (the ``positive`` feature default)."""
        return bool(self.points_layer.feature_defaults["positive"].iloc[0])

    @positive.setter
    def positive(self, value: bool) -> None:
        self.points_layer.feature_defaults = {"positive": bool(value)}

    def toggle_positive(self) -> bool:
        """Flip positive/negative for the points added next; returns the new mode.

        Existing points keep their value (edit ``points_layer.features`` to change them).
        """
        self.positive = value = not self.positive
        self._notify("info", f"new points are {'positive' if value else 'negative'}")
        return value

    def add_point(
        self, position: Sequence[float], positive: bool = True, *, world: bool = False
    ) -> None:
        """Add a point prompt at image pixel coordinates (``world=True``: world coordinates)."""
        pos = np.asarray(position, dtype=np.float64)
        if pos.shape != (self.geometry.ndim,):
            raise ValueError(f"position must have {self.geometry.ndim} coordinates "
                             f"(one per image axis), got shape {pos.shape}")
        if world:
            pos = np.asarray(self.points_layer.world_to_data(pos), dtype=np.float64)
        else:
            pos = self._image_to_layer(self.points_layer, pos)
        add_points(self.points_layer, pos[None], [bool(positive)])

    def add_box(
        self, slice_index: Sequence[int], box: Sequence[float], shape_type: str = "rectangle"
    ) -> None:
        """Add a box prompt ``(row_min, col_min, row_max, col_max)`` on a slice (image pixels).

        ``shape_type="ellipse"`` adds the ellipse inscribed in the box (a mask prompt).
        """
        idx = self.geometry.check_slice_index(slice_index)
        r0, c0, r1, c1 = (float(v) for v in box)
        corners = np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]])
        verts = np.column_stack([np.tile(np.asarray(idx, float), (4, 1)), corners])
        self.shapes_layer.add(self._image_to_layer(self.shapes_layer, verts),
                              shape_type=shape_type)

    def _image_to_layer(self, layer: Any, coords: np.ndarray) -> np.ndarray:
        matrix = layer_affine(layer, "world_to_data") @ layer_affine(
            self.image_layer, "data_to_world")
        return apply_affine(matrix, coords)

    def _to_image(self, layer: Any) -> np.ndarray:
        return layer_affine(self.image_layer, "world_to_data") @ layer_affine(
            layer, "data_to_world")

    def prompts(
        self, slice_index: Sequence[int] | None = None, batch: bool = False
    ) -> SlicePrompts:
        """The objects the prompts of a slice (default: the current one) describe."""
        idx = self.current_slice() if slice_index is None else slice_index
        return self._collect(self.geometry.check_slice_index(idx), batch)

    def _collect(self, idx: Index, batch: bool) -> SlicePrompts:
        pts, shp = self.points_layer, self.shapes_layer
        return collect_slice_prompts(
            idx, self.geometry.slice_shape, n_lead=self.geometry.n_lead,
            points=pts.data, positive=positive_feature(pts), points_to_image=self._to_image(pts),
            shapes=list(shp.data), shape_types=list(shp.shape_type),
            shapes_to_image=self._to_image(shp), batch=batch,
        )

    # ============================================================= segment
    def segment(
        self, slice: Sequence[int] | None = None, batch: bool = False, *, blocking: bool = True
    ) -> list[np.ndarray] | None:
        """Segment the prompted object(s) of a slice and show them in :attr:`preview_layer`.

        Parameters
        ----------
        slice : tuple of int, optional
            Index along the leading axes (``(z,)``, ``(t, z)``, ``()`` for 2D);
            default: the slice the viewer shows.
        batch : bool
            Every positive point outside the shapes is its own object (several
            rectangles always give several objects).
        blocking : bool
            True: compute here and return the masks. False (GUI): decode at once
            when the slice's embedding is cached, else embed in a worker and
            show the preview when it is ready (returns None then).

        Returns
        -------
        list of ``(Y, X)`` bool masks (one per object; ``[]`` when there was
        nothing to segment, with a notification), or None while a worker runs.

        Raises
        ------
        ValueError
            An invalid ``slice``. With ``blocking=True`` also errors of model
            loading or embedding (e.g. ``CheckpointError``); asynchronous calls
            report those as notifications.
        """
        idx = self._resolve_slice(slice)
        if idx is None or self._closed:
            return []
        prompts = self._collect(idx, batch)
        if not self._check_prompts(prompts):
            return []
        cl = self.contrast_limits
        if blocking:
            return self._decode_and_show(idx, prompts, self.embedder.embedding(idx, cl))
        emb = self.cache.get(self.embedder.key(idx, cl))
        if emb is not None:
            return self._decode_and_show(idx, prompts, emb)
        key = self.embedder.key(idx, cl)
        self.embedder.request(idx, cl, on_ready=partial(self._segment_ready, idx, batch, key))
        self._notify("info", f"embedding slice {idx}; the preview appears when it is ready")
        return None

    def _check_prompts(self, prompts: SlicePrompts, quiet: bool = False) -> bool:
        if not quiet:
            for message in prompts.messages:
                self._notify("warning", message)
            if not prompts.objects and not prompts.messages:
                self._notify("warning", f"no prompts on slice {prompts.slice_index}: add a "
                             f"positive point or a box in {self.points_layer.name!r} / "
                             f"{self.shapes_layer.name!r}")
        return bool(prompts.objects)

    def _segment_ready(self, idx: Index, batch: bool, key: tuple) -> None:
        if self._closed:
            return
        emb = self.cache.peek(key)
        prompts = self._collect(idx, batch)  # the prompts as they are now
        if emb is not None and self._check_prompts(prompts, quiet=True):
            self._decode_and_show(idx, prompts, emb)

    def _decode_and_show(
        self, idx: Index, prompts: SlicePrompts, emb: Any, hover: bool = False
    ) -> list[np.ndarray]:
        single = len(prompts.objects) == 1
        try:
            predictions = decode_objects(
                self.load_predictor(), emb, prompts.objects, multimask=single)
        except (ValueError, TypeError) as err:
            self._notify("error", f"segmentation failed: {err}")
            return []
        self._set_preview(
            Preview(idx, tuple(predictions), hover=hover, prompts=tuple(prompts.objects))
        )
        preview = self.preview
        if not hover:
            scores = ", ".join(f"{s:.2f}" for s in preview.scores)
            extra = (f" (mask {self._candidate_rank()}/{preview.n_candidates}, Shift+N: next)"
                     if preview.n_candidates > 1 else "")
            self._status(f"slice {idx}: {preview.n_objects} object(s), score {scores}{extra}")
            self.events.segmented(slice_index=idx, masks=preview.masks)
        return preview.masks

    def _candidate_rank(self) -> int:
        pred = self.preview.predictions[0]
        order = list(np.argsort(-np.asarray(pred.scores, dtype=np.float64), kind="stable"))
        return order.index(self.preview.choices[0]) + 1

    def _set_preview(self, preview: Preview | None) -> None:
        layer = self.preview_layer
        if self._shown_slice is not None:
            layer.data[self._shown_slice] = 0
            self._shown_slice = None
        self.preview = preview
        if preview is not None:
            image = preview.label_image(self.geometry.slice_shape)
            if image.dtype.itemsize > layer.data.dtype.itemsize:
                layer.data = layer.data.astype(image.dtype)
            layer.data[preview.slice_index] = image
            self._shown_slice = preview.slice_index
        layer.refresh()

    def next_mask(self) -> np.ndarray | None:
        """Show the next candidate mask of the last single-object segmentation (cycles).

        Candidates come in decreasing score order; returns the shown ``(Y, X)``
        mask, or None (with a notification) without a single-object preview.
        """
        if self.preview is None or self.preview.n_candidates < 2:
            self._notify("info", "next mask: segment a single object first (one set of prompts)")
            return None
        self._set_preview(self.preview.next_candidate())
        self._status(f"mask {self._candidate_rank()}/{self.preview.n_candidates}, "
                     f"score {self.preview.scores[0]:.3f}")
        return self.preview.masks[0]

    # ============================================================== commit
    def commit(
        self,
        label_id: int | Sequence[int] | None = None,
        overwrite: bool = False,
        *,
        clear_prompts: bool = True,
    ) -> list[int]:
        """Write the preview into :attr:`labels_layer`, as one undo step.

        Parameters
        ----------
        label_id : int, sequence of int, or None
            Id(s) of the new object(s); default: max existing id + 1, + 2, ...
            A single int is only accepted for a single-object preview.
        overwrite : bool
            False: only background (0) pixels are written, existing labels are
            kept. True: the objects' pixels get the new ids whatever they held.
            Pixels outside the objects never change.
        clear_prompts : bool
            Remove the prompts of the committed slice afterwards.

        Returns
        -------
        list of int
            The ids written (objects whose pixels were all taken are left out).
            ``labels_layer.undo()`` removes them again.

        Raises
        ------
        ValueError
            ``label_id`` with the wrong number of ids, or ids < 1.
        """
        if self.preview is None:
            self._notify("warning", "nothing to commit: segment first")
            return []
        if self._propagation is not None:
            self._notify("warning", "a propagation is running; commit when it is done")
            return []
        layer = self.labels_layer
        if layer not in self.viewer.layers:  # removed by the user: bring it back, keep its labels
            self.viewer.layers.append(layer)
        masks = self.preview.masks
        ids = resolve_label_ids(label_id, len(masks), layer.data)
        idx = self.preview.slice_index
        try:
            result = write_masks(layer, masks, idx, ids, overwrite=overwrite)
        except (ValueError, TypeError) as err:
            self._notify("error", f"commit failed, labels unchanged: {err}")
            return []
        if result.upcast is not None:
            old, new = result.upcast
            self._notify("info", f"labels layer {layer.name!r} converted {old} -> {new} "
                         f"to hold id {max(ids)}")
        if result.skipped:
            self._notify("warning", f"object(s) {result.skipped} not written: their pixels "
                         "already hold other labels (commit with overwrite=True to replace)")
        if result.written:
            layer.selected_label = result.written[-1]
            self._last_commit = (idx, result.written)
        self._set_preview(None)
        if clear_prompts:
            self._remove_prompts(idx)
        self._status(f"committed label(s) {result.written} on slice {idx} "
                     "(undo: Ctrl+Z on the labels layer)")
        self.events.committed(slice_index=idx, label_ids=result.written)
        return result.written

    def clear(self, slice: Sequence[int] | None = None) -> None:
        """Remove the prompts of the current (or given) slice and the preview."""
        idx = self._resolve_slice(slice)
        if idx is not None:
            self._remove_prompts(idx)
        self._set_preview(None)

    def _remove_prompts(self, idx: Index) -> None:
        prompts = self._collect(idx, False)
        remove_rows(self.points_layer, prompts.point_rows)
        remove_rows(self.shapes_layer, prompts.shape_rows)

    # =============================================================== hover
    def hover(self, world_position: Sequence[float]) -> list[np.ndarray] | None:
        """Preview the single-point mask under a world position (no prompts needed).

        Only when the slice has no prompts of its own and its embedding is
        ready (decoder only); otherwise nothing happens (the embedding is
        requested in the background when :attr:`background` is on).
        """
        pos = np.asarray(world_position, dtype=np.float64)
        d = self.geometry.ndim
        if self._closed or pos.shape[0] < d:
            return None
        w2d = layer_affine(self.image_layer, "world_to_data")
        idx = world_slice_index(self.geometry, w2d, pos)
        h, w = self.geometry.slice_shape
        r, c = apply_affine(w2d, pos[-d:])[-2:]
        if idx is None or not (-0.5 <= r < h - 0.5 and -0.5 <= c < w - 0.5):
            return None
        prompts = self._collect(idx, False)
        if prompts.n_points or prompts.n_shapes:
            return None
        cl = self.contrast_limits
        emb = self.cache.get(self.embedder.key(idx, cl))
        if emb is None:
            if self.background:
                self.embedder.request(idx, cl)
            return None
        rc = np.clip(nearest_index([r, c]), 0, [h - 1, w - 1]).astype(float)
        obj = ObjectPrompt(rc[None], np.ones(1, dtype=np.int64))
        return self._decode_and_show(idx, SlicePrompts(idx, (obj,)), emb, hover=True)

    # ============================================================ workers
    def _start_worker(
        self,
        steps: Callable[..., Iterator[Any]],
        *args: Any,
        desc: str,
        total: int,
        on_result: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_yield: Callable[[Any], None] | None = None,
        on_finished: Callable[[], None] | None = None,
    ) -> Any:
        """Run generator ``steps(*args)`` in a napari worker with a progress bar.

        Callbacks run on the main thread; exceptions (also superqt's swallowed
        RuntimeErrors) reach ``on_error``.
        """
        from napari.qt.threading import create_worker

        worker = create_worker(caught, steps, *args, _progress={"total": total, "desc": desc},
                               _ignore_errors=True)
        error = on_error or partial(self._on_worker_error, desc)
        worker.returned.connect(partial(unless_failed, on_result or (lambda r: None), error))
        worker.errored.connect(error)
        if on_yield is not None:
            worker.yielded.connect(on_yield)
        if on_finished is not None:
            worker.finished.connect(on_finished)
        worker.finished.connect(self._emit_busy)
        worker.start()
        self.events.busy(busy=True)
        return worker

    @property
    def busy(self) -> bool:
        """True while an embedding, propagation or everything worker runs."""
        return (self.embedder.busy or self._propagation is not None
                or self._everything is not None)

    @property
    def worker(self) -> Any:
        """The running embedding worker (or None); e.g. to wait for ``worker.finished``."""
        return self.embedder.handle

    @property
    def propagation_worker(self) -> Any:
        """The running propagation worker, or None."""
        return self._propagation

    def _emit_busy(self) -> None:
        self._flush_messages()
        if not self._closed:
            self.events.busy(busy=self.busy)

    def _on_embedded(self, idx: Index) -> None:
        self._flush_messages()
        if not self._closed:
            self.events.embedded(slice_index=idx)

    def _on_worker_error(self, what: str, err: BaseException) -> None:
        self._flush_messages()
        if self._closed:
            return
        if type(err).__name__ == "Cancelled":
            self._notify("info", f"{what} cancelled")
        else:
            self._notify("error", f"{what} failed: {type(err).__name__}: {err}")

    def _prefetch(self) -> None:
        if self.background and self.prefetch and not self._closed:
            idx = self.current_slice()
            if idx is not None:
                self.embedder.prefetch_around(idx, self.contrast_limits)

    def embed_in_background(self) -> None:
        """Start embedding the slice on screen in a worker (then its neighbours)."""
        idx = None if self._closed else self.current_slice()
        if idx is not None:
            self.embedder.scheduler.drop_prefetches()  # the viewed slice comes first
            self.embedder.request(idx, self.contrast_limits)

    def cancel(self, notify: bool = True) -> None:
        """Cancel the running embedding, propagation and everything workers and the queue.

        An embedding already running finishes in its thread (a forward pass
        cannot be interrupted) but its result is not shown; a propagation
        stops after the current slice, keeping (as one undo step) what it wrote.
        """
        had = self.embedder.cancel()
        if self._propagation is not None:
            had = True
            self._propagation.quit()
        if self._everything is not None:
            had = True
            worker, event = self._everything
            event.set()
            worker.quit()
        if notify and had:
            self._notify("info", "cancelled")

    # ============================================================= events
    def _on_step(self, event: Any = None) -> None:
        if self.background and not self.embedder.scheduler.failed:
            self.embed_in_background()

    def _on_prompts_changed(self, event: Any = None) -> None:
        action = str(getattr(event, "action", "added"))
        if self._closed or not self.auto_segment or action.endswith("ing"):
            return  # "adding", "removing", "changing": wait for the end of the edit
        idx = self.current_slice()
        if idx is None:
            return
        if self._collect(idx, False).objects:
            self.segment(idx, blocking=False)
        elif self.preview is not None and self.preview.slice_index == idx:
            self._set_preview(None)

    def _on_layer_removed(self, event: Any) -> None:
        if event.value is self.image_layer:
            self.close()

    def _on_image_data(self, event: Any = None) -> None:
        uid = self.embedder.layer_key
        self.cache.discard_where(lambda key: key[0] == uid)

    # ================================================================ I/O
    def save_prompts(self, path: Any) -> Any:
        """Save all point and shape prompts to JSON (``napari_sam.io``), in image pixels.

        Returns the written :class:`~napari_sam.io.PromptSet`.
        """
        from napari_sam.io import save_prompts

        points, positive, shapes, types = prompts_in_image_coords(
            self.points_layer, self.shapes_layer,
            self._to_image(self.points_layer), self._to_image(self.shapes_layer),
        )
        return save_prompts(path, points, positive, shapes, types, self.geometry.ndim,
                            coordinates="data", metadata={"image": self.image_layer.name})

    def load_prompts(self, path: Any) -> Any:
        """Add the prompts of a JSON file (pixel or world coordinates) to the prompt layers.

        Raises
        ------
        ValueError
            The file's coordinates have another number of axes than the image.
        """
        from napari_sam.io import load_prompts

        prompts = load_prompts(path)
        if prompts.ndim != self.geometry.ndim:
            raise ValueError(f"prompt file has {prompts.ndim}-D coordinates but image "
                             f"{self.image_layer.name!r} has {self.geometry.ndim} axes")
        w2d = layer_affine(self.image_layer, "world_to_data")

        def to_layer(layer: Any, coords: np.ndarray) -> np.ndarray:
            image = apply_affine(w2d, coords) if prompts.coordinates == "world" else coords
            return self._image_to_layer(layer, image)

        if len(prompts.points):
            add_points(self.points_layer, to_layer(self.points_layer, prompts.points),
                       prompts.point_positive)
        for verts, kind in zip(prompts.shapes, prompts.shape_types):
            self.shapes_layer.add(to_layer(self.shapes_layer, verts), shape_type=kind)
        return prompts
