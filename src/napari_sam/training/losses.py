"""SAM's training losses: focal + dice for masks (20 : 1), MSE for the IoU head.

Every function takes logits ``(..., H, W)`` and float or bool targets of the same
shape and returns one value per leading index ``(...)`` (no reduction over
objects), so the caller can take the minimum over multimask candidates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Weights of SAM's mask loss.
FOCAL_WEIGHT = 20.0
DICE_WEIGHT = 1.0


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss (Lin et al. 2017) averaged over the last two axes.

    ``alpha`` weighs foreground pixels (``1 - alpha`` background); a negative
    ``alpha`` disables the weighting.
    """
    target = target.to(logits.dtype)
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.mean(dim=(-2, -1))


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft dice loss ``1 - (2 |p t| + eps) / (|p| + |t| + eps)`` over the last two axes."""
    target = target.to(logits.dtype)
    p = torch.sigmoid(logits).flatten(-2)
    t = target.flatten(-2)
    inter = (p * t).sum(-1)
    return 1 - (2 * inter + eps) / (p.sum(-1) + t.sum(-1) + eps)


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``20 * focal + 1 * dice`` per mask, shape ``logits.shape[:-2]``."""
    return FOCAL_WEIGHT * focal_loss(logits, target) + DICE_WEIGHT * dice_loss(logits, target)


def mask_iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of bool masks over the last two axes (1 where both are empty)."""
    pred, target = pred.bool(), target.bool()
    inter = (pred & target).flatten(-2).sum(-1).float()
    union = (pred | target).flatten(-2).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def iou_loss(pred_iou: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between the predicted IoU and the actual IoU of ``logits > 0`` with ``target``.

    The actual IoU is a constant (no gradient flows into the masks from this loss).
    """
    with torch.no_grad():
        actual = mask_iou(logits > 0, target.expand_as(logits))
    return (pred_iou - actual) ** 2
