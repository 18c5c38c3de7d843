"""Issue 16, items 7-9 and loose ends: undo while a job will write, big writes in chunks,
prompts with unusable coordinates, label ids that are not ints.

Under Xvfb (pytest-xvfb): real workers and the Qt event loop; the prompt tests use a
shown ``napari.Viewer`` (its dims slider is what such a prompt broke). No wall-clock
assertions: every wait is on a condition.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_sam.annotator import Annotator

TIMEOUT = 20_000  # generous: the machine is shared


@pytest.fixture
def stack_layer(viewer_model):
    data = np.random.default_rng(1).integers(0, 500, (6, 40, 48)).astype(np.uint16)
    return viewer_model.add_image(data)


def seeded(viewer_model, stack_layer, predictor, z=2):
    """An annotator with one committed object (id 1) on slice ``z``."""
    ann = Annotator(viewer_model, stack_layer, predictor=predictor)
    viewer_model.dims.set_current_step(0, z)
    ann.add_point((z, 20, 20))
    ann.segment()
    assert ann.commit() == [1]
    return ann


def idle(qtbot, ann):
    qtbot.waitUntil(lambda: not ann.busy, timeout=TIMEOUT)


# ----------------------------------------------------------------- item 7: undo
def test_undo_and_redo_wait_while_a_propagation_will_write(qtbot, viewer_model, stack_layer,
                                                           disk_predictor, fake_propagate):
    """Undoing the seed during a propagation left the object on the other slices without
    its seed, and the write at the end dropped the redo. Now undo/redo are held (napari's
    Ctrl+Z action and scripts alike), with a message, until the propagation is written."""
    from napari.layers.labels._labels_key_bindings import redo as napari_redo
    from napari.layers.labels._labels_key_bindings import undo as napari_undo

    ann = seeded(viewer_model, stack_layer, disk_predictor)
    labels = ann.labels_layer
    seed_only = labels.data.copy()
    said = []
    ann.events.message.connect(lambda e: said.append(e.message))
    ann.propagate(blocking=False, delay=0.1)
    qtbot.waitUntil(lambda: ann.preview_layer.data.any(), timeout=TIMEOUT)
    labels.undo()                 # a script
    napari_undo(labels)           # napari's Ctrl+Z
    napari_redo(labels)           # and Shift+Ctrl+Z
    np.testing.assert_array_equal(labels.data, seed_only)  # the seed is still there
    held = [m for m in said if "waits: propagating [1] writes into it" in m]
    assert len(held) == 3 and "press Cancel first" in held[0], said
    assert ann.segmenter.history.active and ann.segmenter.history.refused == 3
    idle(qtbot, ann)
    assert not ann.segmenter.history.active
    assert "undo" not in vars(labels) and "redo" not in vars(labels)  # napari's own again
    propagated = labels.data.copy()
    assert (propagated == 1).any((1, 2)).all()
    labels.undo()                 # the propagation, one step
    np.testing.assert_array_equal(labels.data, seed_only)
    labels.undo()                 # the seed
    assert not labels.data.any()
    labels.redo()
    labels.redo()                 # nothing was lost on the way
    np.testing.assert_array_equal(labels.data, propagated)


def test_cancel_then_undo_removes_what_the_propagation_wrote(qtbot, viewer_model, stack_layer,
                                                             disk_predictor, fake_propagate):
    ann = seeded(viewer_model, stack_layer, disk_predictor, z=0)
    labels = ann.labels_layer
    seed_only = labels.data.copy()
    worker = ann.propagate(blocking=False, direction="up", delay=0.2)
    qtbot.waitUntil(lambda: ann.preview_layer.data.any(), timeout=TIMEOUT)
    labels.paint((2, 5, 5), 7)    # the user paints meanwhile (allowed)
    painted = labels.data.copy()
    labels.undo()                 # held
    np.testing.assert_array_equal(labels.data, painted)
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        ann.cancel()
    idle(qtbot, ann)
    assert 2 <= int((labels.data == 1).any((1, 2)).sum()) < 6
    labels.undo()                 # what the propagation wrote
    np.testing.assert_array_equal(labels.data, painted)
    labels.undo()                 # the paint stroke
    np.testing.assert_array_equal(labels.data, seed_only)


def test_ctrl_z_on_the_canvas_says_why_it_waits(qtbot, make_napari_viewer, disk_predictor,
                                               fake_propagate):
    from napari_sam._qt.annotator_widget import AnnotatorWidget

    viewer = make_napari_viewer(show=True)
    data = np.random.default_rng(1).integers(0, 500, (6, 40, 48)).astype(np.uint16)
    viewer.add_image(data, name="stack")
    widget = AnnotatorWidget(viewer, predictor=disk_predictor)
    viewer.window.add_dock_widget(widget, name="SAM annotator")
    qtbot.waitUntil(lambda: widget.annotator is not None, timeout=TIMEOUT)
    ann = widget.annotator
    viewer.dims.set_current_step(0, 2)
    idle(qtbot, ann)
    ann.add_point((2, 20, 20))
    ann.segment()
    ann.commit()
    seed_only = ann.labels_layer.data.copy()
    ann.propagate(blocking=False, delay=0.2)
    qtbot.waitUntil(lambda: ann.preview_layer.data.any(), timeout=TIMEOUT)
    viewer.layers.selection.active = ann.labels_layer
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    qtbot.wait(20)
    np.testing.assert_array_equal(ann.labels_layer.data, seed_only)
    assert "undo of 'stack labels' waits: propagating [1]" in ann.last_message
    idle(qtbot, ann)
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    qtbot.wait(20)
    np.testing.assert_array_equal(ann.labels_layer.data, seed_only)  # the propagation undone
    assert ann.last_message.startswith("undone on 'stack labels'")
    widget.close_annotator()


# ------------------------------------------------------------ item 8: chunked writes
def test_layer_writer_writes_slice_by_slice_as_one_step(qtbot):
    """``pause`` runs between slices, inside the one undo step; the view is refreshed once."""
    from napari.layers import Labels

    from napari_sam.labels import LayerWriter

    layer = Labels(np.zeros((5, 16, 16), np.uint16))
    setitem_refresh, refreshed = [], []
    original_setitem = layer.data_setitem
    layer.data_setitem = lambda indices, value, refresh=True: (
        setitem_refresh.append(refresh), original_setitem(indices, value, refresh=refresh))
    original_partial = layer._partial_labels_refresh
    layer._partial_labels_refresh = lambda: (refreshed.append(1), original_partial())
    pauses = []
    writer = LayerWriter(layer, pause=lambda: pauses.append(int((layer.data > 0).sum())))
    square = np.zeros((16, 16), bool)
    square[4:8, 4:8] = True
    pixels = writer.write_slices({(z,): {3: square} for z in range(5)})
    assert pixels == {3: 80}
    assert pauses == [16, 32, 48, 64]          # between slices, each written before
    assert setitem_refresh == [False] * 5 and len(refreshed) == 1
    layer.undo()
    assert not layer.data.any()


def test_pump_events_runs_timers_on_the_main_thread_only(qtbot):
    """What the writer's ``pause`` does in the annotator: Qt's timers and queued signals
    run (the GUI draws); off the main thread it does nothing. (User input is left
    waiting by Qt's ``ExcludeUserInputEvents``.)"""
    from qtpy.QtCore import QTimer

    from napari_sam.annotation import napari_worker

    fired = []
    QTimer.singleShot(0, lambda: fired.append(threading.current_thread().name))
    worker = threading.Thread(target=napari_worker.pump_events)
    napari_worker._last_pump[0] = 0.0
    worker.start()
    worker.join()
    assert fired == []
    for _ in range(1000):  # a zero-delay timer fires on the first pass or soon after
        napari_worker._last_pump[0] = 0.0
        napari_worker.pump_events()
        if fired:
            break
    assert fired == ["MainThread"]


def test_propagation_is_prepared_in_the_worker_and_written_in_chunks(
        qtbot, viewer_model, stack_layer, disk_predictor, fake_propagate, monkeypatch):
    from napari_sam.annotation import propagating

    threads = []
    original = propagating.prepare_update
    monkeypatch.setattr(propagating, "prepare_update", lambda update: (
        threads.append(threading.current_thread() is threading.main_thread()),
        original(update))[1])
    ann = seeded(viewer_model, stack_layer, disk_predictor)
    labels = ann.labels_layer
    seed_only = labels.data.copy()
    pauses = []
    ann.writer.pause = lambda: pauses.append(int((labels.data == 1).any((1, 2)).sum()))
    ann.propagate(blocking=False)
    idle(qtbot, ann)
    assert threads == [False] * 5              # every slice cropped off the main thread
    assert pauses == [2, 3, 4, 5]              # written slice by slice (5 slices, 4 pauses)
    assert (labels.data == 1).any((1, 2)).all()
    labels.undo()                              # still one step
    np.testing.assert_array_equal(labels.data, seed_only)


def test_whole_stack_commit_everything_is_a_job_written_in_chunks(qtbot, viewer_model,
                                                                  stack_layer, disk_predictor):
    ann = Annotator(viewer_model, stack_layer, predictor=disk_predictor)
    labels = ann.labels_layer
    labels.data[3, 0:6, 0:6] = 9                 # an existing label (kept)
    before = labels.data.copy()
    found = np.zeros((6, 40, 48), np.uint32)
    found[1:5, 10:20, 10:20] = 4                 # a 3D object on 4 slices
    found[2:4, 30:35, 30:35] = 7
    found[3, 0:5, 0:5] = 8                       # wholly under the existing label: left out
    ann.stack.show_everything((), found, stack=True)
    pauses, kinds = [], []
    ann.writer.pause = lambda: pauses.append(1)
    ann.state.events.jobs.connect(lambda jobs, old: kinds.extend(
        (j.kind, j.title) for j in jobs))
    assert ann.commit_everything(blocking=False) is not None  # the worker
    assert ("everything", "committing everything (the stack)") in kinds
    labels.undo()                                # held while the job will write
    np.testing.assert_array_equal(labels.data, before)
    idle(qtbot, ann)
    assert len(pauses) == 3 + 4                  # between the 4 slices written, then
    # after clearing each of them in the review layer
    assert not ann.everything_layer.data.any() and ann.state.everything is None
    assert sorted(np.unique(labels.data[found == 4])) == [10]
    assert sorted(np.unique(labels.data[found == 7])) == [11]
    assert labels.data[3, 2, 2] == 9 and not (labels.data == 12).any()
    assert "committed 2 3D object(s)" in ann.last_message
    assert "1 under existing labels left out" in ann.last_message
    labels.undo()                                # one step
    np.testing.assert_array_equal(labels.data, before)


def test_whole_stack_commit_everything_cancelled_writes_nothing(qtbot, viewer_model,
                                                                stack_layer, disk_predictor,
                                                                monkeypatch):
    from napari_sam.annotation import stack as stack_module

    ann = Annotator(viewer_model, stack_layer, predictor=disk_predictor)
    found = np.zeros((6, 40, 48), np.uint32)
    found[1:5, 10:20, 10:20] = 4
    ann.stack.show_everything((), found, stack=True)
    started, go = threading.Event(), threading.Event()
    plan = stack_module._stack_plan_steps

    def slow(found, labels, index):
        steps = plan(found, labels, index)

        def run(cancel):
            started.set()
            go.wait(TIMEOUT / 1000)
            return (yield from steps(cancel))
        return run

    monkeypatch.setattr(stack_module, "_stack_plan_steps", slow)
    assert ann.commit_everything(blocking=False) is not None
    qtbot.waitUntil(started.is_set, timeout=TIMEOUT)
    ann.cancel()
    go.set()
    idle(qtbot, ann)
    assert not ann.labels_layer.data.any()
    assert ann.state.everything is not None and ann.everything_layer.data.any()  # kept


def test_blocking_whole_stack_commit_returns_the_ids(viewer_model, stack_layer, disk_predictor):
    ann = Annotator(viewer_model, stack_layer, predictor=disk_predictor)
    found = np.zeros((6, 40, 48), np.uint32)
    found[1:5, 10:20, 10:20] = 4
    ann.stack.show_everything((), found, stack=True)
    assert ann.commit_everything() == [1]
    assert (ann.labels_layer.data == 1).sum() == 400 and not ann.busy


# ------------------------------------------------------ item 9: unusable coordinates
@pytest.fixture
def shown(make_napari_viewer, disk_predictor):
    viewer = make_napari_viewer(show=True)
    data = np.random.default_rng(1).integers(0, 500, (6, 40, 48)).astype(np.uint16)
    image = viewer.add_image(data, name="stack")
    ann = Annotator(viewer, image, predictor=disk_predictor)
    yield viewer, ann
    ann.close()


@pytest.mark.parametrize("bad", [1e9, -np.inf, np.nan, -5000.0])
def test_point_far_out_or_not_finite_is_refused_and_the_viewer_keeps_working(shown, bad):
    """Such a point reached napari's dims (its slider overflowed; every later slice
    change failed). It is removed with a message; slices change, segmenting works."""
    viewer, ann = shown
    said = []
    ann.events.message.connect(lambda e: said.append((e.level, e.message)))
    ann.points_layer.add(np.array([[bad, 20.0, 20.0]]))   # e.g. from a script or a file
    assert len(ann.points_layer.data) == 0
    level, text = said[-1]
    assert level == "warning" and "removed from 'stack SAM points'" in text
    assert ("not finite" in text) if not np.isfinite(bad) else (
        f"z={bad:g} is far outside the image (z 0-5)" in text)
    assert "Prompts must lie on the image (z 0-5, y 0-39, x 0-47)" in text
    assert tuple(viewer.dims.range[0])[:2] == (0.0, 5.0)
    viewer.dims.set_current_step(0, 4)
    assert ann.current_slice() == (4,)
    ann.add_point((4, 10, 10))
    masks = ann.segment()
    assert masks and masks[0].any() and ann.preview.slice_index == (4,)
    viewer.dims.set_current_step(0, 1)
    assert ann.current_slice() == (1,)


def test_shape_with_an_unusable_vertex_is_refused(shown):
    viewer, ann = shown
    ann.shapes_layer.add(np.array([[2, 1, 1], [2, 1, 5], [2, 5, 5], [2, 5, 1e9]]))
    ann.shapes_layer.add(np.array([[3, 1, 1], [3, 1, 5], [3, 5, 5], [3, 5, 1]]))
    assert len(ann.shapes_layer.data) == 1                # the good one stays
    assert "shape at (2, 1, 1) removed from 'stack SAM boxes': x=1e+09" in ann.last_message
    viewer.dims.set_current_step(0, 3)
    assert ann.segment()[0].any()


def test_point_just_outside_the_slice_is_kept_and_ignored(shown):
    _viewer, ann = shown
    ann.points_layer.add(np.array([[2, 20.0, 500.0]]))    # right of the slice, not far
    assert len(ann.points_layer.data) == 1
    assert ann.segment(slice=(2,)) == []
    assert "outside the 40x48 slice were ignored" in ann.last_message


def test_scripted_and_file_prompts_with_unusable_coordinates_are_refused(shown, tmp_path):
    _viewer, ann = shown
    with pytest.raises(ValueError, match=r"point \(2, nan, 3\) refused: a coordinate is not "
                                         r"finite .* give pixel coordinates on the image"):
        ann.add_point((2, np.nan, 3))
    with pytest.raises(ValueError, match=r"x=1e\+09 is far outside the image \(x 0-47\)"):
        ann.add_box((2,), (1, 1, 5, 1e9))
    path = tmp_path / "prompts.json"
    ann.add_point((2, 20, 20))
    ann.save_prompts(path)
    saved = json.loads(path.read_text())
    saved["points"][0][0] = 1e9                   # z of the saved point
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="z=1e\\+09 is far outside"):
        ann.load_prompts(path)
    assert len(ann.points_layer.data) == 1 and len(ann.shapes_layer.data) == 0


def test_adopted_layer_with_an_unusable_point_is_cleaned(viewer_model, stack_layer,
                                                        disk_predictor):
    points = viewer_model.add_points(np.array([[2.0, 5, 5], [1e12, 5, 5]]), ndim=3,
                                     name="mine")
    ann = Annotator(viewer_model, stack_layer, predictor=disk_predictor, points_layer=points)
    assert len(points.data) == 1 and "z=1e+12 is far outside" in ann.last_message


# ------------------------------------------------------------- label ids not ints
@pytest.mark.parametrize("bad", [2.5, "3", [1.5], ["1"]])
def test_propagate_and_commit_refuse_label_ids_that_are_not_ints(viewer_model, stack_layer,
                                                                 disk_predictor, bad):
    ann = seeded(viewer_model, stack_layer, disk_predictor)
    with pytest.raises(ValueError, match="label_id must be an int"):
        ann.propagate(label_id=bad)
    ann.add_point((2, 30, 30))
    ann.segment()
    with pytest.raises(ValueError, match="label_id must be an int"):
        ann.commit(label_id=bad if not np.isscalar(bad) else [bad])
    assert set(np.unique(ann.labels_layer.data)) == {0, 1}  # nothing written
