"""Asynchronous annotator calls: workers, responsiveness, slice/image switches, cancel."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_sam.annotator import Annotator


def disk(shape, centre, radius):
    rr, cc = np.ogrid[: shape[0], : shape[1]]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


@pytest.fixture
def stack_layer(viewer_model):
    data = np.random.default_rng(1).integers(0, 500, (6, 40, 48)).astype(np.uint16)
    return viewer_model.add_image(data, scale=(3.0, 1.0, 1.0), translate=(5.0, 0.0, 0.0))


def wait_idle(qtbot, ann, timeout=10_000):
    qtbot.waitUntil(lambda: not ann.busy, timeout=timeout)


def test_gui_keeps_running_while_embedding_in_a_worker(qtbot, viewer_model, stack_layer,
                                                        make_disk_predictor):
    from qtpy.QtCore import QTimer

    predictor = make_disk_predictor(embed_delay=1.0)
    ann = Annotator(viewer_model, stack_layer, predictor=predictor)
    ann.add_point((2, 20, 30))
    ticks = []
    timer = QTimer()
    timer.setInterval(20)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    t0 = time.perf_counter()
    assert ann.segment(slice=(2,), blocking=False) is None
    assert time.perf_counter() - t0 < 0.5  # returned at once
    worker = ann.worker
    assert worker is not None
    qtbot.waitUntil(lambda: not ann.busy, timeout=10_000)
    timer.stop()
    during = [t for t in ticks if t < t0 + 1.0]
    assert len(during) >= 15, f"event loop starved: {len(during)} timer ticks in 1 s"
    assert predictor.embed_threads[0] != "MainThread"
    np.testing.assert_array_equal(ann.preview_layer.data[2] > 0, disk((40, 48), (20, 30), 6))
    # the embedding is cached: the next prompt decodes at once, on the main thread
    ann.add_point((2, 10, 10), positive=False)
    t1 = time.perf_counter()
    masks = ann.segment(slice=(2,), blocking=False)
    assert masks is not None and time.perf_counter() - t1 < 0.2
    assert len(predictor.embed_calls) == 1


def test_result_lands_on_its_slice_after_the_user_moved(qtbot, viewer_model, stack_layer,
                                                         make_disk_predictor):
    ann = Annotator(viewer_model, stack_layer, predictor=make_disk_predictor(embed_delay=0.3))
    viewer_model.dims.set_current_step(0, 2)
    ann.add_point((2, 20, 30))
    ann.segment(blocking=False)
    viewer_model.dims.set_current_step(0, 4)  # the user moves on while it embeds
    wait_idle(qtbot, ann)
    assert ann.preview.slice_index == (2,)
    assert ann.preview_layer.data[2].any() and not ann.preview_layer.data[4].any()
    assert ann.commit() == [1]
    assert ann.labels_layer.data[2].any() and not ann.labels_layer.data[4].any()


def test_closed_annotator_drops_results(qtbot, viewer_model, stack_layer, make_disk_predictor):
    ann = Annotator(viewer_model, stack_layer, predictor=make_disk_predictor(embed_delay=0.3))
    ann.add_point((1, 20, 30))
    ann.segment(slice=(1,), blocking=False)
    with qtbot.waitSignal(ann.worker.finished, timeout=10_000):
        ann.close()  # e.g. the user switched image in the widget
    qtbot.wait(50)
    assert ann.preview is None and not ann.preview_layer.data.any()
    assert ann.closed and ann.segment(slice=(1,)) == []


def test_removing_the_image_layer_closes(viewer_model, stack_layer, disk_predictor):
    ann = Annotator(viewer_model, stack_layer, predictor=disk_predictor)
    viewer_model.layers.remove(stack_layer)
    assert ann.closed
    assert ann.labels_layer in viewer_model.layers  # labels are never removed


def test_cancel_drops_the_pending_preview(qtbot, viewer_model, stack_layer, make_disk_predictor):
    ann = Annotator(viewer_model, stack_layer, predictor=make_disk_predictor(embed_delay=0.3))
    ann.add_point((3, 20, 30))
    ann.segment(slice=(3,), blocking=False)
    with qtbot.waitSignal(ann.worker.finished, timeout=10_000):
        ann.cancel()
    qtbot.wait(50)
    assert ann.preview is None
    assert ann.last_message == "cancelled"


def test_background_embeds_the_viewed_slice_then_prefetches(qtbot, viewer_model, stack_layer,
                                                            make_disk_predictor):
    predictor = make_disk_predictor(embed_delay=0.05)
    ann = Annotator(viewer_model, stack_layer, predictor=predictor, background=True)
    viewer_model.dims.set_current_step(0, 3)
    qtbot.waitUntil(lambda: all(ann.is_ready((z,)) for z in (2, 3, 4)), timeout=10_000)
    wait_idle(qtbot, ann)
    means = [float(stack_layer.data[z].mean()) for z in range(6)]
    order = [means.index(m) for m in predictor.embed_calls]
    assert order[0] == 3 and set(order[:3]) == {2, 3, 4}
    assert all(t != "MainThread" for t in predictor.embed_threads)


def test_auto_segment_previews_when_a_point_is_added(qtbot, viewer_model, stack_layer,
                                                     disk_predictor):
    ann = Annotator(viewer_model, stack_layer, predictor=disk_predictor, auto_segment=True)
    viewer_model.dims.set_current_step(0, 1)
    ann.add_point((1, 15, 15))
    wait_idle(qtbot, ann)
    qtbot.waitUntil(lambda: ann.preview is not None, timeout=5000)
    assert ann.preview.slice_index == (1,)
    ann.points_layer.selected_data = {0}
    ann.points_layer.remove_selected()
    assert ann.preview is None


def test_model_that_fails_to_load_notifies_and_changes_nothing(qtbot, viewer_model, stack_layer,
                                                               tmp_path):
    from napari_sam.model.checkpoint import CheckpointError

    missing = str(tmp_path / "missing.pt")
    ann = Annotator(viewer_model, stack_layer, model=missing, background=True)
    ann.add_point((0, 20, 20))
    assert ann.segment(slice=(0,), blocking=False) is None
    wait_idle(qtbot, ann)
    assert "failed" in ann.last_message and "not found" in ann.last_message
    assert ann.preview is None and not ann.labels_layer.data.any()
    viewer_model.dims.set_current_step(0, 3)  # no retry storm after a failure
    assert not ann.busy
    with pytest.raises(CheckpointError):
        ann.segment(slice=(0,))  # scripted calls raise


def test_hover_preview_decodes_when_the_embedding_is_ready(qtbot, viewer_model, stack_layer,
                                                           disk_predictor):
    ann = Annotator(viewer_model, stack_layer, predictor=disk_predictor, background=True)
    world = (5.0 + 3 * 2, 12.0, 20.0)  # slice 2, row 12, col 20
    assert ann.hover(world) is None  # not embedded yet: requested in the background
    qtbot.waitUntil(lambda: ann.is_ready((2,)), timeout=5000)
    masks = ann.hover(world)
    np.testing.assert_array_equal(masks[0], disk((40, 48), (12, 20), 6))
    assert ann.preview.hover
    ann.add_point((2, 30, 30))
    assert ann.hover(world) is None  # slices with prompts keep their own preview
    wait_idle(qtbot, ann)


def test_async_propagation_writes_slices_as_they_arrive(qtbot, viewer_model, stack_layer,
                                                        disk_predictor, fake_propagate):
    ann = Annotator(viewer_model, stack_layer, predictor=disk_predictor)
    labels = ann.labels_layer
    viewer_model.dims.set_current_step(0, 2)
    ann.add_point((2, 20, 20))
    ann.segment()
    ann.commit()
    after_commit = labels.data.copy()
    seen = []  # slices where the user sees the object: the labels, and arrived slices
    # (shown in the preview layer until the propagation is written as one undo step)
    ann.events.propagation_step.connect(lambda event: seen.append(int(
        ((labels.data == 1) | (ann.preview_layer.data > 0)).any((1, 2)).sum())))
    ann.propagate(blocking=False, delay=0.1)
    assert ann.commit() == []  # refused while propagating
    qtbot.waitUntil(lambda: len(seen) >= 2, timeout=5000)
    labels.paint((0, 2, 2), 9)  # the user paints while it runs
    wait_idle(qtbot, ann)
    assert seen == [2, 3, 4, 5, 6]  # one more slice shown per yielded update
    assert (labels.data == 1).any((1, 2)).all()
    assert not ann.preview_layer.data.any()  # all of it in the labels now
    assert not ann.busy
    labels.undo()  # the whole propagation is one step, the paint stroke another
    assert (labels.data == 9).any()
    assert not (labels.data[[0, 1, 3, 4, 5]] == 1).any()
    labels.undo()
    np.testing.assert_array_equal(labels.data, after_commit)


def test_cancelled_propagation_keeps_its_slices_as_one_step(qtbot, viewer_model, stack_layer,
                                                           disk_predictor, fake_propagate):
    ann = Annotator(viewer_model, stack_layer, predictor=disk_predictor)
    labels = ann.labels_layer
    viewer_model.dims.set_current_step(0, 0)
    ann.add_point((0, 20, 20))
    ann.segment()
    ann.commit()
    before = labels.data.copy()
    worker = ann.propagate(blocking=False, direction="up", delay=0.2)
    shown = ann.preview_layer  # arrived slices, until they are written
    qtbot.waitUntil(lambda: (shown.data > 0).any((1, 2)).sum() >= 1, timeout=5000)
    with qtbot.waitSignal(worker.finished, timeout=10_000):
        ann.cancel()
    n = int((labels.data > 0).any((1, 2)).sum())
    assert 2 <= n < 6
    labels.undo()
    np.testing.assert_array_equal(labels.data, before)
