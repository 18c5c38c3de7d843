"""``napari-sam propagate --axis``: tracking through t, with the oracle stand-in as the model."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import napari_sam.cli.propagate as cli_propagate
from napari_sam.cli import main
from napari_sam.io import read_labels_tiff
from stand_ins import OraclePredictor

T, Z, Y, X = 6, 3, 48, 48


def _disk(centre, radius) -> np.ndarray:
    rr, cc = np.indices((Y, X))
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


def _moving() -> np.ndarray:
    """(T, Y, X) labels: object 1 moves right 3 px per frame, object 2 stays."""
    labels = np.zeros((T, Y, X), np.uint16)
    for t in range(T):
        labels[t][_disk((16, 10 + 3 * t), 6)] = 1
        labels[t][_disk((36, 36), 6)] = 2
    return labels


@pytest.fixture
def tyx(tmp_path, monkeypatch):
    labels = _moving()
    image = (labels * 500 + np.arange(T, dtype=np.uint16)[:, None, None]).astype(np.uint16)
    path = tmp_path / "tyx.tif"
    tifffile.imwrite(path, image)
    monkeypatch.setattr(cli_propagate, "make_predictor",
                        lambda *a: OraclePredictor(labels, image))
    return labels, path


@pytest.fixture
def tzyx(tmp_path, monkeypatch):
    labels = np.zeros((T, Z, Y, X), np.uint16)
    labels[:, 1] = _moving()  # objects at z = 1
    image = (labels * 500 + np.arange(T * Z, dtype=np.uint16).reshape(T, Z, 1, 1))
    path = tmp_path / "tzyx.tif"
    tifffile.imwrite(path, image.astype(np.uint16))
    monkeypatch.setattr(cli_propagate, "make_predictor",
                        lambda *a: OraclePredictor(labels[:, 1], image[:, 1]))
    return labels, path


def test_track_tyx_from_seed_labels(tyx, tmp_path, capsys):
    labels, path = tyx
    seeds = np.zeros_like(labels)
    seeds[2] = labels[2]  # both objects on frame 2
    tifffile.imwrite(tmp_path / "seeds.tif", seeds)
    code = main(["propagate", str(path), "--seeds", str(tmp_path / "seeds.tif"),
                 "--out", str(tmp_path / "out.tif"), "--axis", "t", "--quiet"])
    assert code == 0
    out, _ = read_labels_tiff(tmp_path / "out.tif")
    np.testing.assert_array_equal(out, labels)
    assert "propagated along axis 0" in capsys.readouterr().out


def test_track_tzyx_from_points_at_one_z(tzyx, tmp_path):
    labels, path = tzyx
    csv = tmp_path / "points.csv"
    csv.write_text("t,z,y,x,label\n0,1,16,10,1\n0,1,36,36,1\n")
    code = main(["propagate", str(path), "--seeds", str(csv), "--out", str(tmp_path / "o.tif"),
                 "--axis", "0", "--quiet"])
    assert code == 0
    out, _ = read_labels_tiff(tmp_path / "o.tif")
    assert out.shape == (T, Z, Y, X)
    np.testing.assert_array_equal(out[:, 1], labels[:, 1])
    assert not out[:, [0, 2]].any()


def test_axis_errors(tzyx, tmp_path, capsys):
    labels, path = tzyx
    seeds = np.zeros_like(labels)
    seeds[0, 1] = labels[0, 1]
    seeds[3, 2][labels[3, 1] == 2] = 2  # a seed at another z
    tifffile.imwrite(tmp_path / "seeds.tif", seeds)
    args = ["propagate", str(path), "--seeds", str(tmp_path / "seeds.tif"), "--out",
            str(tmp_path / "o.tif"), "--quiet"]
    assert main([*args, "--axis", "t"]) != 0
    assert "lie at different indices [(1,), (2,)] of axes [1]" in capsys.readouterr().err
    assert main([*args, "--axis", "2"]) != 0
    assert "axis 2 is Y, one of the two displayed axes" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--axis", "time"])
    assert "expected t, z or an axis index" in capsys.readouterr().err
