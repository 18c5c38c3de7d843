"""The annotator's evented state, job runner, action table and pending propagation slices,
without napari or Qt (a synchronous launcher stands in for napari's workers)."""

from __future__ import annotations

import inspect
import threading
import types

import numpy as np
import pytest

from napari_sam.annotation.actions import ACTIONS, Choices, action, key_for
from napari_sam.annotation.jobs import Job, JobRunner, Progress
from napari_sam.annotation.propagating import PendingSlices
from napari_sam.annotation.stack_jobs import adapt_job
from napari_sam.annotation.state import AnnotatorState, JobStatus, Message


class SyncLauncher:
    """Runs a job's generator at once in a helper thread, like a worker, then delivers its
    events in order on the calling (main) thread; ``quit()`` stops it at the next yield."""

    def __init__(self):
        self.launched = []

    def __call__(self, job, sink):
        self.launched.append(job.title)
        events = []

        def work():
            gen = job.steps(job.cancel)
            try:
                while True:
                    value = next(gen)
                    events.append(("yielded", value))
                    if job.cancel.is_set():
                        return
            except StopIteration as stop:
                events.append(("returned", stop.value))
            except Exception as err:
                events.append(("failed", err))

        thread = threading.Thread(target=work)
        thread.start()
        thread.join()
        for kind, value in events:
            getattr(sink, kind)(job, value)
        sink.finished(job)
        return types.SimpleNamespace(quit=job.cancel.set)


def counting(n, fail=False):
    def steps(cancel):
        yield "model loaded"
        for i in range(n):
            yield Progress(i + 1, n) if i % 2 else {"item": i}
        if fail:
            raise ValueError("bad slice 7")
        return "result"

    return steps


def test_state_fields_emit_new_and_old_once_per_change():
    state = AnnotatorState()
    seen = []
    state.events.connect(lambda info: seen.append(info.signal.name))
    state.last_commit = None  # unchanged: no event
    state.message = Message("status", "a")
    state.message = Message("status", "a")  # a new message even with equal text
    status = JobStatus(1, "embed", "embedding slice (2,)", total=2)
    state.jobs = (status,)
    assert seen == ["message", "message", "jobs"]
    assert state.busy and state.running("embed") and not state.running("propagate")
    assert state.main_job is status and status.fraction == 0.0
    assert JobStatus(2, "adapt", "adapting", 3, 0, "step").describe() == "adapting (step)"


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "worker"])
def test_runner_mirrors_progress_items_and_result_in_the_state(blocking):
    state = AnnotatorState()
    runner = JobRunner(state, SyncLauncher())
    history, items, results, order = [], [], [], []
    state.events.jobs.connect(lambda jobs, old: history.append(
        [(j.kind, j.done, j.total, j.text) for j in jobs]))
    job = Job("propagate", "propagating [1]", counting(4), total=9,
              on_item=items.append, on_result=results.append,
              on_finished=lambda: order.append(("finished", state.busy)))
    out = runner.run(job, blocking=blocking)
    assert (out == "result") is blocking
    assert results == ["result"] and items == [{"item": 0}, {"item": 2}]
    assert history[0] == [("propagate", 0, 9, "")]
    assert history[1] == [("propagate", 1, 9, "model loaded")]  # a str: a step and the text
    assert ("propagate", 2, 4, "model loaded") in [h[0] for h in history if h]  # Progress
    assert history[-1] == [] and order == [("finished", True)]  # still busy in on_finished
    assert not state.busy


def test_failures_raise_when_blocking_and_become_messages_in_workers():
    state = AnnotatorState()
    runner = JobRunner(state, SyncLauncher())
    finished, errors = [], []
    with pytest.raises(ValueError, match="bad slice 7"):
        runner.run(Job("everything", "everything on slice (1,)", counting(1, fail=True),
                       on_finished=lambda: finished.append(1)), blocking=True)
    assert finished == [1] and not state.busy and state.message.text == ""
    runner.run(Job("everything", "everything on slice (1,)", counting(1, fail=True),
                   on_error=errors.append), blocking=False)
    assert [str(e) for e in errors] == ["bad slice 7"]
    assert state.message.level == "error"
    assert state.message.text == "everything on slice (1,) failed: ValueError: bad slice 7"


def test_cancel_stops_a_job_and_sets_its_event():
    state = AnnotatorState()
    launcher = SyncLauncher()
    runner = JobRunner(state)  # no launcher: blocking only
    with pytest.raises(RuntimeError, match="blocking=True"):
        runner.run(Job("adapt", "adapting", counting(2)), blocking=False)
    assert not state.busy
    runner = JobRunner(state, launcher)
    seen = []

    def steps(cancel):
        for i in range(100):
            if i == 3:
                runner.cancel(("propagate",))  # as if the user pressed Cancel meanwhile
            yield {"z": i}
            seen.append(i)

    job = Job("propagate", "propagating [1]", steps)
    runner.run(job, blocking=False)
    assert job.cancel.is_set() and seen == [0, 1, 2]
    assert runner.cancel() is False  # nothing runs any more


def test_messages_from_worker_threads_wait_for_the_main_thread():
    state = AnnotatorState()
    runner = JobRunner(state, SyncLauncher())
    texts = []
    state.events.message.connect(lambda m, old: texts.append(
        (m.level, m.text, threading.current_thread() is threading.main_thread())))

    def steps(cancel):
        runner.post("warning", "the store is read-only")  # from the worker thread
        yield "working"
        return None

    runner.run(Job("embed", "embedding slice (0,)", steps), blocking=False)
    assert texts == [("warning", "the store is read-only", True)]
    runner.close()
    runner.post("info", "after close")
    assert len(texts) == 1


def test_adapt_job_runs_adapt_with_progress_and_cancel(monkeypatch):
    calls = {}

    def fake_adapt(predictor, images, labels, *, progress=None, cancel=None, **options):
        calls.update(predictor=predictor, options=options, cancel=cancel)
        for step in range(1, 4):
            progress(step, 3)
            threading.Event().wait(0.02)
        return "adapted"

    monkeypatch.setattr("napari_sam.adaptation.adapt", fake_adapt)
    state = AnnotatorState()
    totals = []
    state.events.jobs.connect(lambda jobs, old: totals.extend(
        (j.done, j.total) for j in jobs if j.kind == "adapt"))
    job = adapt_job(lambda: "predictor", np.zeros((4, 4)), np.ones((4, 4), np.uint8),
                    time_limit_s=5)
    assert JobRunner(state).run(job, blocking=True) == "adapted"
    assert calls["predictor"] == "predictor" and calls["options"] == {"time_limit_s": 5}
    assert calls["cancel"] is job.cancel and totals[-1] == (3, 3)


def test_action_table_drives_annotator_methods():
    from napari_sam.annotator import Annotator

    names = [a.name for a in ACTIONS]
    assert len(set(names)) == len(names)
    keys = [a.key for a in ACTIONS if a.key]
    assert len(set(keys)) == len(keys) and all(k.startswith("Shift-") for k in keys)
    assert key_for("segment") == "Shift+S" and action("commit").tooltip.endswith("(Shift+C)")
    with pytest.raises(KeyError, match="no action named"):
        action("paint")
    calls = []

    class Recorder:
        def __getattr__(self, name):
            assert hasattr(Annotator, name), name  # every callback is public API
            return lambda *args, **kwargs: calls.append((name, args, kwargs))

    choices = Choices(batch=True, direction="up", stack=True,
                      everything_params={"points_per_side": 4}, path="p.json")
    for act in ACTIONS:
        act.run(Recorder(), choices)
    got = {name: kwargs or args for name, args, kwargs in calls}
    assert got["segment"] == {"batch": True, "blocking": False}
    assert got["propagate"] == {"direction": "up", "blocking": False}
    assert got["segment_everything"] == {"blocking": False, "stack": True, "points_per_side": 4}
    assert got["save_prompts"] == ("p.json",) and got["load_prompts"] == ("p.json",)
    assert "blocking" in inspect.signature(Annotator.segment).parameters


class Layer:
    """A display/labels layer stand-in: ``data`` and ``refresh``."""

    def __init__(self, data):
        self.data = data
        self.refreshed = 0

    def refresh(self):
        self.refreshed += 1


def test_pending_slices_show_arrivals_and_flush_as_one_write():
    from napari_sam.labels import ArrayWriter

    labels = Layer(np.zeros((5, 8, 8), np.uint16))
    labels.data[3, 0, :] = 9  # the user's label under part of an arriving mask
    display = Layer(np.zeros((5, 8, 8), np.uint8))
    pending = PendingSlices((), [1, 2], display=display, labels=labels)
    mask = np.zeros((8, 8), bool)
    mask[0:3, 2:5] = True
    for z in (3, 4):
        pending.add(types.SimpleNamespace(z=z, masks={1: mask, 2: np.zeros((8, 8), bool)}))
    assert pending.written == {1: [3, 4], 2: [3, 4]} and len(pending) == 2
    assert display.data[4].sum() == 9 and display.data[3].sum() == 6  # not over the 9s
    assert not labels.data[4].any()  # nothing written before the flush
    writer = ArrayWriter(labels.data)
    assert pending.flush(writer, (8, 8)) == {1: 15}
    assert (labels.data[4][mask] == 1).all() and (labels.data[3, 0] == 9).all()
    assert not display.data.any() and len(pending) == 0


def test_a_blocking_job_off_the_main_thread_leaves_the_state_alone():
    state = AnnotatorState()
    runner = JobRunner(state)
    changes, out = [], []
    state.events.connect(lambda info: changes.append(info.signal.name))
    thread = threading.Thread(target=lambda: out.append(
        runner.run(Job("embed", "embedding slice (1,)", counting(3)), blocking=True)))
    thread.start()
    thread.join()
    assert out == ["result"] and changes == [] and not state.busy
