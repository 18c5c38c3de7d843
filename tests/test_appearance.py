"""Appearance changes for training and the stress sweep (napari_sam.synthetic.appearance)."""

import numpy as np
import pytest

from napari_sam.synthetic import appearance as A
from napari_sam.synthetic import nuclei_2d


@pytest.fixture(scope="module")
def scene():
    return nuclei_2d((96, 96), seed=3, radius=(6.0, 10.0))


@pytest.mark.parametrize("name", list(A.STRESS_CONDITIONS))
def test_conditions_keep_labels_aligned_and_objects_visible(scene, name):
    image, labels = scene
    out, lab, limits = A.apply_condition(image, labels, name, seed=1)
    assert out.shape == lab.shape and out.ndim == 2
    assert out.dtype.kind in "uif"
    assert lab.max() > 0
    if limits is not None:
        assert limits[0] < limits[1]
    # the same seed gives the same scene
    again, lab2, limits2 = A.apply_condition(image, labels, name, seed=1)
    np.testing.assert_array_equal(out, again)
    np.testing.assert_array_equal(lab, lab2)
    assert limits == limits2


def test_unknown_condition_names_the_choices(scene):
    with pytest.raises(ValueError, match="window_minmax"):
        A.apply_condition(*scene, "nope")


def test_scale_conditions_resize_image_and_labels(scene):
    image, labels = scene
    out, lab, _ = A.apply_condition(image, labels, "scale_2")
    assert out.shape == (192, 192) and lab.shape == (192, 192)
    out, lab, _ = A.apply_condition(image, labels, "tiny_48")
    assert out.shape == (48, 48)


def test_inversion_makes_objects_darker_than_background(scene):
    image, labels = scene
    out, lab, _ = A.apply_condition(image, labels, "inverted")
    assert np.median(out[lab > 0]) < np.median(out[lab == 0])


def test_object_brightness_changes_keep_the_background(scene):
    image, labels = scene
    img = image.astype(np.float64)
    factors = np.full(int(labels.max()), 3.0)
    out = A.scale_objects(img, labels, factors)
    far = A.ndi.distance_transform_edt(labels == 0) > 8
    np.testing.assert_allclose(out[far], img[far], rtol=0, atol=1e-6 * img.max())
    inside = A.ndi.binary_erosion(labels > 0, iterations=3)
    bg = A.background_level(img, labels)
    assert np.median(out[inside] - bg) > 2.5 * np.median(img[inside] - bg)


def test_windows_by_kind(scene):
    image, _ = scene
    lo, hi = float(image.min()), float(image.max())
    assert A.window(image, "auto") is None
    assert A.window(image, "minmax") == (lo, hi)
    assert A.window(image, "dtype") == (0.0, 65535.0)
    low, high = A.window(image, "narrow")
    assert low == lo and high < hi
    with pytest.raises(ValueError, match="window kind"):
        A.window(image, "sideways")


def test_random_appearance_keeps_objects_visible_and_labels_aligned(scene):
    image, labels = scene
    rng = np.random.default_rng(0)
    cfg = A.AppearanceConfig(prob=1.0, window_prob=1.0)
    for _ in range(25):
        out, lab, limits = A.random_appearance(image, labels, rng, cfg)
        assert out.shape == lab.shape and min(out.shape) >= 24
        if limits is not None and (lab > 0).any():
            assert A.visible_contrast(out, lab, limits) >= cfg.min_contrast


def test_small_bright_cells_are_labelled_in_free_space(scene):
    image, labels = scene
    out, lab = A.small_bright_cells(image.astype(np.float64), labels, np.random.default_rng(1), 2)
    new = lab > labels.max()
    assert new.any()
    assert (labels[new] == 0).all()  # never painted over an existing object
    assert out[new].mean() > image[labels > 0].mean()


def test_samples_of_a_condition_are_distinct_draws_and_the_first_is_the_seeds():
    image, labels = nuclei_2d((256, 256), seed=5, radius=(8.0, 14.0))
    assert A.STRESS_CONDITIONS["tiny_48"].samples > 1
    first, _, _ = A.apply_condition(image, labels, "tiny_48", seed=4)
    again, _, _ = A.apply_condition(image, labels, "tiny_48", seed=4, sample=0)
    other, _, _ = A.apply_condition(image, labels, "tiny_48", seed=4, sample=1)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_tiny_draws_shrink_and_crop_around_an_object():
    image, labels = nuclei_2d((256, 256), seed=5, radius=(8.0, 14.0))
    rng = np.random.default_rng(2)
    cfg = A.AppearanceConfig(prob=1.0, tiny_prob=1.0, rescale_prob=0.0, crop_prob=0.0)
    for _ in range(10):
        out, lab, _ = A.random_appearance(image, labels, rng, cfg)
        assert cfg.min_side <= min(out.shape) and max(out.shape) <= 96
        assert lab.max() > 0


def test_tiny_draws_off_leave_the_random_stream_of_earlier_stages_alone(scene):
    image, labels = scene
    a = A.random_appearance(image, labels, np.random.default_rng(7), A.AppearanceConfig())
    b = A.random_appearance(
        image, labels, np.random.default_rng(7), A.AppearanceConfig(tiny_prob=0.0)
    )
    np.testing.assert_array_equal(a[0], b[0])
    assert a[2] == b[2]
