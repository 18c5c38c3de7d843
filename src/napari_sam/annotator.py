"""Interactive SAM annotation of 2D slices of an image layer in a napari viewer.

:class:`Annotator` is the scripted API; the dock widget in :mod:`napari_sam._qt`
is a thin face on it that observes :attr:`Annotator.state`. The parts live in
:mod:`napari_sam.annotation` (``docs/architecture.md`` walks through them);
labels are written through :class:`napari_sam.labels.LayerWriter`.

Coordinates: the annotator's Points and Shapes layers get the image layer's
``scale`` and ``translate``, so their ``data`` is in the image's (continuous)
pixel coordinates; prompts of adopted layers with other transforms are mapped
through world coordinates. A prompt belongs to the slice given by its leading
(non-``(Y, X)``) coordinates, rounded to the nearest pixel.

Threads: with ``blocking=True`` (the default, for scripts) :meth:`~Annotator.segment`,
:meth:`~Annotator.propagate` and :meth:`~Annotator.segment_everything` run their
jobs in the calling thread and return results. The widget and key bindings pass
``blocking=False``: the same jobs run in ``napari.qt.threading`` workers with
progress and cancel; layers change only on the main thread, and a result lands
on the slice it was computed for, or is dropped when the annotator was closed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam.annotation.embedder import SliceEmbedder
from napari_sam.annotation.jobs import JobRunner
from napari_sam.annotation.layer_set import (
    NEGATIVE_COLOR,
    POSITIVE_COLOR,
    PREVIEW_COLOR,
    AnnotatorLayers,
)
from napari_sam.annotation.napari_worker import launch
from napari_sam.annotation.preview import Preview
from napari_sam.annotation.prompt_layers import PromptLayers
from napari_sam.annotation.prompts import SlicePrompts
from napari_sam.annotation.segmenting import Segmenter
from napari_sam.annotation.slicing import world_slice_index
from napari_sam.annotation.stack import StackActions
from napari_sam.annotation.state import AnnotatorState, Message
from napari_sam.annotation.store_link import AUTO, StoreLink
from napari_sam.cache import DEFAULT_CACHE_SIZE, EmbeddingCache
from napari_sam.labels import LayerWriter
from napari_sam.model.registry import DEFAULT_MODEL

if TYPE_CHECKING:  # pragma: no cover
    import napari

__all__ = ["NEGATIVE_COLOR", "POSITIVE_COLOR", "PREVIEW_COLOR", "USER_ERRORS", "Annotator"]

logger = logging.getLogger("napari_sam")

#: Errors of the core that the widget and key bindings show as notifications.
USER_ERRORS = (ValueError, TypeError, KeyError, OSError, RuntimeError, ImportError)

Index = tuple[int, ...]


class Annotator:
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
        or None / False: where slice embeddings are kept on disk, so that
        annotating the image again needs no recomputation. ``"auto"``: for an
        image opened from a file (``image_layer.source.path``), a store in
        ``cache_dir() / "embeddings"`` named from the file, the model, the
        contrast limits and the image signature (a cache: recomputed when it no
        longer matches); other images: memory only. A path: opened if it exists
        (its model and image must match; it keeps its contrast limits), else
        created. None/False: memory only. Opened when the first slice is
        embedded; a store that cannot serve gives one notification and the
        annotator works from memory (see :mod:`napari_sam.annotation.store_link`).

    Attributes
    ----------
    state : the :class:`~napari_sam.annotation.state.AnnotatorState` (preview,
        running jobs with progress, last commit, everything result, current
        slice, last message), evented: ``state.events.<field>.connect(...)``.
    points_layer : Points layer of point prompts; the boolean feature
        ``positive`` (default True) says positive/negative, shown by colour.
    shapes_layer : Shapes layer: rectangles are box prompts, polygons and
        ellipses mask prompts.
    preview_layer : Labels layer showing the uncommitted result.
    labels_layer : the output Labels layer.
    owns_labels : True when the annotator created :attr:`labels_layer`.
    layers : the :class:`~napari_sam.annotation.layer_set.AnnotatorLayers`.
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
        from napari.utils.events import EmitterGroup

        self.viewer = viewer
        self.state = AnnotatorState()
        self.events = EmitterGroup(
            source=self, segmented=None, committed=None, propagated=None,
            propagation_step=None, embedded=None, busy=None, message=None,
        )
        self._closed = False
        self.state.events.message.connect(self._on_message)
        self.runner = JobRunner(self.state, launch)
        self.layers = AnnotatorLayers(
            viewer, image_layer, labels=labels_layer, points=points_layer,
            shapes=shapes_layer, preview=preview_layer, warn=partial(self._say, "warning"),
        )
        self.image_layer, self.geometry = self.layers.image, self.layers.geometry
        self.labels_layer, self.preview_layer = self.layers.labels, self.layers.preview
        self.points_layer, self.shapes_layer = self.layers.points, self.layers.shapes
        self.owns_labels = self.layers.owns_labels
        self.writer = LayerWriter(self.layers.labels)
        self.prompt_layers = PromptLayers(self.layers)
        self.cache = cache if cache is not None else EmbeddingCache(cache_size)
        link = StoreLink(store, self.layers.source, self.geometry,
                         source_path=getattr(getattr(self.image_layer, "source", None), "path",
                                             None),
                         on_message=self.runner.post)
        # the embedder reads the array, never the layer: workers touch no napari object
        self.embedder = SliceEmbedder(
            self.layers.source, self.geometry, self.image_layer.unique_id, self.cache,
            self.runner, predictor=predictor, model=model, device=device,
            precision=precision, store=link if link.enabled else None,
            on_embedded=self._on_embedded,
        )
        self.embedder.scheduler.on_idle = self._prefetch
        self.segmenter = Segmenter(self.state, self.runner, self.embedder, self.layers,
                                   self.prompt_layers, self.writer, self.events)
        self.stack = StackActions(self.state, self.runner, self.embedder, self.layers,
                                  self.writer, self.events)
        self.background = background
        self.auto_segment = auto_segment
        self.prefetch = True
        self.state.current_slice = self.current_slice()
        self.state.events.preview.connect(self.segmenter.show_preview)
        self.state.events.jobs.connect(self._on_jobs)
        for emitter, slot in self._connections():
            emitter.connect(slot)

    # ================================================================ state
    @property
    def preview(self) -> Preview | None:
        """The uncommitted preview (``state.preview``), or None."""
        return self.state.preview

    @property
    def last_message(self) -> str:
        """The last notification or status text."""
        return self.state.message.text

    def _connections(self) -> list[tuple[Any, Any]]:
        return [
            (self.viewer.dims.events.current_step, self._on_step),
            (self.viewer.layers.events.removed, self._on_layer_removed),
            (self.image_layer.events.data, self._on_image_data),
            (self.points_layer.events.data, self._on_prompts_changed),
            (self.shapes_layer.events.data, self._on_prompts_changed),
        ]

    def close(self, remove_layers: bool = False) -> None:
        """Stop workers, disconnect from the viewer; results still in flight are dropped.

        The labels layer is never removed (a propagation in flight still writes
        the slices it has computed, as one undo step). ``remove_layers=True``
        removes the points, shapes and preview layers.
        """
        if self._closed:
            return
        self.cancel(notify=False)
        self.embedder.close()
        self.runner.close()
        self._closed = True
        for emitter, slot in self._connections():
            emitter.disconnect(slot)
        self.layers.disconnect()
        if remove_layers:
            self.layers.remove_helpers()

    @property
    def closed(self) -> bool:
        """True after :meth:`close` (or when the image layer was removed)."""
        return self._closed

    # ============================================================ messages
    def _say(self, level: str, text: str) -> None:
        """A message for the user (any thread; shown on the main thread)."""
        self.runner.post(level, text)  # type: ignore[arg-type]

    def _on_message(self, message: Message, old: Any = None) -> None:
        """``state.message`` changed: the status bar, or a notification."""
        if message.level == "status":
            self.viewer.status = message.text
        else:
            from napari.utils.notifications import show_error, show_info, show_warning

            getattr(logger, message.level)(message.text)
            {"info": show_info, "warning": show_warning, "error": show_error}[message.level](
                message.text)
        self.events.message(level=message.level, message=message.text)

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
        return self.layers.contrast_limits

    def current_slice(self) -> Index | None:
        """Index of the slice the viewer shows (one int per leading axis), or None."""
        return world_slice_index(self.geometry, self.layers.world_to_image(),
                                 self.viewer.dims.point)

    def _resolve_slice(self, slice_index: Any) -> Index | None:
        if slice_index is not None:
            return self.geometry.check_slice_index(slice_index)
        idx = self.current_slice()
        if idx is None:
            self._say("warning", "the viewer shows a position outside the image; "
                      "move the slider onto the image")
        return idx

    def read_slice(self, slice_index: Sequence[int]) -> np.ndarray:
        """Read one slice, ``(Y, X)`` or ``(Y, X, 3)`` (alpha dropped), as numpy."""
        return self.embedder.read_slice(tuple(slice_index))

    def embedding(self, slice_index: Sequence[int] | None = None) -> Any:
        """The embedding of a slice (cached; computed here, blocking, if missing)."""
        idx = self._resolve_slice(slice_index)
        if idx is None:
            return None
        cl = self.contrast_limits
        emb = self.cache.get(self.embedder.key(idx, cl))
        return emb if emb is not None else self.runner.run(self.embedder.job(idx, cl),
                                                           blocking=True)

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
        self._say("info", f"new points are {'positive' if value else 'negative'}")
        return value

    def add_point(
        self, position: Sequence[float], positive: bool = True, *, world: bool = False
    ) -> None:
        """Add a point prompt at image pixel coordinates (``world=True``: world coordinates)."""
        self.prompt_layers.add_point(position, positive, world)

    def add_box(
        self, slice_index: Sequence[int], box: Sequence[float], shape_type: str = "rectangle"
    ) -> None:
        """Add a box prompt ``(row_min, col_min, row_max, col_max)`` on a slice (image pixels).

        ``shape_type="ellipse"`` adds the ellipse inscribed in the box (a mask prompt).
        """
        self.prompt_layers.add_box(slice_index, box, shape_type)

    def prompts(
        self, slice_index: Sequence[int] | None = None, batch: bool = False
    ) -> SlicePrompts:
        """The objects the prompts of a slice (default: the current one) describe."""
        idx = self.current_slice() if slice_index is None else slice_index
        return self.prompt_layers.collect(self.geometry.check_slice_index(idx), batch)

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
        return self.segmenter.segment(self.prompt_layers.collect(idx, batch), blocking=blocking)

    def next_mask(self) -> np.ndarray | None:
        """Show the next candidate mask of the last single-object segmentation (cycles).

        Candidates come in decreasing score order; returns the shown ``(Y, X)``
        mask, or None (with a notification) without a single-object preview.
        """
        return self.segmenter.next_mask()

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
        return self.segmenter.commit(label_id, overwrite, clear_prompts)

    def clear(self, slice: Sequence[int] | None = None) -> None:
        """Remove the prompts of the current (or given) slice and the preview."""
        idx = self._resolve_slice(slice)
        if idx is not None:
            self.prompt_layers.remove(idx)
        self.state.preview = None

    def hover(self, world_position: Sequence[float]) -> list[np.ndarray] | None:
        """Preview the single-point mask under a world position (no prompts needed).

        Only when the slice has no prompts of its own and its embedding is
        ready (decoder only); otherwise nothing happens (the embedding is
        requested in the background when :attr:`background` is on).
        """
        return self.segmenter.hover(world_position, self.background)

    # ================================================================ jobs
    @property
    def busy(self) -> bool:
        """True while a job (embedding, propagation, everything...) runs."""
        return self.state.busy

    @property
    def worker(self) -> Any:
        """The running embedding worker (or None); e.g. to wait for ``worker.finished``."""
        return self.embedder.handle

    @property
    def propagation_worker(self) -> Any:
        """The running propagation worker, or None."""
        return self.runner.handle("propagate")

    def _on_jobs(self, jobs: tuple, old: tuple = ()) -> None:
        if bool(jobs) != bool(old) and not self._closed:
            self.events.busy(busy=bool(jobs))

    def _on_embedded(self, idx: Index) -> None:
        if not self._closed:
            self.events.embedded(slice_index=idx)

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
        """Cancel the running embedding, propagation and everything jobs and the queue.

        An embedding already running finishes in its thread (a forward pass
        cannot be interrupted) but its result is not shown; a propagation
        stops after the current slice, keeping (as one undo step) what it
        computed so far; everything mode stops between decoder batches.
        """
        had = self.embedder.cancel()
        had = self.runner.cancel(("propagate", "everything", "adapt")) or had
        self.state.waiting = None
        if notify and had:
            self._say("info", "cancelled")

    # ============================================================= events
    def _on_step(self, event: Any = None) -> None:
        self.state.current_slice = self.current_slice()
        if self.background and not self.embedder.scheduler.failed:
            self.embed_in_background()

    def _on_prompts_changed(self, event: Any = None) -> None:
        action = str(getattr(event, "action", "added"))
        if self._closed or not self.auto_segment or action.endswith("ing"):
            return  # "adding", "removing", "changing": wait for the end of the edit
        idx = self.current_slice()
        if idx is not None:  # prompts collected once per layer event
            self.segmenter.prompts_changed(self.prompt_layers.collect(idx))

    def _on_layer_removed(self, event: Any) -> None:
        if event.value is self.image_layer:
            self.close()

    def _on_image_data(self, event: Any = None) -> None:
        uid = self.embedder.layer_key
        self.cache.discard_where(lambda key: key[0] == uid)

    # ========================================================== stack work
    def propagate(
        self,
        label_id: int | Sequence[int] | None = None,
        direction: str = "both",
        z_range: tuple[int, int] | None = None,
        *,
        blocking: bool = True,
        **options: Any,
    ) -> dict[int, list[int]] | Any:
        """Propagate committed object(s) of the current slice through z.

        Parameters
        ----------
        label_id : int, sequence of int, or None
            Objects to propagate. Default: the ids of the last commit if it was
            on this slice, else every label on this slice.
        direction : ``"both"``, ``"up"`` (towards higher z) or ``"down"``
        z_range : ``(start, stop)``: only slices ``start <= z < stop`` (Python
            slice rules, as :func:`~napari_sam.propagation.propagate_iter`), or None
        blocking : compute here (True) or in a worker (False, GUI)
        **options : passed to :func:`napari_sam.propagation.propagate_iter`
            (e.g. ``prompt_mode``, ``stop_markers``, ``iou_threshold``)

        Returns
        -------
        Blocking: ``{object_id: [z, ...]}`` of the slices computed, in order.
        Asynchronous: the worker. None when there is nothing to do (with a
        notification). z is the last leading axis (axis 0 of a ZYX image; for
        TZYX the current time point only). Slices are shown in the preview
        layer as they arrive and written into the labels when the job ends
        (also when cancelled), without changing other objects' labels: the
        whole propagation is ONE ``labels_layer.undo()`` step.
        """
        if self.geometry.n_lead == 0:
            self._say("warning", "propagation needs a stack: this image is 2D")
            return None
        idx = self._resolve_slice(None)
        if idx is None:
            return None
        return self.stack.propagate(idx, self.contrast_limits, label_id, direction, z_range,
                                    options, blocking=blocking)

    def segment_everything(
        self,
        slice: Sequence[int] | None = None,
        *,
        blocking: bool = True,
        stack: bool = False,
        **params: Any,
    ) -> np.ndarray | None:
        """Segment every object of a slice automatically, into :attr:`everything_layer`.

        The result goes to a separate Labels layer ``"<image> everything"`` for
        review (its slice is replaced); :meth:`commit_everything` merges it into
        :attr:`labels_layer`. ``params`` go to
        :func:`napari_sam.everything.segment_everything` (e.g. ``points_per_side``).
        The slice's cached embedding is reused.

        ``stack=True`` segments every slice of the stack holding ``slice`` (z,
        at the same time point) with
        :func:`napari_sam.everything.segment_everything_stack`, objects linked
        through z (``params`` may also hold its ``min_z_extent``, ``link_iou``,
        ...); the whole stack of the everything layer is replaced, and
        :meth:`commit_everything` then commits 3D objects.

        Returns the ``(Y, X)`` (or ``(Z, Y, X)``) uint32 labels (blocking), else None.
        """
        idx = self._resolve_slice(slice)
        if idx is None or self._closed:
            return None
        return self.stack.segment_everything(idx, self.contrast_limits, params, stack=stack,
                                             blocking=blocking)

    @property
    def everything_layer(self) -> Any:
        """The Labels layer holding "everything" results (None before the first)."""
        return self.layers.everything

    def commit_everything(self, overwrite: bool = False) -> list[int]:
        """Merge the everything result into :attr:`labels_layer` (one undo step).

        Every object gets a new id (max existing + 1, ...); existing labels are
        kept unless ``overwrite``. The everything layer's slice is cleared. A
        whole-stack result (``segment_everything(stack=True)``) commits its 3D
        objects, one id each, always keeping existing labels. Returns the ids
        that got pixels.
        """
        return self.stack.commit_everything(overwrite)

    # ================================================================ I/O
    def save_prompts(self, path: Any) -> Any:
        """Save all point and shape prompts to JSON (``napari_sam.io``), in image pixels.

        Returns the written :class:`~napari_sam.io.PromptSet`.
        """
        return self.prompt_layers.save(path, self.image_layer.name)

    def load_prompts(self, path: Any) -> Any:
        """Add the prompts of a JSON file (pixel or world coordinates) to the prompt layers.

        Raises
        ------
        ValueError
            The file's coordinates have another number of axes than the image.
        """
        return self.prompt_layers.load(path, self.image_layer.name)
