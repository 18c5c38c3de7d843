"""Interactive SAM annotation of 2D slices of an image layer in a napari viewer.

:class:`Annotator` is the scripted API; the dock widget in :mod:`napari_sam._qt`
is a thin face on it that observes :attr:`Annotator.state`. The parts live in
:mod:`napari_sam.annotation` (``docs/architecture.md`` walks through them).
Prompt layers get the image's scale and translate, so their data is in image
pixels. With ``blocking=True`` (scripts) jobs run in the calling thread and
return results; the widget passes ``blocking=False`` (napari workers with
progress and cancel; layers change only on the main thread).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam.annotation.adapting import Adapter
from napari_sam.annotation.embedder import SliceEmbedder
from napari_sam.annotation.extended import BeyondClicks
from napari_sam.annotation.intensity import IntensityRange
from napari_sam.annotation.jobs import JobRunner
from napari_sam.annotation.layer_set import (
    NEGATIVE_COLOR,
    POSITIVE_COLOR,
    PREVIEW_COLOR,
    AnnotatorLayers,
)
from napari_sam.annotation.napari_worker import launch, notify, pump_events
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

#: Errors of the core that the widget and key bindings show as notifications.
USER_ERRORS = (ValueError, TypeError, KeyError, OSError, RuntimeError, ImportError)

Index = tuple[int, ...]


class Annotator(BeyondClicks):
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
    points_layer, shapes_layer, preview_layer, everything_layer : existing layers
        (or names) to adopt instead of creating new ones (e.g. those of an earlier
        annotator: :func:`~napari_sam.annotation.layer_set.existing_layers`).
    normalization : ``"robust"`` (default): one intensity range for the whole
        image (0.5-99.8 percentiles of a bounded sample), measured once and used
        for every slice, whatever the display's contrast limits; ``"display"``:
        the layer's contrast limits (changing them re-embeds).
    store : ``"auto"`` (default), a path, an :class:`~napari_sam.store.EmbeddingStore`,
        or None / False: where slice embeddings are kept on disk. ``"auto"``: for
        an image opened from a file, a store in ``cache_dir() / "embeddings"``
        (other images: memory only); a path: opened if it exists (model and image
        must match), else created; None/False: memory only. A store that cannot
        serve gives one notification (:mod:`napari_sam.annotation.store_link`,
        docs/napari.md "Embeddings on disk").

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
        everything_layer: Any = None,
        store: Any = AUTO,
        normalization: str = "robust",
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
            shapes=shapes_layer, preview=preview_layer, everything=everything_layer,
            warn=partial(self._say, "warning"),
        )
        self.image_layer, self.geometry = self.layers.image, self.layers.geometry
        self.labels_layer, self.preview_layer = self.layers.labels, self.layers.preview
        self.points_layer, self.shapes_layer = self.layers.points, self.layers.shapes
        self.owns_labels = self.layers.owns_labels
        self.writer = LayerWriter(self.layers.labels, pause=pump_events)  # GUI drawn between slices
        self.prompt_layers = PromptLayers(self.layers, say=partial(self._say, "warning"))
        self.cache = cache if cache is not None else EmbeddingCache(cache_size)
        coarsest = self.image_layer.data[-1] if self.image_layer.multiscale else None
        self.intensity = IntensityRange(
            self.layers.source if coarsest is None else coarsest, self.image_layer.unique_id,
            lambda: self.layers.contrast_limits, normalization, rgb=self.geometry.rgb)
        link = StoreLink(store, self.layers.source, self.geometry,
                         source_path=getattr(getattr(self.image_layer, "source", None), "path",
                                             None),
                         on_message=self.runner.post)
        # the embedder reads the array, never the layer: workers touch no napari object
        self.embedder = SliceEmbedder(
            self.layers.source, self.geometry, self.image_layer.unique_id, self.cache,
            self.runner, predictor=predictor, model=model, device=device,
            precision=precision, store=link if link.enabled else None,
            on_embedded=self._on_embedded, intensity=self.intensity, describe=self.layers.where,
        )
        self.embedder.scheduler.on_idle = self._prefetch
        self.segmenter = Segmenter(self.state, self.runner, self.embedder, self.layers,
                                   self.prompt_layers, self.writer, self.events)
        self.stack = StackActions(self.state, self.runner, self.embedder, self.layers,
                                  self.writer, self.events)
        self.adapter = Adapter(self.state, self.runner, self.embedder, self.layers,
                               on_switched=self.embed_in_background)
        self.state.model = self.embedder.model
        self.events.committed.connect(lambda e: self.adapter.committed(e.label_ids))
        self.events.propagated.connect(lambda e: self.adapter.committed(e.written))
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
            *self.prompt_layers.connections(),  # NaN or far-out prompts refused (prompt_layers)
            *self._extended_connections(),  # scribbles, refine, similar, review (extended.py)
        ]

    def close(self, remove_layers: bool = False) -> None:
        """Stop workers, disconnect from the viewer; results still in flight are dropped
        (a propagation still writes what it computed, one undo step). The labels
        layer stays; ``remove_layers=True`` removes the helper layers."""
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
        notify(self.viewer, message)
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
        self.adapter.forget_base()
        self.embedder.set_model(model, **kwargs)
        self.state.model = self.embedder.model

    def load_predictor(self) -> Any:
        """The predictor, loading the model now if needed (blocking)."""
        return self.embedder.load_predictor()

    @property
    def embedding_store(self) -> Any:
        """The :class:`~napari_sam.store.EmbeddingStore` serving the current model and
        contrast limits, or None (memory only, or no slice embedded yet)."""
        return self.embedder.stored(self._limits())

    @property
    def contrast_limits(self) -> tuple[float, float]:
        """The ``(low, high)`` that normalizes every slice now: the image's robust range
        (measured here if needed) or, with ``normalization="display"``, the layer's
        contrast limits."""
        return self.embedder.resolve(self._limits())

    def _limits(self) -> Any:
        return self.embedder.limits()  # the token of the cache keys

    @property
    def normalization(self) -> str:
        """``"robust"`` (one range for the whole image) or ``"display"`` (the layer's
        contrast limits); setting it re-embeds the slice on screen in the background."""
        return self.intensity.mode

    @normalization.setter
    def normalization(self, mode: str) -> None:
        from napari_sam.annotation.intensity import check_normalization

        self.intensity.mode = check_normalization(mode)
        self.state.preview = None
        if self.background:
            self.embed_in_background()

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
        cl = self._limits()
        emb = self.cache.get(self.embedder.key(idx, cl))
        return emb if emb is not None else self.runner.run(self.embedder.job(idx, cl),
                                                           blocking=True)

    def is_ready(self, slice_index: Sequence[int] | None = None) -> bool:
        """True when the slice's embedding is cached (a prompt then decodes at once)."""
        idx = self.current_slice() if slice_index is None else tuple(slice_index)
        return idx is not None and self.embedder.is_cached(idx, self._limits())

    # ============================================================= prompts
    @property
    def positive(self) -> bool:
        """Whether new points are positive (the ``positive`` feature default)."""
        return bool(self.points_layer.feature_defaults["positive"].iloc[0])

    @positive.setter
    def positive(self, value: bool) -> None:
        self.points_layer.feature_defaults = {"positive": bool(value)}

    def toggle_positive(self) -> bool:
        """Flip positive/negative for the points added next (not existing ones)."""
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

        ``slice``: index along the leading axes (``(z,)``, ``(t, z)``, ``()`` for
        2D), default the slice on screen. ``batch``: every positive point outside
        the shapes is its own object. ``blocking=False`` (GUI): decode at once
        when the embedding is cached, else embed in a worker (returns None).
        Returns one ``(Y, X)`` bool mask per object (``[]`` with a message when
        there is nothing to segment; an empty mask is reported as "no object
        found" and cannot be committed). Raises ``ValueError`` for a bad
        ``slice`` and, blocking, errors of model loading (``CheckpointError``).
        """
        idx = self._resolve_slice(slice)
        if idx is None or self._closed:
            return []
        return self.segmenter.segment(self.prompt_layers.collect(idx, batch), blocking=blocking)

    def next_mask(self) -> np.ndarray | None:
        """Show the next candidate mask of a single-object preview (by decreasing score,
        cycling, empty ones skipped); returns it, or None (with a message)."""
        return self.segmenter.next_mask()

    def commit(
        self,
        label_id: int | Sequence[int] | None = None,
        overwrite: bool = False,
        *,
        clear_prompts: bool = True,
    ) -> list[int]:
        """Write the preview into :attr:`labels_layer`, as one undo step.

        ``label_id``: id(s) of the new object(s), default max existing id + 1,
        + 2... (a single int only for one object). ``overwrite=False`` writes
        background pixels only; pixels outside the objects never change.
        ``clear_prompts`` removes the slice's prompts afterwards. Empty masks are
        never committed (the message says why). Returns the ids written
        (``labels_layer.undo()`` removes them); ``ValueError`` for bad ids.
        """
        if self.refiner.owns(self.state.preview):  # a label being refined: replaced in place
            return self.refiner.commit(clear_prompts)
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
        ready (decoder only, no zoom into small objects); otherwise nothing
        happens (the embedding is requested in the background when
        :attr:`background` is on).
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
                self.embedder.prefetch_around(idx, self._limits())

    def embed_in_background(self) -> None:
        """Start embedding the slice on screen in a worker (then its neighbours)."""
        idx = None if self._closed else self.current_slice()
        if idx is not None:
            self.embedder.scheduler.drop_prefetches()  # the viewed slice comes first
            self.embedder.request(idx, self._limits())

    def cancel(self, notify: bool = True) -> None:
        """Cancel the running jobs (embedding, propagation, everything, adapt) and the queue.

        A running forward pass finishes but is not shown; a propagation keeps
        (one undo step) what it computed; adaptation keeps the current model.
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
        self.intensity.forget()
        self.cache.discard_where(lambda key: isinstance(key, tuple) and key[0] == uid)

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
        """Propagate committed object(s) of the current slice through z, or (``axis="t"``)
        track them through time at this z (ids kept; :mod:`~.annotation.tracking`).

        ``label_id``: default the ids of the last commit on this slice, else every
        label on it. ``direction``: ``"both"``, ``"up"`` (higher index) or
        ``"down"``; ``z_range=(start, stop)`` (Python slice rules) along the axis;
        ``options`` go to :func:`napari_sam.propagation.propagate_iter`
        (``prompt_mode``, ``score_threshold``...; ``axis``: ``"t"``, ``"z"``, a
        leading axis name or index, default :attr:`propagation_axis`). Slices
        show in the preview layer as they arrive and are written at the end
        (also when cancelled) as ONE undo step, background only. Blocking:
        ``{id: [index along the axis, ...]}``; else the worker; None (with a
        message) when there is nothing to do; ``ValueError`` for a bad axis.
        """
        if self.tracker.route(options):  # along time or another axis than z
            return self._track(label_id, direction, z_range, options, blocking)
        if self.geometry.n_lead == 0:
            self._say("warning", "propagation needs a stack: this image is 2D")
            return None
        idx = self._resolve_slice(None)
        if idx is None:
            return None
        return self.stack.propagate(idx, self._limits(), label_id, direction, z_range,
                                    options, blocking=blocking)

    def segment_everything(
        self,
        slice: Sequence[int] | None = None,
        *,
        blocking: bool = True,
        stack: bool = False,
        **params: Any,
    ) -> np.ndarray | None:
        """Segment every object of a slice into the review layer :attr:`everything_layer`
        (below the preview; the active layer stays), for :meth:`commit_everything`.

        ``params`` go to :func:`napari_sam.everything.segment_everything`.
        ``stack=True``: every slice of the stack holding ``slice`` with
        :func:`~napari_sam.everything.segment_everything_stack` (objects linked
        through z; ``min_z_extent``, ``link_iou``... in ``params``), committed as
        3D objects. Returns the ``(Y, X)`` / ``(Z, Y, X)`` labels (blocking), else None.
        """
        idx = self._resolve_slice(slice)
        if idx is None or self._closed:
            return None
        return self.stack.segment_everything(idx, self._limits(), params, stack=stack,
                                             blocking=blocking)

    @property
    def everything_layer(self) -> Any:
        """The Labels layer holding "everything" results (None before the first)."""
        return self.layers.everything

    def commit_everything(self, overwrite: bool = False, *, blocking: bool = True) -> Any:
        """Merge the everything result into :attr:`labels_layer` (one undo step), clearing it:
        new ids, existing labels kept unless ``overwrite`` (always for a whole-stack result,
        which ``blocking=False`` prepares in a worker, returned). Returns the ids written."""
        return self.stack.commit_everything(overwrite, blocking=blocking)

    def adapt(self, objects: str = "all", *, blocking: bool = True, save: bool = True,
              **options: Any) -> Any:
        """Learn from labels: fine-tune the base model on the objects of :attr:`labels_layer`.

        ``objects``: ``"all"`` or ``"session"`` (only ids committed by this
        annotator). Always starts from the base weights (never from an adapted
        model). When the adapted model beats the base on the held-back objects
        it is saved (``save``) under ``cache_dir()/adapted/<image>__<base>.pt``
        and used for this image from now on (embeddings recomputed; labels
        never touched); else the model stays. ``options`` go to
        :func:`napari_sam.adapt` (``time_limit_s``, ``steps``, ``seed``...).
        Blocking: returns the :class:`~napari_sam.adaptation.AdaptationResult`;
        else the worker (``cancel()`` stops it, keeping the model; nothing saved).
        """
        return self.adapter.adapt(objects, blocking=blocking, save=save, **options)

    # ================================================================ I/O
    def save_prompts(self, path: Any) -> Any:
        """Save all prompts to JSON (``napari_sam.io``, image pixels); returns the PromptSet."""
        return self.prompt_layers.save(path, self.image_layer.name)

    def load_prompts(self, path: Any) -> Any:
        """Add the prompts of a JSON file (pixel or world coordinates) to the prompt layers;
        ``ValueError`` when its coordinates have another number of axes than the image."""
        return self.prompt_layers.load(path, self.image_layer.name)
