"""The interactive training loop (SAM's simulation, sized for a CPU).

Per step: ``images_per_step`` fresh scenes are embedded once (with gradients);
for each scene up to ``objects_per_image`` objects are decoded together through
``rounds`` interactive rounds:

* round 0: a positive point uniformly inside each object or its jittered
  bounding box (``box_prob``), or, with ``mask_prompt_prob``, a perturbed
  ground-truth mask prompt plus one positive point or (``mask_prompt_box_prob``)
  plus its box grown by 10 % (as propagation prompts); stack slices (see
  :class:`~napari_sam.training.data.DataConfig`) are prompted from the object's
  mask on the neighbouring slice. Single-prompt rounds train the three
  multimask outputs with the minimum loss over the candidates (SAM) and, in
  addition, the single-mask output, so ``multimask=False`` works for one prompt;
* every later round feeds the previous round's low-res logits back as the mask
  prompt and adds a correction click from the error region, except the
  ``no_point_rounds`` rounds (the last one and, when 2, one at random), which
  add no point; these rounds train the single-mask output.

Loss: ``20 * focal + dice`` on the logits upsampled to the model input size
(bilinear, as :meth:`napari_sam.model.sam.Sam.postprocess_masks` does) plus the
MSE of the IoU head against the actual IoU of every trained output, plus an
auxiliary dense loss (foreground and boundaries predicted from the embedding by
a training-only 1x1 conv). AdamW, linear warm-up, cosine decay over
``max(step / steps, elapsed / time_limit)`` so the schedule finishes whichever
budget runs out first.

Three measures make training from scratch feasible on a CPU within an hour (SAM
trains its decoder on 11 M images): a multi-scale random Fourier position
encoding (:func:`init_positional_encoding`), decoder cross-attention started as
position matching (:func:`init_decoder_attention`), and a resolution curriculum
(``resolution_schedule``: first at 128 px, 4x cheaper per step, then at the
model's 256 px, sharing all weights, :func:`training_resolution`).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_sam.training.data import DataConfig


def micro_config(
    img_size: int = 256,
    patch_size: int = 8,
    embed_dim: int = 64,
    widths: tuple[int, ...] = (24, 48, 96, 160),
    depths: tuple[int, ...] = (1, 2, 2, 2),
    fpn_dim: int = 64,
    attn_depth: int = 1,
    attn_heads: int = 4,
    decoder_mlp_dim: int = 256,
    iou_head_hidden_dim: int = 128,
    mask_in_chans: int = 16,
):
    """The :class:`~napari_sam.model.sam.SamConfig` of a micro model.

    ``decoder_heads`` follows the rule that
    :func:`napari_sam.model.checkpoint.decoder_fields` uses to read it back.
    """
    from napari_sam.model.sam import SamConfig

    return SamConfig(
        encoder="micro",
        encoder_options={
            "widths": tuple(widths),
            "depths": tuple(depths),
            "fpn_dim": fpn_dim,
            "attn_depth": attn_depth,
            "attn_heads": attn_heads,
        },
        img_size=img_size,
        patch_size=patch_size,
        prompt_embed_dim=embed_dim,
        mask_in_chans=mask_in_chans,
        decoder_depth=2,
        decoder_heads=8 if embed_dim >= 256 else max(1, embed_dim // 16),
        decoder_mlp_dim=decoder_mlp_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=iou_head_hidden_dim,
        num_multimask_outputs=3,
    )


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved with the weights).

    Attributes
    ----------
    model : keyword arguments of :func:`micro_config`
    data : scene sampling, see :class:`~napari_sam.training.data.DataConfig`
    steps : optimizer steps (the schedule's length)
    time_limit_s : wall-clock budget; training stops and the schedule ends by then
    images_per_step : scenes embedded per step
    rounds : interactive rounds per object (>= 1)
    no_point_rounds : rounds without a new click (0, 1 or 2)
    box_prob : probability that an image's first prompt is a jittered box
    mask_prompt_prob : probability of a perturbed-mask + point first prompt
    mask_prompt_box_prob : within those, probability of a perturbed mask + the box
        grown by 10 % around it (what propagation sends) instead of the point
    focal_alpha : foreground weight of the focal loss (negative: unweighted)
    aux_weight : weight of the auxiliary dense loss on the image embedding (a
        training-only 1x1 conv head predicting foreground and object boundaries
        from the embedding; it speeds up learning and is not saved)
    pe_scales : range of the spatial frequencies of the random Fourier position
        encoding (SAM draws them with scale 1); each frequency pair is scaled by
        a log-uniform factor in this range so that small objects are resolved
    attention_init : ``beta`` of :func:`init_decoder_attention` (0: SAM's random init)
    resolution_schedule : ``(end_progress, img_size)`` phases: until training
        progress ``end_progress`` (0-1) the model runs at ``img_size`` (see
        :func:`training_resolution`) on scenes scaled to match (same object
        sizes in pixels, smaller fields of view); the last phase should be the
        model's own input size
    init_weights : start from this checkpoint (a fine-tuning stage: ``model``,
        ``pe_scales`` and ``attention_init`` are then ignored); the record of the
        run that produced it (``training_record.json`` beside it) is kept in
        this run's record as ``previous_stage``
    lr, weight_decay, warmup_steps, min_lr_ratio, grad_clip : optimizer
    seed : seeds numpy (scenes), torch (init, prompts)
    device : ``"auto"``, ``"cpu"``, ``"cuda"`` ...
    threads : torch CPU threads (None: leave torch's default)
    checkpoint_every : steps between checkpoints (the latest is always kept)
    log_every : steps between log lines
    val_every : steps between quick validations (0: never)
    """

    model: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    steps: int = 1000
    time_limit_s: float = 3000.0
    images_per_step: int = 2
    rounds: int = 3
    no_point_rounds: int = 1
    box_prob: float = 0.5
    mask_prompt_prob: float = 0.1
    mask_prompt_box_prob: float = 0.0
    focal_alpha: float = -1.0
    aux_weight: float = 1.0
    pe_scales: tuple[float, float] = (1.0, 3.0)
    attention_init: float = 2.0
    resolution_schedule: tuple[tuple[float, int], ...] = ((0.35, 128), (1.0, 256))
    init_weights: str | None = None
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.03
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    threads: int | None = 1
    checkpoint_every: int = 100
    log_every: int = 10
    val_every: int = 200

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data"] = self.data.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        if "data" in d and isinstance(d["data"], dict):
            data = dict(d["data"])
            for key in ("base_shape", "other_sides"):
                if key in data:
                    data[key] = tuple(data[key])
            if "kind_weights" in data:
                data["kind_weights"] = dict(data["kind_weights"])
            d["data"] = DataConfig(**data)
        if "resolution_schedule" in d:
            d["resolution_schedule"] = tuple(
                (float(e), int(s)) for e, s in d["resolution_schedule"]
            )
        if "pe_scales" in d:
            d["pe_scales"] = tuple(float(v) for v in d["pe_scales"])
        return cls(**d)

    def updated(self, overrides: dict[str, Any]) -> TrainConfig:
        """A copy with ``overrides`` applied (``"data"`` and ``"model"`` merge key by key)."""
        unknown = set(overrides) - set(self.to_dict())
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}")
        d = self.to_dict()
        for key, value in overrides.items():
            if key in ("data", "model") and isinstance(value, dict):
                bad = set(value) - set(d[key]) if key == "data" else set()
                if bad:
                    raise ValueError(f"unknown data settings {sorted(bad)}")
                d[key] = {**d[key], **value}
            else:
                d[key] = value
        return TrainConfig.from_dict(d)


@dataclass
class StepStats:
    """Loss terms of one step (averaged over images and rounds)."""

    loss: float = 0.0
    focal: float = 0.0
    dice: float = 0.0
    iou_mse: float = 0.0
    iou_first: float = 0.0
    iou_last: float = 0.0
    aux: float = 0.0


def lr_factor(progress: float, step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    p = min(1.0, max(0.0, progress))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def _round_plan(cfg: TrainConfig, gen) -> list[bool]:
    """For rounds 1..rounds-1: True where the round adds a correction click."""
    import torch

    n = cfg.rounds - 1
    if n <= 0:
        return []
    plan = [True] * n
    if cfg.no_point_rounds >= 1:
        plan[-1] = False
    if cfg.no_point_rounds >= 2 and n >= 3:
        plan[int(torch.randint(0, n - 1, (1,), generator=gen))] = False
    return plan


def decode_rounds(
    model, embedding, masks, input_size, cfg: TrainConfig, gen, rng, prompt_masks=None
):
    """Run the interactive rounds for the objects of one image; return losses and stats.

    Parameters
    ----------
    model : :class:`~napari_sam.model.sam.Sam` in train mode
    embedding : ``(1, C, e, e)`` image embedding (with gradient)
    masks : bool ``(B, S, S)`` ground truth in the padded model frame
    input_size : ``(h, w)`` of the valid image area
    gen : torch.Generator for prompts; rng : numpy Generator for the prompt type
    prompt_masks : bool ``(B, S, S)`` or None: propagation-style first prompt
        (this mask, slightly perturbed, as mask prompt plus its box grown by 10 %)
    """
    import torch
    import torch.nn.functional as F

    from napari_sam.training import losses
    from napari_sam.training.prompts import (
        bounding_boxes,
        error_clicks,
        jitter_boxes,
        margin_boxes,
        mask_to_prompt,
        perturb_masks,
        perturbed_mask_prompt,
        positive_points,
    )

    s = model.img_size
    pe = model.prompt_encoder.get_dense_pe()
    low_res = model.prompt_encoder.mask_input_size
    target = masks.float()
    points = labels = boxes = mask_input = None
    kind = rng.random()
    multimask_first = True
    if prompt_masks is not None:  # a stack slice, prompted from its neighbour
        prev = perturb_masks(prompt_masks, gen, max_shift=1, max_grow=1)
        mask_input = mask_to_prompt(prev, low_res, input_size)
        boxes = margin_boxes(prev[:, 0] > 0.5, input_size)
        multimask_first = False
    elif kind < cfg.mask_prompt_prob:
        # (no draw when the option is off, so older runs replay with the same stream)
        if cfg.mask_prompt_box_prob > 0 and rng.random() < cfg.mask_prompt_box_prob:
            prev = perturb_masks(masks, gen)
            mask_input = mask_to_prompt(prev, low_res, input_size)
            boxes = margin_boxes(prev[:, 0] > 0.5, input_size)
        else:
            mask_input = perturbed_mask_prompt(masks, low_res, input_size, gen)
            points, labels = positive_points(masks, gen)
        multimask_first = False
    elif kind < cfg.mask_prompt_prob + (1 - cfg.mask_prompt_prob) * cfg.box_prob:
        boxes = jitter_boxes(bounding_boxes(masks), input_size, gen)
    else:
        points, labels = positive_points(masks, gen)
    plan = [None, *_round_plan(cfg, gen)]
    total = torch.zeros((), device=masks.device)
    stats = StepStats()
    prev_pred = masks
    for r, add_click in enumerate(plan):
        if add_click:
            new_pts, new_lab = error_clicks(prev_pred, masks, gen)
            if points is None:
                points, labels = new_pts, new_lab
            else:
                points = torch.cat([points, new_pts], 1)
                labels = torch.cat([labels, new_lab], 1)
        pt = None if points is None else (points, labels)
        sparse, dense = model.prompt_encoder(pt, boxes, mask_input)
        logits_all, iou_all = model.mask_decoder.predict_all(embedding, pe, sparse, dense)
        multimask = r == 0 and multimask_first
        # multimask rounds train all 4 outputs: the min loss over the 3 candidates
        # (SAM) plus the single output, so multimask=False also works for one prompt
        up_all = F.interpolate(
            logits_all if multimask else logits_all[:, :1],
            (s, s),
            mode="bilinear",
            align_corners=False,
        )
        iou_used = iou_all if multimask else iou_all[:, :1]
        t = target[:, None].expand_as(up_all)
        focal_all = losses.focal_loss(up_all, t, alpha=cfg.focal_alpha)
        dice_all = losses.dice_loss(up_all, t)
        per_all = losses.FOCAL_WEIGHT * focal_all + losses.DICE_WEIGHT * dice_all
        iou_mse = losses.iou_loss(iou_used, up_all, t)  # (B, K)
        if multimask:
            logits, up = logits_all[:, 1:], up_all[:, 1:]
            per, focal, dice = per_all[:, 1:], focal_all[:, 1:], dice_all[:, 1:]
        else:
            logits, up, per, focal, dice = logits_all[:, :1], up_all, per_all, focal_all, dice_all
        best = per.argmin(1)
        b_idx = torch.arange(per.shape[0], device=per.device)
        mask_term = per[b_idx, best].mean()
        if multimask:
            mask_term = mask_term + per_all[:, 0].mean()
        total = total + mask_term + iou_mse.mean()
        with torch.no_grad():
            chosen = up[b_idx, best] > 0
            iou_now = losses.mask_iou(chosen, masks).mean().item()
        stats.focal += focal[b_idx, best].mean().item()
        stats.dice += dice[b_idx, best].mean().item()
        stats.iou_mse += iou_mse.mean().item()
        if r == 0:
            stats.iou_first = iou_now
        stats.iou_last = iou_now
        prev_pred = chosen
        mask_input = logits[b_idx, best][:, None].detach()
    n = len(plan)
    stats.focal /= n
    stats.dice /= n
    stats.iou_mse /= n
    return total / n, stats


def phase_size(schedule, progress: float, default: int) -> int:
    """The input size of the resolution phase that ``progress`` (0-1) falls in."""
    for end, size in schedule:
        if progress < end:
            return int(size)
    return int(schedule[-1][1]) if schedule else int(default)


def scaled_data(data: DataConfig, factor: float) -> DataConfig:
    """``data`` with its scene shapes scaled by ``factor`` (object sizes unchanged)."""
    if factor == 1:
        return data
    return replace(
        data,
        base_shape=tuple(max(16, round(s * factor)) for s in data.base_shape),
        other_sides=tuple(max(16, round(s * factor)) for s in data.other_sides),
    )


@contextmanager
def training_resolution(model, img_size: int):
    """Temporarily run ``model`` at another (smaller) input size, sharing all weights.

    The micro encoder is convolutional (its attention position table is
    interpolated), SAM's decoder attends over any number of tokens, and the
    prompt encoder's geometry is plain attributes; only those attributes and
    the encoder's ``img_size`` change, so a cheap low-resolution warm-up phase
    trains exactly the parameters used at full size.
    """
    enc, pe = model.image_encoder, model.prompt_encoder
    saved = (enc.img_size, pe.image_embedding_size, pe.input_image_size, pe.mask_input_size)
    stride = model.config.patch_size if model.config is not None else 16
    if img_size % stride:
        raise ValueError(f"img_size {img_size} must be a multiple of the stride {stride}")
    e = img_size // stride
    enc.img_size = img_size
    pe.image_embedding_size = (e, e)
    pe.input_image_size = (img_size, img_size)
    pe.mask_input_size = (4 * e, 4 * e)
    try:
        yield model
    finally:
        enc.img_size, pe.image_embedding_size, pe.input_image_size, pe.mask_input_size = saved


def init_positional_encoding(model, scales: tuple[float, float], gen) -> None:
    """Redraw the prompt encoder's random Fourier basis with multi-scale frequencies.

    SAM draws the ``(2, C/2)`` basis from N(0, 1), i.e. at most a few periods per
    image side, too coarse to tell apart objects a few percent of the image wide.
    Each column is scaled here by a factor log-uniform in ``scales``. The basis
    is a buffer of the state dict, so inference uses exactly the trained one.
    """
    import torch

    buf = model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    lo, hi = (float(v) for v in scales)
    if not 0 < lo <= hi:
        raise ValueError(f"pe_scales must satisfy 0 < low <= high, got {scales}")
    g = torch.randn(buf.shape, generator=gen)
    u = torch.rand(buf.shape[1], generator=gen)
    factor = torch.exp(torch.log(torch.tensor(lo)) + u * (np.log(hi) - np.log(lo)))
    with torch.no_grad():
        buf.copy_((g * factor).to(buf.device))


def init_decoder_attention(model, beta: float = 2.0) -> None:
    """Start the decoder's image/token cross-attention as position matching.

    Each head's query and key projections of the token->image and image->token
    attentions are set to ``beta`` times a selection of sin/cos pairs of the
    random Fourier position encoding (a few frequencies per head, spread from
    low to high). The attention logit between an image location ``x`` and a
    prompt at ``p`` then starts as ``beta**2 * sum_j cos(w_j . (x - p))`` (plus
    content terms): a kernel peaked at the prompt. Trained from random
    projections, SAM's decoder needs hundreds of steps on a plateau to discover
    this; starting from it shortens the plateau (the weights stay free to change).
    """
    import torch

    pe = model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix  # (2, F)
    dim = model.prompt_encoder.embed_dim
    n_freq = pe.shape[1]
    order = torch.argsort(pe.norm(dim=0))  # low to high frequency
    tr = model.mask_decoder.transformer
    modules = [tr.final_attn_token_to_image]
    for layer in tr.layers:
        modules += [layer.cross_attn_token_to_image, layer.cross_attn_image_to_token]
    for att in modules:
        inner, heads = att.internal_dim, att.num_heads
        head_dim = inner // heads
        sel = torch.zeros(inner, dim)
        for h in range(heads):
            for i, j in enumerate(order[h::heads][: head_dim // 2].tolist()):
                sel[h * head_dim + 2 * i, j] = 1.0
                sel[h * head_dim + 2 * i + 1, n_freq + j] = 1.0
        with torch.no_grad():
            for proj in (att.q_proj, att.k_proj):
                proj.weight.copy_(beta * sel)
                proj.bias.zero_()


def dense_head(model):
    """The training-only auxiliary head: 1x1 conv from the embedding to 2 dense maps."""
    from torch import nn

    dim = model.prompt_encoder.embed_dim
    return nn.Conv2d(dim, 2, kernel_size=1).to(model.device)


def dense_loss(head, emb, scenes, img_size: int):
    """BCE + dice of the auxiliary foreground/boundary maps (upsampled to the input size)."""
    import torch
    import torch.nn.functional as F

    from napari_sam.training import losses

    target = torch.from_numpy(np.stack([s.dense for s in scenes])).to(emb.device).float()
    pred = F.interpolate(head(emb), (img_size, img_size), mode="bilinear", align_corners=False)
    bce = F.binary_cross_entropy_with_logits(pred, target)
    return bce + losses.dice_loss(pred, target).mean()


def train_step(
    model, optimizer, scenes, cfg: TrainConfig, gen, rng, head=None
) -> StepStats:
    """One optimizer step on ``scenes`` (list of :class:`~napari_sam.training.data.Scene`).

    ``head`` is the optional auxiliary dense head (see :func:`dense_head`).
    """
    import torch

    from napari_sam.training.data import stack_inputs

    model.train()
    x = stack_inputs(model, scenes)
    emb = model.image_encoder(x)
    total = torch.zeros((), device=x.device)
    agg = StepStats()
    if head is not None and cfg.aux_weight > 0:
        aux = dense_loss(head, emb, scenes, model.img_size)
        agg.aux = float(aux.item())
        total = total + cfg.aux_weight * aux * len(scenes)
    for i, scene in enumerate(scenes):
        masks = torch.from_numpy(scene.masks).to(x.device)
        prompt_masks = None
        if scene.prompt_masks is not None:
            prompt_masks = torch.from_numpy(scene.prompt_masks).to(x.device)
        loss, st = decode_rounds(
            model, emb[i : i + 1], masks, scene.input_size, cfg, gen, rng, prompt_masks
        )
        total = total + loss
        for k in ("focal", "dice", "iou_mse", "iou_first", "iou_last"):
            setattr(agg, k, getattr(agg, k) + getattr(st, k) / len(scenes))
    total = total / len(scenes)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    agg.loss = float(total.item())
    return agg


def build_optimizer(model, cfg: TrainConfig, extra=None):
    """AdamW without weight decay on norms, biases, embeddings and position tables.

    ``extra`` is an optional additional module trained alongside (the dense head).
    """
    import torch

    decay, no_decay = [], []
    named = list(model.named_parameters())
    if extra is not None:
        named += [(f"extra.{n}", p) for n, p in extra.named_parameters()]
    for name, p in named:
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".pos") or "tokens" in name or "embed" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )


def save_weights(model, path: str | os.PathLike) -> str:
    """Write the model's state dict (tensors only, loadable with ``weights_only=True``).

    Written to a temporary file first and renamed, so a reader never sees a
    half-written checkpoint. Returns the file's sha256.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return file_sha256(path)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class TrainResult:
    """What :func:`train` returns: the model and the training record."""

    model: Any
    record: dict


def train(
    cfg: TrainConfig,
    out_dir: str | os.PathLike | None = None,
    *,
    log: Callable[[str], None] = print,
    validate: Callable[[Any], dict] | None = None,
    resume: bool = False,
    command: str | None = None,
) -> TrainResult:
    """Train a micro model from scratch (or from ``cfg.init_weights``), resumably.

    Parameters
    ----------
    cfg : the run's settings
    out_dir : where ``micro_sam_latest.pt`` (every ``checkpoint_every`` steps and
        at the end) and ``training_record.json`` are written; None writes nothing
    log : called with each log line
    validate : ``validate(model) -> dict`` of metrics, run every ``val_every`` steps
        and at the end (e.g. :func:`napari_sam.training.validation.quick_validation`)
    resume : continue the run saved in ``out_dir`` (its ``state.pt``, see
        :mod:`napari_sam.training.resume`) instead of starting over: model,
        optimizer, step, training seconds, random streams and the record carry
        on; ``cfg`` must be the run's configuration except for ``steps`` and
        ``time_limit_s``, which may be raised to extend it
    command : the command line that started the run, kept in the record from
        the first checkpoint on (a run killed before its end still says how it began)

    Returns
    -------
    TrainResult with the trained model (eval mode) and the record (config,
    generator parameters, per-step log, validation history, timing, sha256).
    """
    import torch

    from napari_sam.model.checkpoint import resolve_device
    from napari_sam.model.sam import build_sam
    from napari_sam.training.data import StackSource, scene_batch

    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if cfg.rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {cfg.rounds}")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    previous = None
    if cfg.init_weights:
        from napari_sam.model.checkpoint import model_from_state_dict, read_state_dict

        model = model_from_state_dict(read_state_dict(cfg.init_weights))
        config = model.config
        sibling = Path(cfg.init_weights).with_name("training_record.json")
        if sibling.is_file():
            previous = json.loads(sibling.read_text())
    else:
        config = micro_config(**cfg.model)
        model = build_sam(config)
        gen_init = torch.Generator().manual_seed(cfg.seed + 2)
        init_positional_encoding(model, cfg.pe_scales, gen_init)
        if cfg.attention_init > 0:
            init_decoder_attention(model, cfg.attention_init)
    from napari_sam.training.resume import load_state, save_state

    state = load_state(out_dir) if resume and out_dir is not None else None
    if resume and state is None:
        raise FileNotFoundError(
            f"nothing to resume in {out_dir!r} (no state.pt); start the run without resume"
        )
    if state is not None:
        model.load_state_dict(state.model)
    model = model.to(device)
    head = dense_head(model) if cfg.aux_weight > 0 else None
    optimizer = build_optimizer(model, cfg, extra=head)
    if state is not None:
        optimizer.load_state_dict(state.optimizer)
        if head is not None and state.head is not None:
            head.load_state_dict(state.head)
        rng.bit_generator.state = state.numpy_rng
        gen.set_state(state.torch_gen)
    n_params = sum(p.numel() for p in model.parameters())
    record: dict[str, Any] = {
        "train_config": cfg.to_dict(),
        "model_config": config.to_dict(),
        "n_parameters": n_params,
        "n_parameters_image_encoder": sum(p.numel() for p in model.image_encoder.parameters()),
        "data": {
            "generator": "napari_sam.synthetic.random_scene_2d",
            "note": "each scene draws its kind from kind_weights, then random_scene_2d "
            "randomizes bit depth, photons, read noise, background, illumination, PSF, "
            "object size, density, clustering and texture; see its source for ranges",
        },
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "log": [],
        "validation": [],
    }
    if previous is not None:
        record["previous_stage"] = previous
    if command is not None:
        record["command"] = command
    if state is not None:
        saved = json.loads((Path(out_dir) / "training_record.json").read_text())
        record["log"], record["validation"] = saved.get("log", []), saved.get("validation", [])
        record["sessions"] = saved.get("sessions", [])
        for key in ("previous_stage", "command"):
            if key in saved:
                record[key] = saved[key]
    record.setdefault("sessions", []).append(
        {
            "start_step": 0 if state is None else state.step,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "torch_threads": torch.get_num_threads(),
        }
    )
    log(f"micro model: {n_params / 1e6:.2f} M parameters on {device}; {cfg.steps} steps, "
        f"time limit {cfg.time_limit_s:.0f} s")
    out = Path(out_dir) if out_dir is not None else None
    latest = out / "micro_sam_latest.pt" if out is not None else None
    before = 0.0 if state is None else state.elapsed_s
    t0 = time.perf_counter() - before  # elapsed counts the training seconds of all sessions
    data_time = 0.0 if state is None else state.data_time_s
    start = 0 if state is None else state.step
    steps_done = start
    stacks = StackSource() if state is None else state.stacks
    if state is not None:
        log(f"resuming at step {start} after {before:.0f} s of training")
    window: list[StepStats] = []

    def checkpoint(step: int, final: bool = False) -> None:
        _checkpoint(model, record, out, latest, step, t0, data_time, final=final)
        save_state(
            out, model=model, optimizer=optimizer, head=head, rng=rng, gen=gen, stacks=stacks,
            step=step, elapsed_s=time.perf_counter() - t0, data_time_s=data_time,
        )

    for step in range(start, cfg.steps):
        elapsed = time.perf_counter() - t0
        if elapsed >= cfg.time_limit_s:
            log(f"time limit reached after {step} steps")
            break
        progress = max(step / cfg.steps, elapsed / cfg.time_limit_s)
        factor = lr_factor(progress, step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * factor
        size = phase_size(cfg.resolution_schedule, progress, config.img_size)
        td = time.perf_counter()
        scenes = scene_batch(
            rng,
            cfg.images_per_step,
            size,
            scaled_data(cfg.data, size / config.img_size),
            stacks,
        )
        data_time += time.perf_counter() - td
        with training_resolution(model, size):
            st = train_step(model, optimizer, scenes, cfg, gen, rng, head)
        steps_done = step + 1
        if not math.isfinite(st.loss):
            raise RuntimeError(f"loss became {st.loss} at step {step}; lower the learning rate")
        window.append(st)
        if (step + 1) % cfg.log_every == 0 or step == 0:
            mean = {k: float(np.mean([getattr(s, k) for s in window])) for k in asdict(st)}
            entry = {
                "step": step + 1,
                "time_s": round(time.perf_counter() - t0, 1),
                "lr": cfg.lr * factor,
                "img_size": size,
                **{k: round(v, 5) for k, v in mean.items()},
            }
            record["log"].append(entry)
            log(
                f"step {step + 1:5d} {entry['time_s']:7.0f}s {size}px lr {entry['lr']:.2e} "
                f"loss {mean['loss']:.4f} focal {mean['focal']:.4f} dice {mean['dice']:.4f} "
                f"iou_mse {mean['iou_mse']:.4f} aux {mean['aux']:.3f} "
                f"IoU first {mean['iou_first']:.3f} last {mean['iou_last']:.3f}"
            )
            window = []
        if validate is not None and cfg.val_every and (step + 1) % cfg.val_every == 0:
            _run_validation(model, validate, record, step + 1, t0, log)
        if latest is not None and (step + 1) % cfg.checkpoint_every == 0:
            checkpoint(step + 1)
    if validate is not None:
        _run_validation(model, validate, record, steps_done, t0, log)
    if latest is not None:
        checkpoint(steps_done, final=True)
    model.eval()
    return TrainResult(model=model, record=record)


def _run_validation(model, validate, record, step, t0, log) -> None:
    model.eval()
    metrics = validate(model)
    model.train()
    record["validation"].append(
        {"step": step, "time_s": round(time.perf_counter() - t0, 1), **metrics}
    )
    log(f"validation at step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))


def _checkpoint(model, record, out, latest, step, t0, data_time, final=False) -> None:
    sha = save_weights(model, latest)
    record["steps_done"] = step
    record["train_time_s"] = round(time.perf_counter() - t0, 1)
    record["data_time_s"] = round(data_time, 1)
    record["weights_sha256"] = sha
    record["finished"] = final
    (out / "training_record.json").write_text(json.dumps(record, indent=1))


def small_test_config(**overrides) -> TrainConfig:
    """A tiny, fast configuration (for tests and smoke runs)."""
    model = {
        "img_size": 64,
        "patch_size": 8,
        "embed_dim": 32,
        "widths": (8, 16, 16, 32),
        "depths": (1, 1, 1, 1),
        "fpn_dim": 16,
        "attn_depth": 1,
        "attn_heads": 2,
        "decoder_mlp_dim": 32,
        "iou_head_hidden_dim": 16,
        "mask_in_chans": 8,
    }
    data = DataConfig(base_shape=(64, 64), other_shape_prob=0.0, objects_per_image=3)
    cfg = TrainConfig(
        model=model,
        data=data,
        steps=5,
        images_per_step=1,
        rounds=3,
        warmup_steps=1,
        threads=None,
        device="cpu",
        log_every=1,
        val_every=0,
        resolution_schedule=((1.0, 64),),
    )
    return replace(cfg, **overrides)
