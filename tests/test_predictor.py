"""The slice predictor: input checks, normalization, coordinates, shapes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from napari_sam.model.sam import build_sam
from napari_sam.normalize import stack_intensity_range, to_rgb_float
from napari_sam.predictor import Embedding, Prediction, Predictor, PredictorProtocol
from tolerance import assert_close_rounding, assert_masks_equal_near_threshold, rounding_atol


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(build_sam("vit_tiny"), precision="float32")


@pytest.fixture(scope="module")
def emb(predictor) -> Embedding:
    rng = np.random.default_rng(0)
    return predictor.embed(rng.integers(0, 4000, (90, 130)).astype(np.uint16))


def test_predictor_satisfies_protocol(predictor):
    assert isinstance(predictor, PredictorProtocol)


@pytest.mark.parametrize(
    "dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_],
    ids=lambda d: np.dtype(d).name,
)
@pytest.mark.parametrize("shape", [(40, 60), (40, 60, 1), (40, 60, 2), (40, 60, 3)],
                         ids=["2d", "c1", "c2", "c3"])
def test_embed_any_dtype_and_channels(predictor, dtype, shape):
    rng = np.random.default_rng(1)
    image = (rng.random(shape) * 200).astype(dtype)
    emb = predictor.embed(image)
    assert emb.original_size == (40, 60)
    assert emb.input_size == (171, 256)
    pred = predictor.predict(emb, points=[[20, 30]], labels=[1])
    assert isinstance(pred, Prediction)
    assert pred.masks.shape == (3, 40, 60) and pred.masks.dtype == bool
    assert pred.scores.shape == (3,)
    assert pred.logits.shape == (3, 64, 64)


def test_single_mask_output(predictor, emb):
    pred = predictor.predict(emb, points=[[10, 10], [50, 70]], labels=[1, 0], multimask=False)
    assert pred.masks.shape == (1, 90, 130)
    assert pred.best_mask.shape == (90, 130)


def test_grayscale_repeated_and_two_channels_padded():
    gray = np.arange(16 * 20, dtype=np.uint8).reshape(16, 20)
    rgb = to_rgb_float(gray)
    assert rgb.shape == (16, 20, 3)
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    np.testing.assert_array_equal(rgb[..., 0], gray)  # uint8 is kept as is
    two = to_rgb_float(np.stack([gray, gray], -1))
    assert (two[..., 2] == 0).all()


def test_contrast_limits_are_applied_identically_to_every_slice():
    stack = np.stack([np.full((20, 20), v, np.uint16) for v in (100, 200, 300)])
    stack[:, 0, 0] = 0
    limits = stack_intensity_range(stack, percentiles=(0, 100))
    assert limits == (0.0, 300.0)
    values = [to_rgb_float(s, limits)[5, 5, 0] for s in stack]
    np.testing.assert_allclose(values, [85.0, 170.0, 255.0], rtol=1e-5)


def test_uint16_is_not_crushed_to_black():
    """uint16 data with a small dynamic range must use the whole 0..255 input range."""
    image = np.full((32, 32), 1000, np.uint16)
    image[8:24, 8:24] = 1400
    rgb = to_rgb_float(image)
    assert rgb.max() > 200 and rgb.min() < 50


@pytest.mark.parametrize("bad", [np.nan, np.inf], ids=["nan", "inf"])
def test_nan_inf_replaced_with_warning(predictor, bad):
    image = np.random.default_rng(2).random((32, 32)).astype(np.float32)
    image[3, 4] = bad
    with pytest.warns(UserWarning, match="NaN/inf"):
        emb = predictor.embed(image)
    assert torch.isfinite(emb.features).all()


def test_constant_image_warns_but_works(predictor):
    with pytest.warns(UserWarning, match="constant"):
        emb = predictor.embed(np.full((32, 32), 7.0, np.float32))
    assert emb.features.shape[0] == 1


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((0, 10)), "empty"),
        (np.zeros((10, 40)), "at least 16"),
        (np.zeros((20, 20, 4)), "4 channels"),
        (np.zeros((3, 20, 20, 2)), "one 2D slice"),
        (np.array([["a"] * 20] * 20), "not numeric"),
    ],
    ids=["empty", "small", "4-channels", "4d", "strings"],
)
def test_bad_images_raise_clear_errors(predictor, image, match):
    with pytest.raises((ValueError, TypeError), match=match):
        predictor.embed(image)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"points": [[95, 10]], "labels": [1]}, "outside"),
        ({"points": [[10, -1]], "labels": [1]}, "outside"),
        ({"points": [[10, 10], [20, 20]], "labels": [1]}, "2 points but 1 labels"),
        ({"points": [[10, 10]], "labels": [2]}, "1 \\(positive\\) or 0"),
        ({"points": [10, 10, 10]}, "shape \\(N, 2\\)"),
        ({"box": [50, 10, 20, 60]}, "empty or inverted"),
        ({"box": [10, 10, 10, 60]}, "empty or inverted"),
        ({"box": [200, 200, 300, 300]}, "outside"),
        ({"mask": np.zeros((10, 10))}, "mask prompt has shape"),
        ({}, "no prompt"),
        ({"labels": [1]}, "labels were given without points"),
    ],
    ids=["row-out", "col-neg", "label-count", "label-value", "points-shape", "box-inverted",
         "box-empty", "box-outside", "mask-shape", "nothing", "labels-only"],
)
def test_bad_prompts_raise_clear_errors(predictor, emb, kwargs, match):
    with pytest.raises(ValueError, match=match):
        predictor.predict(emb, **kwargs)


def test_mask_prompt_from_previous_logits_and_from_slice_mask(predictor, emb):
    first = predictor.predict(emb, points=[[40, 60]], labels=[1])
    again = predictor.predict(emb, points=[[40, 60]], labels=[1], mask=first.logits[0])
    assert again.masks.shape == (3, 90, 130)
    slice_mask = np.zeros((90, 130), bool)
    slice_mask[30:50, 50:70] = True
    from_mask = predictor.predict(emb, mask=slice_mask)
    assert from_mask.masks.shape == (3, 90, 130)


@pytest.mark.numerics
def test_predict_batch_equals_individual_predictions(predictor, emb):
    boxes = np.array([[5, 5, 40, 50], [30, 60, 85, 125]])
    batch = predictor.predict_batch(emb, boxes=boxes)
    for box, got in zip(boxes, batch):
        single = predictor.predict(emb, box=box)
        # one batched decoder pass vs one per box: the same sums, maybe in another order
        tokens = emb.features.shape[-1] ** 2  # image tokens: the decoder's longest sum
        assert_close_rounding(got.logits, single.logits, reduction_length=tokens, k=4)
        full = predictor.upscale(emb, torch.as_tensor(single.logits)[None])[0]
        atol = 2 * rounding_atol(single.logits, reduction_length=tokens, k=4)
        assert_masks_equal_near_threshold(got.masks, full, predictor.model.mask_threshold, atol)


def test_row_col_to_xy_conversion_non_square():
    emb = Embedding(features=None, original_size=(100, 400), input_size=(256, 1024))
    xy = emb.to_model_frame(np.array([[10.0, 300.0]]))
    np.testing.assert_allclose(xy, [[300 * 2.56, 10 * 2.56]])


def test_precision_auto_is_exact_or_bfloat16(predictor):
    fast = Predictor(predictor.model, precision="auto")
    assert fast.precision in ("float32", "bfloat16")
    with pytest.raises(ValueError, match="precision must be"):
        Predictor(predictor.model, precision="int4")


def test_bfloat16_embedding_close_to_float32(predictor):
    image = np.random.default_rng(5).integers(0, 255, (64, 64), dtype=np.uint8)
    exact = predictor.embed(image).features
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = Predictor(predictor.model, precision="bfloat16").embed(image).features
    assert fast.dtype == torch.float32
    assert float((fast - exact).norm() / exact.norm()) < 0.05


def test_segment_slice_returns_the_prompted_parts_of_the_best_mask(predictor):
    from napari_sam.masks import keep_prompted_parts
    from napari_sam.predictor import segment_slice

    image = np.random.default_rng(11).integers(0, 255, (64, 80), dtype=np.uint8)
    for kw in ({"points": [[20.0, 30.0]], "labels": [1]}, {"box": [5.0, 8.0, 40.0, 60.0]}):
        mask = segment_slice(image, model=predictor, **kw)
        best = predictor.predict(predictor.embed(image), **kw).best_mask
        assert mask.shape == (64, 80) and mask.dtype == bool
        expected = keep_prompted_parts(best, kw.get("points"), kw.get("labels"), kw.get("box"))
        np.testing.assert_array_equal(mask, expected)
