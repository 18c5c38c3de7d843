"""Tests for napari_sam.io: label TIFFs, image reading, prompt files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_sam.io import (
    PROMPT_VERSION,
    PromptSet,
    load_prompts,
    read_image,
    read_labels_tiff,
    read_points_csv,
    read_tiff_info,
    save_prompts,
    write_labels_tiff,
)


def _labels(shape, dtype) -> np.ndarray:
    data = np.zeros(shape, dtype=dtype)
    flat = data.reshape(-1, *shape[-2:])
    top = np.iinfo(dtype).max
    for k in range(flat.shape[0]):
        flat[k, 1:4, 2:5] = k + 1
    flat[-1, -1, -1] = top  # largest id of the dtype survives
    return data


# --------------------------------------------------------------------------
# label TIFFs
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "axes", "scale"),
    [
        pytest.param((12, 10), "YX", (0.325, 0.65), id="YX"),
        pytest.param((3, 12, 10), "ZYX", (2.5, 0.1625, 0.1625), id="ZYX"),
        pytest.param((2, 3, 12, 10), "TZYX", (30.0, 1.7, 0.65, 0.65), id="TZYX"),
        pytest.param((1, 3, 12, 10), "TZYX", (1.0, 1.5, 0.3, 0.3), id="TZYX-single-T"),
        pytest.param((2, 1, 12, 10), None, (5.0, 1.0, 0.3, 0.4), id="TZYX-single-Z"),
    ],
)
@pytest.mark.parametrize(
    ("dtype", "fmt"),
    [
        pytest.param(np.uint8, "imagej", id="uint8"),
        pytest.param(np.uint16, "imagej", id="uint16"),
        pytest.param(np.uint32, "ome", id="uint32"),
    ],
)
def test_labels_tiff_round_trip(tmp_path, shape, axes, scale, dtype, fmt):
    data = _labels(shape, dtype)
    path = write_labels_tiff(tmp_path / "labels.tif", data, scale=scale, axes=axes)
    out, out_scale = read_labels_tiff(path)
    assert out.shape == data.shape and out.dtype == data.dtype
    np.testing.assert_array_equal(out, data)
    assert out_scale == pytest.approx(scale, rel=1e-12)
    info = read_tiff_info(path)
    assert info.format == fmt and info.unit == "um"


@pytest.mark.parametrize(
    "dtype",
    [
        pytest.param(np.int32, id="int32-ome"),
        pytest.param(np.int64, id="int64-shaped"),
        pytest.param(np.uint64, id="uint64-shaped"),
    ],
)
def test_labels_tiff_other_int_dtypes(tmp_path, dtype):
    data = _labels((2, 6, 7), dtype)
    path = write_labels_tiff(tmp_path / "l.tif", data, scale=(3.0, 0.5, 0.5))
    out, scale = read_labels_tiff(path)
    assert out.dtype == data.dtype
    np.testing.assert_array_equal(out, data)
    assert scale == (3.0, 0.5, 0.5)


def test_imagej_standard_metadata_without_record(tmp_path):
    """What Fiji sees: calibration in the ImageJ tags, not only our record."""
    data = _labels((3, 12, 10), np.uint16)
    path = write_labels_tiff(tmp_path / "l.tif", data, scale=(2.5, 0.65, 0.325))
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        ij = tif.imagej_metadata
        assert ij["spacing"] == 2.5 and ij["unit"] == "um" and ij["slices"] == 3
        xres = tif.pages.first.tags["XResolution"].value
        assert xres[1] / xres[0] == pytest.approx(0.325, rel=1e-9)
    # a file from elsewhere (no napari_sam record): scale from the ImageJ tags
    plain = tmp_path / "fiji.tif"
    tifffile.imwrite(
        plain,
        data,
        imagej=True,
        resolution=(1 / 0.325, 1 / 0.65),
        metadata={"axes": "ZYX", "spacing": 2.5, "unit": "um"},
    )
    out, scale = read_labels_tiff(plain)
    np.testing.assert_array_equal(out, data)
    assert scale == pytest.approx((2.5, 0.65, 0.325), rel=1e-9)


def test_ome_standard_metadata(tmp_path):
    data = _labels((2, 3, 12, 10), np.uint32)
    path = write_labels_tiff(tmp_path / "l.ome.tif", data, scale=(10.0, 2.0, 0.5, 0.25))
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        xml = tif.ome_metadata
    for text in (
        'PhysicalSizeX="0.25"',
        'PhysicalSizeY="0.5"',
        'PhysicalSizeZ="2.0"',
        'TimeIncrement="10.0"',
        'Type="uint32"',
    ):
        assert text in xml


def test_labels_tiff_metadata_and_unit(tmp_path):
    data = _labels((6, 7), np.uint16)
    path = write_labels_tiff(
        tmp_path / "l.tif", data, metadata={"source": "cells.tif", "model": "vit_b"}, unit="nm"
    )
    info = read_tiff_info(path)
    assert info.metadata == {"source": "cells.tif", "model": "vit_b"}
    assert info.unit == "nm" and info.scale == (1.0, 1.0) and info.axes == "YX"


def test_labels_tiff_accepts_dask(tmp_path):
    da = pytest.importorskip("dask.array")
    data = _labels((2, 6, 7), np.uint16)
    path = write_labels_tiff(tmp_path / "l.tif", da.from_array(data, chunks=(1, 6, 7)))
    np.testing.assert_array_equal(read_labels_tiff(path)[0], data)


@pytest.mark.parametrize(
    ("data", "kwargs", "error", "match"),
    [
        pytest.param(np.zeros((4, 4), np.float32), {}, TypeError, "integer", id="float"),
        pytest.param(np.zeros((4, 4), bool), {}, TypeError, "integer", id="bool"),
        pytest.param(np.zeros(4, np.uint8), {}, ValueError, "at least 2", id="1d"),
        pytest.param(
            np.zeros((2, 4, 4), np.uint8),
            {"axes": "ZTYX"},
            ValueError,
            "4 letters.*3 dims",
            id="axes-length",
        ),
        pytest.param(
            np.zeros((2, 3, 4, 4), np.uint8),
            {"axes": "ZTYX"},
            ValueError,
            "transpose",
            id="axes-order",
        ),
        pytest.param(
            np.zeros((2, 4, 4), np.uint8),
            {"scale": (1.0, 1.0)},
            ValueError,
            "2 entries",
            id="scale-length",
        ),
        pytest.param(
            np.zeros((2, 4, 4), np.uint8),
            {"scale": (1.0, 0.0, 1.0)},
            ValueError,
            "> 0",
            id="scale-zero",
        ),
        pytest.param(
            np.zeros((4, 4), np.uint8),
            {"metadata": {"napari_sam": "x"}},
            ValueError,
            "reserved",
            id="reserved-key",
        ),
    ],
)
def test_write_labels_tiff_errors(tmp_path, data, kwargs, error, match):
    with pytest.raises(error, match=match):
        write_labels_tiff(tmp_path / "l.tif", data, **kwargs)


def test_read_labels_tiff_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.tif"):
        read_labels_tiff(tmp_path / "nope.tif")


# --------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------


@pytest.fixture
def image() -> np.ndarray:
    return np.arange(3 * 8 * 9, dtype=np.uint16).reshape(3, 8, 9)


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy"])
def test_read_image_tiff(tmp_path, image, lazy):
    path = tmp_path / "img.tiff"
    tifffile.imwrite(path, image, photometric="minisblack")
    out = read_image(path, lazy=lazy)
    assert isinstance(out, np.ndarray) != lazy
    assert out.shape == image.shape and out.dtype == image.dtype
    np.testing.assert_array_equal(np.asarray(out[1:3, 2:5]), image[1:3, 2:5])


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "memmap"])
def test_read_image_npy(tmp_path, image, lazy):
    path = tmp_path / "img.npy"
    np.save(path, image)
    out = read_image(path, lazy=lazy)
    assert isinstance(out, np.memmap) == lazy
    np.testing.assert_array_equal(out, image)


def test_read_image_zarr_array_and_group(tmp_path, image):
    zarr = pytest.importorskip("zarr")
    arr_path = tmp_path / "img.zarr"
    z = zarr.create_array(str(arr_path), shape=image.shape, chunks=(1, 8, 9), dtype=image.dtype)
    z[...] = image
    np.testing.assert_array_equal(read_image(arr_path)[...], image)

    ngff = tmp_path / "ngff.zarr"
    group = zarr.open_group(str(ngff), mode="w")
    group.attrs["multiscales"] = [{"datasets": [{"path": "0"}, {"path": "1"}]}]
    group.create_array("0", shape=image.shape, dtype=image.dtype)[...] = image
    group.create_array("1", shape=(3, 4, 5), dtype=image.dtype)
    assert read_image(ngff).shape == image.shape

    ambiguous = tmp_path / "two.zarr"
    group = zarr.open_group(str(ambiguous), mode="w")
    group.create_array("a", shape=(2, 2), dtype="u1")
    group.create_array("b", shape=(2, 2), dtype="u1")
    with pytest.raises(ValueError, match=r"\['a', 'b'\]"):
        read_image(ambiguous)


def test_read_image_errors(tmp_path):
    bad = tmp_path / "img.png"
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match=r"'\.png'.*\.tif, \.tiff, \.zarr, \.npy"):
        read_image(bad)
    with pytest.raises(FileNotFoundError, match=r"missing\.tif"):
        read_image(tmp_path / "missing.tif")


# --------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------


def _prompt_args():
    points = np.array([[2.0, 10.5, 20.25], [2.0, 1.0 / 3.0, 7.0]])
    positive = np.array([True, False])
    rect = np.array([[2, 1, 1], [2, 1, 5], [2, 6, 5], [2, 6, 1]], float)
    poly = np.array([[3, 0, 0], [3, 4, 0], [3, 4, 4]], float)
    return points, positive, [rect, poly], ["rectangle", "polygon"], 3


def test_prompts_json_round_trip(tmp_path):
    args = _prompt_args()
    path = tmp_path / "session.json"
    written = save_prompts(path, *args, metadata={"image": "cells.tif"})
    loaded = load_prompts(path)
    assert loaded == written
    np.testing.assert_array_equal(loaded.points, args[0])  # exact floats (1/3)
    assert loaded.point_positive.dtype == bool
    assert loaded.shape_types == ("rectangle", "polygon")
    assert loaded.metadata == {"image": "cells.tif"}
    raw = json.loads(path.read_text())
    assert raw["version"] == PROMPT_VERSION and raw["format"] == "napari-sam-prompts"
    assert raw["shapes"][0]["type"] == "rectangle"
    assert not (tmp_path / "session.json.tmp").exists()


def test_prompts_strokes_round_trip_with_their_polarity(tmp_path):
    points, positive, shapes, types, ndim = _prompt_args()
    path_stroke = np.array([[2, 3, 3], [2, 4, 6], [2, 8, 9]], float)
    line = np.array([[2, 0, 0], [2, 5, 5]], float)
    written = save_prompts(tmp_path / "s.json", points, positive, [*shapes, path_stroke, line],
                           [*types, "path", "line"], ndim,
                           shape_negative=[False, False, False, True])
    loaded = load_prompts(tmp_path / "s.json")
    assert loaded == written
    assert loaded.shape_types == ("rectangle", "polygon", "path", "line")
    assert loaded.shape_negative.tolist() == [False, False, False, True]
    raw = json.loads((tmp_path / "s.json").read_text())
    # only a background stroke carries the field: files without strokes are as before
    assert ["negative" in s for s in raw["shapes"]] == [False, False, False, True]


def test_prompts_empty_round_trip():
    empty = PromptSet(ndim=2)
    again = PromptSet.from_json(empty.to_json())
    assert again == empty and again.points.shape == (0, 2) and again.shapes == ()


def test_prompts_are_read_only():
    prompts = PromptSet(3, *_prompt_args()[:4])
    with pytest.raises(ValueError, match="read-only"):
        prompts.points[0, 0] = 1.0


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        pytest.param(lambda d: d.update(version=2), "version 2", id="newer-version"),
        pytest.param(lambda d: d.pop("version"), "no 'version'", id="no-version"),
        pytest.param(lambda d: d.update(format="other"), "not a prompt file", id="format"),
        pytest.param(lambda d: d.update(points=[[1.0, 2.0]]), r"shape \(N, 3\)", id="points-ndim"),
        pytest.param(
            lambda d: d.update(point_positive=[True]), "point_positive", id="flags-length"
        ),
        pytest.param(
            lambda d: d["shapes"].append({"type": "spline", "vertices": [[0, 0, 0], [1, 1, 1]]}),
            "'spline'",
            id="shape-type",
        ),
        pytest.param(
            lambda d: d["shapes"].append({"type": "line", "vertices": [[0, 0, 0]]}),
            "line needs 2 vertices",
            id="short-line",
        ),
        pytest.param(
            lambda d: d["shapes"][0].update(negative=True),
            "only strokes",
            id="negative-box",
        ),
        pytest.param(
            lambda d: d["shapes"].append({"type": "polygon", "vertices": [[0, 0, 0]]}),
            ">= 3 vertices",
            id="short-polygon",
        ),
        pytest.param(lambda d: d.update(shapes=[[1, 2]]), "'shapes'", id="shape-entry"),
        pytest.param(lambda d: d.update(coordinates="screen"), "coordinates", id="coords"),
    ],
)
def test_prompts_malformed(tmp_path, mutate, match):
    data = PromptSet(3, *_prompt_args()[:4]).to_dict()
    mutate(data)
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match) as info:
        load_prompts(path)
    assert "p.json" in str(info.value)


def test_prompts_bad_json_and_missing(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_prompts(path)
    with pytest.raises(FileNotFoundError, match=r"absent\.json"):
        load_prompts(tmp_path / "absent.json")


# --------------------------------------------------------------------------
# points CSV
# --------------------------------------------------------------------------


def test_points_csv_napari_export(tmp_path):
    """The file napari's builtin Points writer produces, with a bool feature."""
    napari_write = pytest.importorskip("napari_builtins.io._write")
    data = np.array([[3.0, 10.5, 20.0], [3.0, 4.0, 5.0], [1.0, 2.0, 2.0]])
    path = tmp_path / "points.csv"
    napari_write.napari_write_points(
        str(path), data, {"properties": {"positive": np.array([True, False, True])}}
    )
    prompts = read_points_csv(path)
    np.testing.assert_array_equal(prompts.points, data)
    assert prompts.point_positive.tolist() == [True, False, True]
    assert prompts.metadata["columns"] == ["axis-0", "axis-1", "axis-2"]


@pytest.mark.parametrize(
    ("text", "points", "positive"),
    [
        pytest.param(
            "z,y,x,positive\n1,2,3,true\n4,5,6,False\n",
            [[1, 2, 3], [4, 5, 6]],
            [True, False],
            id="zyx-positive",
        ),
        pytest.param(
            "X,Y,label\n3,2,1\n6,5,0\n",
            [[2, 3], [5, 6]],
            [True, False],
            id="xy-reordered",
        ),
        pytest.param(
            "index,axis-0,axis-1,label\n0,7.5,8,positive\n1,1,2,negative\n",
            [[7.5, 8], [1, 2]],
            [True, False],
            id="axis-string-label",
        ),
        pytest.param("y,x\n1,2\n", [[1, 2]], [True], id="no-polarity"),
        pytest.param("t,z,y,x\n", np.zeros((0, 4)), [], id="header-only"),
    ],
)
def test_points_csv_layouts(tmp_path, text, points, positive):
    path = tmp_path / "p.csv"
    path.write_text(text)
    prompts = read_points_csv(path)
    np.testing.assert_array_equal(prompts.points, np.asarray(points, float))
    assert prompts.point_positive.tolist() == positive


@pytest.mark.parametrize(
    ("text", "match"),
    [
        pytest.param("", "empty", id="empty"),
        pytest.param("a,b\n1,2\n", "no coordinate columns", id="no-coords"),
        pytest.param("z,x\n1,2\n", "'y' and 'x'", id="missing-y"),
        pytest.param("axis-0,axis-2\n1,2\n", "axis-0..axis-1", id="gap"),
        pytest.param("axis-0,y,x\n1,2,3\n", "mixes", id="mixed"),
        pytest.param("y,x\n1,oops\n", "line 2", id="bad-number"),
        pytest.param("y,x,label\n1,2,-1\n", "'-1'", id="bad-label"),
    ],
)
def test_points_csv_errors(tmp_path, text, match):
    path = tmp_path / "p.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_points_csv(path)


def test_points_csv_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pts\.csv"):
        read_points_csv(tmp_path / "pts.csv")
