"""Learn from labels: adapt the model to the user's labelled objects, in a job.

Qt- and napari-free (layers duck-typed). :class:`Adapter` starts the
``"adapt"`` job (:func:`napari_sam.adapt` in a worker, progress and cancel),
and on the main thread switches the annotator to the adapted model for this
image when it beat the base model on the held-back objects. Labels are only
read (a copy taken on the main thread), never written.

* The objects: every object of the labels layer, or only the ids committed
  in this session (:attr:`Adapter.session_ids`).
* Always from the base weights: adapting again (after more commits) starts
  from the base model with the chosen objects, never from an adapted model
  (no drift). The base is the model the adapted one was made from
  (:func:`napari_sam.model.registry.base_model_name`).
* Saved under ``cache_dir()/adapted/<image>__<base>.pt`` (with its JSON
  record) in the worker, atomically; a cancelled run saves nothing and keeps
  the current model. A failed save (full or read-only disk) is reported and
  the adapted model is still used from memory.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Generator
from functools import partial
from typing import Any

import numpy as np

from napari_sam.annotation.jobs import Job, Status
from napari_sam.contract import as_predictor

__all__ = ["OBJECT_CHOICES", "AdaptOutcome", "Adapter", "is_adapted"]

Index = tuple[int, ...]
#: Which objects adaptation learns from.
OBJECT_CHOICES = ("all", "session")


def is_adapted(model: str | None) -> bool:
    """True for an adapted model (in memory or saved with its record)."""
    from napari_sam.model.registry import base_model_name

    return isinstance(model, str) and base_model_name(model) != model


class AdaptOutcome:
    """What the adapt job returns: the result, where it was saved, a save problem."""

    def __init__(self, result: Any, base: tuple[str, Any], saved: Any = None,
                 problem: str | None = None) -> None:
        self.result = result
        self.base = base
        self.saved = saved
        self.problem = problem


class Adapter:
    """The "Learn from labels" action of one annotator.

    Parameters
    ----------
    state : the annotator's :class:`~napari_sam.annotation.state.AnnotatorState`
    runner : its :class:`~napari_sam.annotation.jobs.JobRunner`
    embedder : its :class:`~napari_sam.annotation.embedder.SliceEmbedder`
    layers : its :class:`~napari_sam.annotation.layer_set.AnnotatorLayers`
    on_switched : ``on_switched()`` after the annotator switched model (main thread)

    Attributes
    ----------
    session_ids : ids committed (or propagated) by this annotator
    base : ``(model, predictor)`` the adapted model in use was made from, or None
    folder : where adapted models go (None: ``cache_dir()/adapted``)
    """

    def __init__(self, state: Any, runner: Any, embedder: Any, layers: Any,
                 on_switched: Callable[[], None] | None = None) -> None:
        self.state = state
        self.runner = runner
        self.embedder = embedder
        self.layers = layers
        self.on_switched = on_switched or (lambda: None)
        self.session_ids: set[int] = set()
        self.base: tuple[str, Any] | None = None
        self.folder: Any = None

    def _say(self, level: str, text: str) -> None:
        self.runner.post(level, text)

    def committed(self, label_ids: Any) -> None:
        """Remember ids written in this session (commits, propagations, everything)."""
        self.session_ids.update(int(i) for i in label_ids)

    # ---------------------------------------------------------------- inputs
    def _inputs(self, labels: np.ndarray) -> tuple[list, list, list[Index]]:
        """Images and labels for :func:`napari_sam.adapt`: the whole image (2D), or one
        stack per leading index before z that holds labels; their leading indices."""
        from napari_sam.annotation.stack_jobs import stack_at

        geometry = self.layers.geometry
        if geometry.n_lead <= 1:
            return [stack_at(self.embedder, ())], [labels], [()]
        images, planes, leads = [], [], []
        for lead in np.ndindex(*geometry.lead_shape[:-1]):
            if labels[lead].any():
                images.append(stack_at(self.embedder, lead))
                planes.append(labels[lead])
                leads.append(tuple(int(i) for i in lead))
        return images, planes, leads

    def _base_predictor(self) -> tuple[str, Any]:
        """``(model, predictor)`` to adapt: the base model, never an adapted one
        (worker thread; loads the base when an adapted model is in use)."""
        from napari_sam.model.registry import base_model_name

        if self.base is not None and self.base[1] is not None:
            return self.base
        model = self.embedder.model
        if not is_adapted(model):
            current = self.embedder.load_predictor()
            name = as_predictor(current, need_embed=False, need_predict=False).model_name
            if not is_adapted(name):
                return model, current
            model = name
        root = str(base_model_name(model))
        from napari_sam.predictor import Predictor

        loaded = self.embedder.predictor
        device = (None if loaded is None
                  else as_predictor(loaded, need_embed=False, need_predict=False).device)
        return root, Predictor(root, device=str(device) if device is not None else "auto")

    # ------------------------------------------------------------------ run
    def adapt(self, objects: str = "all", *, blocking: bool, save: bool = True,
              **options: Any) -> Any:
        """See :meth:`napari_sam.Annotator.adapt`."""
        if objects not in OBJECT_CHOICES:
            raise ValueError(f"objects must be one of {OBJECT_CHOICES}, got {objects!r}")
        if self.runner.running("adapt"):
            self._say("warning", "the model is already learning from your labels")
            return None
        layer = self.layers.labels
        labels = np.array(layer.data, copy=True)  # a snapshot: the user may go on labelling
        present = {int(i) for i in np.unique(labels)} - {0}
        ids = None
        if objects == "session":
            ids = sorted(self.session_ids & present)
            if not ids:
                self._say("warning", "no objects committed in this session are left in "
                          f"{layer.name!r}: commit some objects, or learn from all objects")
                return None
        if not present:
            self._say("warning", f"{layer.name!r} holds no objects: commit a few objects first "
                      "(about 10 give most of the gain)")
            return None
        n = len(ids) if ids is not None else len(present)
        images, planes, leads = self._inputs(labels)
        cl = self.embedder.limits()
        current_key = self.embedder.model_key
        job = Job("adapt", f"learning from {n} object(s)",
                  partial(self._steps, images, planes, leads, cl, current_key, ids,
                          self.layers.image.name if save else None, options))
        job.on_result = self._apply
        result = self.runner.run(job, blocking=blocking)
        return result.result if blocking and result is not None else result

    def _steps(self, images: list, planes: list, leads: list[Index], cl: Any,
               model_key: Any, ids: Any, save_as: str | None, options: dict,
               cancel: threading.Event) -> Generator[Any, Any, Any]:
        from napari_sam.adaptation import Cancelled, SaveError, adapted_model_path
        from napari_sam.annotation.stack_jobs import adapt_job

        yield Status("loading the base model")
        base = self._base_predictor()
        predictor = base[1]
        limits = yield from self.embedder.measuring(cl)
        reuse = predictor is self.embedder.predictor and model_key == self.embedder.model_key

        def embeddings(image_index: int, z: int | None) -> Any:
            if not reuse:
                return None
            idx = leads[image_index] + (() if z is None else (int(z),))
            return self.embedder.cache.peek(self.embedder.key(idx, cl))

        yield Status("learning from your labels")
        learn = adapt_job(lambda: predictor, images if len(images) > 1 else images[0],
                          planes if len(planes) > 1 else planes[0], contrast_limits=limits,
                          ids=ids, embeddings=embeddings, **options)
        result = yield from learn.steps(cancel)
        if cancel.is_set():
            raise Cancelled("cancelled")
        outcome = AdaptOutcome(result, base)
        if save_as is not None and not result.report.kept_base:
            yield Status("saving the adapted model")
            path = adapted_model_path(save_as, result.report.root_model, self.folder)
            try:
                outcome.saved = result.save(path)
            except SaveError as err:
                outcome.problem = str(err)
            if cancel.is_set():  # cancelled while saving: nothing stays behind
                from napari_sam.model.registry import adapted_record_path

                for leftover in (path, adapted_record_path(path)):
                    with contextlib.suppress(OSError):
                        leftover.unlink()
                raise Cancelled("cancelled")
        return outcome

    def _apply(self, outcome: AdaptOutcome) -> None:
        """Main thread: report, and switch to the adapted model when it is better."""
        result, report = outcome.result, outcome.result.report
        summary = report.summary()
        if report.kept_base:
            self._say("info", f"{summary}\nThe annotator keeps {self.embedder.model}.")
            return
        self.base = outcome.base  # what "back to the base model" and the next run use
        adapted = as_predictor(result.adapted, need_embed=False, need_predict=False)
        model = (str(outcome.saved) if outcome.saved is not None
                 else str(adapted.model_name or "adapted model"))
        self.embedder.set_model(model, predictor=result.adapted)
        self.state.model = model
        where = (f"saved to {outcome.saved}" if outcome.saved is not None
                 else outcome.problem or "not saved")
        self._say("info", f"{summary}\nNow using the adapted model for "
                  f"{self.layers.image.name!r} ({where}); embeddings are recomputed in the "
                  "background, labels are unchanged.")
        self.on_switched()

    def forget_base(self) -> None:
        """The user chose another model: no adapted model is in use any more."""
        self.base = None
