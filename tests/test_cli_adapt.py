"""``napari-sam adapt`` end to end, and its model in ``everything``, ``propagate``, ``embed``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from napari_sam.adaptation import training as adaptation_training
from napari_sam.cli import main
from napari_sam.predictor import Predictor
from napari_sam.synthetic import nuclei_2d


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A 128 x 128 nuclei image and labels, a (6, 64, 64) stack, a small micro checkpoint."""
    from napari_sam.model.sam import build_sam
    from napari_sam.training.loop import micro_config, small_test_config

    folder = tmp_path_factory.mktemp("adapt_cli")
    image, labels = nuclei_2d((128, 128), seed=4)
    tifffile.imwrite(folder / "image.tif", image)
    tifffile.imwrite(folder / "labels.tif", labels.astype(np.uint16))
    zz, yy, xx = np.ogrid[:6, :64, :64]
    inside = ((zz - 3) / 2.5) ** 2 + ((yy - 30) / 10.0) ** 2 + ((xx - 34) / 12.0) ** 2 <= 1
    np.save(folder / "stack.npy", (100 + 900 * inside).astype(np.uint16))
    seeds = np.zeros((6, 64, 64), np.uint16)
    seeds[3][inside[3]] = 1
    tifffile.imwrite(folder / "stack_labels.tif", seeds)
    torch.manual_seed(0)
    model = build_sam(micro_config(**small_test_config().model))
    torch.save(model.state_dict(), folder / "small.pt")
    return folder


def _adapt(files, out, *extra):
    return main(
        [
            "adapt", str(files / "image.tif"), "--labels", str(files / "labels.tif"),
            "--out", str(out), "--steps", "2", "--precision", "float32", "--quiet", *extra,
        ]
    )


def test_adapt_with_the_bundled_model_writes_a_loadable_model(files, tmp_path, capsys):
    out = tmp_path / "nuclei.pt"
    assert _adapt(files, out, "--force", "--contrast-limits", "100", "3000") == 0
    text = capsys.readouterr().out
    assert "held-back IoU, centre click" in text and f"wrote {out}" in text
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["base_model"] == "micro" and record["root_model"] == "micro"
    assert record["report"]["steps"] == 2 and record["trained"] == "all"
    predictor = Predictor(str(out), precision="float32")
    emb = predictor.embed(np.zeros((64, 64)))
    assert predictor.predict(emb, points=[[5, 5]]).scores.shape == (3,)


@pytest.fixture(scope="module")
def adapted(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("adapted") / "small_adapted.pt"
    assert _adapt(files, out, "--model", str(files / "small.pt"), "--force") == 0
    return out


def test_adapted_model_in_everything(files, adapted, tmp_path):
    out = tmp_path / "everything.tif"
    args = ["everything", str(files / "image.tif"), "--out", str(out), "--model", str(adapted)]
    assert main([*args, "--quiet", "--points-per-side", "4", "--precision", "float32"]) == 0
    assert tifffile.imread(out).shape == (128, 128)


def test_adapted_model_in_propagate(files, adapted, tmp_path):
    out = tmp_path / "propagated.tif"
    args = [
        "propagate", str(files / "stack.npy"), "--seeds", str(files / "stack_labels.tif"),
        "--out", str(out), "--model", str(adapted), "--precision", "float32", "--quiet",
    ]
    assert main(args) == 0
    assert tifffile.imread(out).shape == (6, 64, 64)


def test_adapted_model_in_embed(files, adapted, tmp_path, capsys):
    out = tmp_path / "emb.zarr"
    args = [
        "embed", str(files / "stack.npy"), "--out", str(out), "--model", str(adapted),
        "--precision", "float32", "--workers", "0", "-q",
    ]
    assert main(args) == 0
    assert "6 in total: complete" in capsys.readouterr().out


def test_not_better_is_not_saved_unless_forced(files, tmp_path, capsys, monkeypatch):
    def ruin(model, optimizer, scenes, cfg, gen, rng, features=None):
        with torch.no_grad():
            for p in model.mask_decoder.output_hypernetworks_mlps.parameters():
                p.zero_()
        return 1.0

    monkeypatch.setattr(adaptation_training, "train_step", ruin)
    out = tmp_path / "worse.pt"
    assert _adapt(files, out) == 1
    assert "not saved" in capsys.readouterr().out and not out.exists()


@pytest.mark.parametrize(
    ("labels_name", "extra", "message"),
    [
        ("stack_labels.tif", [], "must cover the image"),
        ("labels.tif", ["--minutes", "0"], "--minutes must be positive"),
        ("labels.tif", ["--holdout", "0.9"], "holdout must be in"),
    ],
)
def test_user_errors_are_one_line_messages(files, tmp_path, capsys, labels_name, extra, message):
    code = main(
        [
            "adapt", str(files / "image.tif"), "--labels", str(files / labels_name),
            "--out", str(tmp_path / "m.pt"), "--model", str(files / "small.pt"), "--quiet",
            *extra,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_unwritable_output_is_a_clear_error(files, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = _adapt(files, blocker / "m.pt", "--model", str(files / "small.pt"), "--force")
    err = capsys.readouterr().err
    assert code == 2 and "could not save the adapted model" in err
