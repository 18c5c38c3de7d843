"""A small convolutional image encoder for the bundled microscopy model.

``MicroEncoder`` maps a ``(B, 3, S, S)`` normalized, zero-padded image (the
output of :meth:`napari_sam.model.sam.Sam.preprocess`) to a ``(B, out_chans,
S / patch_size, S / patch_size)`` embedding, like SAM's ViT, so SAM's prompt
encoder and mask decoder work on it unchanged.

Architecture: a residual conv backbone with four stages at strides 2, 4, 8 and
16 (widths ``widths``, ``depths`` residual blocks each), optional global
self-attention blocks at stride 16 (``attn_depth``), and a feature pyramid
that merges the stages from stride 16 down to the output stride
``patch_size`` (4, 8 or 16), followed by SAM's neck (1x1 conv, LayerNorm2d,
3x3 conv, LayerNorm2d). Normalization inside the backbone is GroupNorm, so
the encoder behaves identically in training and inference and with any batch size.

The model input size, total stride and number of attention heads are stored in
the persistent int64 buffer ``arch`` (``[img_size, patch_size, attn_heads]``) so
that :func:`infer_config` can rebuild the exact architecture from a state dict
(a conv net's weights reveal neither its input size nor its head count).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.common import LayerNorm2d

if TYPE_CHECKING:  # pragma: no cover
    from napari_sam.model.sam import SamConfig

#: Strides of the four backbone stages.
STAGE_STRIDES = (2, 4, 8, 16)


def _norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups of at least 4 channels."""
    groups = max(1, min(8, channels // 4))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    """``x + conv3x3(GELU(GN(conv3x3(GELU(GN(x))))))`` at constant width (pre-activation)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = _norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)  # type: ignore[arg-type]  # (bias=True: a tensor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.gelu(self.norm1(x)))
        return x + self.conv2(F.gelu(self.norm2(y)))


class Stage(nn.Module):
    """A strided 3x3 conv (``down``) to the new width, then ``depth`` residual blocks."""

    def __init__(self, in_chans: int, out_chans: int, depth: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(in_chans, out_chans, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(*(ResBlock(out_chans) for _ in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.down(x))


class GlobalAttentionBlock(nn.Module):
    """Pre-norm transformer block over all tokens of a ``(B, C, h, w)`` map.

    A learned absolute position embedding ``pos`` of ``(1, C, h, w)`` is added
    first (the grid size is fixed by the model input size).
    """

    def __init__(self, dim: int, num_heads: int, grid: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.pos = nn.Parameter(torch.zeros(1, dim, grid, grid))
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.lin1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.lin2 = nn.Linear(int(dim * mlp_ratio), dim)
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        pos: torch.Tensor = self.pos
        if pos.shape[-2:] != (h, w):
            pos = F.interpolate(pos, (h, w), mode="bilinear", align_corners=False)
        t = (x + pos).flatten(2).transpose(1, 2)  # (B, N, C)
        q, k, v = (
            self.qkv(self.norm1(t))
            .reshape(b, h * w, 3, self.num_heads, c // self.num_heads)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        t = t + self.proj(a)
        t = t + self.lin2(F.gelu(self.lin1(self.norm2(t))))
        return t.transpose(1, 2).reshape(b, c, h, w)


class MicroEncoder(nn.Module):
    """Compact conv + FPN image encoder: ``(B, 3, S, S)`` -> ``(B, out_chans, S/p, S/p)``.

    Parameters
    ----------
    img_size : side ``S`` of the square model input (a multiple of 16)
    patch_size : total stride ``p`` of the output embedding: 4, 8 or 16
    out_chans : channels of the embedding (the decoder's ``prompt_embed_dim``)
    widths : channels of the four stages (strides 2, 4, 8, 16)
    depths : residual blocks per stage
    fpn_dim : channels of the feature-pyramid path
    attn_depth : global self-attention blocks at stride 16
    attn_heads : heads of those blocks (must divide ``widths[3]``)
    in_chans : input channels (3, as SAM's preprocessing produces)
    """

    def __init__(
        self,
        img_size: int = 256,
        patch_size: int = 4,
        out_chans: int = 64,
        widths: Sequence[int] = (24, 48, 96, 160),
        depths: Sequence[int] = (1, 2, 2, 2),
        fpn_dim: int = 64,
        attn_depth: int = 1,
        attn_heads: int = 4,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        widths, depths = tuple(int(w) for w in widths), tuple(int(d) for d in depths)
        if len(widths) != 4 or len(depths) != 4:
            raise ValueError(
                f"widths and depths need one entry per stage (4), got {widths} and {depths}"
            )
        if patch_size not in (4, 8, 16):
            raise ValueError(f"patch_size (total stride) must be 4, 8 or 16, got {patch_size}")
        if img_size % 16:
            raise ValueError(f"img_size must be a multiple of 16, got {img_size}")
        if attn_depth and widths[3] % attn_heads:
            raise ValueError(f"attn_heads={attn_heads} must divide widths[3]={widths[3]}")
        self.img_size = int(img_size)
        self.patch_size = int(patch_size)
        #: convolutions run faster on channels-last input (the Predictor converts)
        self.channels_last = True
        self.register_buffer(
            "arch",
            torch.tensor([self.img_size, self.patch_size, attn_heads], dtype=torch.int64),
        )
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], 3, stride=2, padding=1),
            _norm(widths[0]),
            nn.GELU(),
            nn.Conv2d(widths[0], widths[0], 3, padding=1),
        )
        self.stage1 = nn.Sequential(*(ResBlock(widths[0]) for _ in range(depths[0])))
        self.stage2 = Stage(widths[0], widths[1], depths[1])
        self.stage3 = Stage(widths[1], widths[2], depths[2])
        self.stage4 = Stage(widths[2], widths[3], depths[3])
        grid = self.img_size // 16
        self.attn = nn.Sequential(
            *(GlobalAttentionBlock(widths[3], attn_heads, grid) for _ in range(attn_depth))
        )
        # lateral 1x1 convs from stride 16 down to the output stride
        n_levels = {16: 1, 8: 2, 4: 3}[self.patch_size]
        self.lateral = nn.ModuleList(
            nn.Conv2d(widths[3 - i], fpn_dim, 1) for i in range(n_levels)
        )
        self.smooth = nn.ModuleList(
            nn.Sequential(_norm(fpn_dim), nn.GELU(), nn.Conv2d(fpn_dim, fpn_dim, 3, padding=1))
            for _ in range(n_levels - 1)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(fpn_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` normalized image -> ``(B, out_chans, S/p, S/p)`` embedding."""
        s2 = self.stage1(self.stem(x))
        s4 = self.stage2(s2)
        s8 = self.stage3(s4)
        s16 = self.attn(self.stage4(s8))
        feats = [s16, s8, s4]
        y = self.lateral[0](feats[0])
        for i, smooth in enumerate(self.smooth, start=1):
            y = F.interpolate(y, scale_factor=2.0, mode="nearest") + self.lateral[i](feats[i])
            y = y + smooth(y)
        return self.neck(y)


def _stage_depth(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    from napari_sam.model.checkpoint import count_indices

    return count_indices(state, rf"{prefix.replace('.', chr(92) + '.')}(\d+)\.conv1\.weight")


def infer_config(state: Mapping[str, torch.Tensor]) -> SamConfig | None:
    """The :class:`~napari_sam.model.sam.SamConfig` of a MicroEncoder checkpoint, else None.

    Recognised by the ``image_encoder.arch`` buffer (``[img_size, patch_size,
    attn_heads]``);
    widths, depths, FPN width and attention depth are read from weight shapes
    and key names; the decoder fields come from
    :func:`napari_sam.model.checkpoint.decoder_fields`.
    """
    from napari_sam.model.checkpoint import count_indices, decoder_fields
    from napari_sam.model.sam import SamConfig

    arch = state.get("image_encoder.arch")
    if arch is None or "image_encoder.stem.0.weight" not in state:
        return None
    img_size, patch_size, attn_heads = (int(v) for v in arch.tolist())
    widths = (
        state["image_encoder.stem.0.weight"].shape[0],
        state["image_encoder.stage2.down.weight"].shape[0],
        state["image_encoder.stage3.down.weight"].shape[0],
        state["image_encoder.stage4.down.weight"].shape[0],
    )
    depths = (
        _stage_depth(state, "image_encoder.stage1."),
        _stage_depth(state, "image_encoder.stage2.blocks."),
        _stage_depth(state, "image_encoder.stage3.blocks."),
        _stage_depth(state, "image_encoder.stage4.blocks."),
    )
    attn_depth = count_indices(state, r"image_encoder\.attn\.(\d+)\.qkv\.weight")
    options = {
        "widths": tuple(int(w) for w in widths),
        "depths": depths,
        "fpn_dim": int(state["image_encoder.lateral.0.weight"].shape[0]),
        "attn_depth": attn_depth,
        "attn_heads": attn_heads,
    }
    return SamConfig(
        encoder="micro",
        encoder_options=options,
        img_size=img_size,
        patch_size=patch_size,
        **decoder_fields(state),
    )
