"""The prompt-to-mask fast path: prepared decoder, cropped upscaling, lazy masks.

``Predictor.predict`` decodes prompts without a mask prompt with
:class:`napari_sam.model.prepared_decoder.PreparedDecoder` (prompt-independent
work once per embedding) and upscales masks to the slice size only when they
are accessed; both must give what SAM's decoder and postprocessing give.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_sam.model.prepared_decoder import PreparedDecoder
from napari_sam.predictor import Embedding, Prediction, Predictor
from oracle import make_pair as _make_pair
from oracle import rel_err
from tolerance import assert_close_rounding, assert_masks_equal_near_threshold

pytestmark = pytest.mark.numerics

ARCHS = [
    pytest.param("vit_tiny", id="tiny"),
    pytest.param("vit_b", id="vit_b", marks=pytest.mark.slow),
]


def make_pair(name: str):
    """(ours, theirs) with identical random weights."""
    return _make_pair(name, seed=5)


def _embedding(model, seed: int = 0, original=None) -> Embedding:
    e = model.config.embedding_size
    s = model.img_size
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(1, model.config.prompt_embed_dim, e, e, generator=g)
    original = original or (s, s)
    scale = s / max(original)
    inp = (int(original[0] * scale + 0.5), int(original[1] * scale + 0.5))
    return Embedding(features=feats, original_size=original, input_size=inp)


def _image_tokens(model) -> int:
    """Image tokens the decoder attends over: its longest sum."""
    return model.config.embedding_size**2


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("multimask", [True, False], ids=["multi", "single"])
@pytest.mark.parametrize("prompt", ["points", "box", "box+points"])
def test_fast_path_matches_official_decoder(arch, prompt, multimask):
    ours, theirs = make_pair(arch)
    pred = Predictor(ours, precision="float32")
    emb = _embedding(ours, seed=1)
    s = ours.img_size
    rng = np.random.default_rng(2)
    rc = rng.random((2, 3, 2)) * (s - 1)  # (row, col) = (y, x) on a square slice
    lab = np.array([[1, 0, 1], [1, 1, 0]])
    boxes_rc = np.array([[20.0, 10.0, s * 0.7, s * 0.6], [5.0, 0.0, s * 0.9, s * 0.3]])
    kw = {
        "points": {"points": rc, "labels": lab},
        "box": {"boxes": boxes_rc},
        "box+points": {"points": rc, "labels": lab, "boxes": boxes_rc},
    }[prompt]
    mine = pred.predict_batch(emb, multimask=multimask, **kw)
    assert pred._prepared, "the prepared decoder was not used"
    pts = None
    if "points" in kw:
        pts = (torch.as_tensor(emb.to_model_frame(rc), dtype=torch.float32), torch.as_tensor(lab))
    bx = None
    if "boxes" in kw:
        corners = emb.to_model_frame(boxes_rc.reshape(-1, 2, 2)).reshape(-1, 4)
        bx = torch.as_tensor(corners, dtype=torch.float32)
    with torch.no_grad():
        sparse, dense = theirs.prompt_encoder(pts, bx, None)
        ref_logits, ref_iou = theirs.mask_decoder(
            emb.features, theirs.prompt_encoder.get_dense_pe(), sparse, dense, multimask
        )
    logits = torch.as_tensor(np.stack([p.logits for p in mine]))
    iou = torch.as_tensor(np.stack([p.scores for p in mine]))
    assert logits.shape == ref_logits.shape
    assert rel_err(logits, ref_logits) <= 1e-4
    assert rel_err(iou, ref_iou) <= 1e-4


def test_mask_prompt_uses_the_full_decoder_and_matches_it():
    ours, _ = make_pair("vit_tiny")
    pred = Predictor(ours, precision="float32")
    emb = _embedding(ours, seed=3)
    first = pred.predict(emb, points=[[40, 50]], labels=[1])
    again = pred.predict(emb, points=[[40, 50]], labels=[1], mask=first.logits[first.best_index])
    with torch.no_grad():
        xy = emb.to_model_frame(np.array([[[40.0, 50.0]]]))
        coords = torch.as_tensor(xy, dtype=torch.float32)
        mask = torch.as_tensor(first.logits[first.best_index])[None, None]
        sparse, dense = ours.prompt_encoder((coords, torch.tensor([[1]])), None, mask)
        ref, _ = ours.mask_decoder(
            emb.features, ours.prompt_encoder.get_dense_pe(), sparse, dense, True
        )
    assert_close_rounding(again.logits, ref[0], reduction_length=_image_tokens(ours))


def test_prepared_decoder_is_kept_per_embedding():
    ours, _ = make_pair("vit_tiny")
    pred = Predictor(ours, precision="float32")
    a, b = _embedding(ours, seed=4), _embedding(ours, seed=4)
    prep_a = pred._prepared_decoder(a)
    assert pred._prepared_decoder(a) is prep_a
    prep_b = pred._prepared_decoder(b)  # equal content, another embedding
    assert prep_b is not prep_a
    assert prep_b.pos_k is prep_a.pos_k  # positional projections are model constants
    for seed in range(5):
        pred._prepared_decoder(_embedding(ours, seed=10 + seed))
    assert len(pred._prepared) <= pred.prepared_cache_size
    p1 = pred.predict(a, points=[[10, 20]])
    p2 = pred.predict(b, points=[[10, 20]])
    assert_close_rounding(p1.logits, p2.logits, reduction_length=_image_tokens(ours))


def test_prepared_decoder_rejects_wrong_shapes():
    ours, _ = make_pair("vit_tiny")
    pe = ours.prompt_encoder.get_dense_pe()
    with pytest.raises(ValueError, match="expects"):
        PreparedDecoder(ours.mask_decoder, torch.zeros(1, 3, 8, 8), pe, torch.zeros(64))


@pytest.mark.parametrize(
    "original", [(256, 256), (96, 160), (160, 96), (70, 45), (300, 300), (1000, 37)]
)
def test_upscale_equals_sam_postprocessing_exactly(original):
    ours, _ = make_pair("vit_tiny")
    pred = Predictor(ours, precision="float32")
    emb = _embedding(ours, original=original)
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 3, 64, 64, generator=g) * 4
    mine = pred.upscale(emb, logits)
    ref = ours.postprocess_masks(logits, emb.input_size, emb.original_size)
    assert mine.shape == (2, 3, *original)
    # two bilinear stages of 4 taps, fused or not: equal up to rounding (torch.equal held
    # at 2 threads; with OMP_NUM_THREADS=1 the kernels round 1.9e-6 of max 13.4 apart)
    assert_close_rounding(mine, ref, reduction_length=4)


def _blob_logits(n: int, size: int, seed: int) -> torch.Tensor:
    """Logits like a decoder's: a few positive blobs (some at the borders) in negative noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = torch.randn(n, size, size, generator=g) - 6
    for k in range(n):
        for _ in range(k % 3 + 1):
            cy, cx, r = (torch.rand(3, generator=g) * torch.tensor([size, size, size / 5])).tolist()
            out[k] += 12 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (r + 1) ** 2))
    out[-1, 0, :] = 5.0  # a mask touching the top border
    return out


@pytest.mark.parametrize(
    "original", [(256, 256), (96, 160), (160, 96), (70, 45), (300, 300), (1000, 37), (256, 200)]
)
def test_upscale_masks_equal_thresholded_upscale(original):
    ours, _ = make_pair("vit_tiny")
    pred = Predictor(ours, precision="float32")
    emb = _embedding(ours, original=original)
    cases = [
        _blob_logits(6, 64, seed=8),
        torch.randn(2, 64, 64, generator=torch.Generator().manual_seed(9)) * 4,  # noise
        torch.full((1, 64, 64), -3.0),  # empty
        torch.full((1, 64, 64), 2.0),  # everything
    ]
    thr = ours.mask_threshold
    for logits in cases:
        full = pred.upscale(emb, logits)
        mine = pred.upscale_masks(emb, logits)
        assert mine.shape == full.shape == (logits.shape[0], *original)
        assert mine.dtype == bool
        assert_masks_equal_near_threshold(mine, full, thr)


def test_masks_are_upscaled_lazily_and_equal_eager_ones():
    ours, _ = make_pair("vit_tiny")
    pred = Predictor(ours, precision="float32")
    emb = _embedding(ours, seed=7, original=(96, 160))
    p = pred.predict(emb, points=[[30, 100]], labels=[1])
    calls = []
    inner = p._upscaler

    def counting(indices):
        calls.append(list(indices))
        return inner(indices)

    p._upscaler = counting
    best = p.best_mask
    assert calls == [[p.best_index]]
    assert best.shape == (96, 160) and best.dtype == bool
    assert p.best_mask is best  # cached
    full = ours.postprocess_masks(
        torch.as_tensor(p.logits)[None], emb.input_size, emb.original_size
    )[0]
    thr = ours.mask_threshold
    assert_masks_equal_near_threshold(p.masks, full, thr)
    assert_masks_equal_near_threshold(p.mask(1), full[1], thr)
    assert_masks_equal_near_threshold(best, full[p.best_index], thr)
    low = pred.predict_batch(emb, points=[[[30, 100]]], upscale=False)[0]
    np.testing.assert_array_equal(low.masks, low.logits > 0)


def test_prediction_from_arrays_and_errors():
    masks = np.zeros((3, 4, 5), bool)
    masks[2, 1, 1] = True
    p = Prediction(masks, np.array([0.1, 0.2, 0.9]), np.zeros((3, 2, 2)))
    assert p.best_index == 2 and p.best_mask[1, 1] and p.mask(0).shape == (4, 5)
    assert "0.9" in repr(p)
    with pytest.raises(ValueError, match="masks or an upscaler"):
        Prediction(None, np.ones(1), np.zeros((1, 2, 2)))


def test_fused_window_upscale_reads_only_the_crop():
    """The first interpolation on the low-res rows the crop needs equals SAM's."""
    g = torch.Generator().manual_seed(8)
    t = torch.randn(1, 1, 256, 256, generator=g)
    for ih, iw in [(1024, 600), (333, 1024), (1024, 1024), (4, 1024)]:
        ref = F.interpolate(t, (1024, 1024), mode="bilinear", align_corners=False)[..., :ih, :iw]
        nh, nw = min(256, -(-ih // 4) + 1), min(256, -(-iw // 4) + 1)
        mine = F.interpolate(t[..., :nh, :nw], (4 * nh, 4 * nw), mode="bilinear",
                             align_corners=False)[..., :ih, :iw]
        assert_close_rounding(mine, ref, reduction_length=4)  # equal but for SIMD tails
