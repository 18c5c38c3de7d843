"""One optimizer step: the learning-rate schedule, the optimizer, the auxiliary
dense head and its loss, and :func:`train_step` (embed the scenes, decode their
objects through the interactive rounds, back-propagate, clip, step)."""

from __future__ import annotations

import math

import numpy as np

from napari_sam.training.config import TrainConfig
from napari_sam.training.rounds import StepStats, decode_rounds

__all__ = ["build_optimizer", "dense_head", "dense_loss", "lr_factor", "train_step"]


def lr_factor(progress: float, step: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to ``min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    p = min(1.0, max(0.0, progress))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))


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
