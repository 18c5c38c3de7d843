"""Issue 13 in napari: "Learn from labels" runs in a worker, switches model, cancels cleanly.

``napari_sam.adaptation.adapt`` is replaced by a stand-in that follows its
contract (progress, cancel, an AdaptationResult-like answer) so the tests
drive the widget and the annotator, not the training (tested in
tests/test_adaptation.py).
"""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from napari_sam._qt.annotator_widget import AnnotatorWidget

TIMEOUT = 20_000


class FakeResult:
    """What ``adapt`` returns: ``adapted``, ``report`` and ``save`` (with its record)."""

    def __init__(self, adapted, base, better=True):
        self.adapted, self.base = adapted, base
        self.report = SimpleNamespace(
            kept_base=not better, root_model="micro",
            reason="better on the held-back objects" if better else "not better",
            summary=lambda: "held-back IoU, centre click: 0.41 -> 0.79; tight box: 0.49 -> 0.82")
        self.saved_to = None

    @property
    def predictor(self):
        return self.base if self.report.kept_base else self.adapted

    def save(self, path):
        from napari_sam.adaptation.result import RECORD_FORMAT

        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")
        path.with_suffix(".json").write_text(json.dumps(
            {"format": RECORD_FORMAT, "root_model": "micro", "base_model": "micro"}))
        self.saved_to = path
        return path


@pytest.fixture
def fake_adapt(monkeypatch, make_disk_predictor):
    """The stand-in ``adapt``: ``calls`` records each call; ``gate`` holds it at step 2
    until set; ``better`` decides the verdict."""
    calls = []
    gate = threading.Event()
    gate.set()
    settings = {"better": True}

    def adapt(predictor, images, labels, *, progress=None, cancel=None, **options):
        from napari_sam.adaptation import Cancelled

        calls.append({"predictor": predictor, "labels": np.array(labels, copy=True),
                      "thread": threading.current_thread().name, **options})
        for step in range(1, 6):
            if cancel is not None and cancel.is_set():
                raise Cancelled("cancelled")
            progress(step, 5)
            if step == 2:
                while not gate.wait(0.02):
                    if cancel is not None and cancel.is_set():
                        raise Cancelled("cancelled")
            threading.Event().wait(0.02)
        adapted = make_disk_predictor(radius=9)
        adapted.model_name = "micro+adapted-0123abcd"
        return FakeResult(adapted, predictor, settings["better"])

    monkeypatch.setattr("napari_sam.adaptation.adapt", adapt)
    return SimpleNamespace(calls=calls, gate=gate, settings=settings)


@pytest.fixture
def learning(make_napari_viewer_proxy, qtbot, tmp_path, monkeypatch, disk_predictor):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    viewer = make_napari_viewer_proxy()
    data = np.random.default_rng(0).integers(100, 1000, (6, 48, 64)).astype(np.uint16)
    viewer.add_image(data, name="nuclei")
    widget = AnnotatorWidget(viewer, predictor=disk_predictor)
    viewer.window.add_dock_widget(widget)
    ann = widget.annotator
    viewer.dims.set_current_step(0, 2)
    for rc in ((12, 12), (12, 40), (34, 24)):  # three committed objects
        ann.add_point((2, *rc))
        qtbot.waitUntil(lambda: ann.preview is not None, timeout=TIMEOUT)
        widget.buttons["commit"].click()
    qtbot.waitUntil(lambda: not ann.busy, timeout=TIMEOUT)
    yield viewer, widget, ann, tmp_path / "cache" / "adapted"
    ann.cancel()
    qtbot.waitUntil(lambda: widget.annotator is None or not widget.annotator.busy,
                    timeout=TIMEOUT)
    widget.close_annotator()


def test_learn_button_runs_in_a_worker_and_switches_model_not_labels(
        qtbot, learning, fake_adapt, disk_predictor):
    _viewer, widget, ann, folder = learning
    before = ann.labels_layer.data.copy()
    fake_adapt.gate.clear()
    widget.buttons["adapt"].click()
    qtbot.waitUntil(lambda: widget.jobs.progress.value() >= 2, timeout=TIMEOUT)
    assert widget.jobs.job.text().startswith("learning from 3 object(s)")
    assert not widget.jobs.progress.isHidden() and not widget.jobs.cancel_button.isHidden()
    fake_adapt.gate.set()
    qtbot.waitUntil(lambda: not ann.busy and ann.predictor is not disk_predictor,
                    timeout=TIMEOUT)
    (call,) = fake_adapt.calls
    assert call["thread"] != "MainThread" and call["predictor"] is disk_predictor
    assert call["ids"] is None  # all objects
    np.testing.assert_array_equal(ann.labels_layer.data, before)  # labels never touched
    np.testing.assert_array_equal(call["labels"], before)
    saved = folder / "nuclei__micro.pt"
    assert saved.is_file() and ann.model == str(saved)
    assert "0.41 -> 0.79" in widget.status.text() and "Now using the adapted model" in (
        widget.status.text())
    assert widget.model_selector.model_combo.currentText() == "micro adapted to nuclei"
    assert "micro" in widget.model_selector.models()  # the way back
    # embeddings are recomputed with the adapted model in the background
    qtbot.waitUntil(lambda: len(ann.predictor.embed_calls) > 0, timeout=TIMEOUT)
    # again: from the base weights, with all objects
    widget.buttons["adapt"].click()
    qtbot.waitUntil(lambda: len(fake_adapt.calls) == 2 and not ann.busy, timeout=TIMEOUT)
    assert fake_adapt.calls[1]["predictor"] is disk_predictor
    # back to the base model from the menu
    combo = widget.model_selector.model_combo
    combo.setCurrentIndex(combo.findData("micro"))
    combo.activated.emit(combo.findData("micro"))
    assert ann.model == "micro" and ann.predictor is disk_predictor
    np.testing.assert_array_equal(ann.labels_layer.data, before)


def test_cancel_keeps_the_model_and_saves_nothing(qtbot, learning, fake_adapt, disk_predictor):
    _viewer, widget, ann, folder = learning
    before = ann.labels_layer.data.copy()
    fake_adapt.gate.clear()  # it runs until cancelled
    widget.buttons["adapt"].click()
    qtbot.waitUntil(lambda: widget.jobs.progress.value() >= 2, timeout=TIMEOUT)
    widget.jobs.cancel_button.click()
    qtbot.waitUntil(lambda: not ann.busy, timeout=TIMEOUT)
    assert ann.predictor is disk_predictor and ann.model == "micro"
    assert not folder.exists() or not any(folder.iterdir())
    assert "cancelled" in widget.status.text()
    np.testing.assert_array_equal(ann.labels_layer.data, before)


def test_not_better_keeps_the_model_and_session_objects_are_a_choice(
        qtbot, learning, fake_adapt, disk_predictor):
    _viewer, widget, ann, folder = learning
    ann.labels_layer.data[4, 5:15, 5:15] = 9  # an object from before this session
    fake_adapt.settings["better"] = False
    widget.adapt_combo.setCurrentIndex(widget.adapt_combo.findData("session"))
    widget.buttons["adapt"].click()
    qtbot.waitUntil(lambda: len(fake_adapt.calls) == 1 and not ann.busy, timeout=TIMEOUT)
    assert fake_adapt.calls[0]["ids"] == [1, 2, 3]
    assert ann.predictor is disk_predictor and not folder.exists()
    assert "keeps micro" in widget.status.text()


def test_nothing_to_learn_from_says_so(qtbot, make_napari_viewer_proxy, disk_predictor,
                                       fake_adapt):
    viewer = make_napari_viewer_proxy()
    viewer.add_image(np.zeros((4, 32, 32), np.uint16), name="empty")
    widget = AnnotatorWidget(viewer, predictor=disk_predictor)
    viewer.window.add_dock_widget(widget)
    qtbot.waitUntil(lambda: not widget.annotator.busy, timeout=TIMEOUT)
    widget.buttons["adapt"].click()
    assert "holds no objects: commit a few objects first" in widget.status.text()
    assert not fake_adapt.calls and not widget.annotator.busy
    widget.close_annotator()


def test_adapt_from_a_script_with_the_bundled_model_never_touches_labels(viewer_model,
                                                                         tmp_path, monkeypatch):
    """A real (short) adaptation through Annotator.adapt, blocking."""
    from napari_sam.annotator import Annotator
    from napari_sam.synthetic import sample_nuclei_stack

    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path))
    image, truth = sample_nuclei_stack()
    layer = viewer_model.add_image(image[10:13], name="nuclei")
    labels = viewer_model.add_labels(truth[10:13].astype(np.uint32), name="mine")
    ann = Annotator(viewer_model, layer, labels_layer=labels)
    before = labels.data.copy()
    result = ann.adapt(steps=2, time_limit_s=60, blocking=True)
    np.testing.assert_array_equal(labels.data, before)
    assert result.report.steps == 2 and len(result.report.objects_check) >= 1
    if result.report.kept_base:
        assert ann.model == "micro"
    else:
        assert ann.model == str(tmp_path / "adapted" / "nuclei__micro.pt")
        assert ann.predictor is result.adapted
