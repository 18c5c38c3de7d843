"""``napari-sam demo`` (the README's main job) and its overview figure."""

import numpy as np
import pytest

from napari_sam.cli import main
from napari_sam.cli._overview import ObjectRow, object_colours, overview_zs, write_overview


def test_demo_writes_labels_and_a_readable_overview(tmp_path, capsys):
    from PIL import Image

    from napari_sam.io import read_labels_tiff

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mean 3D Dice" in printed
    labels = np.asarray(read_labels_tiff(out / "labels.tif")[0])
    assert labels.shape == (24, 192, 192) and labels.max() > 0
    png = np.asarray(Image.open(out / "overview.png").convert("RGB"))
    # four zoomed 192 px panels and the table: wide and tall enough to read
    assert png.shape[1] >= 4 * 2 * 192 and png.shape[0] >= 2 * 192
    assert len(np.unique(png.reshape(-1, 3), axis=0)) > 50  # not a blank picture


def test_object_colours_are_distinct():
    colours = object_colours(12)
    assert colours.shape == (13, 3) and colours.dtype == np.uint8
    assert len({tuple(c) for c in colours[1:]}) == 12
    assert (colours[1:].max(axis=1) >= 200).all()  # bright enough on a dark image


def test_overview_shows_clicked_slices():
    labels = np.zeros((20, 8, 8), np.uint32)
    clicks = {1: (3, 1, 1), 2: (3, 2, 2), 3: (9, 4, 4)}
    zs = overview_zs(labels, clicks, n=4)
    assert {3, 9} <= set(zs) and len(zs) == 4 and zs == sorted(zs)


def test_overview_figure_marks_clicks_and_lists_objects(tmp_path):
    from PIL import Image

    stack = np.zeros((6, 32, 32), np.uint16)
    labels = np.zeros((6, 32, 32), np.uint32)
    labels[2:4, 8:16, 8:16] = 1
    stack[labels > 0] = 1000
    rows = [ObjectRow(1, (2, 12, 12), (2, 3), (2, 3), 1.0),
            ObjectRow(2, (4, 20, 20), None, (4, 4), 0.0)]
    path = tmp_path / "o.png"
    write_overview(path, stack, labels, (0, 1000), {1: (2, 12, 12), 2: (4, 20, 20)}, rows, "t")
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape[0] > 64 and img.shape[1] > 4 * 64
    colour = object_colours(2)[1]
    assert (img == colour).all(axis=-1).sum() > 20  # object 1's outline, in its colour


@pytest.mark.parametrize("n", [0, 1])
def test_object_colours_small_counts(n):
    assert object_colours(n).shape == (n + 1, 3)
