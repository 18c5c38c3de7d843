"""SAM's ViT image encoder: windowed and global attention with decomposed
relative positions, then a convolutional neck to a 256-channel embedding.

Parameter names follow the official checkpoints (``patch_embed.proj``,
``pos_embed``, ``blocks.N.attn.rel_pos_h`` ...), so they load with ``strict=True``.

Attention with the decomposed relative-position bias
``B[i, j] = Rh[i, h(j)] + Rw[i, w(j)]`` runs in chunks of query rows
(:func:`decomposed_attention`): each chunk's bias, scores and softmax live in one
reused cache-sized buffer, so the full ``N x N`` score matrix of the
global-attention blocks is never materialized and nothing is copied per chunk.
Windowed blocks run their per-token layers (``qkv``, ``proj``) on the real tokens
only, not on the windows' zero padding.

In inference (no autograd, no autocast, plain ``nn.Linear`` layers) the blocks
update the token grid in place (:meth:`Block.forward_inference`): the residual
sums are accumulated by the ``proj`` and ``lin2`` matrix products themselves,
GELU runs in place, and the layer-norm, ``qkv`` and MLP outputs go to buffers
that every block reuses (:class:`Workspace`). The same arithmetic, but without
allocating ~1.8 GB of fresh, page-faulting memory per 1024 x 1024 embedding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.common import LayerNorm2d, MLPBlock

if TYPE_CHECKING:  # pragma: no cover
    from napari_sam.model.sam import SamConfig

#: Upper bound on the number of attention scores held at once (4 MB in float32):
#: small enough for the scores of a chunk to stay in cache between the bias,
#: matmul, softmax and matmul that use them (a global-attention block of vit_b
#: took 0.84 s with 1 << 20 and 1.04 s with 1 << 22 on one thread here).
_SCORE_CHUNK_ELEMENTS = 1 << 20


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


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: ``(B, 3, H, W)`` -> ``(B, H/p, W/p, C)``."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def relative_position_table(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Table ``T[i, j] = rel_pos[offset(i, j)]`` of shape ``(q_size, k_size, C)``.

    ``rel_pos`` holds one learned vector per relative offset, ``(2 * size - 1, C)``;
    it is linearly resampled when the attention size differs from the trained one.
    """
    n_offsets = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != n_offsets:
        rel_pos = (
            F.interpolate(rel_pos.T[None], size=n_offsets, mode="linear")[0].T.contiguous()
        )
    q_ratio = max(k_size / q_size, 1.0)
    k_ratio = max(q_size / k_size, 1.0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * q_ratio
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * k_ratio
    offsets = (q_coords - k_coords) + (k_size - 1) * k_ratio
    return rel_pos[offsets.long()]


def decomposed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias_h: torch.Tensor,
    bias_w: torch.Tensor,
    scale: float,
    max_elements: int | None = None,
) -> torch.Tensor:
    """Softmax attention with a decomposed relative-position bias, in chunks.

    Computes ``softmax(scale * q @ k.T + B) @ v`` with
    ``B[i, j] = bias_h[i, h(j)] + bias_w[i, w(j)]`` for keys on an ``h x w`` grid,
    exactly as SAM's reference does but without materializing more than
    ``max_elements`` scores at once: each chunk's bias, scores and softmax are
    written into one reused buffer, so they stay in cache, and the inputs are
    never copied.

    Parameters
    ----------
    q, k, v : ``(B, n, c)`` queries, keys and values, ``n = h * w``
    bias_h : ``(B, h, w, h)``, the bias of query ``(i_h, i_w)`` for key row ``j_h``
    bias_w : ``(B, h, w, w)``, the bias of query ``(i_h, i_w)`` for key column ``j_w``
    scale : factor of ``q @ k.T`` (not of the bias)
    max_elements : upper bound on the scores held at once
        (default :data:`_SCORE_CHUNK_ELEMENTS`)

    Returns
    -------
    ``(B, n, c_v)`` attention output (contiguous)
    """
    if max_elements is None:
        max_elements = _SCORE_CHUNK_ELEMENTS
    batch, n, _ = q.shape
    _, h, w, _ = bias_h.shape
    out = torch.empty(batch, n, v.shape[-1], dtype=v.dtype, device=v.device)
    q_scaled = q * scale
    k_t = k.transpose(1, 2)
    per_batch = max(1, min(batch, max_elements // (n * n)))
    rows = h if per_batch > 1 else max(1, min(h, max_elements // (w * n)))
    buffer = torch.empty(per_batch * rows * w * n, dtype=q.dtype, device=q.device)
    for b0 in range(0, batch, per_batch):
        b1 = min(batch, b0 + per_batch)
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            scores = buffer[: (b1 - b0) * (r1 - r0) * w * n].view(b1 - b0, (r1 - r0) * w, n)
            torch.add(
                bias_h[b0:b1, r0:r1, :, :, None],
                bias_w[b0:b1, r0:r1, :, None, :],
                out=scores.view(b1 - b0, r1 - r0, w, h, w),
            )
            scores.baddbmm_(q_scaled[b0:b1, r0 * w : r1 * w], k_t[b0:b1])
            torch.softmax(scores, -1, out=scores)
            torch.bmm(scores, v[b0:b1], out=out[b0:b1, r0 * w : r1 * w])
    return out


def augmented_head_dim(c: int, h: int, w: int) -> int:
    """Width of the augmented queries and keys of :func:`augmented_attention`.

    ``c + h + w`` (head dim, one column per key row and per key column) rounded
    up to a multiple of 32, the width at which PyTorch's fused attention kernel
    runs at full speed; the extra columns are zero.
    """
    return -(-(c + h + w) // 32) * 32


def init_augmented_keys(buffer: torch.Tensor, c: int, h: int, w: int) -> None:
    """Write the constant parts of an :func:`augmented_attention` buffer.

    ``buffer`` is ``(3, B, heads, h * w, D)`` and zero; key ``j = (j_h, j_w)``
    gets a one in column ``c + j_h`` and in column ``c + h + j_w``.
    """
    keys = buffer[1].view(*buffer.shape[1:3], h, w, buffer.shape[-1])
    for j in range(h):
        keys[:, :, j, :, c + j] = 1
    for j in range(w):
        keys[:, :, :, j, c + h + j] = 1


def augmented_attention(
    buffer: torch.Tensor,
    c: int,
    hw: tuple[int, int],
    table_h: torch.Tensor | None,
    table_w: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Attention with the decomposed relative-position bias as one fused attention call.

    The bias ``B[i, j] = q_i . Rh[i_h, j_h] + q_i . Rw[i_w, j_w]`` is a product of
    augmented vectors: queries ``[scale * q_i, q_i . Rh[i_h, :], q_i . Rw[i_w, :]]``
    and keys ``[k_j, onehot(j_h), onehot(j_w)]``, so
    ``softmax(scale * q @ k.T + B) @ v`` is plain attention of the augmented
    queries and keys (values padded with zero columns), which
    :func:`torch.nn.functional.scaled_dot_product_attention` computes in one
    fused kernel (scores accumulated and softmaxed in float32, never stored)
    instead of one pass over the scores for the bias, one for the softmax and
    one per product.

    Parameters
    ----------
    buffer : ``(3, B, heads, h * w, D)``, ``D >= c + h + w`` (see
        :func:`augmented_head_dim`), prepared by :func:`init_augmented_keys`,
        with the queries, keys and values in ``buffer[..., :c]``; the queries'
        columns are overwritten (scaled, and the bias written beside them)
    c : head dim
    hw : the key grid ``(h, w)``
    table_h, table_w : :func:`relative_position_table` of the rows ``(h, h, c)``
        and of the columns ``(w, w, c)``, in the buffer's dtype; ``None`` for
        attention without relative positions (then ``D >= c`` suffices)
    scale : factor of ``q @ k.T`` (not of the bias)

    Returns
    -------
    ``(B, heads, h * w, c)`` attention output (a strided view)
    """
    q, k, v = buffer.unbind(0)
    if table_h is not None:
        h, w = hw
        b, heads = q.shape[:2]
        q_grid = q[..., :c].view(b, heads, h, w, c)
        q[..., c : c + h].view(b, heads, h, w, h).copy_(
            torch.einsum("bnhwc,hkc->bnhwk", q_grid, table_h)
        )
        q[..., c + h : c + h + w].view(b, heads, h, w, w).copy_(
            torch.einsum("bnhwc,wkc->bnhwk", q_grid, table_w)
        )
    q[..., :c].mul_(scale)
    out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
    return out[..., :c]


class Attention(nn.Module):
    """Multi-head self-attention over a ``(B, H, W, C)`` token grid."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is required when use_rel_pos=True")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = self.attend(qkv, h, w)  # (B, heads, h * w, head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))

    def attend(self, qkv: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Attention of ``qkv`` ``(3, B, heads, h * w, head_dim)`` (any strides).

        Returns the heads' outputs, ``(B, heads, h * w, head_dim)``, before ``proj``.
        """
        _, b, heads, n, c = qkv.shape
        q, k, v = qkv.reshape(3, b * heads, n, c).unbind(0)  # one copy, then contiguous
        if not self.use_rel_pos:
            # 4D: the fused kernels need a heads axis (3D inputs take the slow path)
            qkv4 = (t.view(b, heads, n, c) for t in (q, k, v))
            return F.scaled_dot_product_attention(*qkv4, scale=self.scale)
        table_h = relative_position_table(h, h, self.rel_pos_h).to(q.dtype)  # (h, h, c)
        table_w = relative_position_table(w, w, self.rel_pos_w).to(q.dtype)  # (w, w, c)
        q_grid = q.view(b * heads, h, w, c)
        # bias_h[., i_h, i_w, j_h] = q[i] . Rh[i_h - j_h]; likewise bias_w over j_w.
        bias_h = torch.einsum("bhwc,hkc->bhwk", q_grid, table_h)
        bias_w = torch.einsum("bhwc,wkc->bhwk", q_grid, table_w)
        with torch.autocast(q.device.type, enabled=False):
            out = decomposed_attention(q, k, v, bias_h.to(q.dtype), bias_w.to(q.dtype), self.scale)
        return out.view(b, heads, n, c)


def _to_windows(
    qkv: torch.Tensor,
    ws: int,
    heads: int,
    padding_value,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``qkv`` ``(B, h, w, 3C)`` -> ``(3, B * nh * nw, heads, ws * ws, c)`` in one copy.

    Windows that reach past the grid are padded with ``padding_value()`` (``(3C,)``,
    the ``qkv`` of a zero token; called only when there is padding). With ``out``
    (``(3, B * nh * nw, heads, ws * ws, D)``, ``D >= c``) the windows are written
    into ``out[..., :c]`` and ``out`` is returned.
    """
    b, h, w, c3 = qkv.shape
    nh, nw = -(-h // ws), -(-w // ws)
    c = c3 // (3 * heads)
    if out is None:
        win = qkv.new_empty(3, b, nh, nw, heads, ws, ws, c)
    else:
        win = out.view(3, b, nh, nw, heads, ws, ws, out.shape[-1])[..., :c]
    grid = win.permute(1, 2, 5, 3, 6, 0, 4, 7)  # (B, nh, ws, nw, ws, 3, heads, c)
    src = qkv.view(b, h, w, 3, heads, c)
    hf, wf = h // ws, w // ws  # whole windows
    rh, rw = h - hf * ws, w - wf * ws  # rows / columns of the partial last windows
    grid[:, :hf, :, :wf] = src[:, : hf * ws, : wf * ws].view(b, hf, ws, wf, ws, 3, heads, c)
    if rh:
        grid[:, hf, :rh, :wf] = src[:, hf * ws :, : wf * ws].view(b, rh, wf, ws, 3, heads, c)
    if rw:
        grid[:, :hf, :, wf, :rw] = src[:, : hf * ws, wf * ws :].view(b, hf, ws, rw, 3, heads, c)
    if rh and rw:
        grid[:, hf, :rh, wf, :rw] = src[:, hf * ws :, wf * ws :]
    if rh or rw:
        fill = padding_value().view(3, heads, c)
        if rh:
            grid[:, hf, rh:] = fill
        if rw:
            grid[:, :, :, wf, rw:] = fill
    if out is not None:
        return out
    return win.view(3, b * nh * nw, heads, ws * ws, c)


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split ``(B, H, W, C)`` into zero-padded windows ``(B * nW, ws, ws, C)``."""
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, padded_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`, cropping the padding away."""
    hp, wp = padded_hw
    h, w = hw
    b = windows.shape[0] // ((hp // window_size) * (wp // window_size))
    x = windows.view(b, hp // window_size, wp // window_size, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :h, :w, :].contiguous() if (hp > h or wp > w) else x


class Block(nn.Module):
    """Pre-norm transformer block; windowed attention when ``window_size > 0``.

    Windowed blocks compute the same thing as SAM's reference (zero-padded
    windows), but only for the real tokens where the operation is per token:
    ``qkv`` runs on the unpadded grid and the padding gets ``qkv``'s value for a
    zero token (its bias), and ``proj`` runs after the padding is cropped away.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        attn_size = (window_size, window_size) if window_size > 0 else input_size
        self.attn = Attention(
            dim, num_heads=num_heads, qkv_bias=qkv_bias, use_rel_pos=use_rel_pos,
            input_size=attn_size,
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.window_size > 0:
            x = x + self.attn.proj(self._windowed_attention(self.norm1(x)))
        else:
            x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def has_plain_layers(self) -> bool:
        """True when the block's layers are the plain PyTorch ones the fused paths assume."""
        layers = (self.attn.qkv, self.attn.proj, self.mlp.lin1, self.mlp.lin2)
        if not all(type(m) is nn.Linear and m.bias is not None for m in layers):
            return False  # e.g. quantized layers (precision="int8")
        return (
            type(self.mlp.act) is nn.GELU
            and type(self.norm1) is nn.LayerNorm
            and type(self.norm2) is nn.LayerNorm
        )

    def supports_inference_path(self) -> bool:
        """True when :meth:`forward_inference` computes :meth:`forward` here and now."""
        return (
            self.has_plain_layers()
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled(self.attn.qkv.weight.device.type)
        )

    def forward_inference(self, x: torch.Tensor, workspace: Workspace) -> torch.Tensor:
        """:meth:`forward` updating ``x`` ``(B, H, W, C)`` (contiguous, owned) in place.

        Only valid when :meth:`supports_inference_path` is true; returns ``x``.
        """
        attn, mlp = self.attn, self.mlp
        b, h, w, c = x.shape
        flat = x.view(-1, c)
        normed = workspace.layer_norm("norm", flat, self.norm1)
        qkv = torch.addmm(
            attn.qkv.bias, normed, attn.qkv.weight.t(),
            out=workspace.get("qkv", (flat.shape[0], attn.qkv.weight.shape[0])),
        ).view(b, h, w, -1)
        if self.window_size > 0:
            heads_out = self._windowed_attention(None, qkv=qkv)  # (B, H, W, C), strided
        else:
            qkv5 = qkv.view(b, h * w, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
            heads_out = attn.attend(qkv5, h, w).transpose(1, 2)  # (B, H*W, heads, c)
        flat.addmm_(heads_out.reshape(-1, c), attn.proj.weight.t()).add_(attn.proj.bias)
        normed = workspace.layer_norm("norm", flat, self.norm2)
        hidden = torch.addmm(
            mlp.lin1.bias, normed, mlp.lin1.weight.t(),
            out=workspace.get("hidden", (flat.shape[0], mlp.lin1.weight.shape[0])),
        )
        torch.ops.aten.gelu_(hidden, approximate=mlp.act.approximate)
        flat.addmm_(hidden, mlp.lin2.weight.t()).add_(mlp.lin2.bias)
        return x

    def forward_low_precision(
        self, x: torch.Tensor, workspace: Workspace, weights: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """:meth:`forward` with the products and attention in ``weights``' dtype, in place.

        ``x`` ``(B, H, W, C)`` float32 (contiguous, owned) is the residual stream and
        stays float32; the layer norms' outputs, the linear layers and attention
        run in the low-precision dtype (bfloat16) with ``weights`` (see
        :meth:`ImageEncoderViT.low_precision_weights`), attention as one fused
        kernel call per block (:func:`augmented_attention`). Returns ``x``.
        """
        attn, mlp = self.attn, self.mlp
        dtype = weights["qkv.weight"].dtype
        b, h, w, c = x.shape
        heads = attn.num_heads
        hc = c // heads
        flat = x.view(-1, c)
        n = flat.shape[0]
        normed = workspace.get("norm", (n, c), dtype)
        normed.copy_(F.layer_norm(flat, (c,), self.norm1.weight, self.norm1.bias, self.norm1.eps))
        qkv_bias = weights["qkv.bias"]
        qkv = torch.addmm(
            qkv_bias, normed, weights["qkv.weight"].t(),
            out=workspace.get("qkv", (n, 3 * c), dtype),
        ).view(b, h, w, 3 * c)
        ah, aw = (self.window_size,) * 2 if self.window_size > 0 else (h, w)
        rel = attn.use_rel_pos
        d = augmented_head_dim(hc, ah, aw) if rel else augmented_head_dim(hc, 0, 0)
        tables = (
            (relative_position_table(ah, ah, attn.rel_pos_h).to(dtype),
             relative_position_table(aw, aw, attn.rel_pos_w).to(dtype))
            if rel else (None, None)
        )

        def init(buffer):
            if rel:
                init_augmented_keys(buffer, hc, ah, aw)

        if self.window_size > 0:
            ws = self.window_size
            nh, nw = -(-h // ws), -(-w // ws)
            buffer = workspace.prepared(
                "attn.windows", (3, b * nh * nw, heads, ws * ws, d), dtype, init
            )
            _to_windows(qkv, ws, heads, lambda: qkv_bias, out=buffer)
            out = augmented_attention(buffer, hc, (ws, ws), *tables, attn.scale)
            out = out.view(b, nh, nw, heads, ws, ws, hc).permute(0, 1, 4, 2, 5, 3, 6)
            out = out.reshape(b, nh * ws, nw * ws, heads, hc)[:, :h, :w]
        else:
            buffer = workspace.prepared("attn.global", (3, b, heads, h * w, d), dtype, init)
            buffer[..., :hc].copy_(qkv.view(b, h * w, 3, heads, hc).permute(2, 0, 3, 1, 4))
            out = augmented_attention(buffer, hc, (h, w), *tables, attn.scale)
            out = out.transpose(1, 2)  # (B, h * w, heads, c)
        heads_out = workspace.get("heads", (n, c), dtype)
        heads_out.view(out.shape).copy_(out)
        projected = workspace.get("proj", (n, c), dtype)
        torch.addmm(weights["proj.bias"], heads_out, weights["proj.weight"].t(), out=projected)
        flat.add_(projected)
        normed.copy_(F.layer_norm(flat, (c,), self.norm2.weight, self.norm2.bias, self.norm2.eps))
        hidden = torch.addmm(
            weights["lin1.bias"], normed, weights["lin1.weight"].t(),
            out=workspace.get("hidden", (n, weights["lin1.weight"].shape[0]), dtype),
        )
        torch.ops.aten.gelu_(hidden, approximate=mlp.act.approximate)
        torch.addmm(weights["lin2.bias"], hidden, weights["lin2.weight"].t(), out=projected)
        flat.add_(projected)
        return x

    def _windowed_attention(self, x: torch.Tensor | None, qkv=None) -> torch.Tensor:
        """Windowed attention of ``x`` ``(B, h, w, C)``, before ``proj``: ``(B, h, w, C)``.

        ``qkv`` (``(B, h, w, 3C)``) may be given instead of ``x``.
        """
        attn, ws = self.attn, self.window_size
        if qkv is None:
            qkv = attn.qkv(x)  # (B, h, w, 3C)
        b, h, w, c3 = qkv.shape
        nh, nw = -(-h // ws), -(-w // ws)

        def padding():  # qkv of a zero token, only computed when windows are padded
            return attn.qkv(qkv.new_zeros(1, c3 // 3))[0]

        windows = _to_windows(qkv, ws, attn.num_heads, padding)
        out = attn.attend(windows, ws, ws)  # (B * nh * nw, heads, ws * ws, c)
        out = out.view(b, nh, nw, attn.num_heads, ws, ws, -1).permute(0, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, nh * ws, nw * ws, -1)[:, :h, :w]


def _cpu_autocast_dtype() -> torch.dtype | None:
    """The dtype of CPU autocast if it is on, else None (any torch >= 2.1)."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None


class ImageEncoderViT(nn.Module):
    """ViT backbone: ``(B, 3, S, S)`` normalized image -> ``(B, out_chans, S/16, S/16)``."""

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                use_rel_pos=use_rel_pos,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def low_precision_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        """The dtype :meth:`forward` runs :meth:`forward_low_precision` in, or None.

        bfloat16 when ``x`` is on the CPU, autograd is off and bfloat16 autocast
        is on (``Predictor(precision="bfloat16")`` or ``"auto"`` on CPUs with
        bfloat16 units), and the blocks have plain layers.
        """
        if (
            x.device.type != "cpu"
            or torch.is_grad_enabled()
            or _cpu_autocast_dtype() != torch.bfloat16
            or not self.blocks
            or not all(block.has_plain_layers() for block in self.blocks)
        ):
            return None
        return torch.bfloat16

    def low_precision_weights(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The linear and convolution weights in ``dtype``, converted once and kept.

        The copy is made again when any parameter changed (new storage or an
        in-place update, e.g. ``load_state_dict``). Keys are parameter names.
        """
        key = (dtype, tuple((p.data_ptr(), p._version) for p in self.parameters()))
        cached = self.__dict__.get("_low_precision_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        weights = {
            name: p.detach().to(dtype).contiguous()
            for name, p in self.named_parameters()
            if name.endswith((".weight", ".bias")) and ".norm" not in name
            and not name.startswith("neck.1") and not name.startswith("neck.3")
        }
        self.__dict__["_low_precision_cache"] = (key, weights)
        return weights

    def forward_low_precision(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """:meth:`forward` with products, convolutions and attention in ``dtype``.

        The residual stream, layer-norm statistics and the output stay float32;
        see :meth:`Block.forward_low_precision`. Returns a float32
        ``(B, out_chans, S/16, S/16)`` embedding.
        """
        weights = self.low_precision_weights(dtype)
        with torch.autocast(x.device.type, enabled=False):
            patches = F.conv2d(
                x.to(dtype), weights["patch_embed.proj.weight"], weights["patch_embed.proj.bias"],
                stride=self.patch_embed.proj.stride,
            )
            patches = patches.permute(0, 2, 3, 1)  # (B, h, w, C)
            tokens = torch.empty(patches.shape, dtype=torch.float32, device=x.device)
            if self.pos_embed is not None:
                torch.add(patches, self.pos_embed, out=tokens)
            else:
                tokens.copy_(patches)
            workspace = Workspace(torch.float32, x.device)
            for i, block in enumerate(self.blocks):
                prefix = f"blocks.{i}."
                block_weights = {
                    name[len(prefix) :].removeprefix("attn.").removeprefix("mlp."): t
                    for name, t in weights.items()
                    if name.startswith(prefix)
                }
                tokens = block.forward_low_precision(tokens, workspace, block_weights)
            return self._neck_low_precision(tokens, weights, dtype)

    def _neck_low_precision(self, tokens, weights, dtype) -> torch.Tensor:
        """The neck on ``(B, h, w, C)`` float32 tokens, products in ``dtype``, channels last."""
        b, h, w, c = tokens.shape
        _, norm1, conv2, norm2 = self.neck
        y = tokens.view(-1, c).to(dtype) @ weights["neck.0.weight"].view(-1, c).t()
        y = F.layer_norm(y.float(), (y.shape[-1],), norm1.weight, norm1.bias, norm1.eps)
        y = y.to(dtype).view(b, h, w, -1).permute(0, 3, 1, 2)  # channels-last (B, C, h, w)
        y = F.conv2d(y, weights["neck.2.weight"], padding=conv2.padding)
        y = y.permute(0, 2, 3, 1).float()
        y = F.layer_norm(y, (y.shape[-1],), norm2.weight, norm2.bias, norm2.eps)
        return y.permute(0, 3, 1, 2).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.low_precision_dtype(x)
        if dtype is not None:
            return self.forward_low_precision(x, dtype)
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        if self.blocks and all(b.supports_inference_path() for b in self.blocks):
            workspace = Workspace(x.dtype, x.device)
            x = x.contiguous()  # owned: the blocks update it in place
            for block in self.blocks:
                x = block.forward_inference(x, workspace)
        else:
            for block in self.blocks:
                x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


def encoder_flops(encoder: ImageEncoderViT, batch: int = 1) -> dict[str, int]:
    """Floating-point operations of one forward pass, counted from the architecture.

    A multiply-add counts as 2. Counted: the patch embedding, the linear layers
    (``qkv`` and ``proj`` on the real tokens, as :class:`Block` runs them, and
    the MLP), attention's two products (``q @ k.T`` and ``p @ v``; windowed
    blocks over their zero-padded windows), the relative-position products
    ``q . R`` and the neck's convolutions. Not counted: softmax, norms,
    activations, additions.

    Parameters
    ----------
    encoder : the image encoder
    batch : images per forward pass

    Returns
    -------
    FLOPs per part (``"patch_embed"``, ``"linear"``, ``"attention_global"``,
    ``"attention_windowed"``, ``"neck"``) and their sum (``"total"``)
    """
    proj = encoder.patch_embed.proj
    patch = proj.kernel_size[0]
    c_in, c = proj.in_channels, proj.out_channels
    grid = encoder.img_size // patch
    n = grid * grid
    parts = dict.fromkeys(
        ("patch_embed", "linear", "attention_global", "attention_windowed", "neck"), 0
    )
    parts["patch_embed"] = 2 * n * c_in * patch * patch * c
    for block in encoder.blocks:
        hidden = block.mlp.lin1.out_features
        parts["linear"] += 2 * n * c * (3 * c + c + 2 * hidden)
        ws = block.window_size
        if ws > 0:
            units, side = (-(-grid // ws)) ** 2, ws
        else:
            units, side = 1, grid
        tokens = side * side
        # per unit: q @ k.T and p @ v over all heads (2 * tokens^2 * c each), q . R rows and columns
        flops = units * (4 * tokens * tokens * c)
        if block.attn.use_rel_pos:
            flops += units * 2 * tokens * c * (side + side)
        parts["attention_windowed" if ws > 0 else "attention_global"] += flops
    neck_conv1, _, neck_conv2, _ = encoder.neck
    out = neck_conv1.out_channels
    kh, kw = neck_conv2.kernel_size
    parts["neck"] = 2 * n * c * out + 2 * n * out * out * kh * kw
    parts = {k: v * batch for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def infer_config(state) -> SamConfig | None:
    """The config of a SAM ViT checkpoint's state dict, or None if it is not one."""
    from napari_sam.model.checkpoint import count_indices, decoder_fields
    from napari_sam.model.sam import SamConfig

    if "image_encoder.blocks.0.attn.rel_pos_h" not in state:
        return None
    patch = state["image_encoder.patch_embed.proj.weight"]
    embed_dim, patch_size = patch.shape[0], patch.shape[-1]
    grid = state["image_encoder.pos_embed"].shape[1]
    depth = count_indices(state, r"image_encoder\.blocks\.(\d+)\.")
    head_dim = state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
    global_idx, window = [], 14
    for i in range(depth):
        n = state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0]
        if n == 2 * grid - 1:
            global_idx.append(i)
        else:
            window = (n + 1) // 2
    options = {
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": embed_dim // head_dim,
        "global_attn_indexes": tuple(global_idx),
        "window_size": window,
    }
    return SamConfig(
        encoder="vit",
        encoder_options=options,
        img_size=grid * patch_size,
        patch_size=patch_size,
        **decoder_fields(state),
    )
