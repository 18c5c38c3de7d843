""":func:`adapt`: fine-tune a predictor on the user's labelled objects, never worse than before."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from napari_sam.adaptation.result import AdaptationReport, AdaptationResult
from napari_sam.adaptation.training import AdaptSettings


def _slice_embedder(predictor, data, embeddings) -> Callable[[int], Any]:
    """``embed(slice_index)``: the caller's embedding when it has one, else the predictor's."""

    def embed(s: int):
        sl = data.slices[s]
        if embeddings is not None:
            emb = embeddings(sl.source, sl.z)
            if emb is not None:
                return emb
        return predictor.embed(sl.image, contrast_limits=sl.contrast_limits)

    return embed


def _memo(embed: Callable[[int], Any]) -> tuple[Callable[[int], Any], dict]:
    store: dict[int, Any] = {}

    def cached(s: int):
        if s not in store:
            store[s] = embed(s)
        return store[s]

    return cached, store


def adapt(
    predictor,
    images,
    labels,
    *,
    contrast_limits=None,
    time_limit_s: float = 90.0,
    holdout: float = 0.2,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | Any | None = None,
    ids: Sequence[int] | None = None,
    steps: int | None = None,
    settings: AdaptSettings | None = None,
    embeddings: Callable[[int, int | None], Any] | None = None,
) -> AdaptationResult:
    """Fine-tune ``predictor``'s model on the user's labelled objects.

    About 20 % of the objects are held back; the base and the adapted model
    are compared on them (a centre click and a tight box per object, through
    the Predictor as users get it), and the adapted model is used only when
    it is better: never worse than before. The input predictor is not changed
    (its model is deep-copied).

    Parameters
    ----------
    predictor : a :class:`~napari_sam.predictor.Predictor` (the bundled ``micro``:
        every weight is trained; ViT SAM models: prompt encoder and mask decoder
        on image embeddings computed once, no encoder backward pass)
    images : one image or a list: ``(Y, X)``, ``(Y, X, C)``, a stack ``(Z, Y, X)``
        or ``(Z, Y, X, C)``
    labels : the matching label array(s) ``(Y, X)`` / ``(Z, Y, X)``; every nonzero
        id is an object the user vouches for (unlabelled objects are fine: they
        are not treated as background)
    contrast_limits : None (the Predictor's default range), one ``(low, high)`` for
        every image, or one entry per image; a stack without limits uses one
        range for the whole stack (:func:`napari_sam.normalize.stack_contrast_limits`),
        as the annotator does
    time_limit_s : wall-clock budget of the whole call; training stops early
        enough to leave time for the check
    holdout : fraction of the objects held back for the check, in ``(0, 0.5]``
        (at least 1; with a single object the check reuses it and is weak)
    seed : makes the run reproducible (the split, crops, prompts); runs are
        identical whenever ``steps`` fit in the time limit (``report.stopped_by``)
    progress : ``progress(done, total)`` after the base check, each step and the
        final check (``total`` follows the plan, which is fitted to the time limit
        after steps 2, 5, 10, 20, ...)
    cancel : a callable returning True (or an Event) to stop; polled before each
        step and each checked slice. A cancelled run raises
        :class:`~napari_sam.adaptation.Cancelled`; nothing is changed or saved
    ids : adapt on these object ids only (e.g. those committed in this session)
    steps : optimizer steps (default ``settings.steps``, 120); set it in tests
    settings : the recipe, :class:`~napari_sam.adaptation.AdaptSettings`
    embeddings : ``embeddings(image_index, z) -> embedding or None``: embeddings
        of the base model already computed (the annotator's cache; ``z`` is None
        for a 2D image); used for the base model's check and for the cached
        embeddings of ViT models

    Returns
    -------
    AdaptationResult
        ``.predictor`` (adapted, or the base when ``.report.kept_base``),
        ``.report`` (objects, IoU before/after, steps, seconds), ``.save(path)``.

    Raises
    ------
    ValueError
        Labels of another shape than the image, no objects, only tiny objects,
        ``ids`` not in the labels, a predictor that cannot be adapted.
    Cancelled
        When ``cancel`` was set.

    Examples
    --------
    >>> result = napari_sam.adapt(Predictor("micro"), image, labels)  # doctest: +SKIP
    >>> print(result.report.summary())                                 # doctest: +SKIP
    >>> result.save("my_nuclei.pt"); Predictor("my_nuclei.pt")         # doctest: +SKIP
    """
    from napari_sam.adaptation import check as checks
    from napari_sam.adaptation.crops import SceneMaker, ViewPlanner, cached_views
    from napari_sam.adaptation.objects import collect, split_objects
    from napari_sam.adaptation.training import (
        canceller,
        check_adaptable,
        fine_tune,
        make_batches,
        make_cached_batches,
        prepare_model,
        torch_threads,
        trainable_parts,
        trains_encoder,
    )

    t0 = time.perf_counter()
    settings = settings or AdaptSettings()
    if steps is not None:
        settings = replace(settings, steps=int(steps))
    if not (time_limit_s > 0):
        raise ValueError(f"time_limit_s must be positive, got {time_limit_s!r}")
    check_adaptable(predictor)
    poll = canceller(cancel)
    data = collect(images, labels, contrast_limits, ids=ids, min_area=settings.min_area)
    rng = np.random.default_rng(seed)
    split = split_objects(len(data.objects), holdout, rng)
    train_inst = [k for o in split.train for k in data.objects[o].instances]

    def report_progress(done: int, planned_steps: int) -> None:
        if progress is not None:
            progress(done, planned_steps + 2)

    import torch

    from napari_sam.model.registry import ADAPTED_TAG, base_model_name
    from napari_sam.predictor import Predictor
    from napari_sam.store import model_fingerprint

    with torch_threads(settings.threads):
        threads = torch.get_num_threads()
        base_name = str(predictor.model_name or "model")
        base_fp = model_fingerprint(predictor.model)
        report_progress(0, settings.steps)
        base_embed, base_store = _memo(_slice_embedder(predictor, data, embeddings))
        t_check = time.perf_counter()
        before = checks.score(predictor, data, split.check, embed=base_embed, cancel=poll)
        check_seconds = time.perf_counter() - t_check
        report_progress(1, settings.steps)

        model = prepare_model(copy.deepcopy(predictor.model))
        planner = ViewPlanner(predictor)
        if trains_encoder(model):
            base_store.clear()  # the encoder changes: embeddings must be recomputed
            maker = SceneMaker(
                data, train_inst, planner, model.img_size, settings.objects_per_crop,
                settings.flip, settings.jitter,
            )
            prop = []
            if data.is_3d and settings.propagation_prob > 0:
                allowed = set(train_inst)
                prop = [k for k in train_inst if data.neighbours(k, allowed)]
            batches = make_batches(maker, train_inst, settings, prop)
        else:
            embed_train = _slice_embedder(predictor, data, embeddings)
            views = cached_views(
                data, train_inst, planner, lambda s: base_store.get(s) or embed_train(s),
                model.img_size, poll,
            )
            batches = make_cached_batches(views, data, settings)
        # leave time for the final check (the first one's time, plus a margin)
        deadline = t0 + time_limit_s - 1.5 * check_seconds - 1.0

        def step_progress(done: int, planned: int) -> None:
            report_progress(1 + done, planned)

        log = fine_tune(
            model, batches, settings, deadline=deadline, seed=seed, rng=rng,
            progress=step_progress, poll=poll, step_fn=_step_fn(),
        )
        fingerprint = model_fingerprint(model)
        adapted = Predictor(
            model,
            precision=predictor.precision,
            tiling=predictor.tiling,
            tile_overlap=predictor.tile_overlap,
        )
        adapted.model_name = f"{base_name}{ADAPTED_TAG}{fingerprint.split(':')[-1][:8]}"
        adapted.fingerprint = fingerprint
        # same encoder (ViT models): the base embeddings of the checked slices serve both
        after_embed = None if trains_encoder(model) else base_embed
        after = checks.score(adapted, data, split.check, embed=after_embed, cancel=poll)
        report_progress(log.planned + 2, log.planned)
    if log.stopped_by == "diverged":
        kept, reason = False, (
            f"training diverged (loss {log.losses[-1]}); lower the learning rate"
        )
    else:
        kept, reason = checks.verdict(before, after)
    notes = list(data.notes)
    if split.note:
        notes.append(split.note)
    report = AdaptationReport(
        base_model=base_name,
        root_model=str(base_model_name(base_name)),
        base_fingerprint=base_fp,
        trained=trainable_parts(model),
        objects_train=[data.objects[o].key for o in split.train],
        objects_check=[data.objects[o].key for o in split.check],
        instances_train=len(train_inst),
        before=before.to_dict(),
        after=after.to_dict(),
        kept_base=not kept,
        reason=reason,
        weak_check=split.weak,
        steps=log.steps,
        planned_steps=log.planned,
        stopped_by=log.stopped_by,
        seconds_train=round(log.seconds, 2),
        seconds_total=round(time.perf_counter() - t0, 2),
        threads=threads,
        settings=settings.to_dict(),
        seed=int(seed),
        time_limit_s=float(time_limit_s),
        holdout=float(holdout),
        notes=notes,
    )
    return AdaptationResult(adapted, predictor, report)


def _step_fn():
    """The training step (looked up at call time, so tests can replace it)."""
    from napari_sam.adaptation import training

    return training.train_step
