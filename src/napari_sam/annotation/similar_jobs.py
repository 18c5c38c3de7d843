""""Find all like this" in the annotator: a job on the runner, a review with a threshold.

Qt- and napari-free (layers duck-typed). :meth:`SimilarObjects.find` takes
one or a few committed objects (label ids) of the slice on screen as
exemplars and runs :func:`napari_sam.find_similar` as a job (kind
``"everything"``: progress, Cancel), on the slice or (``stack=True``) on the
stack holding it, with the annotator's embeddings. The candidates scoring at
least :attr:`SimilarObjects.threshold` are shown in the everything review
layer; changing the threshold re-ranks them without computing anything
(:meth:`~napari_sam.similar.SimilarResult.labels_above`), and "Commit
everything" commits them like everything mode (new ids, existing labels
kept, one undo step).
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Sequence
from functools import partial
from typing import Any

import numpy as np

from napari_sam.annotation.jobs import Job, Status, reporting
from napari_sam.annotation.stack_jobs import stack_at

__all__ = ["SimilarObjects", "similar_job"]

Index = tuple[int, ...]
#: Default score threshold of the candidates shown (``napari_sam.similar.DEFAULT_THRESHOLD``).
DEFAULT_THRESHOLD = 0.5


def similar_job(
    embedder: Any, index: Index, cl: Any, exemplars: Sequence[np.ndarray], labels: np.ndarray,
    params: dict, *, stack: bool, threshold: float, title: str,
) -> Job:
    """:func:`napari_sam.find_similar` on slice ``index`` (or, ``stack``, the stack at
    the leading indices ``index``); the job returns the
    :class:`~napari_sam.similar.SimilarResult`. ``labels`` are the existing labels
    there (their objects are left out); ``params`` go to everything mode."""

    def steps(cancel: threading.Event) -> Generator[Any, Any, Any]:
        from napari_sam.similar import find_similar

        predictor = yield from embedder.loading()
        limits = yield from embedder.measuring(cl)
        if stack:
            call = partial(
                find_similar, stack_at(embedder, index), list(exemplars), predictor, stack=True,
                contrast_limits=limits, labels=labels, threshold=threshold, cancel=cancel,
                embeddings=lambda z: embedder.embedding((*index, int(z)), cl), **params,
            )
        else:
            yield Status(f"embedding {embedder.describe(index)}")
            embedding = embedder.embedding(index, cl)
            yield "embedded"
            call = partial(
                find_similar, embedder.read_slice(index), list(exemplars), predictor,
                contrast_limits=limits, labels=labels, threshold=threshold, cancel=cancel,
                embedding=embedding, **params,
            )
        yield Status("finding candidates (everything mode) and ranking them")
        return (yield from reporting(call))

    return Job("everything", title, steps)


class SimilarObjects:
    """"Find all like this" of one annotator.

    Parameters
    ----------
    state, runner, embedder, layers : the annotator's parts
    stack : its :class:`~napari_sam.annotation.stack.StackActions` (the review layer)

    Attributes
    ----------
    result : the :class:`~napari_sam.similar.SimilarResult` under review, or None
    index : its slice (or, for a stack, the leading indices of the stack)
    exemplars : the label ids it was found from
    threshold : the score of the candidates shown
    """

    def __init__(self, state: Any, runner: Any, embedder: Any, layers: Any, stack: Any) -> None:
        self.state, self.runner, self.embedder = state, runner, embedder
        self.layers, self.stack_actions = layers, stack
        self.result: Any = None
        self.index: Index = ()
        self.stack = False
        self.exemplars: tuple[int, ...] = ()
        self.threshold = DEFAULT_THRESHOLD
        self._shown: Any = None
        self._showing = False

    def _say(self, level: str, text: str) -> None:
        self.runner.post(level, text)

    def everything_changed(self, value: Any, old: Any = None) -> None:
        """``state.everything`` changed: another result or a commit ends this review."""
        if not self._showing and value is not self._shown:
            self.result, self._shown = None, None

    # ------------------------------------------------------------------ exemplars
    def exemplar_ids(self, idx: Index, region: np.ndarray, label_ids: Any, stack: bool
                     ) -> tuple[list[int], str | None]:
        """The exemplar ids (given, else the last commit on this slice, else the labels
        layer's selected label) and a problem to report, if any."""
        labels, where = self.layers.labels, self.layers.where(idx)
        plane = region[idx[-1]] if stack else region
        on_slice = sorted(int(v) for v in np.unique(plane) if v != 0)
        scope = sorted(int(v) for v in np.unique(region) if v != 0) if stack else on_slice
        there = f"this stack ({len(scope)} labels)" if stack else where
        if not scope:
            return [], (f"{there} of {labels.name!r} has no labels: commit one or a few "
                        "objects of the kind first, then find all like them")
        if label_ids is None:
            last = self.state.last_commit
            ids = [i for i in (last.label_ids if last is not None and last.slice_index == idx
                               else ()) if i in on_slice]
            selected = int(getattr(labels, "selected_label", 0) or 0)
            ids = ids or ([selected] if selected in on_slice else [])
            if not ids:
                return [], (f"no exemplar: commit objects on {where} or select one of its "
                            f"labels ({_listed(on_slice) or 'none'}) in {labels.name!r}")
            return ids, None
        from napari_sam.labels import resolve_label_ids

        n = 1 if np.isscalar(label_ids) else len(label_ids)
        ids = resolve_label_ids(label_ids, n, None)
        missing = [i for i in ids if i not in scope]
        if missing:
            return [], (f"label(s) {missing} do not exist in {there} of {labels.name!r} "
                        f"(labels there: {_listed(scope)}); choose committed objects as "
                        "exemplars")
        return ids, None

    # ------------------------------------------------------------------ actions
    def find(self, idx: Index, cl: Any, label_ids: Any, *, stack: bool, threshold: float | None,
             params: dict, blocking: bool) -> Any:
        """See :meth:`napari_sam.Annotator.find_similar`."""
        if self.runner.running("everything"):
            self._say("warning", "find all like this: an everything run is still going; wait "
                      "for it or cancel it")
            return None
        if stack and self.layers.geometry.n_lead == 0:
            self._say("warning", "find all like this in the whole stack needs a stack: this "
                      "image is 2D")
            return None
        if threshold is not None:
            self.threshold = _check_threshold(threshold)
        target = tuple(idx[:-1]) if stack else tuple(idx)
        region = np.array(self.layers.labels.data[target])  # a copy: the job never reads layers
        ids, problem = self.exemplar_ids(tuple(idx), region, label_ids, stack)
        if problem:
            self._say("warning", f"find all like this: {problem}")
            return None
        what = "the stack" if stack else self.layers.where(idx)
        job = similar_job(self.embedder, target, cl, [region == i for i in ids], region,
                          dict(params), stack=stack, threshold=self.threshold,
                          title=f"finding objects like {ids} in {what}")
        job.on_result = partial(self._show, target, stack, tuple(ids))
        result = self.runner.run(job, blocking=blocking)
        return result if blocking else None

    def _show(self, index: Index, stack: bool, ids: tuple[int, ...], result: Any) -> None:
        self.result, self.index, self.stack, self.exemplars = result, index, stack, ids
        self.render()

    def render(self) -> int:
        """Show the candidates scoring >= :attr:`threshold` in the review layer; returns
        how many."""
        res = self.result
        if res is None:
            return 0
        self._showing = True
        try:
            self.stack_actions.show_everything(self.index, res.labels_above(self.threshold),
                                               stack=self.stack)
            self._shown = self.state.everything
        finally:
            self._showing = False
        n = int(np.count_nonzero(res.scores >= self.threshold))
        where = "in the stack" if self.stack else f"on {self.layers.where(self.index)}"
        self._say("status", f"find all like {list(self.exemplars)}: {n} of "
                  f"{len(res.candidates)} candidates {where} score >= {self.threshold:.2f} "
                  f"({res.excluded} left out: on exemplars or labels); move the threshold, "
                  "review, then 'Commit everything'")
        return n

    def set_threshold(self, value: float) -> int:
        """Re-rank the result under review at score ``value`` (nothing recomputed);
        returns the candidates shown."""
        self.threshold = _check_threshold(value)
        return self.render()


def _check_threshold(value: Any) -> float:
    t = float(value)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"the similarity threshold must be in [0, 1], got {value!r}")
    return t


def _listed(ids: list[int], most: int = 12) -> str:
    shown = ", ".join(str(i) for i in ids[:most])
    return shown + (f" ... ({len(ids)} labels)" if len(ids) > most else "")
