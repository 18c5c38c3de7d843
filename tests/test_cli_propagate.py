"""``napari-sam propagate`` in-process, with the oracle stand-in as the model."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

import napari_sam.cli.propagate as cli_propagate
from napari_sam.cli import main
from napari_sam.io import read_labels_tiff
from stand_ins import OraclePredictor, ellipsoid_labels

SHAPE = (16, 48, 48)


@pytest.fixture
def scene(tmp_path, monkeypatch):
    labels = ellipsoid_labels(SHAPE, [((7, 14, 14), (5, 9, 9)), ((9, 32, 32), (6, 10, 10))])
    image = (labels.astype(np.uint16) * 500 + np.arange(SHAPE[0])[:, None, None]).astype(np.uint16)
    stack_path = tmp_path / "stack.tif"
    tifffile.imwrite(stack_path, image)
    made = []

    def fake(model, device, precision):
        made.append((model, device, precision))
        return OraclePredictor(labels, image)

    monkeypatch.setattr(cli_propagate, "make_predictor", fake)
    return labels, image, stack_path, made


def _check_output(path, labels, ids):
    out, _ = read_labels_tiff(path)
    assert out.shape == SHAPE
    assert set(np.unique(out)) == {0, *ids}
    for i in ids:
        zs = np.flatnonzero((out == i).any(axis=(1, 2)))
        true = np.flatnonzero((labels == i).any(axis=(1, 2)))
        assert abs(zs[0] - true[0]) <= 1 and abs(zs[-1] - true[-1]) <= 1
    return out


def test_seeds_tiff(scene, tmp_path, capsys):
    labels, _, stack_path, made = scene
    seeds = np.zeros(SHAPE, np.uint16)
    seeds[7][labels[7] == 1] = 1
    seeds[9][labels[9] == 2] = 2
    seeds[12][labels[12] == 2] = 2  # a second keyframe for object 2
    seeds_path = tmp_path / "seeds.tif"
    tifffile.imwrite(seeds_path, seeds)
    out_path = tmp_path / "labels.tif"
    code = main(
        [
            "propagate",
            str(stack_path),
            "--seeds",
            str(seeds_path),
            "--out",
            str(out_path),
            "--model",
            "vit_tiny",
            "--quiet",
        ]
    )
    assert code == 0
    assert made == [("vit_tiny", "auto", "auto")]
    _check_output(out_path, labels, {1, 2})
    text = capsys.readouterr().out
    assert "object 1: z " in text and "object 2: z " in text and "voxels" in text
    assert "vanished" in text


def test_points_csv(scene, tmp_path, capsys):
    labels, _, stack_path, _ = scene
    csv = tmp_path / "points.csv"
    csv.write_text("z,y,x,label\n7,14,14,1\n9,32,32,1\n9,2,2,0\n")
    out_path = tmp_path / "labels.tif"
    code = main(
        [
            "propagate",
            str(stack_path),
            "--seeds",
            str(csv),
            "--out",
            str(out_path),
            "--prompt-mode",
            "points+mask",
        ]
    )
    assert code == 0
    _check_output(out_path, labels, {1, 2})
    captured = capsys.readouterr()
    assert "propagate [" in captured.err  # progress bar
    assert "object 2" in captured.out


def test_z_range(scene, tmp_path):
    _, _, stack_path, _ = scene
    csv = tmp_path / "points.csv"
    csv.write_text("z,y,x\n9,32,32\n")
    out_path = tmp_path / "labels.tif"
    code = main(
        [
            "propagate",
            str(stack_path),
            "--seeds",
            str(csv),
            "--out",
            str(out_path),
            "--z-range",
            "6:12",
            "--quiet",
        ]
    )
    assert code == 0
    out, _ = read_labels_tiff(out_path)
    zs = np.flatnonzero(out.any(axis=(1, 2)))
    assert zs.tolist() == list(range(6, 12))


@pytest.mark.parametrize(
    ("seeds_text", "extra", "message"),
    [
        ("z,y,x\n40,10,10\n", [], "outside the stack"),
        ("z,y,x\n3,2,2\n", [], "empty mask"),
        ("y,x\n3,2\n", [], "z,y,x"),
        ("z,y,x\n7,14,14\n", ["--prompt-mode", "lasso"], "unknown prompt_mode"),
    ],
    ids=["outside", "background", "no-z", "bad-mode"],
)
def test_errors_are_one_line(scene, tmp_path, capsys, seeds_text, extra, message):
    _, _, stack_path, _ = scene
    csv = tmp_path / "points.csv"
    csv.write_text(seeds_text)
    out_path = tmp_path / "labels.tif"
    code = main(
        [
            "propagate",
            str(stack_path),
            "--seeds",
            str(csv),
            "--out",
            str(out_path),
            "--quiet",
            *extra,
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("napari-sam propagate: error:")
    assert not out_path.exists()


def test_seed_labels_of_wrong_shape(scene, tmp_path, capsys):
    _, _, stack_path, _ = scene
    seeds_path = tmp_path / "seeds.tif"
    tifffile.imwrite(seeds_path, np.ones((4, 48, 48), np.uint8), photometric="minisblack")
    code = main(
        ["propagate", str(stack_path), "--seeds", str(seeds_path), "--out", str(tmp_path / "o.tif")]
    )
    assert code == 2
    assert "expected the stack's (Z, Y, X)" in capsys.readouterr().err


def test_bad_z_range_is_rejected_by_argparse(scene, tmp_path):
    _, _, stack_path, _ = scene
    with pytest.raises(SystemExit):
        main(
            ["propagate", str(stack_path), "--seeds", "s.csv", "--out", "o.tif", "--z-range", "5-9"]
        )
