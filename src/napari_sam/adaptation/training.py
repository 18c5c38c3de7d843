"""The fine-tuning loop of adaptation, built on :mod:`napari_sam.training`.

The interactive prompt simulation and the losses are those of the bundled
model's training (:func:`napari_sam.training.rounds.decode_rounds`): a first
prompt that is a point, a jittered box, a perturbed mask prompt with a point
or a grown box, or (stack slices) the object's mask on the neighbouring
slice; then correction clicks from the error region with the previous
round's logits as mask prompt; ``20 * focal + dice`` on the masks plus the
IoU head's MSE. The auxiliary dense loss of training is not used: the user's
labels are sparse (unlabelled objects are not background).

What is trained (:func:`trainable_parts`): every weight of the bundled
``micro`` model (its encoder is small enough for a backward pass on a CPU);
for ViT SAM models (SAM vit_b/l/h, MobileSAM, micro-sam) only the prompt
encoder and the mask decoder, on image embeddings computed once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class AdaptSettings:
    """The adaptation recipe (saved in the record of an adapted model).

    Attributes
    ----------
    steps : optimizer steps (fewer when the time limit comes first)
    crops_per_step : training views per step (crops of the model input size)
    objects_per_crop : most objects trained per view
    lr, weight_decay : AdamW (no decay on norms, biases, embeddings)
    warmup_steps, min_lr_ratio : linear warm-up, then cosine decay to ``min_lr_ratio``
    grad_clip : gradient norm clipping (0: off)
    rounds, no_point_rounds : interactive rounds per object and rounds without a click
    box_prob : probability of a jittered box as the first prompt
    mask_prompt_prob : probability of a perturbed mask prompt first ...
    mask_prompt_box_prob : ... with the box grown by 10 % (propagation) instead of a point
    propagation_prob : for stacks, share of views prompted from the neighbouring slice
    flip : random flips and transposes (encoder-trained models only)
    jitter : intensity jitter (gain ``exp(+/- jitter)``, offset ``+/- 60 * jitter`` of 255)
    min_area : objects smaller than this (pixels) are skipped
    threads : torch threads during adaptation (restored afterwards); None keeps torch's
    """

    steps: int = 120
    crops_per_step: int = 2
    objects_per_crop: int = 8
    lr: float = 2e-4
    weight_decay: float = 0.01
    warmup_steps: int = 5
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    rounds: int = 3
    no_point_rounds: int = 1
    box_prob: float = 0.5
    mask_prompt_prob: float = 0.15
    mask_prompt_box_prob: float = 0.5
    propagation_prob: float = 0.3
    flip: bool = True
    jitter: float = 0.1
    min_area: int = 9
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.steps < 1 or self.crops_per_step < 1 or self.objects_per_crop < 1:
            raise ValueError(
                f"steps, crops_per_step and objects_per_crop must be >= 1, got {self.steps}, "
                f"{self.crops_per_step}, {self.objects_per_crop}"
            )
        if not (self.lr > 0 and np.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def train_config(self):
        """The :class:`~napari_sam.training.config.TrainConfig` that the prompt simulation reads."""
        from napari_sam.training.config import TrainConfig

        return TrainConfig(
            steps=self.steps,
            rounds=self.rounds,
            no_point_rounds=self.no_point_rounds,
            box_prob=self.box_prob,
            mask_prompt_prob=self.mask_prompt_prob,
            mask_prompt_box_prob=self.mask_prompt_box_prob,
            lr=self.lr,
            weight_decay=self.weight_decay,
            warmup_steps=self.warmup_steps,
            min_lr_ratio=self.min_lr_ratio,
            grad_clip=self.grad_clip,
            aux_weight=0.0,
            threads=None,
        )


class Cancelled(Exception):
    """Adaptation was cancelled; nothing was changed or saved."""


def canceller(cancel) -> Callable[[], None] | None:
    """A function raising :class:`Cancelled` when ``cancel`` (callable or Event-like) is set."""
    if cancel is None:
        return None
    is_set = getattr(cancel, "is_set", None)
    check = is_set if is_set is not None else cancel
    if not callable(check):
        raise ValueError(
            f"cancel must be a callable returning True to stop, or an Event, got "
            f"{type(cancel).__name__}"
        )

    def poll() -> None:
        if check():
            raise Cancelled(
                "adaptation was cancelled; the model is unchanged and nothing was saved"
            )

    return poll


@contextmanager
def torch_threads(n: int | None):
    """Run with ``n`` torch threads and restore the previous count (None: no change)."""
    import torch

    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def trains_encoder(model) -> bool:
    """True for models whose every weight is adapted (the bundled micro encoder)."""
    config = getattr(model, "config", None)
    return getattr(config, "encoder", None) == "micro"


def trainable_parts(model) -> str:
    """``"all"`` or ``"prompt_encoder+mask_decoder"``."""
    return "all" if trains_encoder(model) else "prompt_encoder+mask_decoder"


def check_adaptable(predictor) -> None:
    """Raise ValueError (what and how to fix) unless ``predictor`` runs a SAM model in torch."""
    import torch

    from napari_sam.predictor import Predictor

    model = predictor.model if isinstance(predictor, Predictor) else None
    missing = [
        part
        for part in ("image_encoder", "prompt_encoder", "mask_decoder")
        if not isinstance(getattr(model, part, None), torch.nn.Module)
    ]
    if model is None or missing:
        raise ValueError(
            f"cannot adapt a {type(predictor).__name__}: adaptation needs a "
            "napari_sam.Predictor running a SAM model in torch (its image encoder, prompt "
            "encoder and mask decoder); load one with napari_sam.Predictor('micro') or a "
            "checkpoint path"
        )
    if not hasattr(model.mask_decoder, "predict_all"):
        raise ValueError(
            f"the mask decoder of {predictor.model_name!r} "
            f"({type(model.mask_decoder).__name__}) cannot be trained here; use a SAM "
            "checkpoint loaded by napari_sam"
        )


def prepare_model(model):
    """``model`` set up for adaptation: train mode, frozen encoder unless it is trained."""
    model.train()
    train_all = trains_encoder(model)
    for p in model.image_encoder.parameters():
        p.requires_grad_(train_all)
    if not train_all:
        model.image_encoder.eval()
    return model


def train_step(model, optimizer, scenes, cfg, gen, rng, features=None) -> float:
    """One optimizer step; returns the loss.

    As :func:`napari_sam.training.step.train_step` without the auxiliary loss.

    Parameters
    ----------
    model : the :class:`~napari_sam.model.sam.Sam` being adapted
    scenes : :class:`~napari_sam.training.data.Scene` list (``rgb`` unused with ``features``)
    cfg : :class:`~napari_sam.training.config.TrainConfig` (prompt simulation, clipping)
    gen, rng : torch and numpy generators of the run
    features : ``(N, C, e, e)`` cached embeddings (encoder not trained), or None
        to embed the scenes with gradients
    """
    import torch

    from napari_sam.training.data import stack_inputs
    from napari_sam.training.rounds import decode_rounds

    emb = model.image_encoder(stack_inputs(model, scenes)) if features is None else features
    total = torch.zeros((), device=emb.device)
    for i, scene in enumerate(scenes):
        masks = torch.from_numpy(scene.masks).to(emb.device)
        prompt = None
        if scene.prompt_masks is not None:
            prompt = torch.from_numpy(scene.prompt_masks).to(emb.device)
        loss, _ = decode_rounds(
            model, emb[i : i + 1], masks, scene.input_size, cfg, gen, rng, prompt
        )
        total = total + loss
    total = total / len(scenes)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.requires_grad], cfg.grad_clip
        )
    optimizer.step()
    return float(total.item())


@dataclass
class TrainLog:
    """What the loop did.

    Attributes
    ----------
    steps : optimizer steps done
    planned : steps planned at the end (the time limit may shorten the plan)
    seconds : wall-clock time of the loop
    losses : loss of every step
    stopped_by : ``"steps"`` or ``"time"``
    """

    steps: int = 0
    planned: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    stopped_by: str = "steps"


def fine_tune(
    model,
    batches: Callable[[Any], tuple[list, Any]],
    settings: AdaptSettings,
    *,
    deadline: float,
    seed: int,
    rng: np.random.Generator,
    progress: Callable[[int, int], None] | None = None,
    poll: Callable[[], None] | None = None,
    step_fn: Callable | None = None,
) -> TrainLog:
    """Run the adaptation steps on ``model`` (in place).

    Parameters
    ----------
    model : prepared with :func:`prepare_model`
    batches : ``batches(rng) -> (scenes, features or None)`` for one step
    settings : the recipe
    deadline : ``time.perf_counter()`` value by which training must end; after
        steps 2, 5, 10, 20, ... the plan (and the learning-rate schedule) is
        fitted to the time left, at most ``settings.steps`` (deterministic
        whenever ``settings.steps`` fit)
    seed : seeds the prompt simulation's torch generator
    rng : numpy generator of the run (crops, prompt kinds)
    progress : ``progress(done, planned)`` after each step
    poll : raises :class:`Cancelled` when the user cancels; called before each step
    step_fn : replaces :func:`train_step` (same signature; tests)
    """
    import torch

    from napari_sam.training.step import build_optimizer, lr_factor

    cfg = settings.train_config()
    step_fn = step_fn or train_step
    gen = torch.Generator(device=model.device).manual_seed(int(seed) + 1)
    optimizer = build_optimizer(model, cfg)
    log = TrainLog(planned=settings.steps)
    t0 = time.perf_counter()
    step = 0
    per_step = 0.0
    while step < log.planned:
        if poll is not None:
            poll()
        # stop before a step that would end after the deadline (at least one step runs)
        if step > 0 and time.perf_counter() + per_step >= deadline:
            log.stopped_by = "time"
            break
        factor = lr_factor(step / log.planned, step, replace(cfg, steps=log.planned))
        for group in optimizer.param_groups:
            group["lr"] = settings.lr * factor
        scenes, features = batches(rng)
        loss = step_fn(model, optimizer, scenes, cfg, gen, rng, features)
        if not np.isfinite(loss):
            log.losses.append(loss)
            log.stopped_by = "diverged"
            step += 1
            break
        log.losses.append(loss)
        step += 1
        if step == 1:
            t1 = time.perf_counter()  # the first step is slower (allocations): not counted
            per_step = t1 - t0
        else:
            per_step = (time.perf_counter() - t1) / (step - 1)
        if step in (2, 5) or step % 10 == 0:
            # fit the plan (and with it the learning-rate schedule) to the time left
            fits = step + int(max(0.0, deadline - time.perf_counter()) // max(per_step, 1e-6))
            log.planned = max(step, min(settings.steps, fits))
        if progress is not None:
            progress(step, log.planned)
    log.steps = step
    log.seconds = time.perf_counter() - t0
    if log.steps >= log.planned and log.stopped_by == "steps" and log.planned < settings.steps:
        log.stopped_by = "time"
    model.eval()
    return log


def make_batches(
    maker,
    anchors: Sequence[int],
    settings: AdaptSettings,
    propagation_anchors: Sequence[int] = (),
):
    """``batches(rng)`` drawing fresh augmented scenes (encoder-trained models).

    ``anchors`` are the training instances (each view is centred on one drawn
    at random); ``propagation_anchors`` those with a neighbour on an adjacent
    slice, prompted propagation-style with ``settings.propagation_prob``.
    """
    anchors = list(anchors)
    prop = list(propagation_anchors)

    def batches(rng):
        scenes = []
        for _ in range(100 * settings.crops_per_step):
            if len(scenes) == settings.crops_per_step:
                break
            if prop and rng.random() < settings.propagation_prob:
                scene = maker.scene(prop[int(rng.integers(len(prop)))], rng, propagation=True)
            else:
                scene = maker.scene(anchors[int(rng.integers(len(anchors)))], rng)
            if scene is not None:
                scenes.append(scene)
        if not scenes:
            raise ValueError(
                "no training view holds a usable object (all too small at the model's input "
                "size); label larger objects"
            )
        return scenes, None

    return batches


def make_cached_batches(views, data, settings: AdaptSettings):
    """``batches(rng)`` of cached views (encoder not trained): features plus masks."""
    import torch

    from napari_sam.adaptation.crops import cached_scene
    from napari_sam.training.data import Scene

    weights = np.array([len(v.instances) for v in views], dtype=np.float64)
    weights /= weights.sum()

    def batches(rng):
        scenes, feats = [], []
        for _ in range(100 * settings.crops_per_step):
            if len(scenes) == settings.crops_per_step:
                break
            view = views[int(rng.choice(len(views), p=weights))]
            masks = cached_scene(view, data, settings.objects_per_crop, rng)
            if masks is None:
                continue
            scenes.append(Scene(rgb=None, input_size=view.input_size, masks=masks, kind="user"))
            feats.append(view.features)
        if not scenes:
            raise ValueError(
                "no training view holds a usable object (all too small at the model's input "
                "size); label larger objects"
            )
        return scenes, torch.cat(feats)

    return batches
