"""Upscale a low-res mask only around its object, with the predictor's exact geometry.

:meth:`Predictor.upscale` interpolates the low-res logits ``(h, w)`` bilinearly
to the model input ``(S, S)``, crops the resized slice ``(ih, iw)`` and
interpolates again to the slice ``(H, W)``. Both steps are linear and separable,
so the whole map is ``A_rows @ logits @ A_cols.T`` with interpolation matrices
``A_rows`` ``(H, h)`` and ``A_cols`` ``(W, w)`` (at most a few non-zeros per
row). Bilinear weights are non-negative, so an output pixel can exceed the mask
threshold only next to a low-res pixel that does: evaluating the product on
the rows/columns around the low-res support gives the mask's crop for a cost
that grows with the object, not with the slice. The matrices are built by
interpolating identity matrices with the same ``torch.nn.functional.interpolate``
calls, and checked against ``predictor.upscale`` once per embedding; on any
mismatch the caller falls back to ``predictor.upscale``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_sam.contract import BasePredictor


def _axis_matrix(n: int, model_size: int, keep: int, out: int):
    """``(out, n)`` matrix of the two bilinear steps along one axis (torch, float32)."""
    import torch
    import torch.nn.functional as F

    eye = torch.eye(n, dtype=torch.float32).reshape(1, n, n, 1)
    a = F.interpolate(eye, size=(model_size, 1), mode="bilinear", align_corners=False)
    a = F.interpolate(a[:, :, :keep], size=(out, 1), mode="bilinear", align_corners=False)
    return a[0, :, :, 0].T.contiguous()


class RegionUpscaler:
    """Mask crops at slice resolution from low-res logits, for one embedding."""

    def __init__(self, rows, cols, threshold: float) -> None:
        self.rows = rows  # (H, h)
        self.cols = cols  # (W, w)
        self.threshold = float(threshold)
        self._spans = [self._span(m) for m in (rows, cols)]

    @staticmethod
    def _span(matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per low-res index: first/last output index it touches; per output index: the
        first/last low-res index it reads."""
        nz = (matrix != 0).cpu().numpy()
        n_out, n_low = nz.shape
        out_first = np.where(nz.any(0), nz.argmax(0), n_out)
        out_last = np.where(nz.any(0), n_out - 1 - nz[::-1].argmax(0), -1)
        low_first = nz.argmax(1)
        low_last = n_low - 1 - nz[:, ::-1].argmax(1)
        return out_first, out_last, low_first, low_last

    @classmethod
    def for_predictor(
        cls,
        predictor: BasePredictor,
        embedding: Any,
        low_shape: tuple[int, int],
        threshold: float,
    ) -> RegionUpscaler | None:
        """The upscaler matching ``predictor.upscale``, or None when it cannot be built
        (a predictor without a model input size, an embedding other than
        :class:`~napari_sam.predictor.Embedding`)."""
        from napari_sam.predictor import Embedding

        size = predictor.image_size
        if size is None or not isinstance(embedding, Embedding):
            return None
        inp, orig = embedding.input_size, embedding.original_size
        import torch

        h, w = low_shape
        try:
            up = cls(
                _axis_matrix(h, int(size), int(inp[0]), int(orig[0])),
                _axis_matrix(w, int(size), int(inp[1]), int(orig[1])),
                threshold,
            )
            sample = torch.randn((1, h, w), generator=torch.Generator().manual_seed(0))
            ref = predictor.upscale(embedding, sample)
            ref = ref.detach().cpu().float() if hasattr(ref, "detach") else torch.as_tensor(ref)
            mine = up.rows @ sample[0] @ up.cols.T
        except (RuntimeError, ValueError, TypeError):
            return None
        if ref.shape[-2:] != mine.shape or not torch.allclose(ref[0], mine, atol=1e-4):
            return None
        return up

    def crop(self, logits) -> tuple[np.ndarray, tuple[int, int]]:
        """``(h, w)`` low-res logits (torch) -> (bool crop, (row, col) of its top-left).

        The crop covers every pixel of the slice where the upscaled logits can
        exceed the threshold; it is empty (``(0, 0)``) for an empty mask.
        """
        support = logits > self.threshold
        rows = torch_nonzero_range(support.any(dim=1))
        cols = torch_nonzero_range(support.any(dim=0))
        if rows is None or cols is None:
            return np.zeros((0, 0), bool), (0, 0)
        (r_first, r_last, r_low_first, r_low_last) = self._spans[0]
        (c_first, c_last, c_low_first, c_low_last) = self._spans[1]
        r0, r1 = int(r_first[rows[0] : rows[1]].min()), int(r_last[rows[0] : rows[1]].max()) + 1
        c0, c1 = int(c_first[cols[0] : cols[1]].min()), int(c_last[cols[0] : cols[1]].max()) + 1
        if r1 <= r0 or c1 <= c0:
            return np.zeros((0, 0), bool), (0, 0)
        l0, l1 = int(r_low_first[r0:r1].min()), int(r_low_last[r0:r1].max()) + 1
        m0, m1 = int(c_low_first[c0:c1].min()), int(c_low_last[c0:c1].max()) + 1
        block = self.rows[r0:r1, l0:l1] @ logits[l0:l1, m0:m1] @ self.cols[c0:c1, m0:m1].T
        return (block > self.threshold).cpu().numpy(), (r0, c0)


def torch_nonzero_range(flags) -> tuple[int, int] | None:
    """``(first, last + 1)`` of the True entries of a 1D torch bool tensor, or None."""
    idx = flags.nonzero()
    if idx.numel() == 0:
        return None
    return int(idx[0, 0]), int(idx[-1, 0]) + 1
