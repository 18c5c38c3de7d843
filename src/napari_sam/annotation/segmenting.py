"""Prompts -> preview -> labels for one slice: segment, candidates, hover, commit.

Qt- and napari-free (layers duck-typed). :class:`Segmenter` decodes the
prompts of a slice against its embedding (decoding at once when the embedding
is cached, else waiting for an ``"embed"`` job), puts the result in
``state.preview`` (which :meth:`Segmenter.show_preview` draws into the preview
layer) and commits it through the labels writer as one undo step. It is given
everything it uses (no host object).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np

from napari_sam.annotation.jobs import HistoryHold
from napari_sam.annotation.preview import Preview, split_points
from napari_sam.annotation.prompts import ObjectPrompt, SlicePrompts, decode_objects
from napari_sam.annotation.slicing import apply_affine, nearest_index, world_slice_index
from napari_sam.annotation.state import Commit
from napari_sam.labels import resolve_label_ids

__all__ = ["Segmenter"]

Index = tuple[int, ...]


class Segmenter:
    """Segment and commit the prompted objects of one slice.

    Parameters
    ----------
    state : the annotator's :class:`~napari_sam.annotation.state.AnnotatorState`
    runner : its :class:`~napari_sam.annotation.jobs.JobRunner`
    embedder : its :class:`~napari_sam.annotation.embedder.SliceEmbedder`
    layers : its :class:`~napari_sam.annotation.layer_set.AnnotatorLayers`
    prompts : its :class:`~napari_sam.annotation.prompt_layers.PromptLayers`
    writer : the :class:`~napari_sam.labels.LabelsWriter` of the labels layer
    events : napari ``EmitterGroup`` with ``segmented`` and ``committed``

    Attributes
    ----------
    history : the :class:`~napari_sam.annotation.jobs.HistoryHold` of the labels
        layer (undo and redo wait while a job will write into it)
    """

    def __init__(
        self, state: Any, runner: Any, embedder: Any, layers: Any, prompts: Any, writer: Any,
        events: Any,
    ) -> None:
        self.state = state
        self.runner = runner
        self.embedder = embedder
        self.layers = layers
        self.prompts = prompts
        self.writer = writer
        self.events = events
        self.history = HistoryHold(state, runner, layers.labels, partial(runner.post, "warning"))

    def _say(self, level: str, text: str) -> None:
        self.runner.post(level, text)

    # ------------------------------------------------------------- segment
    def segment(self, prompts: SlicePrompts, *, blocking: bool) -> list[np.ndarray] | None:
        """Decode ``prompts`` into ``state.preview``; see :meth:`napari_sam.Annotator.segment`."""
        if not self._check(prompts):
            return []
        idx, cl = prompts.slice_index, self.embedder.limits()
        key = self.embedder.key(idx, cl)
        emb = self.embedder.cache.get(key)
        if emb is None and blocking:
            emb = self.runner.run(self.embedder.job(idx, cl), blocking=True)
        if emb is not None:
            return self.decode_and_show(prompts, emb)
        self.state.waiting = prompts  # decoded when the embedding is ready
        self.embedder.request(idx, cl, on_ready=partial(self._ready, key))
        self._say("status", f"embedding {self.layers.where(idx)}; the preview appears when "
                  "it is ready")
        return None

    def prompts_changed(self, prompts: SlicePrompts) -> None:
        """The prompts of a slice changed (auto-segment): segment them asynchronously,
        or, when none are left, drop that slice's preview and waiting prompts."""
        if prompts.objects:
            self.segment(prompts, blocking=False)
            return
        idx, state = prompts.slice_index, self.state
        if state.preview is not None and state.preview.slice_index == idx:
            state.preview = None
        if state.waiting is not None and state.waiting.slice_index == idx:
            state.waiting = None

    def _check(self, prompts: SlicePrompts) -> bool:
        for message in prompts.messages:
            self._say("warning", message)
        if not prompts.objects and not prompts.messages:
            self._say("warning", f"no prompts on {self.layers.where(prompts.slice_index)}: add a "
                      f"positive point or a box in {self.layers.points.name!r} / "
                      f"{self.layers.shapes.name!r}")
        return bool(prompts.objects)

    def _ready(self, key: tuple) -> None:
        prompts = self.state.waiting  # the latest prompts of that slice
        if self.runner.closed or prompts is None or prompts.slice_index != key[1]:
            return
        self.state.waiting = None
        emb = self.embedder.cache.peek(key)
        if emb is not None:
            self.decode_and_show(prompts, emb)

    def decode_and_show(
        self, prompts: SlicePrompts, emb: Any, hover: bool = False
    ) -> list[np.ndarray]:
        """Decode every object of ``prompts`` against ``emb``; the result becomes the preview."""
        idx = prompts.slice_index
        try:
            predictions = decode_objects(self.embedder.load_predictor(), emb, prompts.objects,
                                         multimask=len(prompts.objects) == 1, quick=hover)
        except (ValueError, TypeError) as err:
            self._say("error", f"segmentation failed: {err}")
            return []
        preview = Preview(idx, tuple(predictions), hover=hover, prompts=tuple(prompts.objects))
        self.state.preview = preview
        if not hover:
            self._say("status", self.describe(preview))
            self.events.segmented(slice_index=idx, masks=preview.masks)
        return preview.masks

    def describe(self, preview: Preview) -> str:
        """The status line for a preview: what was found, where, and what is odd."""
        where = self.layers.where(preview.slice_index)
        empty = preview.empty_message(where)
        if empty is not None and all(preview.empty):
            return empty
        found = [s for s, e in zip(preview.scores, preview.empty) if not e]
        text = (f"{where}: {len(found)} object(s), score {', '.join(f'{s:.2f}' for s in found)}"
                f", {sum(preview.areas)} px")
        if preview.n_shown_candidates > 1:
            text += f" (mask {preview.rank}/{preview.n_candidates}, Shift+N: next)"
        if preview.n_objects == 1 and preview.prompts:
            n_points, parts = split_points(preview.masks[0], preview.prompts[0])
            if parts > 1:
                text += (f". {n_points} points -> 1 object (tick 'each positive point is an "
                         "object' to segment them separately)")
        return text if empty is None else f"{text}. {empty}"

    def show_preview(self, preview: Preview | None, old: Preview | None = None) -> None:
        """Draw ``state.preview`` into the preview layer (its observer; main thread)."""
        layer = self.layers.preview
        if old is not None:
            layer.data[old.slice_index] = 0
        if preview is not None:
            image = preview.label_image(self.layers.geometry.slice_shape)
            if image.dtype.itemsize > layer.data.dtype.itemsize:
                layer.data = layer.data.astype(image.dtype)
            layer.data[preview.slice_index] = image
        layer.refresh()

    def next_mask(self) -> np.ndarray | None:
        """See :meth:`napari_sam.Annotator.next_mask`."""
        preview = self.state.preview
        if preview is None or preview.n_candidates < 2:
            self._say("info", "next mask: segment a single object first (one set of prompts)")
            return None
        if preview.n_shown_candidates < 2:
            empty = preview.n_candidates - preview.n_shown_candidates
            self._say("status", "next mask: no other candidate (" + (
                "every candidate is empty: " + str(preview.empty_message(
                    self.layers.where(preview.slice_index)))
                if not preview.n_shown_candidates else f"{empty} other(s) are empty") + ")")
            return preview.masks[0]
        self.state.preview = preview = preview.next_candidate()
        self._say("status", f"mask {preview.rank}/{preview.n_candidates}, "
                  f"score {preview.scores[0]:.3f}, {preview.areas[0]} px")
        return preview.masks[0]

    def hover(self, world_position: Sequence[float], background: bool) -> list | None:
        """See :meth:`napari_sam.Annotator.hover` (``background``: request the embedding)."""
        geometry = self.layers.geometry
        pos = np.asarray(world_position, dtype=np.float64)
        d = geometry.ndim
        if self.runner.closed or pos.shape[0] < d:
            return None
        w2d = self.layers.world_to_image()
        idx = world_slice_index(geometry, w2d, pos)
        h, w = geometry.slice_shape
        r, c = apply_affine(w2d, pos[-d:])[-2:]
        if idx is None or not (-0.5 <= r < h - 0.5 and -0.5 <= c < w - 0.5):
            return None
        if self.prompts.any_on(idx):
            return None  # slices with prompts keep their own preview
        cl = self.embedder.limits()
        emb = self.embedder.cache.get(self.embedder.key(idx, cl))
        if emb is None:
            if background:
                self.embedder.request(idx, cl)
            return None
        rc = np.clip(nearest_index([r, c]), 0, [h - 1, w - 1]).astype(float)
        obj = ObjectPrompt(rc[None], np.ones(1, dtype=np.int64))
        return self.decode_and_show(SlicePrompts(idx, (obj,)), emb, hover=True)

    def after_undo(self, kind: str) -> None:
        """``"undone"`` / ``"redone"`` on the labels layer: a fresh status line, and the
        last commit forgotten when its objects are gone (propagation's default)."""
        idx = self.state.current_slice
        if self.runner.closed or idx is None or self.history.active:
            return  # (held: the warning says why nothing changed)
        layer = self.layers.labels
        last = self.state.last_commit
        if last is not None:
            there = set(np.unique(np.asarray(layer.data[last.slice_index])).tolist())
            if not set(last.label_ids) & there:
                self.state.last_commit = None
        present = set(np.unique(np.asarray(layer.data[idx])).tolist()) - {0}
        self._say("status", f"{kind} on {layer.name!r}: {len(present)} object(s) on "
                  f"{self.layers.where(idx)}")

    # -------------------------------------------------------------- commit
    def commit(self, label_id: Any, overwrite: bool, clear_prompts: bool) -> list[int]:
        """See :meth:`napari_sam.Annotator.commit`.

        Objects whose mask is (nearly) empty are never committed: the message
        says so (and where), instead of blaming existing labels.
        """
        preview = self.state.preview
        if preview is None:
            self._say("warning", "nothing to commit: segment first")
            return []
        if self.runner.running("propagate"):
            self._say("warning", "a propagation is running; commit when it is done")
            return []
        idx = preview.slice_index
        where = self.layers.where(idx)
        keep = [i for i, e in enumerate(preview.empty) if not e]
        if not keep:
            self._say("warning", f"nothing committed: {preview.empty_message(where)}")
            return []
        if label_id is not None and not np.isscalar(label_id):
            given = list(label_id)  # checked (2.5 or "3" refused, never truncated):
            given = resolve_label_ids(given, len(given), None) if given else given
            if len(given) == preview.n_objects:  # ids of the objects committed
                label_id = [given[i] for i in keep]
        self.layers.ensure_labels_shown()
        layer = self.layers.labels
        masks = [preview.masks[i] for i in keep]
        ids = resolve_label_ids(label_id, len(masks), layer.data)
        try:
            result = self.writer.write_objects(masks, idx, ids, overwrite=overwrite)
        except (ValueError, TypeError) as err:
            self._say("error", f"commit failed, labels unchanged: {err}")
            return []
        if result.upcast is not None:
            old, new = result.upcast
            self._say("info", f"labels layer {layer.name!r} converted {old} -> {new} "
                      f"to hold id {max(ids)}")
        if result.skipped:
            self._say("warning", f"object(s) {result.skipped} not written on {where}: every "
                      f"pixel of their mask already holds another label in {layer.name!r} "
                      "(commit with overwrite=True to replace)")
        if result.written:
            layer.selected_label = result.written[-1]
            self.state.last_commit = Commit(idx, tuple(result.written))
        self.state.preview = None
        if clear_prompts:
            self.prompts.remove(idx)
        empty = preview.empty_message(where) if len(keep) < preview.n_objects else None
        self._say("status", f"committed label(s) {result.written} on {where} into "
                  f"{layer.name!r} (undo: Ctrl+Z on the labels layer)"
                  + (f". {empty}" if empty else ""))
        self.events.committed(slice_index=idx, label_ids=result.written)
        return result.written
