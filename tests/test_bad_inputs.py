"""Bad values given to the Python API are refused with a message, never answered silently.

issue 16 item 6: NaN prompts gave NaN scores and an empty mask, an empty points
array gave a mask, float label TIFFs were taken as labels, values beyond
float32 made objects vanish, a 1-D image raised IndexError, zero boxes raised
numpy's "need at least one array to stack", ``label_id=2.5`` became 2.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile
import torch

from napari_sam.io import read_labels_tiff
from napari_sam.labels import resolve_label_ids
from napari_sam.model.sam import build_sam
from napari_sam.normalize import to_rgb_float
from napari_sam.predictor import Predictor


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    torch.manual_seed(0)
    return Predictor(build_sam("vit_tiny"), precision="float32")


@pytest.fixture(scope="module")
def emb(predictor):
    rng = np.random.default_rng(0)
    return predictor.embed(rng.integers(0, 4000, (90, 130)).astype(np.uint16))


@pytest.fixture(scope="module")
def tiled(predictor):
    emb = predictor.embed(np.random.default_rng(1).integers(0, 4000, (300, 420)).astype(np.uint16))
    assert emb.__class__.__name__ == "TiledEmbedding"
    return emb


# ----------------------------------------------------------------- prompts
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which", ["emb", "tiled"])
def test_non_finite_points_and_boxes_are_refused(request, predictor, bad, which):
    emb = request.getfixturevalue(which)
    with pytest.raises(ValueError, match=r"points \[\[.*\]\] contain NaN or infinite"):
        predictor.predict(emb, points=[[20.0, bad]], labels=[1])
    with pytest.raises(ValueError, match=r"box \[.*\] contain NaN or infinite"):
        predictor.predict(emb, box=[5.0, 5.0, bad, 40.0])
    with pytest.raises(ValueError, match="NaN or infinite"):
        predictor.predict_batch(emb, points=[[[20.0, 30.0]], [[bad, 30.0]]], labels=[[1], [1]])


def test_nan_labels_are_refused(predictor, emb):
    with pytest.raises(ValueError, match=r"labels must be 1 \(positive\) or 0 \(negative\)"):
        predictor.predict(emb, points=[[20, 30]], labels=[np.nan])
    with pytest.raises(ValueError, match="labels must be 1"):
        predictor.predict(emb, points=[[20, 30]], labels=[0.5])


def test_empty_points_need_another_prompt(predictor, emb):
    for empty in (np.zeros((0, 2)), []):
        with pytest.raises(ValueError, match=r"points is empty \(0 points\) and there is no box"):
            predictor.predict(emb, points=empty)
    box = [5, 5, 40, 50]
    with_box = predictor.predict(emb, points=np.zeros((0, 2)), labels=np.zeros(0), box=box)
    alone = predictor.predict(emb, box=box)
    np.testing.assert_array_equal(with_box.logits, alone.logits)  # the empty points dropped


@pytest.mark.parametrize("which", ["emb", "tiled"])
def test_zero_objects_give_zero_predictions(request, predictor, which):
    emb = request.getfixturevalue(which)
    assert predictor.predict_batch(emb, boxes=np.zeros((0, 4))) == []
    assert predictor.predict_batch(emb, points=np.zeros((0, 1, 2))) == []


def test_one_dimensional_image_is_a_clear_error(predictor):
    with pytest.raises(ValueError, match=r"expected one 2D slice.*got shape \(100,\)"):
        predictor.embed(np.zeros(100, np.uint16))


def test_unusable_device_is_a_clear_error():
    from napari_sam.prompt_checks import check_device

    check_device("cpu")
    check_device("auto")
    with pytest.raises(ValueError, match="device 'tpu' is unknown"):
        check_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device 'cuda': .*use device 'cpu'"):
            Predictor("micro", device="cuda")


# ----------------------------------------------------------------- label ids
@pytest.mark.parametrize("bad", [2.5, [1, 2.5], "3", 2.0])
def test_non_integral_label_ids_are_refused_not_truncated(bad):
    n = len(bad) if isinstance(bad, list) else 1
    with pytest.raises(ValueError, match="label_id must be an int or a sequence of ints"):
        resolve_label_ids(bad, n, np.zeros((4, 4), np.uint8))
    assert resolve_label_ids(np.int64(3), 1, None) == [3]


# ----------------------------------------------------------------- label files
def test_float_label_tiffs(tmp_path):
    labels = np.zeros((2, 8, 8), np.float32)
    labels[0, 2:5, 2:5] = 3
    labels[1, 1:3, 1:3] = 300
    whole = tmp_path / "whole.tif"
    tifffile.imwrite(whole, labels)
    with pytest.warns(UserWarning, match=r"stores labels as float32.*converted to uint16"):
        got, _ = read_labels_tiff(whole)
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, labels.astype(np.uint16))
    labels[0, 0, 0] = 2.5
    tifffile.imwrite(tmp_path / "intensity.tif", labels)
    with pytest.raises(ValueError, match=r"intensity.tif' holds float32 pixels that are not "
                       r"whole numbers \(e.g. 2.5\)"):
        read_labels_tiff(tmp_path / "intensity.tif")
    labels[0, 0, 0] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", labels)
    with pytest.raises(ValueError, match="NaN or infinite values, not labels"):
        read_labels_tiff(tmp_path / "nan.tif")
    negative = np.array([[-1, 0], [2, 0]], np.float64)
    tifffile.imwrite(tmp_path / "neg.tif", negative)
    with pytest.warns(UserWarning, match="converted to int8"):
        assert read_labels_tiff(tmp_path / "neg.tif")[0].dtype == np.int8


# ----------------------------------------------------------------- intensities
def test_values_beyond_float32_keep_their_objects():
    image = np.zeros((32, 32))
    image[8:16, 8:16] = 1e39  # float32 overflows to inf: the object used to vanish
    with pytest.warns(UserWarning, match="normalized in float64"):
        rgb = to_rgb_float(image)
    assert rgb.dtype == np.float32 and rgb[10, 10, 0] == 255 and rgb[0, 0, 0] == 0
    with pytest.warns(UserWarning, match="normalized in float64"):
        rgb = to_rgb_float(np.arange(1024.0).reshape(32, 32) * 1e300)
    assert np.isfinite(rgb).all() and rgb.max() == 255 and rgb.min() == 0


def test_positive_infinity_is_the_top_of_the_range():
    image = np.zeros((32, 32), np.float32)
    image[8:16, 8:16] = np.inf  # saturated pixels stay bright, as the object they are
    image[0, 0], image[0, 1] = np.nan, -np.inf
    with pytest.warns(UserWarning, match=r"66 NaN/inf values \(1 NaN, 65 infinite\).*\+inf "
                      r"\(64\) to the highest"):
        rgb = to_rgb_float(image, (0.0, 10.0))
    assert (rgb[8:16, 8:16] == 255).all() and rgb[0, 0, 0] == 0 and rgb[0, 1, 0] == 0


def test_ordinary_images_give_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        to_rgb_float(np.arange(1024, dtype=np.float64).reshape(32, 32))
        to_rgb_float(np.arange(1024, dtype=np.uint16).reshape(32, 32), (0, 1000))
