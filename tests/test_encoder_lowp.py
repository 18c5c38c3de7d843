"""The image encoder's low-precision (bfloat16) inference path and its FLOP count.

The path's structure (attention with the relative-position bias folded into
augmented queries and keys, windows written into the attention buffer, the
neck on channels-last tokens) is checked exactly by running it in float32; its
bfloat16 results are checked against float32 with a tolerance from bfloat16's
8-bit mantissa. Masks are checked in ``test_encoder_speedpath.py``
(``test_fast_path_masks_agree_with_float32``).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_sam.model import image_encoder
from napari_sam.model.encoder_buffers import linear
from napari_sam.model.encoder_flops import encoder_flops
from napari_sam.model.image_encoder import (
    augmented_attention,
    augmented_head_dim,
    init_augmented_keys,
    relative_position_table,
)
from napari_sam.model.sam import build_sam
from oracle import randomize_
from tolerance import assert_close_rounding


def _model(arch="vit_tiny", seed=5):
    return randomize_(build_sam(arch), seed=seed).eval()


def _image(sam, batch=1, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, sam.img_size, sam.img_size, generator=g)


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.numerics
@pytest.mark.parametrize("rel_pos", [True, False])
def test_augmented_attention_equals_attention_with_the_bias(rel_pos):
    g = torch.Generator().manual_seed(0)
    b, heads, h, w, c = 2, 3, 5, 7, 8
    q, k, v = (torch.randn(b, heads, h * w, c, generator=g) for _ in range(3))
    rel_h, rel_w = torch.randn(2 * h - 1, c, generator=g), torch.randn(2 * w - 1, c, generator=g)
    table_h = relative_position_table(h, h, rel_h)
    table_w = relative_position_table(w, w, rel_w)
    scale = 0.3
    scores = scale * q @ k.transpose(-1, -2)
    if rel_pos:
        qg = q.view(b, heads, h, w, c)
        bias_h = torch.einsum("bnhwc,hkc->bnhwk", qg, table_h)
        bias_w = torch.einsum("bnhwc,wkc->bnhwk", qg, table_w)
        scores = scores + (bias_h[..., :, None] + bias_w[..., None, :]).reshape(scores.shape)
    expected = torch.softmax(scores, -1) @ v

    d = augmented_head_dim(c, h, w) if rel_pos else augmented_head_dim(c, 0, 0)
    assert d % 32 == 0 and d >= (c + h + w if rel_pos else c)
    buffer = torch.zeros(3, b, heads, h * w, d)
    if rel_pos:
        init_augmented_keys(buffer, c, h, w)
    buffer[..., :c] = torch.stack([q, k, v])
    tables = (table_h, table_w) if rel_pos else (None, None)
    out = augmented_attention(buffer, c, (h, w), *tables, scale)
    # sums over the h * w keys and the augmented head dimensions, in another order
    assert_close_rounding(out, expected, reduction_length=h * w + d)


@pytest.mark.numerics
@pytest.mark.parametrize("batch", [1, 2])
def test_low_precision_path_in_float32_equals_the_exact_encoder(batch):
    """Run in float32, the low-precision path computes what the exact path does.

    vit_tiny has a windowed block with padded windows (16 x 16 grid, window 5)
    and a global block.
    """
    sam = _model()
    enc = sam.image_encoder
    x = _image(sam, batch)
    with torch.inference_mode():
        exact = enc(x)
        ours = enc.forward_low_precision(x, torch.float32)
    assert ours.dtype == torch.float32 and ours.shape == exact.shape
    # the same sums in another order (fused attention, bias inside the product);
    # the longest is the global block's attention over all tokens
    tokens = (sam.img_size // enc.patch_embed.proj.stride[0]) ** 2
    assert_close_rounding(ours, exact, reduction_length=tokens)


def test_bfloat16_autocast_runs_the_low_precision_path(monkeypatch):
    sam = _model()
    enc = sam.image_encoder
    x = _image(sam)
    calls = []
    original = image_encoder.ImageEncoderViT.forward_low_precision

    def spy(self, x, dtype):
        calls.append(dtype)
        return original(self, x, dtype)

    monkeypatch.setattr(image_encoder.ImageEncoderViT, "forward_low_precision", spy)
    with torch.inference_mode():
        exact = enc(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fast = enc(x)
    assert calls == [torch.bfloat16]
    assert fast.dtype == torch.float32
    # bfloat16 keeps 8 mantissa bits (relative rounding 2**-9 per value);
    # the errors of ~10 roundings in a row stay well below 3 %
    assert _rel(fast, exact) < 0.03
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autograd on: the autocast path
        assert enc.low_precision_dtype(x) is None
    with torch.inference_mode():
        assert enc.low_precision_dtype(x) is None  # no autocast: the exact path


def test_low_precision_weights_follow_the_parameters():
    """Converted once (packed for oneDNN where available), again after a parameter changes."""
    sam = _model()
    enc = sam.image_encoder
    attn = enc.blocks[0].attn
    c = attn.qkv.in_features
    x = torch.randn(6, c, generator=torch.Generator().manual_seed(1))
    first = enc.low_precision_weights(torch.bfloat16)
    assert enc.low_precision_weights(torch.bfloat16) is first  # kept

    def qkv(weights):
        w, b = weights["blocks.0.attn.qkv.weight"], weights["blocks.0.attn.qkv.bias"]
        assert b.dtype == torch.bfloat16
        return linear(x.bfloat16(), w, b).float()

    # the queries' rows carry the attention scale
    scale = torch.ones(3 * c)
    scale[:c] = attn.scale
    expected = F.linear(x.bfloat16().float(), attn.qkv.weight, attn.qkv.bias) * scale
    # inputs and weights rounded to bfloat16 (8-bit mantissa), sums of c products
    assert_close_rounding(qkv(first), expected, reduction_length=c, dtype=torch.bfloat16)
    with torch.no_grad():
        attn.qkv.weight.mul_(2)
    again = enc.low_precision_weights(torch.bfloat16)
    assert again is not first
    expected = F.linear(x.bfloat16().float(), attn.qkv.weight, attn.qkv.bias) * scale
    assert_close_rounding(qkv(again), expected, reduction_length=c, dtype=torch.bfloat16)


def _baddbmm_flops(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs):
    batch, m, k = a_shape
    return 2 * batch * m * k * b_shape[-1]


def test_encoder_flops_match_the_counted_operations(monkeypatch):
    """The analytic count equals PyTorch's count of the plain blocks' products.

    The plain path also computes ``qkv`` of one zero token per padded windowed
    block (the windows' padding), which the analytic count leaves out.
    """
    from torch.utils.flop_counter import FlopCounterMode

    sam = _model()
    enc = sam.image_encoder
    monkeypatch.setattr(image_encoder.Block, "supports_inference_path", lambda self: False)
    mapping = {torch.ops.aten.baddbmm_: _baddbmm_flops}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        enc(_image(sam))
    flops = encoder_flops(enc)
    c = enc.blocks[0].attn.qkv.in_features
    padded_blocks = sum(1 for b in enc.blocks if b.window_size and 16 % b.window_size)
    assert counter.get_total_flops() == flops["total"] + padded_blocks * 2 * c * 3 * c
    assert flops["total"] == sum(v for k, v in flops.items() if k != "total")
    assert encoder_flops(enc, batch=3)["total"] == 3 * flops["total"]


def test_encoder_flops_of_vit_b():
    """vit_b at 1024 px: ~0.70 TFLOP in linear layers, ~0.21 in global attention."""
    flops = encoder_flops(build_sam("vit_b").image_encoder)
    n, c = 64 * 64, 768
    assert flops["linear"] == 12 * 2 * n * c * (4 * c + 8 * c)
    assert flops["attention_global"] == 4 * (4 * n * n * c + 2 * n * c * 128)
    assert flops["attention_windowed"] == 8 * 25 * (4 * 196 * 196 * c + 2 * 196 * c * 28)
    assert 0.93e12 < flops["total"] < 0.95e12


@pytest.mark.numerics
def test_low_precision_neck_matches_layer_norm_2d():
    """The neck on channels-last tokens equals the module's neck (float32)."""
    sam = _model()
    enc = sam.image_encoder
    g = torch.Generator().manual_seed(4)
    c = enc.blocks[0].attn.qkv.in_features
    tokens = torch.randn(2, 16, 16, c, generator=g)
    weights = enc.low_precision_weights(torch.float32)
    with torch.inference_mode():
        ours = enc._neck_low_precision(tokens, weights, torch.float32)
        ref = enc.neck(tokens.permute(0, 3, 1, 2))
    # the 3x3 convolution sums 9 * channels terms (the 1x1: c)
    assert_close_rounding(ours, ref, reduction_length=9 * ours.shape[1] + c)
    assert ours.is_contiguous()


def test_encoder_with_packed_weights_copies_and_pickles():
    """The kept low-precision weights (oneDNN tensors without storage) are not copied."""
    import copy
    import io

    sam = _model()
    x = _image(sam)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        first = sam.image_encoder(x)
    copied = copy.deepcopy(sam)
    torch.save(sam, io.BytesIO())
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        again = copied.image_encoder(x)
    assert torch.equal(first, again)
