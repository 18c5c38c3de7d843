"""Low-res mask logits -> the slice's size: SAM's postprocessing, evaluated on less.

SAM's decoder returns ``(h, w)`` logits (256 x 256) of the padded square
model input. Its postprocessing interpolates them bilinearly to the input
``(S, S)``, crops the resized slice ``(ih, iw)`` and interpolates again to the
slice ``(H, W)``. :func:`upscale_logits` gives the same values computing only
the rows and columns the crop keeps; :func:`upscale_masks` gives the masks
(logits above the threshold) computing only the block around each mask.
:class:`MaskUpscaler` is a :class:`~napari_sam.contract.Prediction`'s
upscaler: masks on first access. Used by
:class:`napari_sam.predictor.Predictor` (``upscale``, ``upscale_masks``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from napari_sam.model.sam import Sam
    from napari_sam.predictor import Embedding

#: Low-res cells around a mask's pixels above the threshold that :func:`upscale_masks`
#: upscales too (two keep the block's border rows, clamped differently from the
#: whole image, below the threshold; the third keeps the second resize exact).
MASK_MARGIN = 3


def upscale_logits(model: Sam, embedding: Embedding, logits: Any) -> torch.Tensor:
    """Low-res logits ``(..., h, w)`` -> logits at the slice size ``(..., H, W)``.

    SAM's postprocessing (bilinear to the padded model input, crop to the
    resized slice, bilinear to the slice size), with the first step
    evaluated only on the low-res rows and columns the crop reads (the same
    values, fewer pixels for non-square slices).
    """
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(logits, device=model.device, dtype=torch.float32)
    lead = t.shape[:-2]
    t = t.reshape(-1, 1, *t.shape[-2:])
    s = model.img_size
    (ih, iw), (oh, ow) = embedding.input_size, embedding.original_size
    lh, lw = t.shape[-2:]
    if s % lh or s % lw:  # not an integer scale: SAM's postprocessing as is
        out = model.postprocess_masks(t, embedding.input_size, embedding.original_size)
        return out.reshape(*lead, *out.shape[-2:])
    fy, fx = s // lh, s // lw
    # output rows y < ih read low-res rows up to floor((y + 0.5) / fy - 0.5) + 1 <= nh - 1,
    # never the last row of the block, so the block's border clamping changes nothing
    nh, nw = min(lh, -(-ih // fy) + 1), min(lw, -(-iw // fx) + 1)
    out = F.interpolate(
        t[..., :nh, :nw], (nh * fy, nw * fx), mode="bilinear", align_corners=False
    )[..., :ih, :iw]
    if (ih, iw) != (oh, ow):
        out = F.interpolate(out, (oh, ow), mode="bilinear", align_corners=False)
    return out.reshape(*lead, *out.shape[-2:])


def upscale_masks(model: Sam, embedding: Embedding, logits: Any) -> np.ndarray:
    """Low-res logits ``(..., h, w)`` -> bool masks at the slice size ``(..., H, W)``.

    Equal to ``upscale_logits(...) > model.mask_threshold``, computed on
    less: a bilinear value is a convex combination of neighbouring low-res
    values, so a pixel whose low-res neighbours are all at or below the
    threshold is too. Only the low-res block around each mask's pixels
    above the threshold (with a margin of :data:`MASK_MARGIN` cells) is
    upscaled; inside it the values are those of :func:`upscale_logits` (the
    block is cut on whole cells, so its interpolation weights are the same).
    """
    import torch
    import torch.nn.functional as F

    thr = float(model.mask_threshold)
    t = torch.as_tensor(logits, device=model.device, dtype=torch.float32)
    lead = t.shape[:-2]
    lh, lw = t.shape[-2:]
    t = t.reshape(-1, lh, lw)
    s = model.img_size
    (ih, iw), (oh, ow) = embedding.input_size, embedding.original_size
    if s % lh or s % lw:  # not an integer scale: no block structure
        return (upscale_logits(model, embedding, logits) > thr).cpu().numpy()
    fy, fx = s // lh, s // lw
    m = MASK_MARGIN
    out = np.zeros((t.shape[0], oh, ow), dtype=bool)
    with torch.inference_mode():
        for k in range(t.shape[0]):
            above = t[k] > thr
            rows = torch.nonzero(above.any(dim=1)).flatten()
            if rows.numel() == 0:
                continue  # every value at or below the threshold: so is every pixel
            cols = torch.nonzero(above.any(dim=0)).flatten()
            a0, a1 = max(0, int(rows[0]) - m), min(lh, int(rows[-1]) + 1 + m)
            b0, b1 = max(0, int(cols[0]) - m), min(lw, int(cols[-1]) + 1 + m)
            y0, x0 = a0 * fy, b0 * fx
            y1, x1 = min(ih, a1 * fy), min(iw, b1 * fx)
            if y1 <= y0 or x1 <= x0:
                continue  # the block lies in the padding that the crop removes
            block = F.interpolate(
                t[k, a0:a1, b0:b1][None, None],
                ((a1 - a0) * fy, (b1 - b0) * fx),
                mode="bilinear",
                align_corners=False,
            )[0, 0, : y1 - y0, : x1 - x0]
            if (ih, iw) == (oh, ow):
                out[k, y0:y1, x0:x1] = (block > thr).cpu().numpy()
                continue
            # the second resize reads pixels next to the block too: outside it
            # every value is at or below the threshold, and the threshold
            # itself stands in for them (the margin keeps it away from
            # pixels above the threshold, so no sign changes)
            crop = torch.full((ih, iw), thr, dtype=t.dtype, device=t.device)
            crop[y0:y1, x0:x1] = block
            full = F.interpolate(crop[None, None], (oh, ow), mode="bilinear",
                                 align_corners=False)[0, 0]
            out[k] = (full > thr).cpu().numpy()
    return out.reshape(*lead, oh, ow)


class MaskUpscaler:
    """Masks at the slice size from one prediction's low-res logits, on demand."""

    __slots__ = ("embedding", "logits", "model")

    def __init__(self, model: Sam, embedding: Embedding, logits: Any) -> None:
        self.model = model
        self.embedding = embedding
        self.logits = logits  # (K, h, w) torch

    def __call__(self, indices: list[int]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return upscale_masks(self.model, self.embedding, self.logits[list(indices)])
