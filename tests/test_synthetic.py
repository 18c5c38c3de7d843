"""Tests for napari_sam.synthetic: procedural images with exact instance labels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sam.synthetic import (
    SCENES_2D,
    cells_membrane_2d,
    imaging,
    nuclei_2d,
    nuclei_stack,
    phase_contrast_2d,
    puncta_2d,
    random_scene_2d,
    render,
    sample_nuclei_stack,
    shapes,
    stack_psf_sigma,
)
from napari_sam.synthetic._random import smooth_noise

SMALL = (96, 96)
SMALL_STACK = (16, 80, 80)

GENERATORS_2D = [pytest.param(SCENES_2D[k], id=k) for k in SCENES_2D]
FLUORESCENT_2D = [
    pytest.param(nuclei_2d, id="nuclei"),
    pytest.param(puncta_2d, id="puncta"),
]


def assert_consecutive(labels: np.ndarray) -> int:
    """Labels are uint32, 0 is background and ids are exactly 1..N; returns N."""
    assert labels.dtype == np.uint32
    ids = np.unique(labels)
    n = int(ids[-1])
    assert n >= 1, "no objects"
    np.testing.assert_array_equal(ids, np.arange(n + 1))
    return n


def touching_pairs(labels: np.ndarray) -> int:
    """Number of adjacent voxel pairs (along any axis) with two different object ids."""
    count = 0
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)
        lo, hi = a[:-1], a[1:]
        count += int(np.count_nonzero((lo > 0) & (hi > 0) & (lo != hi)))
    return count


def width(profile: np.ndarray) -> float:
    """Standard deviation of a non-negative 1D intensity profile."""
    p = np.clip(profile - profile.min(), 0, None).astype(float)
    x = np.arange(p.size)
    mean = (p * x).sum() / p.sum()
    return float(np.sqrt((p * (x - mean) ** 2).sum() / p.sum()))


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("gen", GENERATORS_2D)
def test_2d_deterministic_by_seed(gen):
    image_a, labels_a = gen(SMALL, seed=3)
    image_b, labels_b = gen(SMALL, seed=3)
    np.testing.assert_array_equal(image_a, image_b)
    np.testing.assert_array_equal(labels_a, labels_b)
    image_c, _ = gen(SMALL, seed=4)
    assert not np.array_equal(image_a, image_c)
    # a Generator seed works the same way
    image_d, labels_d = gen(SMALL, seed=np.random.default_rng(11))
    image_e, labels_e = gen(SMALL, seed=np.random.default_rng(11))
    np.testing.assert_array_equal(image_d, image_e)
    np.testing.assert_array_equal(labels_d, labels_e)


def test_stack_deterministic_by_seed():
    a = nuclei_stack(SMALL_STACK, seed=5)
    b = nuclei_stack(SMALL_STACK, seed=5)
    c = nuclei_stack(SMALL_STACK, seed=6)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("seed", [0, 17], ids=["seed0", "seed17"])
def test_random_scene_deterministic(seed):
    a = random_scene_2d(seed, SMALL)
    b = random_scene_2d(seed, SMALL)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


# ------------------------------------------------------------------- dtypes and ranges


BIT_DEPTHS = [
    pytest.param(8, None, np.uint8, id="8bit"),
    pytest.param(12, None, np.uint16, id="12bit"),
    pytest.param(16, None, np.uint16, id="16bit"),
    pytest.param(12, "float32", np.float32, id="12bit-float32"),
]


@pytest.mark.parametrize(("bit_depth", "dtype", "expected"), BIT_DEPTHS)
@pytest.mark.parametrize("gen", GENERATORS_2D)
def test_dtype_and_range_per_bit_depth(gen, bit_depth, dtype, expected):
    image, labels = gen(SMALL, seed=1, bit_depth=bit_depth, dtype=dtype)
    assert image.shape == labels.shape == SMALL
    assert image.dtype == expected
    top = 2**bit_depth - 1
    assert image.min() >= 0
    assert image.max() <= top
    assert image.max() > 0.05 * top  # not blank
    if bit_depth == 16:
        assert image.max() < 0.5 * top  # realistic: most of a 16-bit range unused
    if dtype == "float32":
        assert not np.all(image == np.round(image))  # not quantized


def test_stack_dtype_and_range():
    image, labels = nuclei_stack(SMALL_STACK, seed=2, bit_depth=8)
    assert image.shape == labels.shape == SMALL_STACK
    assert image.dtype == np.uint8
    assert labels.dtype == np.uint32
    image, _ = nuclei_stack(SMALL_STACK, seed=2, dtype="float32")
    assert image.dtype == np.float32
    assert image.min() >= 0 and image.max() <= 65535


def test_camera_clips_and_quantizes():
    rng = np.random.default_rng(0)
    bright = np.full((16, 16), 1e6)
    img = imaging.camera(bright, rng, bit_depth=12, gain=1.0)
    assert img.dtype == np.uint16
    assert img.max() == 4095
    img8 = imaging.camera(np.zeros((16, 16)), rng, bit_depth=8, offset=10.0, read_noise=0.0)
    assert img8.dtype == np.uint8
    assert np.all(img8 == 10)
    with pytest.raises(ValueError, match="bit_depth"):
        imaging.camera(bright, rng, bit_depth=10)


def test_shot_noise_statistics():
    rng = np.random.default_rng(0)
    for lam in (5.0, 200.0):
        counts = imaging._shot_noise(np.full(20000, lam), rng)
        assert counts.mean() == pytest.approx(lam, rel=0.03)
        assert counts.var() == pytest.approx(lam, rel=0.08)
        assert np.all(counts == np.round(counts))


# ------------------------------------------------------------------------------- labels


@pytest.mark.parametrize("gen", GENERATORS_2D)
@pytest.mark.parametrize("seed", [0, 1, 2], ids=lambda s: f"seed{s}")
def test_2d_labels_consecutive(gen, seed):
    _, labels = gen(SMALL, seed=seed)
    assert labels.shape == SMALL
    assert_consecutive(labels)


@pytest.mark.parametrize("seed", range(8), ids=lambda s: f"seed{s}")
def test_random_scene_labels_and_info(seed):
    image, labels, info = random_scene_2d(seed, SMALL, return_info=True)
    assert image.shape == labels.shape == SMALL
    assert image.dtype in (np.uint8, np.uint16, np.float32)
    n = assert_consecutive(labels)
    assert info["n_objects"] == n
    assert info["kind"] in {"nuclei_2d", "cells_membrane_2d", "puncta_2d", "phase_contrast_2d"}
    assert info["params"]["bit_depth"] in (8, 12, 16)
    points = info["interior_points"]
    assert points.shape == (n, 2)
    np.testing.assert_array_equal(labels[points[:, 0], points[:, 1]], np.arange(1, n + 1))


def test_random_scene_stream_and_kinds():
    rng = np.random.default_rng(0)
    kinds = {random_scene_2d(rng, (64, 64), return_info=True)[2]["kind"] for _ in range(12)}
    assert len(kinds) >= 2
    _, _, info = random_scene_2d(1, (64, 64), kinds=["puncta"], return_info=True)
    assert info["kind"] == "puncta_2d"
    with pytest.raises(ValueError, match="unknown kinds"):
        random_scene_2d(1, (64, 64), kinds=["nope"])


def test_stack_labels_consecutive_and_3d_ids():
    _image, labels, info = nuclei_stack(SMALL_STACK, seed=3, return_info=True)
    n = assert_consecutive(labels)
    assert info["n_objects"] == n
    assert info["scale"] == (2.0, 1.0, 1.0)
    # every 3D object is one id spanning several slices
    boxes = ndi.find_objects(labels)
    depths = [b[0].stop - b[0].start for b in boxes]
    assert max(depths) >= 3


# --------------------------------------------------------------------------- visibility


def visibility_failures(image: np.ndarray, labels: np.ndarray, planar: bool) -> list[int]:
    """Ids whose mean intensity is not above the surrounding background ring."""
    structure = ndi.generate_binary_structure(labels.ndim, 1)
    if planar and labels.ndim == 3:  # ring in xy only
        structure[0] = structure[2] = False
    failures = []
    for k, box in enumerate(ndi.find_objects(labels), start=1):
        pad = tuple(slice(max(s.start - 8, 0), s.stop + 8) for s in box)
        lab = labels[pad]
        img = image[pad].astype(np.float64)
        obj = lab == k
        near = ndi.binary_dilation(obj, structure, iterations=2)
        far = ndi.binary_dilation(obj, structure, iterations=7)
        ring = far & ~near & (lab == 0)
        if np.count_nonzero(ring) < 5:
            continue  # no free background next to this object
        if not img[obj].mean() > img[ring].mean():
            failures.append(k)
    return failures


@pytest.mark.parametrize("bit_depth", [8, 16], ids=["8bit", "16bit"])
@pytest.mark.parametrize("seed", [0, 1], ids=["seed0", "seed1"])
@pytest.mark.parametrize("gen", FLUORESCENT_2D)
def test_fluorescent_objects_visible(gen, seed, bit_depth):
    image, labels = gen((128, 128), seed=seed, bit_depth=bit_depth)
    assert visibility_failures(image, labels, planar=False) == []


def test_stack_objects_visible():
    image, labels = nuclei_stack((20, 96, 96), seed=4)
    assert visibility_failures(image, labels, planar=True) == []


def test_membrane_outlines_brighter_than_interiors():
    image, labels = cells_membrane_2d((128, 128), seed=0)
    img = image.astype(float)
    edges = ndi.maximum_filter(labels, 3) != ndi.minimum_filter(labels, 3)
    interior = ndi.binary_erosion(labels > 0, iterations=1) & ~ndi.binary_dilation(
        edges, iterations=3
    )
    assert img[edges].mean() > 1.5 * img[interior].mean()
    # labels are full cell areas: cells tile most of the image and touch each other
    assert np.count_nonzero(labels) > 0.6 * labels.size
    assert touching_pairs(labels) > 0


def test_phase_contrast_cells_darker_than_background():
    image, labels = phase_contrast_2d((128, 128), seed=0)
    img = image.astype(float)
    assert img[labels > 0].mean() < np.median(img[labels == 0])
    # bright halo just outside the cells
    halo = ndi.binary_dilation(labels > 0, iterations=2) & (labels == 0)
    far = ~ndi.binary_dilation(labels > 0, iterations=12)
    assert img[halo].mean() > img[far].mean()


# ------------------------------------------------------------------ geometry of stacks


def test_stack_objects_start_and_end_inside():
    z = 24
    _, labels, info = nuclei_stack((z, 96, 96), seed=0, z_margin=1, return_info=True)
    boxes = [b for b in ndi.find_objects(labels) if b is not None]
    starts = np.array([b[0].start for b in boxes])
    stops = np.array([b[0].stop for b in boxes])
    assert np.all(starts >= 1) and np.all(stops <= z - 1)
    inside = (starts > 0) & (stops < z)
    assert inside.sum() >= 1
    np.testing.assert_array_equal(info["z_extent"][:, 0], starts)
    np.testing.assert_array_equal(info["z_extent"][:, 1], stops - 1)


@pytest.mark.parametrize(
    "gen",
    [
        pytest.param(lambda: nuclei_2d((192, 192), seed=0, cluster_prob=0.6)[1], id="nuclei2d"),
        pytest.param(lambda: nuclei_stack((20, 128, 128), seed=0, cluster_prob=0.6)[1], id="stack"),
    ],
)
def test_some_objects_touch(gen):
    assert touching_pairs(gen()) > 0


def test_anisotropic_psf_point_source():
    point = np.zeros((41, 41, 41), dtype=np.float32)
    point[20, 20, 20] = 1.0
    sigma = stack_psf_sigma(1.2, anisotropy=1.0, axial_ratio=3.5)
    blurred = imaging.blur(point, sigma)
    wz, wx = width(blurred[:, 20, 20]), width(blurred[20, 20, :])
    assert wz > 2.5 * wx
    # with a coarse z step the PSF is still wider along z in physical units
    sz, _, sx = stack_psf_sigma(1.2, anisotropy=4.0)
    assert sz * 4.0 > 2.5 * sx


def test_anisotropic_blur_small_object_in_stack():
    image, labels = nuclei_stack(
        (33, 48, 48),
        n_objects=1,
        seed=0,
        anisotropy=1.0,
        radius=(2.0, 2.0),
        elongation=(1.0, 1.0),
        flatness=(1.0, 1.0),
        irregularity=0.0,
        dividing_prob=0.0,
        z_margin=10,
        background=0.0,
        illumination=0.0,
        depth_attenuation=0.0,
        read_noise=0.0,
        photons=1e6,
        dtype="float32",
    )
    assert labels.max() == 1
    zc, yc, xc = (round(c) for c in ndi.center_of_mass(labels))
    obj_z = np.ptp(np.nonzero(labels)[0])
    obj_x = np.ptp(np.nonzero(labels)[2])
    assert abs(obj_z - obj_x) <= 1  # the object itself is round
    assert width(image[:, yc, xc]) > 1.5 * width(image[zc, yc, :])


# ----------------------------------------------------------------------------- shapes


def test_ellipse_mask_is_exact():
    obj = shapes.ellipsoid((10.0, 5.0))
    assert obj.mask.shape == (21, 11)
    assert obj.area == pytest.approx(np.pi * 50, rel=0.05)
    c = np.round(obj.center).astype(int)
    assert obj.mask[tuple(c)]
    assert obj.profile.max() == pytest.approx(1.0, abs=0.05)
    assert np.all(obj.profile[~obj.mask] == 0)


def test_ellipsoid_respects_spacing():
    obj = shapes.ellipsoid((8.0, 8.0, 8.0), spacing=(4.0, 1.0, 1.0))
    assert obj.mask.shape[0] in (4, 5)
    assert obj.mask.shape[1] == obj.mask.shape[2] == 17


@pytest.mark.parametrize("ndim", [2, 3], ids=["2d", "3d"])
def test_random_shapes_contain_their_center_and_are_connected(ndim):
    rng = np.random.default_rng(0)
    for i in range(30):
        obj = shapes.random_nucleus(rng, ndim, irregularity=0.35, dividing_prob=0.3)
        c = tuple(np.round(obj.center).astype(int))
        assert obj.mask[c], f"object {i} ({obj.kind}) does not contain its centre"
        assert ndi.label(obj.mask)[1] == 1
    div = shapes.dividing(10.0, shapes.random_rotation(ndim, rng), rng=rng)
    assert div.kind == "dividing"
    assert ndi.label(div.mask)[1] == 1


def test_place_objects_no_overlap():
    rng = np.random.default_rng(1)
    objs = [shapes.random_nucleus(rng, 2, radius=(5, 9)) for _ in range(60)]
    labels, placements = shapes.place_objects((80, 80), objs, rng, cluster_prob=0.7)
    assert len(placements) == labels.max()
    for p in placements:  # nothing was painted over: every visible voxel keeps its id
        img, loc = p.slices(labels.shape)
        visible = p.obj.mask[loc]
        assert np.all(labels[img][visible] == p.label)
        assert np.count_nonzero(labels == p.label) == np.count_nonzero(visible)
    assert touching_pairs(labels) > 0


def test_place_objects_inside_axes():
    rng = np.random.default_rng(2)
    objs = [shapes.random_nucleus(rng, 3, spacing=(3.0, 1.0, 1.0)) for _ in range(15)]
    _labels, placements = shapes.place_objects(
        (12, 64, 64), objs, rng, inside_axes=(0,), margin=1, spacing=(3.0, 1.0, 1.0)
    )
    assert placements
    for p in placements:
        assert p.offset[0] >= 1 and p.offset[0] + p.obj.mask.shape[0] <= 11


def test_tessellation_fills_and_is_consecutive():
    rng = np.random.default_rng(0)
    labels = shapes.tessellation((100, 120), rng, cell_size=20.0)
    assert labels.shape == (100, 120)
    n = assert_consecutive(labels)
    assert np.count_nonzero(labels) > 0.95 * labels.size
    assert 15 < n < 60


def test_interior_points_inside_objects():
    _, labels = nuclei_2d(SMALL, seed=0)
    pts = shapes.interior_points(labels)
    np.testing.assert_array_equal(labels[pts[:, 0], pts[:, 1]], np.arange(1, labels.max() + 1))


def test_smooth_noise_normalized():
    rng = np.random.default_rng(0)
    f = smooth_noise((40, 50, 60), rng, (2.0, 8.0, 8.0))
    assert f.shape == (40, 50, 60) and f.dtype == np.float32
    assert abs(float(f.mean())) < 1e-3 and float(f.std()) == pytest.approx(1.0, rel=1e-3)
    # smooth: neighbouring values along x are strongly correlated
    assert np.corrcoef(f[..., 1:].ravel(), f[..., :-1].ravel())[0, 1] > 0.9


def test_render_basic():
    expected = np.zeros((32, 32), np.float32)
    expected[10:20, 10:20] = 1.0
    img = render(expected, 0, bit_depth=12)
    assert img.dtype == np.uint16 and img.shape == (32, 32)
    assert img[12:18, 12:18].mean() > 2 * img[:5, :5].mean()
    np.testing.assert_array_equal(img, render(expected, 0, bit_depth=12))


# ------------------------------------------------------------ sample data and full size


def test_sample_nuclei_stack():
    image, labels = sample_nuclei_stack()
    assert image.shape == labels.shape == (24, 192, 192)
    assert image.dtype == np.uint16
    assert assert_consecutive(labels) == 12
    assert image.max() < 2**15
    boxes = ndi.find_objects(labels)
    assert all(b[0].start > 0 and b[0].stop < 24 for b in boxes)
    for k in range(1, 13):  # each nucleus is one connected 3D object
        assert ndi.label(labels == k)[1] == 1
    image2, labels2 = sample_nuclei_stack()
    np.testing.assert_array_equal(image, image2)
    np.testing.assert_array_equal(labels, labels2)


@pytest.mark.parametrize("gen", GENERATORS_2D)
def test_full_size_2d(gen):
    """Default 256x256 scenes (sanity of shapes; runtime shows in --durations)."""
    image, labels = gen()
    assert image.shape == labels.shape == (256, 256)
    assert labels.max() >= 5


def test_full_size_stack():
    image, labels = nuclei_stack((32, 256, 256), seed=0)
    assert image.shape == labels.shape == (32, 256, 256)
    assert labels.max() >= 20
