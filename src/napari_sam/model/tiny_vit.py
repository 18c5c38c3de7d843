"""MobileSAM's TinyViT image encoder.

:class:`TinyViT` maps a ``(B, 3, S, S)`` normalized, zero-padded image (the
output of :meth:`napari_sam.model.sam.Sam.preprocess`) to a ``(B, out_chans,
S / patch_size, S / patch_size)`` embedding, like SAM's ViT, so SAM's prompt
encoder and mask decoder work on it unchanged. With :data:`VIT_T_CONFIG` it is
the 5M-parameter encoder of MobileSAM (Zhang et al. 2023, "Faster Segment
Anything"), and the published ``mobile_sam.pt`` loads into
``build_sam(VIT_T_CONFIG)`` with ``strict=True``.

Architecture (all feature maps are row-major ``(y, x)`` grids):

* ``patch_embed``: two 3x3 stride-2 conv + BatchNorm units (GELU between) -> stride 4.
* ``layers.0``: MBConv blocks (1x1 expand, 3x3 depthwise, 1x1 project, each
  with BatchNorm; residual; GELU), then a patch-merging downsample.
* ``layers.1 ...``: TinyViT blocks: windowed multi-head self-attention with a
  learned per-head bias for every (|dy|, |dx|) offset inside the window (the
  tokens are layer-normed inside the attention, after zero padding to a whole
  number of windows), a residual, a depthwise conv + BatchNorm (``local_conv``,
  no residual), then a pre-norm MLP with a residual. Every stage but the last
  ends with a patch merging (1x1 conv, 3x3 depthwise conv, 1x1 conv, BatchNorm
  after each). Merges have stride 2 until the total stride reaches
  ``patch_size``, then stride 1 (MobileSAM: 4 -> 8 -> 16 -> 16).
* ``neck``: SAM's neck (1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d).
* ``norm_head`` / ``head``: TinyViT's classifier, never used by SAM, kept only
  because MobileSAM's checkpoint contains its weights.

Parameter and buffer names follow MobileSAM's checkpoint exactly
(``patch_embed.seq.0.c.weight``, ``layers.1.blocks.0.attn.attention_biases``,
``...bn.running_mean``, ``...bn.num_batches_tracked`` ...). The attention-bias
index table is a non-persistent buffer, as in MobileSAM, so it is not part of
the state dict. BatchNorm layers use their running statistics in eval mode
(:func:`napari_sam.model.sam.build_sam` returns models in eval mode).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.common import LayerNorm2d
from napari_sam.model.image_encoder import window_partition, window_unpartition

if TYPE_CHECKING:  # pragma: no cover
    from napari_sam.model.sam import SamConfig

#: Stride of the patch embedding (two stride-2 convolutions).
PATCH_EMBED_STRIDE = 4

#: MobileSAM's encoder options. Stage 0 is convolutional: its ``num_heads`` and
#: ``window_sizes`` entries are unused and 0 by convention (MobileSAM's own code
#: passes 2 and 7 there, which a checkpoint cannot reveal).
VIT_T_OPTIONS: Mapping[str, object] = MappingProxyType({
    "embed_dims": (64, 128, 160, 320),
    "depths": (2, 2, 6, 2),
    "num_heads": (0, 4, 5, 10),
    "window_sizes": (0, 7, 14, 7),
    "mlp_ratio": 4.0,
    "mbconv_expand_ratio": 4.0,
    "local_conv_size": 3,
    "num_classes": 1000,
})


class ConvBN(nn.Sequential):
    """A bias-free ``Conv2d`` (``c``) followed by ``BatchNorm2d`` (``bn``).

    Maps ``(B, in_chans, H, W)`` to ``(B, out_chans, H / stride, W / stride)``
    (``padding = kernel_size // 2``).
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.add_module(
            "c",
            nn.Conv2d(
                in_chans, out_chans, kernel_size, stride, kernel_size // 2,
                groups=groups, bias=False,
            ),
        )
        self.add_module("bn", nn.BatchNorm2d(out_chans))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self.c, self.bn
        if self.training or not bn.track_running_stats or bn.running_var is None:
            return bn(conv(x))
        # Eval mode: BatchNorm is an affine map per channel; fold it into the
        # convolution (one pass over the activations instead of two).
        scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
        weight = conv.weight * scale.view(-1, 1, 1, 1)
        bias = bn.bias - bn.running_mean * scale
        return F.conv2d(
            x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups
        )


class PatchEmbed(nn.Module):
    """``(B, in_chans, S, S)`` -> ``(B, embed_dim, S/4, S/4)``: two stride-2 conv units."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        if embed_dim % 2:
            raise ValueError(f"embed_dims[0] must be even, got {embed_dim}")
        self.seq = nn.Sequential(
            ConvBN(in_chans, embed_dim // 2, 3, stride=2),
            nn.GELU(),
            ConvBN(embed_dim // 2, embed_dim, 3, stride=2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block on ``(B, C, H, W)``: GELU(x + project(dw(expand(x))))."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = ConvBN(dim, hidden, 1)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.gelu(self.conv1(x))
        y = F.gelu(self.conv2(y))
        return F.gelu(x + self.conv3(y))


class PatchMerging(nn.Module):
    """``(B, dim, H, W)`` -> ``(B, out_dim, ceil(H / stride), ceil(W / stride))``."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(dim, out_dim, 1)
        self.conv2 = ConvBN(out_dim, out_dim, 3, stride=stride, groups=out_dim)
        self.conv3 = ConvBN(out_dim, out_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x))
        return self.conv3(x)


def offset_index_table(window_size: int) -> torch.Tensor:
    """``(N, N)`` int64 table, ``N = window_size**2``: the bias index of each token pair.

    Tokens are numbered row-major inside the window; the pair ``(i, j)`` gets
    ``|dy| * window_size + |dx|``, the order in which TinyViT enumerates offsets.
    """
    r = torch.arange(window_size)
    rows = r.repeat_interleave(window_size)
    cols = r.repeat(window_size)
    dy = (rows[:, None] - rows[None, :]).abs()
    dx = (cols[:, None] - cols[None, :]).abs()
    return dy * window_size + dx


class WindowAttention(nn.Module):
    """Multi-head self-attention over windows ``(B', N, C)`` with learned offset biases.

    The input is layer-normed first (``norm``). The fused projection ``qkv``
    yields, per head, ``[q, k, v]`` side by side (TinyViT's layout).
    ``attention_biases`` is ``(num_heads, window_size**2)``: one bias per head and
    per ``(|dy|, |dx|)`` offset, added to the attention logits.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if num_heads <= 0 or dim % num_heads:
            raise ValueError(
                f"num_heads must be a positive divisor of the stage width {dim}, got {num_heads}"
            )
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        self.register_buffer(
            "attention_bias_idxs", offset_index_table(window_size), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.norm(x)).view(b, n, self.num_heads, 3 * self.head_dim)
        q, k, v = qkv.permute(0, 2, 1, 3).split(self.head_dim, dim=-1)  # (b, heads, n, hd)
        bias = self.attention_biases[:, self.attention_bias_idxs].to(q.dtype)  # (heads, n, n)
        out = attend(q, k, v, bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    fused: bool | None = None,
) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d) + bias) v`` for ``(B, heads, N, d)`` q, k, v.

    ``bias`` is ``(heads, N, N)``. ``fused`` picks
    :func:`torch.nn.functional.scaled_dot_product_attention` (default off the
    CPU); on the CPU, for these short windows (<= a few hundred tokens), two
    batched matmuls are faster than SDPA's masked path, which adds a
    fully-masked-row-safe softmax.
    """
    if fused is None:
        fused = q.device.type != "cpu"
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    logits = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-2, -1)) + bias
    return torch.matmul(logits.softmax(dim=-1), v)


class Mlp(nn.Module):
    """Pre-norm MLP on ``(..., C)``: ``fc2(GELU(fc1(LayerNorm(x))))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention, depthwise ``local_conv``, MLP on a ``(B, H, W, C)`` grid.

    The grid is zero padded at the bottom and right to whole windows *before*
    the attention's layer norm (so padded tokens take part as keys, exactly as
    in TinyViT), and cropped afterwards.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
    ) -> None:
        super().__init__()
        if window_size <= 0:
            raise ValueError(f"window size of an attention stage must be > 0, got {window_size}")
        self.window_size = window_size
        self.attn = WindowAttention(dim, num_heads, window_size)
        self.local_conv = ConvBN(dim, dim, local_conv_size, groups=dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w, c = x.shape[1:]
        ws = self.window_size
        windows, padded = window_partition(x, ws)  # (B * nW, ws, ws, C)
        attended = self.attn(windows.reshape(-1, ws * ws, c)).view(-1, ws, ws, c)
        x = x + window_unpartition(attended, ws, padded, (h, w))
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class ConvStage(nn.Module):
    """Stage 0: MBConv ``blocks`` on ``(B, C, H, W)``, then an optional ``downsample``."""

    def __init__(
        self, dim: int, depth: int, expand_ratio: float, downsample: PatchMerging | None
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class AttentionStage(nn.Module):
    """TinyViT ``blocks`` on ``(B, C, H, W)`` (run channel-last), then an optional merge."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
        downsample: PatchMerging | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(dim, num_heads, window_size, mlp_ratio, local_conv_size)
            for _ in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.blocks):
            x = x.permute(0, 2, 3, 1)
            for block in self.blocks:
                x = block(x)
            x = x.permute(0, 3, 1, 2)
        return x if self.downsample is None else self.downsample(x)


def merge_strides(patch_size: int, n_stages: int) -> tuple[int, ...]:
    """Strides of the ``n_stages - 1`` patch mergings for a total stride ``patch_size``.

    Stride 2 until ``PATCH_EMBED_STRIDE * 2**k == patch_size``, then 1.
    """
    k = round(math.log2(patch_size / PATCH_EMBED_STRIDE)) if patch_size >= 4 else -1
    if k < 0 or PATCH_EMBED_STRIDE * 2**k != patch_size or k > n_stages - 1:
        raise ValueError(
            f"patch_size (total stride) {patch_size} is not reachable with {n_stages} TinyViT "
            f"stages: use 4 * 2**k with 0 <= k <= {n_stages - 1} (16 for MobileSAM)"
        )
    return tuple(2 if i < k else 1 for i in range(n_stages - 1))


class TinyViT(nn.Module):
    """TinyViT backbone + SAM neck: ``(B, in_chans, S, S)`` -> ``(B, out_chans, S/p, S/p)``.

    Parameters
    ----------
    img_size : side ``S`` of the square, normalized, zero-padded input (1024)
    patch_size : total stride ``p`` of the output grid (16); a power of two >= 4
    out_chans : channels of the embedding (SAM's prompt embedding width, 256)
    in_chans : input channels (3)
    embed_dims : width of each stage; stage 0 is convolutional, the rest attend
    depths : blocks per stage (a stage may have 0 blocks)
    num_heads : attention heads per stage (stage 0's entry is ignored; 0 by convention)
    window_sizes : attention window side per stage (stage 0's entry is ignored)
    mlp_ratio : MLP hidden width / stage width in the attention stages
    mbconv_expand_ratio : hidden width / stage width in the MBConv blocks
    local_conv_size : kernel size of the depthwise conv inside each TinyViT block
    num_classes : output size of the unused classifier ``head`` (1000 in MobileSAM's
        checkpoint; 0 leaves it out). ``norm_head`` is always present.

    Raises
    ------
    ValueError
        If the option lists differ in length, ``patch_size`` cannot be reached,
        ``img_size`` is not a multiple of ``patch_size`` or a stage's heads do not
        divide its width.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        out_chans: int = 256,
        in_chans: int = 3,
        embed_dims: Sequence[int] = VIT_T_OPTIONS["embed_dims"],
        depths: Sequence[int] = VIT_T_OPTIONS["depths"],
        num_heads: Sequence[int] = VIT_T_OPTIONS["num_heads"],
        window_sizes: Sequence[int] = VIT_T_OPTIONS["window_sizes"],
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        n = len(embed_dims)
        lengths = {len(depths), len(num_heads), len(window_sizes)}
        if n < 1 or lengths != {n}:
            raise ValueError(
                "embed_dims, depths, num_heads and window_sizes need one entry per stage; "
                f"got lengths {n}, {len(depths)}, {len(num_heads)}, {len(window_sizes)}"
            )
        if img_size % patch_size:
            raise ValueError(
                f"img_size {img_size} must be a multiple of patch_size {patch_size}"
            )
        strides = merge_strides(patch_size, n)
        self.img_size = img_size
        self.patch_size = patch_size
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        layers: list[nn.Module] = []
        for i in range(n):
            merge = (
                PatchMerging(embed_dims[i], embed_dims[i + 1], strides[i]) if i < n - 1 else None
            )
            if i == 0:
                layers.append(ConvStage(embed_dims[0], depths[0], mbconv_expand_ratio, merge))
            else:
                layers.append(
                    AttentionStage(
                        embed_dims[i], depths[i], num_heads[i], window_sizes[i], mlp_ratio,
                        local_conv_size, merge,
                    )
                )
        self.layers = nn.ModuleList(layers)
        last = embed_dims[-1]
        self.norm_head = nn.LayerNorm(last)  # unused: MobileSAM's checkpoint holds it
        if num_classes > 0:
            self.head = nn.Linear(last, num_classes)  # unused, likewise
        self.neck = nn.Sequential(
            nn.Conv2d(last, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_chans, S, S)`` float -> ``(B, out_chans, S / p, S / p)`` float."""
        # Channels-last activations: faster (depthwise) convolutions, and the
        # switches between conv layout and the attention blocks' (B, H, W, C)
        # token grid become free permutations instead of copies.
        x = self.patch_embed(x.contiguous(memory_format=torch.channels_last))
        for layer in self.layers:
            x = layer(x)
        return self.neck(x)


def _attention_shape(state: Mapping[str, torch.Tensor], prefix: str) -> tuple[int, int]:
    """(heads, window size) of the first block of an attention stage, or (0, 0)."""
    biases = state.get(prefix + "blocks.0.attn.attention_biases")
    if biases is None:
        return 0, 0
    heads, n_offsets = biases.shape
    window = math.isqrt(n_offsets)
    return int(heads), int(window)


def infer_config(state: Mapping[str, torch.Tensor]) -> SamConfig | None:
    """The config of a MobileSAM / TinyViT SAM state dict, or None if it is not one.

    Widths, depths, heads, window sizes and ratios are read from the weight
    shapes. The input size and the total stride leave no trace in a TinyViT's
    weights (it has no position embedding), so SAM's 1024 and 16 are assumed.
    """
    from napari_sam.model.checkpoint import count_indices, decoder_fields
    from napari_sam.model.sam import SamConfig

    p = "image_encoder."
    if p + "patch_embed.seq.0.c.weight" not in state:
        return None
    n = count_indices(state, r"image_encoder\.layers\.(\d+)\.")
    embed_dims = [int(state[p + "patch_embed.seq.2.c.weight"].shape[0])]
    for i in range(n - 1):
        embed_dims.append(int(state[f"{p}layers.{i}.downsample.conv1.c.weight"].shape[0]))
    depths = tuple(
        count_indices(state, rf"image_encoder\.layers\.{i}\.blocks\.(\d+)\.") for i in range(n)
    )
    heads, windows = [0], [0]
    for i in range(1, n):
        h, w = _attention_shape(state, f"{p}layers.{i}.")
        heads.append(h)
        windows.append(w)
    options = dict(VIT_T_OPTIONS)
    options.update(
        embed_dims=tuple(embed_dims), depths=depths, num_heads=tuple(heads),
        window_sizes=tuple(windows),
    )
    expand = state.get(p + "layers.0.blocks.0.conv1.c.weight")
    if expand is not None:
        options["mbconv_expand_ratio"] = expand.shape[0] / embed_dims[0]
    first_attn = next((i for i in range(1, n) if depths[i] > 0), None)
    if first_attn is not None:
        block = f"{p}layers.{first_attn}.blocks.0."
        options["mlp_ratio"] = state[block + "mlp.fc1.weight"].shape[0] / embed_dims[first_attn]
        options["local_conv_size"] = int(state[block + "local_conv.c.weight"].shape[-1])
    head = state.get(p + "head.weight")
    options["num_classes"] = 0 if head is None else int(head.shape[0])
    in_chans = int(state[p + "patch_embed.seq.0.c.weight"].shape[1])
    if in_chans != 3:
        options["in_chans"] = in_chans
    return SamConfig(
        encoder="tiny_vit",
        encoder_options=options,
        img_size=1024,
        patch_size=16,
        **decoder_fields(state),
    )


def vit_t_config() -> SamConfig:
    """MobileSAM's architecture (``vit_t``): TinyViT-5M encoder, SAM's decoder, input 1024."""
    from napari_sam.model.sam import SamConfig

    return SamConfig(encoder="tiny_vit", encoder_options=dict(VIT_T_OPTIONS))
