"""Issue 19 through the dock widget (Xvfb): scribbles, refine, find all like this,
tracking along t and the review table, driven by its buttons, menus, slider and keys."""

from __future__ import annotations

import numpy as np
import pytest
from test_beyond_clicks_api import DoubtfulOracle, moving_movie, nuclei_stack

from napari_sam._qt.annotator_widget import AnnotatorWidget
from stand_ins import OraclePredictor


def click(qtbot, button):
    """A left mouse click on ``button``."""
    from qtpy.QtCore import Qt

    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def _key(layer, key):
    """Press ``key`` on ``layer`` as napari does (its keymap's handler)."""
    from napari.utils.key_bindings import coerce_keybinding

    return layer.keymap[coerce_keybinding(key)](layer)


def _open(viewer, qtbot, images, predictor, **image_kwargs):
    viewer.add_image(images, name="img", **image_kwargs)
    widget = AnnotatorWidget(viewer, predictor=predictor)
    qtbot.addWidget(widget)
    ann = widget.annotator
    qtbot.waitUntil(lambda: not ann.busy, timeout=20_000)
    return widget, ann


@pytest.fixture
def closing():
    widgets = []
    yield widgets.append
    for widget in widgets:
        widget.close_annotator()


def test_scribble_button_paint_toggle_and_commit_key(qtbot, viewer_model, closing):
    truth, images = nuclei_stack()
    widget, ann = _open(viewer_model, qtbot, images, OraclePredictor(truth, images))
    closing(widget)
    viewer_model.dims.set_current_step(0, 3)
    click(qtbot, widget.buttons["scribbles"])
    layer = ann.scribble_layer
    assert layer is not None and viewer_model.layers.selection.active is layer
    assert layer.mode == "paint" and layer.selected_label == 1
    layer.brush_size = 3
    layer.paint((3, 20, 20), 1)                      # one stroke on nucleus 1: auto-segment
    qtbot.waitUntil(lambda: ann.preview is not None and not ann.busy, timeout=20_000)
    np.testing.assert_array_equal(ann.preview.masks[0], truth[3] == 1)
    _key(layer, "Shift-T")                           # negative: the scribble label is 2
    assert layer.selected_label == 2 and widget.negative_radio.isChecked()
    _key(layer, "Shift-C")                           # the annotator's keys work there too
    np.testing.assert_array_equal(ann.labels_layer.data[3] == 1, truth[3] == 1)
    assert not layer.data[3].any()                   # the slice's strokes were cleared


def test_refine_key_on_my_labels_layer_and_commit_button(qtbot, viewer_model, closing):
    truth, images = nuclei_stack()
    mine = np.zeros(truth.shape, np.uint16)
    mine[3][(truth[3] == 2) & (np.indices(truth.shape[1:])[1] < 56)] = 6   # half of nucleus 2
    mine[3][truth[3] == 3] = 9
    viewer_model.add_labels(mine.copy(), name="painted")
    widget, ann = _open(viewer_model, qtbot, images, OraclePredictor(truth, images))
    closing(widget)
    widget.labels_combo.activated.emit(widget.labels_combo.findText("painted (existing, ids "
                                                                     "up to 9)"))
    ann = widget.annotator
    labels = ann.labels_layer
    assert labels.name == "painted" and not ann.owns_labels
    viewer_model.dims.set_current_step(0, 3)
    viewer_model.cursor.position = tuple(labels.data_to_world((3, 20, 52)))  # over label 6
    _key(labels, "Shift-R")                          # the refine key, on the user's layer
    qtbot.waitUntil(lambda: ann.preview is not None and not ann.busy, timeout=20_000)
    assert ann.refiner.session.label_id == 6 and "refin" in widget.status.text() + \
        ann.last_message
    click(qtbot, widget.buttons["commit"])
    np.testing.assert_array_equal(labels.data[3] == 6, truth[3] == 2)
    np.testing.assert_array_equal(labels.data[3] == 9, mine[3] == 9)        # untouched
    labels.undo()
    np.testing.assert_array_equal(labels.data, mine)
    labels.selected_label = 4                        # not on the slice: a clear message
    viewer_model.cursor.position = tuple(labels.data_to_world((3, 2, 2)))    # background
    click(qtbot, widget.buttons["refine"])
    assert "no label to refine" in widget.status.text()


def test_find_all_like_this_button_slider_and_commit(qtbot, viewer_model, closing):
    from test_similar import FeatureOracle, _scene

    truth, image, channel = _scene()
    widget, ann = _open(viewer_model, qtbot, image, FeatureOracle(truth, image, channel))
    closing(widget)
    click(qtbot, widget.buttons["find_similar"])          # no labels yet: said, nothing runs
    assert "has no labels" in widget.status.text()
    widget.auto_check.setChecked(False)
    widget.batch_check.setChecked(True)
    for r, c in ((14, 14), (14, 46), (46, 14)):      # three exemplars of kind A
        ann.add_point((r, c))
    click(qtbot, widget.buttons["segment"])
    qtbot.waitUntil(lambda: ann.preview is not None, timeout=20_000)
    click(qtbot, widget.buttons["commit"])
    exemplars = ann.labels_layer.data.copy()
    assert len(np.unique(exemplars)) == 4
    click(qtbot, widget.buttons["find_similar"])
    qtbot.waitUntil(lambda: ann.similar.result is not None and not ann.busy, timeout=30_000)
    shown = np.asarray(ann.everything_layer.data)
    assert {int(np.unique(truth[shown == c])[0]) for c in np.unique(shown[shown > 0])} == {3, 5}
    widget.similar_panel.slider.setValue(0)          # every candidate, nothing recomputed
    assert len(np.unique(ann.everything_layer.data)) - 1 == len(ann.similar.result.candidates)
    assert "(6 shown)" in widget.similar_panel.value_label.text()
    widget.similar_panel.slider.setValue(50)
    click(qtbot, widget.buttons["commit_everything"])
    out = ann.labels_layer.data
    new = [i for i in np.unique(out) if i and i not in np.unique(exemplars)]
    assert len(new) == 2
    np.testing.assert_array_equal(np.isin(out, new), np.isin(truth, [3, 5]))
    np.testing.assert_array_equal(out[exemplars > 0], exemplars[exemplars > 0])


def test_tracking_menu_propagate_and_review_table(qtbot, viewer_model, closing):
    truth, images = moving_movie()
    widget, ann = _open(viewer_model, qtbot, images, OraclePredictor(truth, images),
                        axis_labels=("t", "y", "x"))
    closing(widget)
    assert widget.axis_menu.currentText() == "t (time)" and widget.axis_menu.isEnabled()
    viewer_model.dims.set_current_step(0, 3)
    widget.auto_check.setChecked(False)
    ann.add_point((3, 30, 20))
    click(qtbot, widget.buttons["segment"])
    qtbot.waitUntil(lambda: ann.preview is not None, timeout=20_000)
    click(qtbot, widget.buttons["commit"])
    click(qtbot, widget.buttons["propagate"])
    qtbot.waitUntil(lambda: ann.review is not None and not ann.review.running and not ann.busy,
                    timeout=30_000)
    (lid,) = np.unique(ann.labels_layer.data[3][ann.labels_layer.data[3] > 0])
    for t in range(len(truth)):
        np.testing.assert_array_equal(ann.labels_layer.data[t] == lid, truth[t] == 1)
    assert "tracked" in widget.status.text()
    panel = widget.review_panel
    # the first step each way moves before the motion is known: listed, to be checked
    assert panel.table.rowCount() == len(ann.review.doubts) >= 1
    assert panel.table.item(0, 0).text().startswith("t=")
    click(qtbot, panel.buttons["next_doubtful"])
    first = ann.review.slices[0]
    assert ann.current_slice() == first or ann.current_slice() in ann.review.slices
    panel.table.cellClicked.emit(0, 0)               # a row shows its slice
    assert ann.current_slice() == ann.review.doubts[0].slice_index


def test_review_table_fills_while_propagating_and_next_key(qtbot, viewer_model, closing):
    truth, images = nuclei_stack(n_z=8)
    widget, ann = _open(viewer_model, qtbot, images, DoubtfulOracle(truth, images))
    closing(widget)
    assert widget.axis_menu.currentText() == "z"
    rows = []
    ann.state.events.review.connect(
        lambda review, old=None: rows.append((review.running, widget.review_panel.table
                                              .rowCount())))
    viewer_model.dims.set_current_step(0, 6)
    widget.auto_check.setChecked(False)
    ann.add_point((6, 46, 40))
    click(qtbot, widget.buttons["segment"])
    qtbot.waitUntil(lambda: ann.preview is not None, timeout=20_000)
    click(qtbot, widget.buttons["commit"])
    click(qtbot, widget.buttons["propagate"])
    qtbot.waitUntil(lambda: ann.review is not None and not ann.review.running and not ann.busy,
                    timeout=30_000)
    assert rows[0][0] and rows[-1] == (False, 2)     # listed during the run, final at the end
    assert "2 doubtful slice(s) of 7" in widget.review_panel.summary.text()
    _key(ann.points_layer, "Shift-D")
    assert ann.current_slice() == (1,)
    _key(ann.image_layer, "Shift-D")
    assert ann.current_slice() == (4,) and "low score 0.60" in widget.status.text()


def test_widget_bad_input_messages(qtbot, viewer_model, closing):
    truth, images = nuclei_stack()
    widget, ann = _open(viewer_model, qtbot, images[0], OraclePredictor(truth[0], images[0]))
    closing(widget)
    assert not widget.axis_menu.isEnabled()          # a 2D image: nothing to track
    ann.propagation_axis = None
    click(qtbot, widget.buttons["refine"])
    assert "has no labels" in widget.status.text() or "no label to refine" in \
        widget.status.text()
    ann.add_stroke((), [(-30, -30), (-10, -50)])
    click(qtbot, widget.buttons["segment"])
    assert "outside" in widget.status.text()
    assert not ann.labels_layer.data.any()


def test_docked_review_with_real_clicks_and_keys(qtbot, make_napari_viewer_proxy):
    """A real napari window: the Propagate button clicked with the mouse, the review
    table filled, and Shift+D pressed on the canvas jumps to the doubtful slices."""
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer_proxy()
    truth, images = nuclei_stack(n_z=8)
    viewer.add_image(images, name="img")
    widget = AnnotatorWidget(viewer, predictor=DoubtfulOracle(truth, images))
    viewer.window.add_dock_widget(widget)
    ann = widget.annotator
    try:
        qtbot.waitUntil(lambda: not ann.busy, timeout=20_000)
        viewer.dims.set_current_step(0, 6)
        widget.auto_check.setChecked(False)
        ann.add_point((6, 46, 40))
        qtbot.mouseClick(widget.buttons["segment"], Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: ann.preview is not None, timeout=20_000)
        qtbot.mouseClick(widget.buttons["commit"], Qt.MouseButton.LeftButton)
        qtbot.mouseClick(widget.buttons["propagate"], Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: ann.review is not None and not ann.review.running
                        and not ann.busy, timeout=30_000)
        panel = widget.review_panel
        assert panel.table.rowCount() == 2 and not panel.table.isHidden()
        assert [panel.table.item(i, 0).text() for i in range(2)] == ["z=1", "z=4"]
        viewer.layers.selection.active = ann.points_layer
        canvas = viewer.window._qt_viewer.canvas.native
        canvas.setFocus()
        qtbot.keyClick(canvas, Qt.Key.Key_D, Qt.KeyboardModifier.ShiftModifier)
        qtbot.waitUntil(lambda: ann.current_slice() == (1,), timeout=10_000)
        qtbot.mouseClick(panel.buttons["next_doubtful"], Qt.MouseButton.LeftButton)
        assert ann.current_slice() == (4,)
        assert ann.labels_layer.selected_label == int(ann.labels_layer.data[6].max())
    finally:
        qtbot.waitUntil(lambda: not ann.busy, timeout=20_000)
        widget.close_annotator()
