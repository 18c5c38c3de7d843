"""Attention kernels of the ViT image encoder (:mod:`napari_sam.model.image_encoder`).

Relative-position tables, attention with the decomposed relative-position
bias ``B[i, j] = Rh[i, h(j)] + Rw[i, w(j)]`` computed in chunks of query rows
(:func:`decomposed_attention`: each chunk's bias, scores and softmax live in
one reused cache-sized buffer, the ``N x N`` score matrix is never
materialized), the same bias folded into augmented keys for the fused kernel
(:func:`augmented_attention`), and the window partitioning of the windowed
blocks. Plain functions on tensors; the modules that use them are in
``image_encoder.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Upper bound on the number of attention scores held at once (4 MB in float32):
#: small enough for the scores of a chunk to stay in cache between the bias,
#: matmul, softmax and matmul that use them (the measured choice: docs/benchmarks.md,
#: "Chunk size of the decomposed attention").
_SCORE_CHUNK_ELEMENTS = 1 << 20


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
    scale : factor of ``q @ k.T`` (not of the bias); 1.0 for queries scaled
        beforehand (then the tables must be divided by the scale)

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
    if scale != 1.0:
        q[..., :c].mul_(scale)
    out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
    return out[..., :c]


def to_windows(
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


def from_windows(windows: torch.Tensor, h: int, w: int, out: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_windows` for one tensor: windows back onto the grid, cropped.

    ``windows`` ``(B * nh * nw, heads, ws * ws, c)`` (any strides, e.g. attention's
    output) is written into ``out`` ``(B, h, w, heads, c)`` in one copy per
    part (whole windows, partial last row and column), without the padded
    grid in between; returns ``out``.
    """
    b = out.shape[0]
    heads, c = windows.shape[1], windows.shape[3]
    ws = math.isqrt(windows.shape[2])
    nh, nw = -(-h // ws), -(-w // ws)
    src = windows.view(b, nh, nw, heads, ws, ws, c).permute(0, 1, 4, 2, 5, 3, 6)
    hf, wf = h // ws, w // ws  # whole windows
    rh, rw = h - hf * ws, w - wf * ws
    out[:, : hf * ws, : wf * ws].view(b, hf, ws, wf, ws, heads, c).copy_(src[:, :hf, :, :wf])
    if rh:
        out[:, hf * ws :, : wf * ws].view(b, rh, wf, ws, heads, c).copy_(src[:, hf, :rh, :wf])
    if rw:
        out[:, : hf * ws, wf * ws :].view(b, hf, ws, rw, heads, c).copy_(src[:, :hf, :, wf, :rw])
    if rh and rw:
        out[:, hf * ws :, wf * ws :].copy_(src[:, hf, :rh, wf, :rw])
    return out


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
