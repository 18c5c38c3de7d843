"""FLOPs of one forward pass of SAM's ViT image encoder, counted from its architecture
(``benchmarks/speed.py`` reports each path's achieved fraction of the matrix-product peak)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from napari_sam.model.image_encoder import ImageEncoderViT


def attention_units(encoder: ImageEncoderViT) -> list[tuple[int, int]]:
    """Per block ``(units, side)``: its attention runs over ``units`` squares of
    ``side`` x ``side`` tokens (windowed blocks: their zero-padded windows; global
    blocks: the whole grid once)."""
    grid = encoder.img_size // encoder.patch_embed.proj.kernel_size[0]
    out: list[tuple[int, int]] = []
    for block in encoder.blocks:
        ws = int(block.window_size)
        out.append(((-(-grid // ws)) ** 2, ws) if ws > 0 else (1, int(grid)))
    return out


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
    for block, (units, side) in zip(encoder.blocks, attention_units(encoder)):
        hidden = block.mlp.lin1.out_features
        parts["linear"] += 2 * n * c * (3 * c + c + 2 * hidden)
        tokens = side * side
        # per unit: q @ k.T and p @ v over all heads (2 * tokens^2 * c each), q . R rows and columns
        flops = units * (4 * tokens * tokens * c)
        if block.attn.use_rel_pos:
            flops += units * 2 * tokens * c * (side + side)
        parts["attention_windowed" if block.window_size > 0 else "attention_global"] += flops
    neck_conv1, _, neck_conv2, _ = encoder.neck
    out = neck_conv1.out_channels
    kh, kw = neck_conv2.kernel_size
    parts["neck"] = 2 * n * c * out + 2 * n * out * out * kh * kw
    parts = {k: v * batch for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts
