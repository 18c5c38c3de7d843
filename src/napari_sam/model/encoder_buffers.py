"""Buffers and packed matrix products of the ViT encoder's inference paths.

:class:`Workspace` holds the float buffers that every block of one forward pass
reuses; :func:`pack_linear_weight`, :func:`linear` and :func:`add_linear` run a
linear layer through oneDNN's packed-weight primitive where the build has it
(the bias, and for :func:`add_linear` the residual, added inside the product),
and through ``addmm`` elsewhere. Used by :mod:`napari_sam.model.image_encoder`.
"""

from __future__ import annotations

import torch
from torch import nn


class Workspace:
    """Reusable float buffers for the in-place inference path, one per forward pass.

    ``get(name, shape)`` returns a contiguous ``shape`` view of the buffer called
    ``name``, grown when a larger one is asked for; the blocks of one encoder
    ask for the same shapes, so the memory is allocated (and page-faulted) once.
    """

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.dtype, self.device = dtype, device
        self._buffers: dict[tuple[str, torch.dtype], torch.Tensor] = {}
        self._prepared: dict[str, torch.Tensor] = {}

    def get(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """A contiguous ``shape`` buffer called ``name`` (of ``dtype``, default the workspace's)."""
        dtype = self.dtype if dtype is None else dtype
        n = 1
        for d in shape:
            n *= int(d)
        buf = self._buffers.get((name, dtype))
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, dtype=dtype, device=self.device)
            self._buffers[(name, dtype)] = buf
        return buf[:n].view(shape)

    def prepared(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, init) -> torch.Tensor:
        """A ``shape`` buffer whose constant parts ``init(buffer)`` wrote when it was made.

        The buffer is zeroed and ``init`` called once per name and shape; callers
        overwrite only the parts that change between blocks.
        """
        buf = self._prepared.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = torch.zeros(shape, dtype=dtype, device=self.device)
            init(buf)
            self._prepared[name] = buf
        return buf

    def layer_norm(self, name: str, x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
        """``norm(x)`` for ``(n, C)`` ``x``, written into the buffer ``name``."""
        n = x.shape[0]
        out = self.get(name, tuple(x.shape))
        mean = self.get(name + ".mean", (n, 1))
        rstd = self.get(name + ".rstd", (n, 1))
        torch.ops.aten.native_layer_norm.out(
            x, list(norm.normalized_shape), norm.weight, norm.bias, norm.eps,
            out0=out, out1=mean, out2=rstd,
        )
        return out


#: oneDNN's opaque tensor layout (the packed weights of :func:`pack_linear_weight`)
_MKLDNN = getattr(torch, "_mkldnn", None)


def pack_linear_weight(weight: torch.Tensor, tokens: int) -> torch.Tensor:
    """``weight`` ``(out, in)`` in oneDNN's blocked layout for :func:`linear`, if it can.

    The layout is chosen for ``tokens`` rows (any row count works); on builds
    without oneDNN, or off the CPU, ``weight`` is returned unchanged.
    """
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return weight
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), tokens)
    except (AttributeError, RuntimeError):  # pragma: no cover - other torch builds
        return weight


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias`` for ``(n, in)`` ``x``, ``weight`` from :func:`pack_linear_weight`.

    A packed weight runs oneDNN's linear primitive with the bias inside it
    (``addmm`` adds the bias in a separate pass over the output).
    """
    if weight.layout == _MKLDNN:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    if bias is None:
        return x @ weight.t()
    return torch.addmm(bias, x, weight.t())


def add_linear(
    residual: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """``residual + x @ weight.T + bias`` (one dtype), ``weight`` from :func:`pack_linear_weight`.

    A packed weight adds the residual inside oneDNN's linear primitive (a new
    tensor); otherwise ``residual`` is updated in place by the product.
    """
    if weight.layout == _MKLDNN:
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, "add")
    return residual.addmm_(x, weight.t()).add_(bias)
