"""Propagate object masks from keyframes through the slices of a stack.

The engine keeps one *front* per object and direction: a front holds the
object's accepted mask on the last slice it reached, builds a prompt for the
next slice from it, and stops by the rules documented in
``docs/propagation.md``. Fronts of all objects that wait on the same slice are
decoded against one embedding of that slice (in one ``predict_batch`` call
per prompt shape, :meth:`~napari_sam.contract.BasePredictor.predict_objects`);
embeddings a later front will need again are kept in a small cache, so each
slice is normally embedded once.

Torch-, Qt- and napari-free: the predictor is used through the contract
(:class:`napari_sam.contract.BasePredictor`; any
:class:`~napari_sam.contract.PredictorProtocol` object is lifted to it).
"""

from __future__ import annotations

import itertools
import math
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_sam.contract import BasePredictor, as_predictor
from napari_sam.normalize import stack_contrast_limits
from napari_sam.options import resolve
from napari_sam.propagation.fade import faded, intensity_plane, object_contrast
from napari_sam.propagation.inputs import (
    DIRECTIONS,
    StackInfo,
    along_axis,
    check_stack,
    check_thresholds,
    normalize_seeds,
    normalize_stop_markers,
    normalize_z_range,
)
from napari_sam.propagation.masks import iou, keep_connected, nested, shift_mask, step_motion

# the defaults live with the options (params.py); also importable from here
from napari_sam.propagation.params import DEFAULT_FADE_THRESHOLD as DEFAULT_FADE_THRESHOLD
from napari_sam.propagation.params import DEFAULT_IOU_THRESHOLD as DEFAULT_IOU_THRESHOLD
from napari_sam.propagation.params import DEFAULT_MAX_GROWTH as DEFAULT_MAX_GROWTH
from napari_sam.propagation.params import DEFAULT_MIN_AREA as DEFAULT_MIN_AREA
from napari_sam.propagation.params import DEFAULT_PROMPT_MODE as DEFAULT_PROMPT_MODE
from napari_sam.propagation.params import DEFAULT_SCORE_THRESHOLD as DEFAULT_SCORE_THRESHOLD
from napari_sam.propagation.params import TRACKING_DEFAULTS as TRACKING_DEFAULTS
from napari_sam.propagation.params import PropagationParams
from napari_sam.propagation.prompts import (
    Prompt,
    PromptSettings,
    build_prompt,
    margin_for,
    parse_prompt_mode,
)
from napari_sam.propagation.records import SliceRecord, SliceUpdate

#: Most embeddings kept for fronts that will reach the same slice later.
MAX_CACHED_EMBEDDINGS = 32

_NAN = float("nan")


@dataclass(frozen=True)
class Options:
    """Validated options of one propagation run (see :func:`propagate_iter`)."""

    prompts: PromptSettings
    direction: str
    z_first: int
    z_last: int
    iou_threshold: float
    score_threshold: float
    min_area: int
    max_growth: float
    fade_threshold: float = 0.0
    motion: bool = False
    fade_step: float = 0.0
    keyframe_score_share: float = 0.0


@dataclass(eq=False)
class _Front:
    """One object propagating in one direction."""

    object_id: int
    step: int  # +1: towards higher z ("up"), -1: towards lower z ("down")
    next_z: int
    limit: int  # last slice this front may reach (inclusive)
    edge_status: str | None  # status of the slice at ``limit`` ("end"/"z_range"; None: gap)
    prev_mask: np.ndarray
    steps: int = 0
    alive: bool = True
    partner: _Front | None = None  # the front coming from the other side of a gap
    reference_contrast: float = _NAN  # the object's contrast on its keyframe ("faded" rule)
    previous_contrast: float = _NAN  # ... on the last accepted slice ("faded", fade_step)
    keyframe: int = -1  # the slice it started from
    velocity: np.ndarray | None = None  # (rows, cols) per step, when following motion

    def may_visit(self, z: int) -> bool:
        return self.alive and 0 <= (z - self.next_z) * self.step <= (self.limit - self.next_z) * (
            self.step
        )

    def remaining(self) -> range:
        return range(self.next_z, self.limit + self.step, self.step)


@dataclass(eq=False)
class _Item:
    """Work for one object on one slice: one or two fronts (two when a gap closes)."""

    fronts: list[_Front]
    prompt: Prompt
    prev_masks: list[np.ndarray]

    @property
    def object_id(self) -> int:
        return self.fronts[0].object_id


def cancel_requested(cancel: Any) -> bool:
    if cancel is None:
        return False
    is_set = getattr(cancel, "is_set", None)
    return bool(is_set() if callable(is_set) else cancel())


@dataclass(eq=False)
class Engine:
    """State of one propagation run; :meth:`step` processes one slice.

    Build it with :meth:`create` (which validates every input). Used by
    :func:`propagate_iter` (a generator over :meth:`step`) and
    :func:`propagate` (which also needs :meth:`cancel_records`).
    """

    stack: Any
    info: StackInfo
    predictor: BasePredictor
    options: Options
    seeds: dict[int, dict[int, np.ndarray]]
    single: bool
    stop_markers: dict[int, frozenset[int]]
    contrast_limits: tuple[float, float] | None
    embeddings: Any
    fronts: list[_Front] = field(default_factory=list)
    accepted: dict[int, set[int]] = field(default_factory=dict)
    cache: OrderedDict = field(default_factory=OrderedDict)
    pending_seed_updates: list[SliceUpdate] = field(default_factory=list)
    done: int = 0
    limits_known: bool = False
    _last_read: tuple[int, np.ndarray] | None = None
    # (object id, keyframe z) -> the model's score re-predicting the keyframe (lazily)
    keyframe_scores: dict[tuple[int, int], float] = field(default_factory=dict)
    source: Any = None  # the nD array when ``stack`` is an AxisView of it (its limits are used)

    # --------------------------------------------------------------- setup
    @classmethod
    def create(
        cls,
        stack: Any,
        seeds: Any,
        predictor: Any,
        params: PropagationParams | Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> Engine:
        """A run on ``stack`` from ``seeds``: every input checked, fronts planned.

        ``params`` and ``overrides`` are the options (:class:`PropagationParams`).
        """
        p = resolve(PropagationParams, params, overrides, caller="propagate")
        source = stack if p.axis is not None or p.position is not None else None
        stack = stack if source is None else along_axis(source, p.axis, p.position)
        info = check_stack(stack)
        tracking = source is not None and stack.time
        predictor = as_predictor(predictor, need_embed=p.embeddings is None)
        # the options left to the model (or to a time axis) filled in
        p = p.for_model(predictor.model_name, tracking=bool(tracking))
        direction, iou_threshold, score_threshold = p.direction, p.iou_threshold, p.score_threshold
        min_area, max_growth, box_margin, n_points = (
            p.min_area, p.max_growth, p.box_margin, p.n_points
        )
        fade_threshold, motion, embeddings = p.fade_threshold, bool(p.motion), p.embeddings
        fade_step, keyframe_score_share = p.fade_step, p.keyframe_score_share
        contrast_limits = p.contrast_limits
        assert p.prompt_mode is not None  # for_model filled it in
        parts = parse_prompt_mode(p.prompt_mode)
        if direction not in DIRECTIONS:
            raise ValueError(
                f"direction must be one of {', '.join(map(repr, DIRECTIONS))} ('up' = towards "
                f"higher z), got {direction!r}"
            )
        check_thresholds(iou_threshold, score_threshold, min_area, max_growth)
        if not (isinstance(fade_threshold, (int, float, np.number)) and 0 <= fade_threshold < 1):
            raise ValueError(
                f"fade_threshold must be a number in [0, 1) (0 turns the 'faded' rule off), "
                f"got {fade_threshold!r}"
            )
        for name, share in (("fade_step", fade_step),
                            ("keyframe_score_share", keyframe_score_share)):
            if not (isinstance(share, (int, float, np.number)) and 0 <= share < 1):
                raise ValueError(f"{name} must be a number in [0, 1) (0: off), got {share!r}")
        if not (isinstance(box_margin, (int, float)) and box_margin >= 0):
            raise ValueError(f"box_margin must be a number >= 0, got {box_margin!r}")
        if not isinstance(n_points, int) or n_points < 1:
            raise ValueError(f"n_points must be an integer >= 1, got {n_points!r}")
        if embeddings is not None and not (
            hasattr(embeddings, "__getitem__") or callable(embeddings)
        ):
            raise TypeError(
                "embeddings must support embeddings[z] or be a callable z -> embedding, "
                f"got {type(embeddings).__name__}"
            )
        if contrast_limits is not None:
            low, high = (float(v) for v in contrast_limits)
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ValueError(
                    f"contrast_limits must be finite (low, high) with low <= high, got "
                    f"{contrast_limits!r}"
                )
            contrast_limits = (low, high)
        z_first, z_last = normalize_z_range(p.z_range, info.n_slices)
        objects, single = normalize_seeds(seeds, info)
        for oid, frames in objects.items():
            outside = [z for z in frames if not z_first <= z <= z_last]
            if outside:
                raise ValueError(
                    f"object {oid} has seeds on z={outside}, outside z_range (slices "
                    f"{z_first}..{z_last}); widen z_range or drop those seeds"
                )
        markers = normalize_stop_markers(p.stop_markers, objects, info)
        for oid, zs in markers.items():
            clash = sorted(zs & set(objects[oid]))
            if clash:
                raise ValueError(
                    f"object {oid} has both a seed and a stop marker on z={clash}; "
                    "remove one of them"
                )
        options = Options(
            prompts=PromptSettings(parts, box_margin=float(box_margin), n_points=n_points),
            direction=direction,
            z_first=z_first,
            z_last=z_last,
            iou_threshold=float(iou_threshold),
            score_threshold=float(score_threshold),
            min_area=int(min_area),
            max_growth=float(max_growth),
            fade_threshold=float(fade_threshold),
            motion=motion,
            fade_step=float(fade_step),
            keyframe_score_share=float(keyframe_score_share),
        )
        engine = cls(
            stack=stack,
            info=info,
            predictor=predictor,
            options=options,
            seeds=objects,
            single=single,
            stop_markers=markers,
            contrast_limits=contrast_limits,
            embeddings=embeddings,
            limits_known=contrast_limits is not None,
            source=source,
        )
        engine._plan()
        return engine

    def _plan(self) -> None:
        opts = self.options
        up = opts.direction in ("both", "up")
        down = opts.direction in ("both", "down")
        by_z: dict[int, dict[int, np.ndarray]] = {}
        for oid, frames in self.seeds.items():
            self.accepted[oid] = set(frames)
            zs = list(frames)
            for z, mask in frames.items():
                by_z.setdefault(z, {})[oid] = mask
            if down and zs[0] > opts.z_first:
                edge = "end" if opts.z_first == 0 else "z_range"
                self._add_front(oid, zs[0], -1, opts.z_first, edge)
            if up and zs[-1] < opts.z_last:
                edge = "end" if opts.z_last == self.info.n_slices - 1 else "z_range"
                self._add_front(oid, zs[-1], +1, opts.z_last, edge)
            for a, b in itertools.pairwise(zs):
                if b - a < 2:
                    continue
                fa = self._add_front(oid, a, +1, b - 1, None) if up else None
                fb = self._add_front(oid, b, -1, a + 1, None) if down else None
                if fa is not None and fb is not None:
                    fa.partner, fb.partner = fb, fa
        for z in sorted(by_z):
            masks = by_z[z]
            records = {
                oid: SliceRecord(z, oid, _NAN, _NAN, int(np.count_nonzero(m)), "seed")
                for oid, m in masks.items()
            }
            self.pending_seed_updates.append(SliceUpdate(z, dict(masks), records))

    def _add_front(self, oid: int, z: int, step: int, limit: int, edge: str | None) -> _Front:
        seed = self.seeds[oid][z]
        front = _Front(oid, step, z + step, limit, edge, seed, keyframe=z)
        behind = self.seeds[oid].get(z - step)  # a keyframe one step behind gives the motion
        if self.options.motion and behind is not None:
            front.velocity = step_motion(behind, seed, None)
        if self.options.fade_threshold > 0:
            front.reference_contrast = object_contrast(self._plane(z), seed)
            front.previous_contrast = front.reference_contrast
        self.fronts.append(front)
        return front

    def _read(self, z: int) -> np.ndarray:
        """Slice ``z`` as numpy; the last slice read is kept, so each is read once per visit."""
        if self._last_read is None or self._last_read[0] != z:
            self._last_read = (z, np.asarray(self.stack[z]))
        return self._last_read[1]

    def _plane(self, z: int) -> np.ndarray:
        """Intensity of slice ``z`` for the "faded" rule."""
        return intensity_plane(self._read(z))

    # ------------------------------------------------------------ progress
    def alive(self) -> list[_Front]:
        """Fronts that still have slices to process."""
        return [f for f in self.fronts if f.alive]

    def remaining_estimate(self) -> int:
        """Upper bound of the slices (updates) still to come."""
        zs: set[int] = set()
        for f in self.alive():
            zs.update(f.remaining())
        return len(zs) + len(self.pending_seed_updates)

    def total_estimate(self) -> int:
        return self.done + self.remaining_estimate()

    # ----------------------------------------------------------- embedding
    def _limits(self) -> tuple[float, float] | None:
        if not self.limits_known:
            whole = self.stack if self.source is None else self.source
            self.contrast_limits = stack_contrast_limits(whole)
            self.limits_known = True
        return self.contrast_limits

    def slice_index(self, z: int, full: bool) -> tuple[int, ...]:
        """``(z,)``, or with ``full`` slice z's leading indices in the nD ``source``."""
        return self.stack.index(z) if full and self.source is not None else (z,)

    def embedding(self, z: int) -> Any:
        """The embedding of slice ``z``: cache, then ``embeddings``, then ``predictor.embed``."""
        if z in self.cache:
            self.cache.move_to_end(z)
            return self.cache[z]
        emb = None
        if self.embeddings is not None:
            try:
                if hasattr(self.embeddings, "__getitem__"):
                    emb = self.embeddings[z]
                else:
                    emb = self.embeddings(z)
            except KeyError:
                emb = None
        if emb is None:
            emb = self.predictor.embed(self._read(z), contrast_limits=self._limits())
        self.cache[z] = emb
        return emb

    def _trim_cache(self) -> None:
        fronts = self.alive()
        # keyframes whose score a front may still ask for (keyframe_score_share)
        keyframes = {f.keyframe for f in fronts
                     if (f.object_id, f.keyframe) not in self.keyframe_scores}
        if self.options.keyframe_score_share <= 0:
            keyframes = set()
        for z in list(self.cache):
            if z not in keyframes and not any(f.may_visit(z) for f in fronts):
                del self.cache[z]
        while len(self.cache) > MAX_CACHED_EMBEDDINGS:
            self.cache.popitem(last=False)

    # ---------------------------------------------------------------- steps
    def _retire_finished(self) -> None:
        for f in self.fronts:
            if not f.alive:
                continue
            out_of_range = (f.next_z - f.limit) * f.step > 0
            if out_of_range or f.next_z in self.accepted[f.object_id]:
                f.alive = False

    def _choose_slice(self, fronts: list[_Front]) -> int:
        groups: dict[int, list[_Front]] = {}
        for f in fronts:
            groups.setdefault(f.next_z, []).append(f)

        def priority(z: int) -> tuple:
            members = groups[z]
            return (z not in self.cache, min(f.steps for f in members), -len(members), z)

        return min(groups, key=priority)

    def step(self) -> SliceUpdate | None:
        """Process the next slice and return its update; None when everything is done."""
        if self.pending_seed_updates:
            self.done += 1
            return self.pending_seed_updates.pop(0)
        self._retire_finished()
        fronts = self.alive()
        if not fronts:
            self.cache.clear()
            return None
        z = self._choose_slice(fronts)
        update = self._process(z, [f for f in fronts if f.next_z == z])
        self._retire_finished()
        self._trim_cache()
        self.done += 1
        return update

    def cancel_records(self) -> list[SliceRecord]:
        """Mark every unfinished direction as cancelled; one record per object and slice."""
        self._retire_finished()
        records: dict[tuple[int, int], SliceRecord] = {}
        for f in self.alive():
            key = (f.object_id, f.next_z)
            records.setdefault(key, SliceRecord(f.next_z, f.object_id, _NAN, _NAN, 0, "cancelled"))
            f.alive = False
        self.cache.clear()
        return list(records.values())

    def _stop(self, fronts: list[_Front]) -> None:
        for f in fronts:
            f.alive = False

    def _process(self, z: int, fronts: list[_Front]) -> SliceUpdate:
        records: dict[int, SliceRecord] = {}
        masks: dict[int, np.ndarray] = {}
        items: list[_Item] = []
        seen: set[int] = set()
        for f in fronts:
            if id(f) in seen:
                continue
            group = [f]
            if f.partner is not None and f.partner.alive and f.partner.next_z == z:
                group.append(f.partner)
            seen.update(id(g) for g in group)
            oid = f.object_id
            if z in self.stop_markers[oid]:
                records[oid] = SliceRecord(z, oid, _NAN, _NAN, 0, "stop_marker")
                self._stop(group)
                continue
            prev = [g.prev_mask if g.velocity is None else shift_mask(g.prev_mask, g.velocity)
                    for g in group]
            union = prev[0] if len(prev) == 1 else np.logical_or(prev[0], prev[1])
            prompt = build_prompt(union, self.options.prompts)
            if prompt is None:
                records[oid] = SliceRecord(z, oid, _NAN, _NAN, 0, "no_prompt")
                self._stop(group)
                continue
            items.append(_Item(group, prompt, prev))
        if items:
            emb = self.embedding(z)
            prompts = [it.prompt for it in items]
            predictions = self.predictor.predict_objects(
                emb, prompts, multimask=[p.multimask for p in prompts]
            )
            for item, pred in zip(items, predictions):
                record, mask = self._judge(z, item, pred)
                records[item.object_id] = record
                if mask is not None:
                    masks[item.object_id] = mask
        return SliceUpdate(z, masks, records)

    def _score_floor(self, item: _Item) -> float:
        """The lowest score still accepted by ``keyframe_score_share``: that share of the
        object's score on its keyframe (the best of the item's fronts); 1 when off."""
        share = self.options.keyframe_score_share
        if share <= 0:
            return 1.0
        best = 0.0
        for f in item.fronts:
            key = (f.object_id, f.keyframe)
            if key not in self.keyframe_scores:
                self._keyframe_scores(f.keyframe)
            best = max(best, self.keyframe_scores[key])
        return share * best

    def _keyframe_scores(self, z: int) -> None:
        """The model's score for every object with a keyframe on slice ``z``, prompted as
        a neighbour would be (from the keyframe mask itself; 0 without a prompt), in one
        batch: the slice is embedded once for all of them."""
        objects, prompts = [], []
        for oid, frames in self.seeds.items():
            if z in frames and (oid, z) not in self.keyframe_scores:
                prompt = build_prompt(frames[z], self.options.prompts)
                if prompt is None:
                    self.keyframe_scores[oid, z] = 0.0
                else:
                    objects.append(oid)
                    prompts.append(prompt)
        if not prompts:
            return
        predictions = self.predictor.predict_objects(
            self.embedding(z), prompts, multimask=[p.multimask for p in prompts]
        )
        for oid, pred in zip(objects, predictions):
            candidates = np.asarray(pred.masks, dtype=bool)
            if candidates.ndim == 2:
                candidates = candidates[None]
            scores = np.atleast_1d(np.asarray(pred.scores, dtype=np.float64))
            seed = self.seeds[oid][z]
            overlaps = [iou(c, seed) for c in candidates]
            k = max(range(len(scores)), key=lambda i: (overlaps[i], scores[i]))
            self.keyframe_scores[oid, z] = float(scores[k])

    def _judge(self, z: int, item: _Item, pred: Any) -> tuple[SliceRecord, np.ndarray | None]:
        opts = self.options
        oid = item.object_id
        candidates = np.asarray(pred.masks, dtype=bool)
        if candidates.ndim == 2:
            candidates = candidates[None]
        scores = np.atleast_1d(np.asarray(pred.scores, dtype=np.float64))
        if candidates.shape[1:] != self.info.slice_shape:
            raise ValueError(
                f"the predictor returned masks of shape {candidates.shape[1:]} for slice z={z}, "
                f"expected the slice shape {self.info.slice_shape}"
            )
        union = item.prev_masks[0]
        if len(item.prev_masks) > 1:
            union = union | item.prev_masks[1]
        margin = margin_for(union, opts.prompts)
        best: tuple[tuple[float, float], np.ndarray, float] | None = None
        for k in range(len(candidates)):
            mask = keep_connected(candidates[k], union, margin)
            overlap = max(iou(mask, p) for p in item.prev_masks)
            key = (overlap, scores[k])
            if best is None or key > best[0]:
                best = (key, mask, float(scores[k]))
        assert best is not None  # at least one candidate
        (overlap, _), mask, score = best
        area = int(np.count_nonzero(mask))
        prev_area = max(int(np.count_nonzero(p)) for p in item.prev_masks)
        if area < opts.min_area:
            status = "vanished"
        elif score < opts.score_threshold and score < self._score_floor(item):
            status = "low_score"
        elif area > opts.max_growth * prev_area or (
            overlap < opts.iou_threshold and not nested(mask, item.prev_masks)
        ):
            status = "changed"
        else:
            status = "ok"
        if status == "ok" and opts.fade_threshold > 0:
            contrast = object_contrast(self._plane(z), mask)
            if any(faded(contrast, f.reference_contrast, opts.fade_threshold)
                   or faded(contrast, f.previous_contrast, opts.fade_step)
                   for f in item.fronts):
                status = "faded"
        if status != "ok":
            self._stop(item.fronts)
            return SliceRecord(z, oid, score, float(overlap), area, status), None
        self.accepted[oid].add(z)
        for f in item.fronts:
            if opts.motion:
                f.velocity = step_motion(f.prev_mask, mask, f.velocity)
            f.prev_mask = mask
            if opts.fade_threshold > 0:
                f.previous_contrast = contrast
            f.steps += 1
            f.next_z = z + f.step
            if z == f.limit and f.edge_status is not None:
                status = f.edge_status
        if len(item.fronts) > 1:  # the two sides of a gap met
            self._stop(item.fronts)
        return SliceRecord(z, oid, score, float(overlap), area, status), mask
