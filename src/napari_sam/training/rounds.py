"""The interactive rounds of one image's objects: SAM's prompt simulation and losses.

Round 0 prompts each object with a point, a jittered box, or a perturbed mask
(with a point or its grown box); a stack slice is prompted from its
neighbour's mask. Every later round feeds back the previous low-res logits as
the mask prompt and adds a correction click, except the ``no_point_rounds``
rounds. See :mod:`napari_sam.training.loop` for the whole step.
"""

from __future__ import annotations

from dataclasses import dataclass

from napari_sam.training.config import TrainConfig

__all__ = ["StepStats", "decode_rounds"]


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
            if points is None or labels is None:  # (both or neither)
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
