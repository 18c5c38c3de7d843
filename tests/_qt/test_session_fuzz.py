"""Session fuzz (issue 16): random annotator sessions checked against a model of the labels.

A hypothesis ``RuleBasedStateMachine`` drives an :class:`~napari_sam.Annotator` on a
Qt-free ``ViewerModel`` (real napari workers for the asynchronous calls, so it runs
under Xvfb) with the exact, fast stand-in predictor of ``tests/stand_ins.py`` on two
small stacks of ellipsoid nuclei. The rules: add and remove points and shapes (inside
an object, on the border of the slice, outside it), segment, next mask, commit (new
ids, a given id, an id that is not an int), clear, change slice and contrast, paint
like a user, undo and redo, propagate (blocking, or in a worker: wait or cancel, with
undo, paint and slice changes while it runs), everything on a slice or the stack and
commit it (blocking or in a worker), switch image (close, reopen on the other image,
adopting its layers).

The model keeps every state of each labels layer and checks, after every rule:

* the labels equal the model's current state (nothing changes behind its back);
* a write is exactly one napari undo step, and the annotator's writes (commit,
  propagation, everything) change background pixels only: labels the user painted
  change only by their own undo;
* each commit adds exactly the new ids it returns, one per object;
* one undo after a commit or a propagation restores the array exactly, and redo
  brings it back (also after an undo that was held while a propagation ran);
* no exception other than the refusal the rule asked for (``ValueError`` of a bad
  label id), no message of level ``"error"``;
* no worker left running at the end of a session.

The suite runs a bounded profile (:data:`SUITE_SESSIONS` sessions, derandomized:
the same steps every run, about 20-40 s). A longer one runs by hand, random (each
run tries other sessions) until at least that many steps were checked::

    NAPARI_SAM_FUZZ_STEPS=1000 OMP_NUM_THREADS=1 .venv/bin/python -m pytest \\
        tests/_qt/test_session_fuzz.py -q -p no:cacheprovider

A failure prints its steps (hypothesis shrinks them first).
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import (  # noqa: E402
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from stand_ins import OraclePredictor, ellipsoid_labels  # noqa: E402

#: Rule steps of a long run (``NAPARI_SAM_FUZZ_STEPS``); the suite runs
#: :data:`SUITE_SESSIONS` derandomized sessions (about 150 steps).
STEPS = int(os.environ.get("NAPARI_SAM_FUZZ_STEPS", "150"))
#: Sessions per batch (each a fresh viewer and annotator) ...
SUITE_SESSIONS = 12
#: ... of at most this many rule steps (hypothesis draws each session's length).
STEPS_PER_SESSION = 25
SHAPE = (6, 32, 40)
TIMEOUT = 30_000  # ms; generous, the machine is shared
USER_IDS = (1000, 1001)  # what the "user" paints with (the annotator's ids stay below)


#: What the sessions did (``note``), printed by the test: e.g. how many commits wrote.
OUTCOMES: Counter[str] = Counter()


def note(outcome: str) -> None:
    OUTCOMES[outcome] += 1


def stack(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(image, truth)``: three ellipsoid nuclei; every slice differs (noise)."""
    truth = ellipsoid_labels(SHAPE, [((2.5, 10, 10), (2.5, 6, 7)), ((3, 12, 28), (2, 6, 6)),
                                     ((3, 24, 18), (3, 5, 8))])
    noise = np.random.default_rng(seed).integers(80, 120, SHAPE)
    return (noise + 700 * (truth > 0)).astype(np.uint16), truth


class History:
    """Every state of one labels layer, and the undo steps napari recorded."""

    def __init__(self, layer) -> None:
        self.layer = layer
        self.states = [np.array(layer.data, copy=True)]
        self.undone: list[np.ndarray] = []
        self.steps = len(layer._undo_history)

    @property
    def current(self) -> np.ndarray:
        return self.states[-1]

    def settle(self, by: str, annotator_write: bool) -> np.ndarray | None:
        """After a rule that may have written: check it and record the new state.
        Returns the state before the write, or None when nothing changed."""
        now = np.asarray(self.layer.data)
        steps = len(self.layer._undo_history)
        before = self.current
        if now.shape == before.shape and np.array_equal(now, before):
            assert steps == self.steps, f"{by}: an undo step that changed nothing"
            return None
        assert steps == self.steps + 1, f"{by}: {steps - self.steps} undo steps for one write"
        if annotator_write:
            changed = now != before
            assert not (changed & (before != 0)).any(), (
                f"{by} changed labels that were there (user or earlier objects)")
        self.states.append(np.array(now, copy=True))
        self.undone.clear()
        self.steps = steps
        return before

    def undo(self) -> np.ndarray:
        if len(self.states) > 1:
            self.undone.append(self.states.pop())
            self.steps -= 1
        return self.current

    def redo(self) -> np.ndarray:
        if self.undone:
            self.states.append(self.undone.pop())
            self.steps += 1
        return self.current


class Session(RuleBasedStateMachine):
    """One annotator session; the test sets ``qtbot`` on the class."""

    qtbot = None
    #: rule steps and sessions run so far (reported by the test)
    steps_run = 0
    sessions = 0

    def __init__(self) -> None:
        super().__init__()
        from napari.components import ViewerModel

        self.viewer = ViewerModel()
        self.images, self.predictors = [], []
        for k, seed in enumerate((1, 2)):
            image, truth = stack(seed)
            self.images.append(self.viewer.add_image(image, name=f"stack{k}"))
            self.predictors.append(OraclePredictor(truth, image))
        self.truths = [p.labels for p in self.predictors]
        self.histories: dict[int, History] = {}
        self.ann = None
        self.which = 0
        self.errors: list[str] = []
        self.expected_error = False
        self.pending = None  # the async job writing into the labels: "propagate" / "commit"

    # ------------------------------------------------------------------ helpers
    def open(self, which: int) -> None:
        from napari_sam.annotation.layer_set import existing_layers
        from napari_sam.annotator import Annotator

        self.which = which
        image = self.images[which]
        self.ann = Annotator(self.viewer, image, predictor=self.predictors[which], store=None,
                             **existing_layers(self.viewer, image))
        self.ann.events.message.connect(self._heard)
        layer = self.ann.labels_layer
        if id(layer) not in self.histories:
            self.histories[id(layer)] = History(layer)

    def _heard(self, event) -> None:
        if event.level == "error" and not self.expected_error:
            self.errors.append(event.message)

    @property
    def history(self) -> History:
        return self.histories[id(self.ann.labels_layer)]

    @property
    def z(self) -> int:
        return int(self.ann.current_slice()[0])

    def wait_idle(self) -> None:
        self.qtbot.waitUntil(lambda: not self.ann.busy, timeout=TIMEOUT)

    def finish_pending(self, cancel: bool) -> None:
        """Wait for (or cancel) the running write job, then account for its step."""
        if cancel:
            self.ann.cancel()
        self.wait_idle()
        if self.pending is not None:
            by, self.pending = self.pending, None
            wrote = self.history.settle(by, annotator_write=True) is not None
            note(f"{by} in a worker{', cancelled' if cancel else ''}: "
                  f"{'wrote' if wrote else 'nothing'}")

    def position(self, where: str, obj: int) -> tuple[float, float]:
        h, w = SHAPE[1:]
        truth = self.truths[self.which][self.z]
        if where == "inside":
            rows, cols = np.nonzero(truth == obj + 1)
            if rows.size:
                return float(rows[len(rows) // 2]), float(cols[len(cols) // 2])
            return h / 2, w / 2
        if where == "border":
            return [(0.0, w / 2), (h - 1.0, w / 2), (h / 2, -0.4), (h / 2, w - 0.6)][obj % 4]
        return [(h / 2, w + 3.0), (-5.0, w / 2), (h + 40.0, 2.0), (3.0, -30.0)][obj % 4]

    # ------------------------------------------------------------------- rules
    @initialize()
    def start(self) -> None:
        Session.sessions += 1
        self.open(0)
        self.viewer.dims.set_current_step(0, 2)

    @rule(where=st.sampled_from(["inside", "inside", "border", "outside"]),
          positive=st.booleans(), obj=st.integers(0, 3))
    def add_point(self, where, positive, obj) -> None:
        r, c = self.position(where, obj)
        self.ann.add_point((self.z, r, c), positive=positive or where != "inside")

    @rule(where=st.sampled_from(["inside", "border", "outside"]), obj=st.integers(0, 3),
          kind=st.sampled_from(["rectangle", "rectangle", "ellipse"]))
    def add_box(self, where, obj, kind) -> None:
        r, c = self.position(where, obj)
        self.ann.add_box((self.z,), (r - 5, c - 6, r + 5, c + 6), shape_type=kind)

    @rule(kind=st.sampled_from(["points", "shapes"]), pick=st.integers(0, 10))
    def remove_prompt(self, kind, pick) -> None:
        from napari_sam.annotation.layers import remove_rows

        layer = self.ann.points_layer if kind == "points" else self.ann.shapes_layer
        if len(layer.data):
            remove_rows(layer, [pick % len(layer.data)])

    @rule(batch=st.booleans())
    def segment(self, batch) -> None:
        self.ann.segment(batch=batch)

    @rule()
    def next_mask(self) -> None:
        self.ann.next_mask()

    @rule(how=st.sampled_from(["new", "new", "new", "given", "bad"]))
    def commit(self, how) -> None:
        before = self.history.current
        preview = self.ann.preview
        label_id = None
        if how != "new" and (preview is None or all(preview.empty)
                             or self.pending == "propagate"):
            return  # refused before the ids are looked at
        if how == "bad":
            with pytest.raises(ValueError, match="label_id must be an int"):
                self.ann.commit(label_id=[2.5] * preview.n_objects)
            assert self.history.settle("refused commit", annotator_write=True) is None
            return
        if how == "given":
            label_id = [int(before.max()) + 3 + k for k in range(preview.n_objects)]
        ids = self.ann.commit(label_id=label_id)
        old = self.history.settle("commit", annotator_write=True)
        note(f"commit: {'wrote' if ids else 'nothing'}")
        if ids:
            assert old is not None, "commit returned ids but wrote nothing"
            new = set(np.unique(self.history.current).tolist()) - set(np.unique(old).tolist())
            assert new == set(ids), (ids, new)  # one new id per object written
            assert label_id is None or set(ids) <= set(label_id)
        else:
            assert old is None, "commit wrote but returned no id"

    @rule(obj=st.integers(0, 2), batch=st.booleans(), second=st.booleans())
    def click_segment_commit(self, obj, batch, second) -> None:
        """The common workflow in one step: click an object (or two), segment, commit."""
        self.add_point("inside", True, obj)
        if second:
            self.add_point("inside", True, (obj + 1) % 3)
        self.segment(batch)
        self.commit("new")

    @rule()
    def clear(self) -> None:
        self.ann.clear()

    @rule(z=st.integers(0, SHAPE[0] - 1))
    def change_slice(self, z) -> None:
        self.viewer.dims.set_current_step(0, z)

    @rule(low=st.integers(0, 200), span=st.integers(50, 1500), display=st.booleans())
    def change_contrast(self, low, span, display) -> None:
        self.images[self.which].contrast_limits = (low, low + span)
        if display != (self.ann.normalization == "display"):
            self.ann.normalization = "display" if display else "robust"

    @rule(user=st.sampled_from(USER_IDS), r=st.integers(0, SHAPE[1] - 1),
          c=st.integers(0, SHAPE[2] - 1), size=st.integers(1, 6))
    def paint(self, user, r, c, size) -> None:
        layer = self.ann.labels_layer
        layer.brush_size = size
        layer.paint((self.z, r, c), user)
        self.history.settle("paint", annotator_write=False)

    @rule()
    def undo(self) -> None:
        held = bool(self.ann.runner.writing())
        layer = self.ann.labels_layer
        before = np.array(layer.data, copy=True)
        layer.undo()
        if held:
            np.testing.assert_array_equal(layer.data, before, "a held undo changed the labels")
            assert "waits" in self.ann.last_message
            note("undo: held while a job will write")
            return
        note(f"undo: {'a step' if len(self.history.states) > 1 else 'nothing to undo'}")
        np.testing.assert_array_equal(layer.data, self.history.undo(), "undo")

    @rule()
    def redo(self) -> None:
        held = bool(self.ann.runner.writing())
        layer = self.ann.labels_layer
        before = np.array(layer.data, copy=True)
        layer.redo()
        if held:
            np.testing.assert_array_equal(layer.data, before, "a held redo changed the labels")
            return
        note(f"redo: {'a step' if self.history.undone else 'nothing to redo'}")
        np.testing.assert_array_equal(layer.data, self.history.redo(), "redo")

    def to_labels(self) -> None:
        """Go to a slice with labels (what a propagation starts from), if there is one."""
        zs = np.flatnonzero(np.asarray(self.ann.labels_layer.data).any(axis=(1, 2)))
        if zs.size:
            self.viewer.dims.set_current_step(0, int(zs[len(zs) // 2]))

    @precondition(lambda self: self.pending is None)
    @rule(direction=st.sampled_from(["both", "up", "down"]), from_labels=st.booleans())
    def propagate(self, direction, from_labels) -> None:
        if from_labels:
            self.to_labels()
        self.ann.propagate(direction=direction)
        wrote = self.history.settle("propagation", annotator_write=True) is not None
        note(f"propagation: {'wrote' if wrote else 'nothing'}")

    @precondition(lambda self: self.pending is None)
    @rule(direction=st.sampled_from(["both", "up", "down"]), from_labels=st.booleans())
    def propagate_in_a_worker(self, direction, from_labels) -> None:
        if from_labels:
            self.to_labels()
        if self.ann.propagate(direction=direction, blocking=False) is not None:
            self.pending = "propagate"

    @rule()
    def undo_then_redo(self) -> None:
        """Ctrl+Z then Shift+Ctrl+Z: back where it was (held or not). With nothing to
        undo, the redo brings back what an earlier undo removed (checked by ``redo``)."""
        before = np.array(self.ann.labels_layer.data, copy=True)
        identity = bool(self.ann.runner.writing()) or len(self.history.states) > 1
        self.undo()
        self.redo()
        if identity:
            np.testing.assert_array_equal(self.ann.labels_layer.data, before, "undo + redo")

    @precondition(lambda self: self.pending is not None)
    @rule(cancel=st.booleans())
    def wait_or_cancel(self, cancel) -> None:
        self.finish_pending(cancel)

    @precondition(lambda self: self.pending is None)
    @rule(whole_stack=st.booleans(), commit=st.booleans(), in_a_worker=st.booleans())
    def everything(self, whole_stack, commit, in_a_worker) -> None:
        params = {"points_per_side": 4}
        if whole_stack:
            params["min_z_extent"] = 1
        self.ann.segment_everything(stack=whole_stack, **params)
        if not commit:
            return
        if whole_stack and in_a_worker:
            if self.ann.commit_everything(blocking=False) not in (None, []):
                self.pending = "commit everything"
            return
        self.ann.commit_everything()
        wrote = self.history.settle("commit everything", annotator_write=True) is not None
        note(f"commit everything ({'stack' if whole_stack else 'slice'}): "
              f"{'wrote' if wrote else 'nothing'}")

    @precondition(lambda self: self.pending is None)
    @rule()
    def switch_image(self) -> None:
        self.wait_idle()
        self.ann.close()
        self.open(1 - self.which)

    # -------------------------------------------------------------- invariants
    @invariant()
    def labels_follow_the_model(self) -> None:
        if self.ann is None:
            return
        Session.steps_run += 1
        for history in self.histories.values():
            np.testing.assert_array_equal(history.layer.data, history.current,
                                          "the labels changed behind the model's back")
        assert not self.errors, self.errors

    def teardown(self) -> None:
        if self.ann is not None:
            try:
                self.finish_pending(cancel=True)
                self.wait_idle()
                assert not self.ann.runner.writing() and not self.ann.busy
                from qtpy.QtCore import QThreadPool

                self.qtbot.waitUntil(
                    lambda: QThreadPool.globalInstance().activeThreadCount() == 0,
                    timeout=TIMEOUT)  # no worker left running
                self.labels_follow_the_model()
            finally:
                self.ann.close()
        self.viewer.layers.clear()


def test_session_fuzz(qtbot):
    """Random sessions, at least :data:`STEPS` rule steps in all (see the module doc)."""
    Session.qtbot = qtbot
    long_run = "NAPARI_SAM_FUZZ_STEPS" in os.environ
    config = settings(
        max_examples=SUITE_SESSIONS,
        stateful_step_count=STEPS_PER_SESSION,
        deadline=None,
        database=None,
        derandomize=not long_run,  # the suite's profile: the same sessions every run
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    Session.steps_run = Session.sessions = 0
    OUTCOMES.clear()
    while True:  # hypothesis draws each session's length: run batches until enough steps
        run_state_machine_as_test(Session, settings=config)
        if not long_run or Session.steps_run >= STEPS:
            break
    print(f"session fuzz: {Session.steps_run} steps checked in {Session.sessions} sessions; "
          + "; ".join(f"{k} {v}" for k, v in sorted(OUTCOMES.items())))
    assert Session.steps_run >= min(STEPS, 100)
