"""``napari-sam everything`` in-process, with an oracle in place of the model."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from skimage.draw import disk

from napari_sam.cli import main
from napari_sam.io import read_labels_tiff


class _Oracle:
    """The image is the label image; a point returns the instance under it."""

    def __init__(self):
        self.embedded = 0

    def embed(self, image, *, contrast_limits=None):
        self.embedded += 1
        return np.asarray(image).astype(np.int64)

    def predict(self, embedding, points=None, labels=None, box=None, mask=None, multimask=True):
        from napari_sam.predictor import Prediction

        r, c = np.floor(np.asarray(points, float).reshape(-1, 2)[0] + 0.5).astype(int)
        obj = embedding[r, c]
        m = (embedding == obj) if obj else np.zeros(embedding.shape, bool)
        logits = np.where(m, 10.0, -10.0).astype(np.float32)
        score = np.full(3, 0.95 if obj else 0.1)
        return Prediction(np.stack([m] * 3), score, np.stack([logits] * 3))


def _same_partition(a, b):
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]).astype(np.int64), axis=1)
    fa, fb = pairs
    return not ((fa == 0) != (fb == 0)).any() and len(set(fa)) == len(set(fb)) == len(fa)


def _stack():
    lab = np.zeros((4, 48, 48), np.uint16)
    for z in range(4):
        lab[z][disk((15, 15), 8, shape=(48, 48))] = 1
        lab[z][disk((32, 30), 9, shape=(48, 48))] = 2
    rr, cc = disk((40, 8), 5, shape=(48, 48))
    lab[2:, rr, cc] = 3
    return lab


@pytest.fixture
def oracle(monkeypatch):
    import napari_sam.cli.everything as cli

    made = []

    def make(model, device, precision):
        made.append((model, device, precision))
        return _Oracle()

    monkeypatch.setattr(cli, "make_predictor", make)
    return made


def _run(*args):
    return main(["everything", *map(str, args), "--quiet", "--points-per-side", "16"])


def test_2d_image(tmp_path, oracle, capsys):
    lab = _stack()[0]
    src = tmp_path / "image.tif"
    tifffile.imwrite(src, lab)
    out = tmp_path / "labels.tif"
    assert _run(src, "--out", out, "--model", "vit_tiny", "--contrast-limits", 0, 10) == 0
    labels, _ = read_labels_tiff(out)
    assert labels.shape == (48, 48)
    assert _same_partition(labels, lab)
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]
    assert oracle == [("vit_tiny", "auto", "auto")]
    assert "2 objects" in capsys.readouterr().out


def test_stack_gives_linked_3d_labels(tmp_path, oracle):
    lab = _stack()
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, lab)
    out = tmp_path / "labels.tif"
    assert _run(src, "--out", out, "--contrast-limits", 0, 10) == 0
    labels, _ = read_labels_tiff(out)
    assert labels.shape == lab.shape
    assert _same_partition(labels, lab)
    assert labels.max() == 3


def test_min_z_extent_option(tmp_path, oracle):
    lab = _stack()
    src = tmp_path / "stack.npy"
    np.save(src, lab)
    out = tmp_path / "labels.tif"
    assert _run(src, "--out", out, "--min-z-extent", 3, "--contrast-limits", 0, 10) == 0
    labels, _ = read_labels_tiff(out)
    assert labels.max() == 2  # object 3 spans only 2 slices


def test_one_slice_of_a_stack(tmp_path, oracle):
    lab = _stack()
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, lab)
    out = tmp_path / "labels.tif"
    assert _run(src, "--out", out, "--slice", 3) == 0
    labels, _ = read_labels_tiff(out)
    assert labels.shape == (48, 48)
    assert _same_partition(labels, lab[3])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--slice", "9"], "outside"),
        (["--points-per-side", "0"], "points_per_side"),
        (["--containment-thresh", "1.5"], "containment_thresh"),
    ],
    ids=["slice-range", "bad-grid", "bad-containment"],
)
def test_errors_are_one_line_messages(tmp_path, oracle, capsys, extra, message):
    src = tmp_path / "stack.tif"
    tifffile.imwrite(src, _stack())
    code = main(["everything", str(src), "--out", str(tmp_path / "o.tif"), "--quiet", *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert oracle == []  # the model is not loaded when the options are bad


def test_slice_of_a_2d_image_is_an_error(tmp_path, oracle, capsys):
    src = tmp_path / "image.tif"
    tifffile.imwrite(src, _stack()[0])
    code = main(["everything", str(src), "--out", str(tmp_path / "o.tif"), "--slice", "0"])
    assert code == 2
    assert "--slice needs a stack" in capsys.readouterr().err


class _TilingOracle(_Oracle):
    """The oracle with ``plan_tiles``: 32 px tiles, as the Predictor plans them."""

    def __init__(self):
        super().__init__()
        self.tiling_args = []

    def plan_tiles(self, shape):
        from napari_sam.tiling import plan_tiles

        return plan_tiles(shape, 32, threshold=1.0)

    def embed(self, image, *, contrast_limits=None, tiling="auto"):
        self.tiling_args.append(tiling)
        return super().embed(image, contrast_limits=contrast_limits)


@pytest.mark.parametrize(("option", "embeds"), [("auto", 1 + 4), ("off", 1)])
def test_tiling_option(tmp_path, monkeypatch, option, embeds):
    import napari_sam.cli.everything as cli

    made = []
    monkeypatch.setattr(cli, "make_predictor", lambda *a: made.append(_TilingOracle()) or made[0])
    lab = _stack()[0]
    src = tmp_path / "image.tif"
    tifffile.imwrite(src, lab)
    out = tmp_path / "labels.tif"
    assert _run(src, "--out", out, "--contrast-limits", 0, 10, "--tiling", option) == 0
    labels, _ = read_labels_tiff(out)
    assert _same_partition(labels, lab)
    assert made[0].embedded == embeds and set(made[0].tiling_args) == {"off"}


@pytest.mark.parametrize(
    ("value", "expected"), [(None, "auto"), ("auto", "auto"), ("none", None), ("0.6", 0.6)]
)
def test_containment_option_reaches_segment_everything(
    tmp_path, oracle, monkeypatch, value, expected
):
    import napari_sam.everything as everything

    seen = {}
    real = everything.segment_everything

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(everything, "segment_everything", spy)
    src = tmp_path / "image.tif"
    tifffile.imwrite(src, _stack()[0])
    extra = [] if value is None else ["--containment-thresh", value]
    assert _run(src, "--out", tmp_path / "o.tif", *extra) == 0
    assert seen["containment_thresh"] == expected


def test_thresholds_are_left_to_the_model_unless_given(tmp_path, oracle, monkeypatch):
    import napari_sam.everything as everything

    names = ("pred_iou_thresh", "stability_score_thresh", "box_nms_thresh")
    seen = []
    real = everything.segment_everything
    monkeypatch.setattr(
        everything, "segment_everything",
        lambda *a, **kw: seen.append(tuple(kw[n] for n in names)) or real(*a, **kw),
    )
    src = tmp_path / "image.tif"
    tifffile.imwrite(src, _stack()[0])
    assert _run(src, "--out", tmp_path / "a.tif") == 0
    given = ("--pred-iou-thresh", "0.7", "--stability-thresh", "0.8", "--box-nms-thresh", "0.6")
    assert _run(src, "--out", tmp_path / "b.tif", *given) == 0
    assert seen == [(None, None, None), (0.7, 0.8, 0.6)]
