"""Decoding a batch of grid points into filtered candidate masks.

Three paths, chosen by what the predictor's contract
(:class:`~napari_sam.contract.BasePredictor`) says: its exact fast decoder
(``point_decoder``, this package's :class:`~napari_sam.predictor.Predictor`:
:mod:`._decoder`), ``predict_batch(..., upscale=False)`` plus ``upscale``
(``lowres_decoding``: filtering on the low-res logits), or ``predict_batch``
returning masks at the slice's size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_sam.contract import BasePredictor
from napari_sam.everything._params import EverythingParams

#: Image-token values per call of the fast decoder (8 MiB of float32): its
#: per-prompt image tokens are ``prompts x tokens x channels`` floats (4 MiB per
#: prompt for SAM's 4096 x 256), so this bounds memory.
FAST_VALUES_PER_CALL = 1 << 21

#: Bounds on the prompts per call of the fast decoder: SAM gets the lower one
#: (8); a small decoder gets more, which saves per-call overhead (the bundled
#: model gets 32; measured in docs/everything.md, "Compact storage").
FAST_PROMPTS_PER_CALL = (8, 32)


def fast_prompts_per_call(tokens: int, channels: int) -> int:
    """Prompts per call of the fast decoder for ``tokens x channels`` image tokens."""
    low, high = FAST_PROMPTS_PER_CALL
    return min(high, max(low, FAST_VALUES_PER_CALL // max(1, tokens * channels)))


def point_grid(n: int, shape: tuple[int, int]) -> np.ndarray:
    """``(n*n, 2)`` ``(row, col)`` points at the centres of an ``n x n`` grid of cells."""
    h, w = shape
    rows = np.minimum((np.arange(n) + 0.5) * h / n, h - 1)
    cols = np.minimum((np.arange(n) + 0.5) * w / n, w - 1)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return np.stack([rr.ravel(), cc.ravel()], axis=1)


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _stability_np(logits: np.ndarray, offset: float, threshold: float) -> np.ndarray:
    """``(K,)`` stability scores of ``(K, ...)`` logits; 0 where the loose mask is empty."""
    flat = logits.reshape(len(logits), -1)
    inter = np.count_nonzero(flat > threshold + offset, axis=1)
    union = np.count_nonzero(flat > threshold - offset, axis=1)
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


@dataclass
class Kept:
    """Candidates of one batch that passed the IoU and stability filters."""

    logits: Any  # (K, h, w) low-res logits (torch or numpy), or None
    masks: np.ndarray | None  # (K, H, W) bool full-res masks when there are no logits to upscale
    iou: np.ndarray  # (K,)
    stability: np.ndarray  # (K,)
    n_candidates: int


class Decoder:
    """Decode a batch of single positive points and filter their 3 candidates each."""

    def __init__(self, predictor: BasePredictor, embedding: Any, params: EverythingParams
                 ) -> None:
        self.predictor = predictor
        self.embedding = embedding
        self.params = params
        self.threshold = float(predictor.mask_threshold)
        self.region: Any = None  # RegionUpscaler, False when unavailable, None: not tried yet
        self.fast = predictor.point_decoder(embedding) if params.fast_decoder else None
        if self.fast is not None:
            self.mode = "fast"
        else:
            self.mode = "lowres" if predictor.lowres_decoding else "batch"

    # -- the three ways of getting logits and scores
    def __call__(self, points: np.ndarray) -> Kept:
        if self.mode == "fast":
            return self._fast(points)
        return self._generic(points)

    def _fast(self, points: np.ndarray) -> Kept:
        import torch

        p = self.params
        dec = self.fast
        assert dec is not None  # mode "fast"
        emb = self.embedding
        device = dec.src.device
        coords = torch.as_tensor(
            emb.to_model_frame(points[:, None, :]), dtype=torch.float32, device=device
        )
        labels = torch.ones(coords.shape[:2], dtype=torch.int64, device=device)
        low = 4 * dec.grid[0], 4 * dec.grid[1]
        vh, vw = self.predictor.lowres_extent(emb, low)
        valid = None
        if (vh, vw) != low:
            spatial = torch.zeros(low, dtype=torch.bool, device=device)
            spatial[:vh, :vw] = True
            valid = dec.to_raw(spatial)
        logits, ious, stabs = [], [], []
        with torch.inference_mode():
            step = fast_prompts_per_call(*dec.src.shape)
            for s in range(0, len(points), step):
                stage = dec.decode_points(coords[s : s + step], labels[s : s + step])
                passing = stage.iou > p.resolved("pred_iou_thresh")
                index = torch.nonzero(passing.any(dim=1)).ravel()
                if index.numel() == 0:
                    continue
                raw = dec.raw_masks(stage, index)  # (b, 3, N)
                vals = raw if valid is None else raw[..., valid]
                inter = (vals > self.threshold + p.stability_offset).sum(-1)
                union = (vals > self.threshold - p.stability_offset).sum(-1)
                stab = torch.where(union > 0, inter / union.clamp(min=1), 0.0)
                stable = stab >= p.resolved("stability_score_thresh")
                keep = passing[index] & stable & (union > 0)
                if keep.any():
                    logits.append(raw[keep])
                    ious.append(stage.iou[index][keep])
                    stabs.append(stab[keep])
        if not logits:
            return Kept(None, None, np.zeros(0), np.zeros(0), 3 * len(points))
        return Kept(
            dec.to_spatial(torch.cat(logits)),
            None,
            torch.cat(ious).double().cpu().numpy(),
            torch.cat(stabs).double().cpu().numpy(),
            3 * len(points),
        )

    def _generic(self, points: np.ndarray) -> Kept:
        p = self.params
        pred = self.predictor
        emb = self.embedding
        b = len(points)
        pts = points[:, None, :]
        ones = np.ones((b, 1), dtype=np.int64)
        lowres = self.mode == "lowres"
        preds = pred.predict_batch(
            emb, points=pts, labels=ones, multimask=True, upscale=not lowres
        )
        scores = np.concatenate([np.asarray(x.scores, dtype=np.float64).ravel() for x in preds])
        logits = np.concatenate([np.asarray(x.logits, dtype=np.float32) for x in preds])
        vh, vw = pred.lowres_extent(emb, logits.shape[-2:])
        stab = _stability_np(logits[..., :vh, :vw], float(p.stability_offset), self.threshold)
        union = np.count_nonzero(
            logits[..., :vh, :vw].reshape(len(logits), -1) > self.threshold - p.stability_offset,
            axis=1,
        )
        keep = (scores > p.resolved("pred_iou_thresh")) & (union > 0)
        keep &= stab >= p.resolved("stability_score_thresh")
        if not keep.any():
            return Kept(None, None, np.zeros(0), np.zeros(0), len(scores))
        if self.mode == "lowres":
            return Kept(logits[keep], None, scores[keep], stab[keep], len(scores))
        masks = np.concatenate([np.asarray(x.masks, dtype=bool) for x in preds])
        return Kept(None, masks[keep], scores[keep], stab[keep], len(scores))

    def kept_masks(self, kept: Kept, chunk: int = 8) -> Iterator[tuple[np.ndarray, tuple]]:
        """Yield each kept mask at the slice's resolution as ``(bool crop, (row, col))``.

        The crop holds the whole mask (it may have empty margins); ``(row, col)``
        is its top-left pixel. Low-res logits are upscaled only around the object
        when the predictor's geometry allows (:mod:`._upscale`), else ``chunk``
        masks at a time with ``predictor.upscale``.
        """
        if kept.masks is not None:
            for m in kept.masks:
                yield m, (0, 0)
            return
        if kept.logits is None:
            return
        if self.region is None:
            from napari_sam.everything._upscale import RegionUpscaler

            self.region = (
                RegionUpscaler.for_predictor(
                    self.predictor, self.embedding, tuple(kept.logits.shape[-2:]), self.threshold
                )
                or False
            )
        if self.region:
            import torch

            logits = torch.as_tensor(kept.logits, dtype=torch.float32).cpu()
            with torch.inference_mode():
                for lg in logits:
                    yield self.region.crop(lg)
            return
        for s in range(0, len(kept.logits), chunk):
            up = self.predictor.upscale(self.embedding, kept.logits[s : s + chunk])
            for m in _to_numpy(up > self.threshold).astype(bool, copy=False):
                yield m, (0, 0)
