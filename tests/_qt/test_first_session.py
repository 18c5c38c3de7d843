"""Issue 18, a biologist's first session: the widget driven as a user does, under Xvfb.

Clicks go to the canvas (QTest mouse events on the vispy canvas of a shown
viewer) or to the widget's Qt buttons, keys are pressed on the canvas; the
assertions are about what the user sees: the status and job lines, the
progress bar, the layer list, the labels' pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import QPoint, Qt
from qtpy.QtTest import QTest

from napari_sam._qt.annotator_widget import AnnotatorWidget
from stand_ins import OraclePredictor, ellipsoid_labels

SCALE = (2.0, 0.5, 0.5)
SHAPE = (12, 48, 64)
TIMEOUT = 20_000  # generous: the machine is shared


def nuclei(shape=SHAPE):
    """Three ellipsoid nuclei (ids 1-3) and their image (bright on a noisy background)."""
    truth = ellipsoid_labels(shape, [((6, 14, 14), (4, 7, 7)), ((6, 14, 46), (3, 7, 7)),
                                     ((5, 34, 30), (3, 8, 9))])
    noise = np.random.default_rng(0).integers(90, 110, shape)
    return (noise + 800 * (truth > 0)).astype(np.uint16), truth


def canvas_point(viewer, world_yx) -> QPoint:
    """The canvas pixel under a world ``(y, x)`` position (2D view)."""
    canvas = viewer.window._qt_viewer.canvas.native
    centre = np.asarray(viewer.camera.center[-2:], dtype=float)
    row, col = (np.asarray(world_yx, float) - centre) * viewer.camera.zoom + np.array(
        [canvas.height(), canvas.width()]) / 2
    return QPoint(round(col), round(row))


def click(viewer, qtbot, image_rc, layer=None) -> None:
    """A left click on the canvas at image pixel ``(row, col)`` of the current slice."""
    world = np.multiply(SCALE[-2:], image_rc)
    canvas = viewer.window._qt_viewer.canvas.native
    QTest.mouseClick(canvas, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                     canvas_point(viewer, world))
    qtbot.wait(20)


def press(viewer, qtbot, key, modifier=Qt.KeyboardModifier.ShiftModifier) -> None:
    """A key press on the canvas (napari sends it to the selected layer's key bindings)."""
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    QTest.keyClick(canvas, key, modifier)
    qtbot.wait(20)


def open_widget(viewer, qtbot, predictor, **kwargs):
    widget = AnnotatorWidget(viewer, predictor=predictor, **kwargs)
    dock = viewer.window.add_dock_widget(widget, name="SAM annotator")
    qtbot.waitUntil(lambda: widget.annotator is not None, timeout=TIMEOUT)
    qtbot.wait(50)  # the window settles (canvas size)
    return widget, dock


def idle(qtbot, widget):
    ann = widget.annotator
    qtbot.waitUntil(lambda: not ann.busy, timeout=TIMEOUT)


@pytest.fixture
def session(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """A shown viewer with the nuclei stack, the widget docked, an oracle predictor."""
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    viewer = make_napari_viewer(show=True)
    image, truth = nuclei()
    layer = viewer.add_image(image, scale=SCALE, name="stack")
    widget, dock = open_widget(viewer, qtbot, OraclePredictor(truth, image))
    viewer.dims.set_current_step(0, 6)
    viewer.reset_view()
    idle(qtbot, widget)
    yield viewer, widget, dock, layer, truth
    if widget.annotator is not None:
        idle(qtbot, widget)
    widget.close_annotator()


# ------------------------------------------------------------------ item 1
def test_empty_mask_says_why_and_is_not_committed(qtbot, session):
    viewer, widget, _dock, _layer, truth = session
    ann = widget.annotator
    click(viewer, qtbot, (40, 6))  # background: the model finds nothing there
    qtbot.waitUntil(lambda: ann.preview is not None, timeout=TIMEOUT)
    assert "no object found on z=6 at (row 40, col 6)" in widget.status.text()
    assert "try a box, a second click" in widget.status.text()
    assert "score" not in widget.status.text()  # not reported as a success
    widget.buttons["next_mask"].click()
    assert "no other candidate" in widget.status.text()
    widget.buttons["commit"].click()
    assert widget.status.text().startswith("nothing committed: no object found on z=6")
    assert "already hold" not in widget.status.text()
    assert not ann.labels_layer.data.any()
    # a second click on a nucleus (one object now), then commit: that works
    widget.buttons["clear"].click()
    click(viewer, qtbot, (14, 14))
    qtbot.waitUntil(lambda: ann.preview is not None, timeout=TIMEOUT)
    press(viewer, qtbot, Qt.Key.Key_C)
    np.testing.assert_array_equal(ann.labels_layer.data[6] == 1, truth[6] == 1)


# ------------------------------------------------------------------ item 2
def test_close_and_reopen_keeps_one_labels_layer_and_unique_ids(qtbot, session):
    from napari.layers import Labels
    from napari.utils.key_bindings import coerce_keybinding

    viewer, widget, dock, layer, truth = session
    ann = widget.annotator
    click(viewer, qtbot, (14, 14))
    qtbot.waitUntil(lambda: ann.preview is not None, timeout=TIMEOUT)
    widget.buttons["commit"].click()
    n_layers = len(viewer.layers)
    dock.title.close_button.click()  # the dock's title-bar x
    qtbot.waitUntil(lambda: ann.closed, timeout=TIMEOUT)
    assert not ann.busy and ann.runner.closed
    assert coerce_keybinding("Shift-C") not in ann.points_layer.keymap
    assert coerce_keybinding("Shift-C") not in layer.keymap
    viewer.dims.set_current_step(0, 5)  # no embedding starts any more
    qtbot.wait(100)
    assert not ann.busy
    # Plugins > SAM annotator again: a new widget adopts the layers
    again, _ = open_widget(viewer, qtbot, OraclePredictor(truth, layer.data))
    new = again.annotator
    assert len(viewer.layers) == n_layers
    labels = [ly for ly in viewer.layers if isinstance(ly, Labels) and "labels" in ly.name]
    assert [ly.name for ly in labels] == ["stack labels"]
    assert new.labels_layer is ann.labels_layer and new.points_layer is ann.points_layer
    assert again.labels_combo.currentText() == "stack labels"
    viewer.dims.set_current_step(0, 6)
    click(viewer, qtbot, (14, 46))
    qtbot.waitUntil(lambda: new.preview is not None, timeout=TIMEOUT)
    again.buttons["commit"].click()
    assert set(np.unique(new.labels_layer.data[6])) == {0, 1, 2}  # id 2, not 1 again
    idle(qtbot, again)
    again.close_annotator()


# ------------------------------------------------------------------ item 3
def test_progress_bar_moves_during_a_long_propagation(qtbot, make_napari_viewer,
                                                      make_disk_predictor, fake_propagate):
    viewer = make_napari_viewer(show=True)
    image = np.random.default_rng(1).integers(100, 1000, SHAPE).astype(np.uint16)
    viewer.add_image(image, scale=SCALE, name="stack")
    slow = make_disk_predictor(embed_delay=0.3)
    widget, _ = open_widget(viewer, qtbot, slow)
    ann = widget.annotator
    viewer.dims.set_current_step(0, 3)
    viewer.reset_view()
    idle(qtbot, widget)
    click(viewer, qtbot, (20, 30))
    qtbot.waitUntil(lambda: ann.preview is not None, timeout=TIMEOUT)
    widget.buttons["commit"].click()
    ann.prefetch = False  # only the propagation's own embeddings
    seen, lines = [], []
    widget.jobs.progress.valueChanged.connect(seen.append)

    def job_line(jobs, old):
        lines.append(widget.jobs.job.text())

    ann.state.events.jobs.connect(job_line)
    widget.direction_combo.setCurrentText("up")
    widget.buttons["propagate"].click()
    qtbot.waitUntil(lambda: widget.jobs.progress.isVisible(), timeout=TIMEOUT)
    assert widget.jobs.cancel_button.isVisible() and widget.jobs.cancel_button.isEnabled()
    idle(qtbot, widget)
    moving = [v for v in seen if v > 0]
    assert len(set(moving)) >= 4 and moving == sorted(moving)  # the bar moved, forwards
    assert any(line.startswith("propagating [1]") for line in lines)
    ann.state.events.jobs.disconnect(job_line)
    assert not widget.jobs.progress.isVisible()
    assert "Reached 1: z=3-11" in widget.status.text()
    widget.close_annotator()


def test_model_loading_and_first_embedding_show_in_the_job_line(
        qtbot, make_napari_viewer, make_disk_predictor, monkeypatch):
    import threading

    release = threading.Event()

    def slow_load(*args, **kwargs):
        release.wait(10)
        return make_disk_predictor()

    monkeypatch.setattr("napari_sam.predictor.Predictor", slow_load)
    viewer = make_napari_viewer(show=True)
    viewer.add_image(np.random.default_rng(1).integers(100, 1000, SHAPE).astype(np.uint16))
    widget = AnnotatorWidget(viewer)  # no predictor: the model loads in a worker
    viewer.window.add_dock_widget(widget)
    ann = widget.annotator
    qtbot.waitUntil(lambda: "loading model micro" in widget.jobs.job.text(), timeout=TIMEOUT)
    assert widget.jobs.progress.isVisible() and widget.jobs.job.text().startswith("embedding")
    release.set()
    qtbot.waitUntil(lambda: not ann.busy, timeout=TIMEOUT)
    assert ann.predictor is not None
    widget.close_annotator()


# ------------------------------------------------------------------ item 4
def test_labels_target_names_the_layer_and_marks_ground_truth(qtbot, make_napari_viewer,
                                                              tmp_path, monkeypatch):
    from napari_sam._sample_data import make_sample_nuclei

    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path))
    viewer = make_napari_viewer(show=True)
    (image, image_kw, _), (truth, truth_kw, _) = make_sample_nuclei()
    viewer.add_image(image, **image_kw)  # File > Open Sample adds both
    gt = viewer.add_labels(truth, **truth_kw)
    widget, _ = open_widget(viewer, qtbot, OraclePredictor(truth, image))
    items = [widget.labels_combo.itemText(i) for i in range(widget.labels_combo.count())]
    assert items[0] == "nuclei labels" == widget.labels_combo.currentText()
    assert items[1] == f"nuclei ground truth (existing, ids up to {truth.max()})"
    assert items[-1] == "new labels layer"
    assert "Commits go to 'nuclei labels'" in widget.labels_combo.toolTip()
    widget.labels_combo.setCurrentIndex(1)
    widget.labels_combo.activated.emit(1)
    assert widget.annotator.labels_layer is gt
    text = widget.status.text()
    assert "commits now go to 'nuclei ground truth', which already holds labels" in text
    assert f"new objects get ids from {truth.max() + 1}" in text
    idle(qtbot, widget)
    widget.close_annotator()


# ------------------------------------------------------------------ item 5
def test_everything_review_layer_keeps_points_active_and_previews_on_top(qtbot, session):
    viewer, widget, _dock, _layer, _truth = session
    ann = widget.annotator
    widget.everything_params = {"points_per_side": 8}
    widget.buttons["everything"].click()
    qtbot.waitUntil(lambda: ann.everything_layer is not None and not ann.busy,
                    timeout=TIMEOUT)
    layers = list(viewer.layers)
    assert viewer.layers.selection.active is ann.points_layer
    assert ann.points_layer.mode == "add"
    assert layers.index(ann.everything_layer) < layers.index(ann.preview_layer)
    assert "everything:" in widget.status.text()
    click(viewer, qtbot, (34, 30))  # the next click still adds a point and previews
    assert len(ann.points_layer.data) == 1
    qtbot.waitUntil(lambda: ann.preview is not None, timeout=TIMEOUT)
    assert ann.preview_layer.data[6, 34, 30] > 0 and ann.preview_layer.visible


# ------------------------------------------------------------------ item 6
def test_keys_work_with_the_image_selected_and_other_layers_say_so(qtbot, session):
    viewer, widget, _dock, layer, truth = session
    ann = widget.annotator
    ann.auto_segment = False
    click(viewer, qtbot, (14, 14))
    viewer.layers.selection.active = layer  # e.g. to adjust the contrast
    press(viewer, qtbot, Qt.Key.Key_S)
    qtbot.waitUntil(lambda: ann.preview is not None, timeout=TIMEOUT)
    press(viewer, qtbot, Qt.Key.Key_C)
    np.testing.assert_array_equal(ann.labels_layer.data[6] == 1, truth[6] == 1)
    other = viewer.add_shapes(name="my drawing")
    viewer.layers.selection.active = other
    assert "'my drawing' is selected: the SAM keys (Shift+S, Shift+C...)" in widget.status.text()


# ------------------------------------------------------------------ item 7
def test_helper_layers_of_other_images_are_hidden_and_come_back(qtbot, session):
    viewer, widget, _dock, _layer, _truth = session
    first = widget.annotator
    helpers = [first.points_layer, first.shapes_layer, first.preview_layer]
    first.shapes_layer.visible = False  # the user hid the boxes: they stay hidden
    viewer.add_image(np.random.default_rng(2).integers(0, 500, (40, 40)).astype(np.uint16),
                     name="other")
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("other"))
    second = widget.annotator
    assert second.image_layer.name == "other"
    assert [ly.visible for ly in helpers] == [False, False, False]
    assert first.labels_layer in viewer.layers  # nothing deleted
    assert second.points_layer.visible and second.preview_layer.visible
    idle(qtbot, widget)
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("stack"))
    assert widget.annotator.points_layer is first.points_layer
    assert [ly.visible for ly in helpers] == [True, False, True]
    assert not second.points_layer.visible


# ------------------------------------------------------------------ item 8
def test_messages_use_axis_labels_and_refresh_after_undo(qtbot, make_napari_viewer,
                                                         make_disk_predictor):
    viewer = make_napari_viewer(show=True)
    data = np.random.default_rng(3).integers(100, 1000, (2, 4, 48, 64)).astype(np.uint16)
    viewer.add_image(data, name="movie", axis_labels=("time", "depth", "y", "x"))
    flat = viewer.add_image(data[0, 0], name="flat")
    widget, _ = open_widget(viewer, qtbot, make_disk_predictor())
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("movie"))
    ann = widget.annotator
    viewer.dims.set_current_step(0, 1)
    viewer.dims.set_current_step(1, 2)
    viewer.reset_view()
    idle(qtbot, widget)
    ann.add_point((1, 2, 20, 30))
    qtbot.waitUntil(lambda: ann.preview is not None, timeout=TIMEOUT)
    assert widget.status.text().startswith("time=1, depth=2: 1 object(s)")
    widget.buttons["commit"].click()
    assert "on time=1, depth=2 into 'movie labels'" in widget.status.text()
    viewer.layers.selection.active = ann.labels_layer
    press(viewer, qtbot, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)  # Ctrl+Z
    assert not ann.labels_layer.data.any()
    assert widget.status.text() == "undone on 'movie labels': 0 object(s) on time=1, depth=2"
    press(viewer, qtbot, Qt.Key.Key_Z,
          Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert widget.status.text().startswith("redone on 'movie labels': 1 object(s)")
    idle(qtbot, widget)
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("flat"))
    ann2 = widget.annotator
    assert ann2.image_layer is flat
    idle(qtbot, widget)
    ann2.add_point((20, 30))
    qtbot.waitUntil(lambda: ann2.preview is not None, timeout=TIMEOUT)
    assert widget.status.text().startswith("the image: 1 object(s)")
    assert "slice ()" not in widget.status.text()
    idle(qtbot, widget)
    widget.close_annotator()


# ------------------------------------------------------------------ item 9
def test_three_clicks_on_three_nuclei_say_they_made_one_object(qtbot, session):
    viewer, widget, _dock, _layer, _truth = session
    ann = widget.annotator
    assert "refine ONE object" in widget.batch_check.toolTip()
    for rc in ((14, 14), (14, 46), (34, 30)):
        click(viewer, qtbot, rc)
    qtbot.waitUntil(lambda: ann.preview is not None and len(ann.points_layer.data) == 3,
                    timeout=TIMEOUT)
    qtbot.waitUntil(lambda: "3 points -> 1 object" in widget.status.text(), timeout=TIMEOUT)
    assert "tick 'each positive point is an object'" in widget.status.text()
    widget.batch_check.setChecked(True)  # as the message says
    qtbot.waitUntil(lambda: ann.preview.n_objects == 3, timeout=TIMEOUT)
    assert "3 object(s)" in widget.status.text() and "->" not in widget.status.text()
    widget.buttons["commit"].click()
    assert set(np.unique(ann.labels_layer.data[6])) == {0, 1, 2, 3}


# ----------------------------------------------------------------- item 10
def test_stop_slider_and_the_z_range_each_object_reached(qtbot, session, monkeypatch):
    import napari_sam.propagation as propagation

    viewer, widget, _dock, _layer, truth = session
    ann = widget.annotator
    assert widget.stop_slider.value() == 0 and "recommendation" in widget.stop_slider.toolTip()
    options = []
    real = propagation.propagate_iter

    def recording(*args, **kwargs):
        options.append({k: kwargs.get(k) for k in
                        ("fade_threshold", "score_threshold", "iou_threshold")})
        return real(*args, **kwargs)

    monkeypatch.setattr(propagation, "propagate_iter", recording)
    click(viewer, qtbot, (14, 14))
    qtbot.waitUntil(lambda: ann.preview is not None, timeout=TIMEOUT)
    widget.buttons["commit"].click()
    widget.buttons["propagate"].click()
    idle(qtbot, widget)
    assert options[-1] == {"fade_threshold": None, "score_threshold": None,
                           "iou_threshold": None}  # the model's recommendation
    zs = np.flatnonzero((truth == 1).sum(axis=(1, 2)) >= 8)  # propagation's min_area
    text = widget.status.text()
    assert f"Reached 1: z={zs.min()}-{zs.max()}" in text
    assert f"vanished at z={zs.min() - 1}" in text and f"vanished at z={zs.max() + 1}" in text
    np.testing.assert_array_equal(ann.labels_layer.data[zs] == 1, truth[zs] == 1)
    ann.labels_layer.undo()
    widget.stop_slider.setValue(2)  # "later"
    viewer.dims.set_current_step(0, 6)
    widget.buttons["propagate"].click()
    idle(qtbot, widget)
    assert options[-1]["score_threshold"] == pytest.approx(0.3)
    assert options[-1]["iou_threshold"] == pytest.approx(0.2)
