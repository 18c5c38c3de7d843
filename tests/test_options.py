"""Options declared once: keyword arguments, CLI flags and widget specs from the dataclasses."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest

from napari_sam.everything import EverythingParams, EverythingStackParams, segment_everything
from napari_sam.options import add_arguments, from_args, names_of, resolve, widget_spec
from napari_sam.propagation import PropagationParams, propagate, propagate_iter
from stand_ins import OraclePredictor, ellipsoid_labels

PARAMS = [EverythingParams, EverythingStackParams, PropagationParams]


@pytest.mark.parametrize("cls", PARAMS, ids=lambda c: c.__name__)
def test_every_field_has_help(cls):
    from napari_sam.options import options_of

    for info in options_of(cls):
        assert info.help, f"{cls.__name__}.{info.name} has no help text"


def test_resolve_defaults_instance_mapping_and_overrides():
    assert resolve(EverythingParams) == EverythingParams()
    base = EverythingParams(points_per_side=8)
    assert resolve(EverythingParams, base) is base
    got = resolve(EverythingParams, base, {"min_area": 4})
    assert (got.points_per_side, got.min_area) == (8, 4)
    assert resolve(EverythingParams, {"min_area": 4}, {"min_area": 5}).min_area == 5
    # a 2D parameter set given where the stack's is taken keeps its values
    stack = resolve(EverythingStackParams, base, {"link_iou": 0.5})
    assert isinstance(stack, EverythingStackParams)
    assert (stack.points_per_side, stack.link_iou) == (8, 0.5)


def test_unknown_option_names_the_valid_ones():
    with pytest.raises(TypeError, match=r"unknown option 'points_per_sid'.*points_per_side"):
        resolve(EverythingParams, None, {"points_per_sid": 3}, caller="segment_everything")
    with pytest.raises(TypeError, match="params must be a EverythingParams"):
        resolve(EverythingParams, 3)
    with pytest.raises(ValueError, match="points_per_side"):  # the dataclass's own check
        resolve(EverythingParams, None, {"points_per_side": 0})


def test_functions_take_params_and_overrides():
    gt = np.zeros((64, 64), np.uint8)
    gt[10:30, 10:30] = 1
    gt[40:60, 35:60] = 2
    oracle = OraclePredictor(gt)
    a = segment_everything(gt, oracle, points_per_side=8, contrast_limits=(0, 2))
    b = segment_everything(gt, predictor=oracle, params=EverythingParams(points_per_side=8),
                           contrast_limits=(0, 2))
    np.testing.assert_array_equal(a.labels, b.labels)
    assert len(a.objects) == 2
    with pytest.raises(TypeError, match="segment_everything got unknown option 'pionts'"):
        segment_everything(gt, oracle, pionts=3)

    labels = ellipsoid_labels((9, 32, 32), [((4, 16, 16), (3, 8, 8))])
    seeds = {4: labels[4] == 1}
    r1 = propagate(labels, seeds, OraclePredictor(labels), direction="up")
    r2 = propagate(labels, seeds, OraclePredictor(labels),
                   params=PropagationParams(direction="up"))
    np.testing.assert_array_equal(r1.mask_or_labels, r2.mask_or_labels)
    assert r1.mask_or_labels[:4].sum() == 0 and r1.mask_or_labels[5:].any()
    with pytest.raises(TypeError, match=r"unknown option 'drection'.*direction"):
        propagate_iter(labels, seeds, OraclePredictor(labels), drection="up")


@pytest.mark.parametrize("cls", PARAMS, ids=lambda c: c.__name__)
def test_cli_flags_come_from_the_fields(cls):
    parser = argparse.ArgumentParser()
    add_arguments(parser, cls)
    defaults = from_args(cls, parser.parse_args([]))
    flagged = [f.name for f in dataclasses.fields(cls) if f.name in defaults]
    assert defaults == {n: getattr(cls(), n) for n in flagged}
    assert "embeddings" not in defaults and "stop_markers" not in defaults  # data, not flags
    help_text = parser.format_help()
    assert all(f"--{n.replace('_', '-')}" in help_text for n in flagged
               if n != "stability_score_thresh")


def test_cli_values_are_typed_and_named_as_documented():
    parser = argparse.ArgumentParser()
    add_arguments(parser, EverythingStackParams)
    args = parser.parse_args(
        ["--stability-thresh", "0.7", "--containment-thresh", "none", "--max-area", "90",
         "--no-fill-gaps", "--tiling", "off", "--link-iou", "0.5"]
    )
    got = from_args(EverythingStackParams, args)
    assert got["stability_score_thresh"] == 0.7 and got["containment_thresh"] is None
    assert got["max_area"] == 90 and got["fill_gaps"] is False and got["tiling"] == "off"
    assert EverythingStackParams(**got).link_iou == 0.5
    parser = argparse.ArgumentParser()
    add_arguments(parser, PropagationParams)
    args = parser.parse_args(["--z-range", "2:", "--axis", "t", "--motion"])
    got = from_args(PropagationParams, args)
    assert got["z_range"] == (2, None) and got["axis"] == "t" and got["motion"] is True
    with pytest.raises(SystemExit):
        parser.parse_args(["--direction", "sideways"])


def test_widget_spec_for_an_options_panel():
    spec = widget_spec(EverythingParams)
    hidden = ("max_area", "crop_overlap_ratio", "fast_decoder")
    assert list(spec) == [n for n in names_of(EverythingParams) if n not in hidden]
    assert spec["points_per_side"]["value"] == 32
    assert spec["points_per_side"]["annotation"] is int
    assert spec["tiling"]["options"]["choices"] == ["auto", "off"]
    assert "predicted IoU" in spec["pred_iou_thresh"]["options"]["tooltip"]
    prop = widget_spec(PropagationParams)
    assert "embeddings" not in prop and "iou_threshold" in prop
    # the panel's values go back as overrides
    values = {name: s["value"] for name, s in spec.items()}
    assert resolve(EverythingParams, None, values) == EverythingParams()


@pytest.mark.gui
@pytest.mark.parametrize("cls", [EverythingParams, PropagationParams], ids=lambda c: c.__name__)
def test_magicgui_panel_from_the_spec_gives_the_options_back(qtbot, cls):
    from magicgui.widgets import Container, create_widget

    filled = cls().for_model("micro")  # the model's values: every option has a value
    spec = widget_spec(cls, filled)
    panel = Container(widgets=[create_widget(name=n, **s) for n, s in spec.items()])
    values = {w.name: w.value for w in panel}
    assert values == {n: getattr(filled, n) for n in spec}
    assert resolve(cls, filled, values) == filled
