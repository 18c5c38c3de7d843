"""The everything options panel is generated from the fields of EverythingStackParams."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam._qt.annotator_widget import AnnotatorWidget
from napari_sam._qt.options_panel import OptionsPanel
from napari_sam.everything import EverythingStackParams
from napari_sam.options import widget_spec


def test_panel_shows_every_option_of_the_spec_with_the_models_values(qtbot):
    panel = OptionsPanel(EverythingStackParams, "options", "micro")
    qtbot.addWidget(panel)
    micro = EverythingStackParams().for_model("micro")
    assert list(panel.widgets) == list(widget_spec(EverythingStackParams, micro))
    assert panel.widgets["stability_score_thresh"].value == micro.stability_score_thresh
    assert panel.widgets["min_z_extent"].value == 2 and "slices" in (
        panel.widgets["min_z_extent"].tooltip or "")
    assert panel.widgets["tiling"].choices == ("auto", "off")
    assert not panel.container.native.isVisible() and not panel.overrides  # collapsed, none
    panel.toggle.setChecked(True)
    assert not panel.container.native.isHidden()


def test_what_the_user_changes_is_overridden_the_rest_follows_the_model(qtbot):
    panel = OptionsPanel(EverythingStackParams, "options", "micro")
    qtbot.addWidget(panel)
    panel.widgets["points_per_side"].value = 8  # the user's change
    assert dict(panel.overrides) == {"points_per_side": 8}
    panel.set_model("vit_b")  # other recommendations shown, the user's value kept
    vit_b = EverythingStackParams().for_model("vit_b")
    assert panel.widgets["box_nms_thresh"].value == pytest.approx(vit_b.box_nms_thresh)
    assert panel.widgets["points_per_side"].value == 8
    assert dict(panel.overrides) == {"points_per_side": 8}
    panel.overrides["min_z_extent"] = 1  # a script: shown in the panel
    assert panel.widgets["min_z_extent"].value == 1
    panel.overrides["max_area"] = 500  # an option without a widget is still passed on
    del panel.overrides["points_per_side"]
    assert panel.widgets["points_per_side"].value == 32
    assert dict(panel.overrides) == {"min_z_extent": 1, "max_area": 500}
    with pytest.raises(KeyError, match=r"no option 'points'.*points_per_side"):
        panel.overrides["points"] = 3
    with pytest.raises(KeyError, match="no option"):
        panel.overrides.replace({"min_area": 3, "bogus": 1})
    assert dict(panel.overrides) == {"min_z_extent": 1, "max_area": 500}  # unchanged


def test_widget_everything_params_are_the_panels_overrides(qtbot, viewer_model,
                                                           disk_predictor):
    viewer_model.add_image(np.zeros((3, 32, 32), np.uint16), name="stack")
    widget = AnnotatorWidget(viewer_model, predictor=disk_predictor)
    qtbot.addWidget(widget)
    assert widget.everything_params == {} and widget.choices().everything_params == {}
    widget.everything_params = {"points_per_side": 4}
    widget.everything_params["min_z_extent"] = 1
    assert widget.everything_options.widgets["points_per_side"].value == 4
    widget.everything_options.widgets["link_iou"].value = 0.5
    assert widget.choices().everything_params == {
        "points_per_side": 4, "min_z_extent": 1, "link_iou": 0.5}
    widget.close_annotator()
