"""SAM-style prompt simulation for interactive training.

All functions work on a batch of B objects of one image, in the padded model
input frame. Masks are ``(B, S, S)`` bool torch tensors; points are returned in
SAM's ``(x, y)`` order (``x`` = column, ``y`` = row, in model-input pixels) as
float32 ``(B, N, 2)`` with int64 labels ``(B, N)``: 1 positive, 0 negative,
-1 padding (an object without any error gets a padding point, which the prompt
encoder ignores). Boxes are ``(B, 4)`` float32 ``(x0, y0, x1, y1)`` with inclusive
pixel corners, like the Predictor hands boxes to the prompt encoder.

Randomness comes from a :class:`torch.Generator` so a run is reproducible.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Box-corner noise: standard deviation as a fraction of the box side ...
BOX_NOISE_FRACTION = 0.1
#: ... and the largest displacement of a corner, in model-input pixels.
BOX_NOISE_MAX = 20.0


def _check_masks(masks: torch.Tensor) -> None:
    if masks.ndim != 3:
        raise ValueError(f"masks must be (B, S, S), got shape {tuple(masks.shape)}")


def sample_points(
    region: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pixel drawn uniformly from each region.

    Parameters
    ----------
    region : bool ``(B, H, W)``

    Returns
    -------
    points : float32 ``(B, 2)`` as ``(x, y)`` (column, row) pixel indices
    valid : bool ``(B,)``; False where the region is empty (the point is then (0, 0))
    """
    _check_masks(region)
    b, _, w = region.shape
    flat = region.reshape(b, -1)
    valid = flat.any(1)
    # uniform choice among the region's pixels: the largest of iid uniform keys
    keys = torch.rand(flat.shape, generator=generator, device=region.device)
    idx = torch.where(flat, keys, -1.0).argmax(1)
    rows = torch.div(idx, w, rounding_mode="floor")
    cols = idx - rows * w
    pts = torch.stack([cols, rows], dim=1).float()
    return torch.where(valid[:, None], pts, torch.zeros_like(pts)), valid


def positive_points(
    masks: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """A first prompt: one positive point uniformly inside each mask.

    Returns points ``(B, 1, 2)`` ``(x, y)`` and labels ``(B, 1)`` (1, or -1 for an
    empty mask).
    """
    pts, valid = sample_points(masks, generator)
    labels = torch.where(valid, 1, -1).to(torch.int64)
    return pts[:, None], labels[:, None]


def bounding_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes ``(B, 4)`` ``(x0, y0, x1, y1)``, inclusive pixel indices (zeros if empty)."""
    _check_masks(masks)
    _, h, w = masks.shape
    rows = masks.any(2)
    cols = masks.any(1)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    big = max(h, w)
    y0 = torch.where(rows, ar_h, big).amin(1)
    y1 = torch.where(rows, ar_h, -1).amax(1)
    x0 = torch.where(cols, ar_w, big).amin(1)
    x1 = torch.where(cols, ar_w, -1).amax(1)
    boxes = torch.stack([x0, y0, x1, y1], 1).float()
    return torch.where(rows.any(1)[:, None], boxes, torch.zeros_like(boxes))


def jitter_boxes(
    boxes: torch.Tensor,
    image_size: tuple[int, int],
    generator: torch.Generator | None = None,
    fraction: float = BOX_NOISE_FRACTION,
    max_shift: float = BOX_NOISE_MAX,
) -> torch.Tensor:
    """Add SAM's box noise: per coordinate N(0, (fraction * side)^2), clipped to +-max_shift.

    ``image_size`` is ``(h, w)`` of the valid image area; the result is clipped
    to it and kept non-empty (x1 >= x0 + 1, y1 >= y0 + 1).
    """
    w_side = (boxes[:, 2] - boxes[:, 0] + 1).clamp(min=1)
    h_side = (boxes[:, 3] - boxes[:, 1] + 1).clamp(min=1)
    sides = torch.stack([w_side, h_side, w_side, h_side], 1)
    noise = torch.randn(boxes.shape, generator=generator, device=boxes.device) * fraction * sides
    noise = noise.clamp(-max_shift, max_shift)
    out = boxes + noise
    h, w = image_size
    out[:, 0::2] = out[:, 0::2].clamp(0, w - 1)
    out[:, 1::2] = out[:, 1::2].clamp(0, h - 1)
    x0 = torch.minimum(out[:, 0], out[:, 2])
    x1 = torch.maximum(out[:, 0], out[:, 2])
    y0 = torch.minimum(out[:, 1], out[:, 3])
    y1 = torch.maximum(out[:, 1], out[:, 3])
    x1 = torch.maximum(x1, (x0 + 1).clamp(max=w - 1))
    y1 = torch.maximum(y1, (y0 + 1).clamp(max=h - 1))
    return torch.stack([x0, y0, x1, y1], 1)


def error_clicks(
    pred: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Correction clicks sampled uniformly from the error region.

    A click in missed foreground (``target & ~pred``) is positive (1), one in false
    foreground (``pred & ~target``) negative (0); an object without errors gets
    a padding click (-1).

    Parameters
    ----------
    pred, target : bool ``(B, H, W)``

    Returns
    -------
    points : float32 ``(B, 1, 2)`` ``(x, y)``; labels : int64 ``(B, 1)``
    """
    _check_masks(pred)
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    missed = target & ~pred
    false = pred & ~target
    pts, valid = sample_points(missed | false, generator)
    x = pts[:, 0].long()
    y = pts[:, 1].long()
    b = torch.arange(pred.shape[0], device=pred.device)
    positive = missed[b, y, x]
    labels = torch.where(valid, positive.long(), torch.full_like(positive.long(), -1))
    return pts[:, None], labels[:, None]


def perturb_masks(
    masks: torch.Tensor,
    generator: torch.Generator | None = None,
    max_shift: int = 3,
    max_grow: int = 2,
) -> torch.Tensor:
    """Shift each mask by up to ``max_shift`` px and grow/shrink it by up to ``max_grow`` px.

    Simulates the neighbouring slice's mask during propagation. Returns float32
    ``(B, 1, S, S)`` with values 0/1.
    """
    _check_masks(masks)
    b = masks.shape[0]
    m = masks.float()[:, None]
    shifts = torch.randint(
        -max_shift, max_shift + 1, (b, 2), generator=generator, device=masks.device
    )
    grow = torch.randint(-max_grow, max_grow + 1, (b,), generator=generator, device=masks.device)
    out = torch.empty_like(m)
    for i in range(b):
        mi = torch.roll(m[i : i + 1], shifts=tuple(int(s) for s in shifts[i]), dims=(2, 3))
        g = int(grow[i])
        if g > 0:
            mi = F.max_pool2d(mi, 2 * g + 1, stride=1, padding=g)
        elif g < 0:
            mi = -F.max_pool2d(-mi, -2 * g + 1, stride=1, padding=-g)
        out[i] = mi[0]
    return out


def mask_to_prompt(
    masks: torch.Tensor, low_res: tuple[int, int], input_size: tuple[int, int]
) -> torch.Tensor:
    """Full-size 0/1 masks ``(B, 1, S, S)`` -> +-8 low-res logits ``(B, 1, h, w)``.

    Like :meth:`napari_sam.predictor.Predictor.mask_prompt` does with a
    slice-shaped mask: zero outside the valid ``input_size`` area, area
    downsampling, threshold 0.5.
    """
    h, w = input_size
    out = masks.clone()
    out[..., h:, :] = 0
    out[..., :, w:] = 0
    out = F.interpolate(out, low_res, mode="area")
    return (out > 0.5).float() * 16.0 - 8.0


def perturbed_mask_prompt(
    masks: torch.Tensor,
    low_res: tuple[int, int],
    input_size: tuple[int, int],
    generator: torch.Generator | None = None,
    max_shift: int = 3,
    max_grow: int = 2,
) -> torch.Tensor:
    """A mask prompt like the Predictor makes from a slice-shaped mask, from a perturbed GT.

    :func:`perturb_masks` then :func:`mask_to_prompt`. Returns float32 ``(B, 1, h, w)``.
    """
    return mask_to_prompt(
        perturb_masks(masks, generator, max_shift, max_grow), low_res, input_size
    )


def margin_boxes(
    masks: torch.Tensor, image_size: tuple[int, int], fraction: float = 0.1, minimum: int = 2
) -> torch.Tensor:
    """Bounding boxes grown by ``fraction`` of the larger side (at least ``minimum`` px).

    The box that propagation derives from the previous slice's mask. Clipped to
    ``image_size`` ``(h, w)``; ``(B, 4)`` ``(x0, y0, x1, y1)``.
    """
    boxes = bounding_boxes(masks)
    side = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) + 1
    margin = torch.clamp(torch.ceil(fraction * side), min=float(minimum))[:, None]
    out = boxes + torch.cat([-margin, -margin, margin, margin], 1)
    h, w = image_size
    out[:, 0::2] = out[:, 0::2].clamp(0, w - 1)
    out[:, 1::2] = out[:, 1::2].clamp(0, h - 1)
    return out
