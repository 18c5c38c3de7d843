"""The dock widget drives the same calls as the scripted API, through buttons and keys."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam._qt.annotator_widget import AnnotatorWidget
from napari_sam._qt.key_bindings import KEY_BINDINGS, bind_annotator_keys
from napari_sam._qt.model_selector import LOAD_FROM_FILE, ModelSelector

SCALE = (2.0, 0.5, 0.5)
TRANSLATE = (10.0, -3.0, 5.0)


def disk(shape, centre, radius):
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


def stack(shape=(12, 48, 64), seed=0):
    return np.random.default_rng(seed).integers(100, 1000, shape).astype(np.uint16)


def _widget_on(viewer, qtbot, predictor, dock):
    image = viewer.add_image(stack(), scale=SCALE, translate=TRANSLATE, name="stack")
    widget = AnnotatorWidget(viewer, predictor=predictor)
    if dock:
        viewer.window.add_dock_widget(widget)
    else:
        qtbot.addWidget(widget)
    yield viewer, widget, image
    ann = widget.annotator
    if ann is not None:
        qtbot.waitUntil(lambda: not ann.busy, timeout=10_000)
    widget.close_annotator()


@pytest.fixture
def docked(make_napari_viewer_proxy, qtbot, disk_predictor):
    """The widget docked in a real napari viewer."""
    yield from _widget_on(make_napari_viewer_proxy(), qtbot, disk_predictor, dock=True)


@pytest.fixture
def widget_viewer(viewer_model, qtbot, disk_predictor):
    """The widget on napari's Qt-free ViewerModel (fast; same code paths)."""
    yield from _widget_on(viewer_model, qtbot, disk_predictor, dock=False)


def test_buttons_segment_commit_and_undo(qtbot, docked, disk_predictor):
    viewer, widget, image = docked
    ann = widget.annotator
    assert ann is not None and ann.image_layer.unique_id == image.unique_id
    widget.auto_check.setChecked(False)
    viewer.dims.set_current_step(0, 7)
    world = np.add(TRANSLATE, np.multiply(SCALE, (7, 20, 30)))
    ann.points_layer.add(ann.points_layer.world_to_data(world))
    widget.buttons["segment"].click()
    qtbot.waitUntil(lambda: ann.preview is not None, timeout=10_000)
    expected = disk((48, 64), (20, 30), disk_predictor.radius)
    np.testing.assert_array_equal(ann.preview_layer.data[7] > 0, expected)
    widget.buttons["next_mask"].click()
    assert ann.preview.choices == (1,)
    widget.buttons["next_mask"].click()
    widget.buttons["next_mask"].click()  # back to the best
    widget.buttons["commit"].click()
    labels = ann.labels_layer
    np.testing.assert_array_equal(labels.data == 1, np.stack(
        [expected if z == 7 else np.zeros_like(expected) for z in range(12)]))
    assert "committed" in widget.status.text()
    labels.undo()
    assert not labels.data.any()


def test_auto_segment_negative_mode_clear_and_propagate(qtbot, widget_viewer, fake_propagate):
    viewer, widget, _image = widget_viewer
    ann = widget.annotator
    viewer.dims.set_current_step(0, 3)
    ann.add_point((3, 24, 32))  # auto-segment is on: the preview follows
    qtbot.waitUntil(lambda: ann.preview is not None, timeout=10_000)
    widget.negative_radio.setChecked(True)
    assert ann.positive is False
    ann.points_layer.add([3, 24, 36])
    assert list(ann.points_layer.features["positive"]) == [True, False]
    widget.buttons["clear"].click()
    assert ann.preview is None and len(ann.points_layer.data) == 0
    widget.positive_radio.setChecked(True)
    ann.add_point((3, 24, 32))
    qtbot.waitUntil(lambda: ann.preview is not None, timeout=10_000)
    widget.buttons["commit"].click()
    widget.direction_combo.setCurrentText("up")
    widget.buttons["propagate"].click()
    qtbot.waitUntil(lambda: not ann.busy, timeout=10_000)
    z_with_label = np.flatnonzero(ann.labels_layer.data.any(axis=(1, 2))).tolist()
    assert z_with_label == list(range(3, 12))


def test_errors_are_notifications_not_exceptions(qtbot, widget_viewer, tmp_path):
    _viewer, widget, _image = widget_viewer
    widget.buttons["commit"].click()  # nothing to commit
    assert "nothing to commit" in widget.status.text()
    widget.buttons["propagate"].click()
    assert "nothing to propagate" in widget.status.text()
    ann = widget.annotator
    qtbot.waitUntil(lambda: not ann.busy, timeout=10_000)
    widget.model_selector.set_model(str(tmp_path / "missing.pt"))
    widget._on_model_changed(str(tmp_path / "missing.pt"), "cpu")
    qtbot.waitUntil(lambda: "not found" in widget.status.text(), timeout=10_000)
    assert not ann.labels_layer.data.any()


def test_switching_images_reuses_layers_and_drops_old_work(qtbot, widget_viewer):
    viewer, widget, _image = widget_viewer
    first = widget.annotator
    qtbot.waitUntil(lambda: not first.busy, timeout=10_000)
    other = viewer.add_image(stack((40, 40), seed=3), name="flat")
    n_layers = len(viewer.layers)
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("flat"))
    second = widget.annotator
    assert first.closed and second.image_layer.unique_id == other.unique_id
    assert second.labels_layer.data.shape == (40, 40)
    qtbot.waitUntil(lambda: not second.busy, timeout=10_000)
    widget.image_combo.setCurrentIndex(widget.image_combo.findText("stack"))
    third = widget.annotator
    # layers reused, not duplicated
    assert third.points_layer.unique_id == first.points_layer.unique_id
    assert third.labels_layer.unique_id == first.labels_layer.unique_id
    assert len(viewer.layers) == n_layers + 4
    viewer.layers.remove(other)
    assert widget.image_combo.count() == 1


def test_keys_bound_on_own_layers_and_the_image_and_removed_on_close(widget_viewer):
    from napari.utils.key_bindings import coerce_keybinding

    _viewer, widget, image = widget_viewer
    ann = widget.annotator
    for layer in (ann.points_layer, ann.shapes_layer, ann.preview_layer, ann.labels_layer,
                  image):
        for action in KEY_BINDINGS:
            assert coerce_keybinding(action.key) in layer.keymap
    handler = ann.points_layer.keymap[coerce_keybinding("Shift-T")]
    handler(ann.points_layer)
    assert ann.positive is False
    assert widget.negative_radio.isChecked()  # the widget follows the key
    widget.close_annotator()
    for action in KEY_BINDINGS:
        assert coerce_keybinding(action.key) not in ann.points_layer.keymap
        assert coerce_keybinding(action.key) not in image.keymap
    assert not image.keymap


def test_keys_do_not_collide_with_napari_shortcuts():
    from napari.utils.key_bindings import coerce_keybinding
    from napari.utils.shortcuts import default_shortcuts

    taken = {kb for combos in default_shortcuts.values() for kb in combos}
    ours = [coerce_keybinding(a.key) for a in KEY_BINDINGS]
    assert len(set(ours)) == len(ours)
    assert not taken.intersection(ours)


def test_user_labels_layer_gets_no_keys(viewer_model, disk_predictor):
    from napari_sam.annotator import Annotator

    image = viewer_model.add_image(stack((2, 32, 32)))
    mine = viewer_model.add_labels(np.zeros((2, 32, 32), np.uint16))
    ann = Annotator(viewer_model, image, predictor=disk_predictor, labels_layer=mine)
    unbind = bind_annotator_keys(ann)
    # only Ctrl+Z / Shift+Ctrl+Z (undo/redo as before, then a fresh status line)
    assert all("Z" in str(key) and "Shift+S" not in str(key) for key in mine.keymap)
    assert ann.points_layer.keymap
    unbind()
    assert not ann.points_layer.keymap and not mine.keymap


def test_model_selector_lists_registry_and_file(qtbot, tmp_path, monkeypatch):
    from napari_sam.model.registry import available_models

    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path))  # no adapted models there
    selector = ModelSelector(model="vit_b")
    qtbot.addWidget(selector)
    items = [selector.model_combo.itemText(i) for i in range(selector.model_combo.count())]
    assert items == [*available_models(), LOAD_FROM_FILE]
    with qtbot.waitSignal(selector.changed) as blocker:
        selector.device_combo.setCurrentText("cpu")
    assert blocker.args == ["vit_b", "cpu"]
    selector.set_model("/data/my_sam.pt")
    assert selector.model == "/data/my_sam.pt"
    assert selector.model_combo.currentData() == "/data/my_sam.pt"
    assert selector.model_combo.currentText() == "my_sam.pt"


def test_tooltips_name_the_keys(widget_viewer):
    _viewer, widget, _image = widget_viewer
    assert "Shift+S" in widget.buttons["segment"].toolTip()
    assert "Shift+C" in widget.buttons["commit"].toolTip()
    assert "Shift+Z" in widget.buttons["propagate"].toolTip()


def test_everything_buttons(qtbot, widget_viewer):
    viewer, widget, _image = widget_viewer
    assert widget.everything_box is not None
    ann = widget.annotator
    viewer.dims.set_current_step(0, 4)
    widget.everything_params = {"points_per_side": 4, "stability_score_thresh": 0.0}
    progress, bar = [], []
    ann.state.events.jobs.connect(lambda jobs, old: [
        (progress.append((j.done, j.total)), bar.append(
            (widget.jobs.progress.isVisible() or not widget.isVisible(),
             widget.jobs.progress.value(), widget.jobs.progress.maximum())))
        for j in jobs if j.kind == "everything"])
    widget.buttons["everything"].click()
    worker = ann.runner.handle("everything")
    qtbot.waitUntil(lambda: ann.everything_layer is not None and not ann.busy, timeout=10_000)
    # the progress bar shows everything mode's own count (embeddings and batches)
    assert progress and progress[-1][0] == progress[-1][1] == worker.pbar.total > 0
    assert bar[-1] == (True, progress[-1][0], progress[-1][1])  # the widget's own bar
    assert not widget.jobs.progress.isVisible() and not widget.buttons["cancel"].isEnabled()
    found = ann.everything_layer.data[4].copy()
    assert found.max() >= 1 and not ann.labels_layer.data.any()
    widget.buttons["commit_everything"].click()
    assert set(np.unique(ann.labels_layer.data[4])) == set(np.unique(found))
    # the whole stack: 3D objects in the review layer, committed as one undo step
    before = ann.labels_layer.data.copy()
    widget.everything_params["min_z_extent"] = 1
    widget.stack_check.setChecked(True)
    widget.buttons["everything"].click()
    qtbot.waitUntil(lambda: not ann.busy, timeout=30_000)
    stack = ann.everything_layer.data.copy()
    assert stack.shape == before.shape and (stack.any(axis=(1, 2))).sum() > 1
    widget.buttons["commit_everything"].click()  # a job (prepared in a worker), then written
    qtbot.waitUntil(lambda: not ann.busy, timeout=30_000)
    assert not ann.everything_layer.data.any() and ann.labels_layer.data.max() > before.max()
    ann.labels_layer.undo()
    np.testing.assert_array_equal(ann.labels_layer.data, before)


def test_hover_preview_is_throttled(qtbot, widget_viewer, monkeypatch):
    from types import SimpleNamespace

    viewer, widget, _image = widget_viewer
    ann = widget.annotator
    calls = []
    monkeypatch.setattr(ann, "hover", lambda position: calls.append(position))
    widget.hover_check.setChecked(True)
    assert widget.hover._on_move in viewer.mouse_move_callbacks
    for x in range(10):  # a burst of mouse moves
        widget.hover._on_move(viewer, SimpleNamespace(position=(24.0, 5.0, float(x))))
    qtbot.waitUntil(lambda: len(calls) == 1, timeout=2000)
    qtbot.wait(200)
    assert calls == [(24.0, 5.0, 9.0)]  # one decode, at the last position
    widget.hover_check.setChecked(False)
    assert widget.hover._on_move not in viewer.mouse_move_callbacks


def test_labels_menu_adopts_an_existing_layer_without_losing_labels(qtbot, widget_viewer):
    viewer, widget, image = widget_viewer
    first = widget.annotator
    qtbot.waitUntil(lambda: not first.busy, timeout=10_000)
    truth = np.zeros(image.data.shape, np.uint16)
    truth[5, 1:4, 1:4] = 3
    mine = viewer.add_labels(truth.copy(), name="my truth")
    viewer.add_labels(np.zeros((5, 5), np.uint8), name="wrong shape")
    items = [widget.labels_combo.itemText(i) for i in range(widget.labels_combo.count())]
    assert items == ["stack labels", "my truth (existing, ids up to 3)", "new labels layer"]
    widget.labels_combo.setCurrentIndex(1)
    widget.labels_combo.activated.emit(1)
    ann = widget.annotator
    assert ann.labels_layer is mine and ann.points_layer is first.points_layer
    np.testing.assert_array_equal(mine.data, truth)
    ann.add_point((5, 20, 20))
    qtbot.waitUntil(lambda: ann.preview is not None, timeout=10_000)
    widget.buttons["commit"].click()
    assert (mine.data == 4).any() and (mine.data[5, 1:4, 1:4] == 3).all()


def test_intensity_range_menu_switches_normalization(qtbot, widget_viewer, disk_predictor):
    from napari_sam.normalize import stack_contrast_limits

    _viewer, widget, image = widget_viewer
    ann = widget.annotator
    combo = widget.normalization_combo
    assert combo.currentData() == "robust" == ann.normalization
    assert "0.02-0.10" in combo.toolTip() and "display" in combo.toolTip()
    qtbot.waitUntil(lambda: not ann.busy, timeout=10_000)
    assert ann.contrast_limits == stack_contrast_limits(image.data)
    image.contrast_limits = (0, 300)  # the display changes, the embeddings do not
    assert ann.embedding().contrast_limits == stack_contrast_limits(image.data)
    combo.setCurrentIndex(combo.findData("display"))
    assert ann.normalization == "display" and "display contrast limits" in widget.status.text()
    qtbot.waitUntil(lambda: not ann.busy, timeout=10_000)
    assert ann.embedding().contrast_limits == (0.0, 300.0)
