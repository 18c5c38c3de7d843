"""Block-wise image signatures: never the whole stack in memory, any pixel change shows."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_sam.signature import (
    ImageSignature,
    image_signature,
    iter_slices,
    read_slice,
    slice_digest,
    slice_indices,
    stack_digest,
)


class OneSliceSource:
    """An array-like that refuses any read larger than one slice and counts the reads."""

    def __init__(self, data: np.ndarray, slice_ndim: int = 2) -> None:
        self.data = data
        self.shape = data.shape
        self.dtype = data.dtype
        self.ndim = data.ndim
        self.limit = math.prod(data.shape[-slice_ndim:])
        self.reads: list[int] = []

    def __getitem__(self, key):
        out = self.data[key]
        if out.size > self.limit:
            raise AssertionError(f"read of {out.size} values, more than one slice ({self.limit})")
        if out.size:
            self.reads.append(out.size)
        return out


def forbidden_dask(data: np.ndarray) -> tuple[da.Array, OneSliceSource]:
    """A dask array over ``data`` (chunks of 4 slices) whose full compute fails.

    Computing any whole chunk (4 slices) fails; reading single slices works
    because dask slices the source directly.
    """
    source = OneSliceSource(data)
    return da.from_array(source, chunks=(4, *data.shape[1:]), asarray=False), source


@pytest.fixture
def stack() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 4000, (12, 40, 56)).astype(np.uint16)


def test_forbidden_dask_really_forbids_full_compute(stack):
    lazy, _ = forbidden_dask(stack)
    with pytest.raises(AssertionError, match="more than one slice"):
        lazy.compute()


@pytest.mark.parametrize("kind", ["numpy", "dask", "zarr", "big-endian"])
def test_slice_digest_is_container_independent(stack, kind, tmp_path):
    ref = slice_digest(stack[4])
    if kind == "numpy":
        other = stack[4].copy()
    elif kind == "dask":
        other = da.from_array(stack, chunks=(1, 20, 20))[4]
    elif kind == "zarr":
        z = zarr.open_array(
            str(tmp_path / "s.zarr"),
            mode="w",
            shape=stack.shape,
            chunks=(1, 16, 16),
            dtype=stack.dtype,
        )
        z[:] = stack
        other = z[4]
    else:
        other = stack[4].astype(">u2")
    assert slice_digest(other) == ref
    assert 0 <= ref < 2**64


@pytest.mark.parametrize("where", [(0, 0), (39, 55), (17, 3)], ids=["first", "last", "middle"])
def test_slice_digest_changes_with_one_pixel(stack, where):
    changed = stack[4].copy()
    changed[where] += 1
    assert slice_digest(changed) != slice_digest(stack[4])


def test_slice_digest_sees_dtype_and_shape(stack):
    s = stack[4]
    assert slice_digest(s.astype(np.int32)) != slice_digest(s)
    assert slice_digest(s.reshape(56, 40)) != slice_digest(s)


def test_stack_digest_of_forbidden_dask_reads_slice_by_slice(stack):
    lazy, source = forbidden_dask(stack)
    digest = stack_digest(lazy)
    assert digest == stack_digest(stack)
    assert len(source.reads) == 12 and max(source.reads) == 40 * 56


@pytest.mark.parametrize("z", [0, 5, 11], ids=["first", "middle", "last"])
def test_stack_digest_changes_with_one_pixel_anywhere(stack, z):
    changed = stack.copy()
    changed[z, 33, 21] ^= 1
    lazy, _ = forbidden_dask(changed)
    assert stack_digest(lazy) != stack_digest(stack)


def test_stack_digest_reports_progress(stack):
    calls = []
    stack_digest(stack, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 12) for i in range(1, 13)]


def test_image_signature_of_forbidden_dask_samples_few_slices(stack):
    lazy, source = forbidden_dask(stack)
    sig = image_signature(lazy, n_slices=4)
    assert sig == image_signature(stack, n_slices=4)
    assert sig.sampled_slices == (0, 4, 7, 11)
    assert len(source.reads) == 4


@pytest.mark.parametrize("kind", ["dask", "zarr"])
def test_image_signature_is_container_independent(stack, kind, tmp_path):
    if kind == "dask":
        other = da.from_array(stack, chunks=(3, 20, 20))
    else:
        other = zarr.open_array(
            str(tmp_path / "s.zarr"),
            mode="w",
            shape=stack.shape,
            chunks=(1, 16, 16),
            dtype=stack.dtype,
        )
        other[:] = stack
    assert image_signature(other) == image_signature(stack)


def test_image_signature_small_stack_sees_every_pixel(stack):
    # 12 slices of 40x56 pixels: at most 16 slices x 4096 pixels are all sampled
    changed = stack.copy()
    changed[9, 1, 2] += 1
    before = image_signature(stack, n_slices=16, max_pixels=4096)
    after = image_signature(changed, n_slices=16, max_pixels=4096)
    assert before.step == 1 and len(before.sampled_slices) == 12
    assert after.sample != before.sample
    assert "pixel values differ" in before.differences(after)[0]


def test_image_signature_strides_large_slices():
    big = np.zeros((3, 1000, 1000), np.uint8)
    sig = image_signature(big, max_pixels=10_000)
    assert sig.step == 10


@pytest.mark.parametrize(
    ("other", "expected"),
    [
        (np.zeros((12, 40, 57), np.uint16), "image shape"),
        (np.zeros((12, 40, 56), np.int32), "image dtype"),
    ],
    ids=["shape", "dtype"],
)
def test_image_signature_differences(stack, other, expected):
    diffs = image_signature(stack).differences(image_signature(other))
    assert len(diffs) == 1 and diffs[0].startswith(expected)


def test_image_signature_round_trips_through_dict(stack):
    sig = image_signature(stack)
    assert ImageSignature.from_dict(sig.to_dict()) == sig
    with pytest.raises(ValueError, match="not an image signature"):
        ImageSignature.from_dict({"shape": [1]})


def test_colour_slices():
    rgb = np.random.default_rng(0).integers(0, 255, (4, 32, 32, 3)).astype(np.uint8)
    assert list(slice_indices(rgb.shape, 3)) == [(0,), (1,), (2,), (3,)]
    sig = image_signature(rgb, slice_ndim=3)
    assert sig.shape == rgb.shape
    changed = rgb.copy()
    changed[3, 5, 5, 2] += 1
    assert stack_digest(changed, slice_ndim=3) != stack_digest(rgb, slice_ndim=3)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((32, 32), [()]), ((2, 3, 32, 32), [(t, z) for t in range(2) for z in range(3)])],
    ids=["2d", "tzyx"],
)
def test_slice_indices(shape, expected):
    assert list(slice_indices(shape)) == expected
    data = np.arange(math.prod(shape)).reshape(shape)
    for index, image in iter_slices(data):
        np.testing.assert_array_equal(image, data[index] if index else data)


def test_read_slice_of_dask_is_numpy(stack):
    out = read_slice(da.from_array(stack, chunks=(2, 40, 56)), (3,))
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, stack[3])


@pytest.mark.parametrize("bad", [1, 4], ids=["one", "four"])
def test_bad_slice_ndim(stack, bad):
    with pytest.raises(ValueError, match="slice_ndim must be 2"):
        image_signature(stack, slice_ndim=bad)
