"""Typed jobs and the one runner that runs them, with progress, cancel and messages.

Qt- and napari-free. A :class:`Job` is a generator function (the work, run in
a worker thread or, in blocking mode, in the caller's thread) plus callbacks
that apply its results on the main thread. :class:`JobRunner` runs every job
of an annotator: it keeps :attr:`AnnotatorState.jobs
<napari_sam.annotation.state.AnnotatorState.jobs>` (kind, progress, status
text) up to date, cancels, reports failures as messages, and forwards
messages of worker threads to the main thread. The only code that starts a
thread is the *launcher* given to the runner
(:func:`napari_sam.annotation.napari_worker.launch`, napari's
``thread_worker``); without one, jobs can only run blocking.

What a job's generator yields:

* a :class:`Progress` ``(done, total)``: the job's own count (e.g. everything
  mode's embeddings and decoder batches);
* a ``str``: one step done, and the new status text (e.g. ``"model"``);
* a :class:`Status`: the new status text only (what starts now, e.g.
  ``"loading model micro"``), no step done;
* anything else: one step done, and the value goes to ``job.on_item`` on the
  main thread (e.g. one propagated slice).

Its return value goes to ``job.on_result``; ``job.on_finished`` runs last,
always (also after a failure or a cancel), on the main thread.

Jobs that write into the labels layer when they end (a propagation keeps its
slices in the preview until then: :data:`WRITING_KINDS`, or ``Job.writes``)
hold the layer's undo and redo while they run (:class:`HistoryHold`): undoing
the seed of a running propagation would otherwise leave the propagated object
on every other slice without its seed, and the write at the end would drop
the redo. Ctrl+Z then says what runs and how to stop it; it works again as
soon as the job's write (one undo step) is done.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Callable, Collection, Generator
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Protocol

from napari_sam.annotation.state import AnnotatorState, JobKind, JobStatus, Level, Message

__all__ = [
    "WRITING_KINDS",
    "Failure",
    "HistoryHold",
    "Job",
    "JobRunner",
    "JobSink",
    "Launch",
    "Progress",
    "Status",
    "caught",
    "reporting",
]

Steps = Callable[[threading.Event], Generator[Any, Any, Any]]

#: Kinds of job that write into the labels layer when they end.
WRITING_KINDS: tuple[JobKind, ...] = ("propagate",)


class Progress(NamedTuple):
    """A job's own progress count, yielded by its generator."""

    done: int
    total: int


class Status(NamedTuple):
    """What a job starts doing now (the status text), yielded by its generator."""

    text: str


@dataclass(frozen=True)
class Failure:
    """An exception raised in a worker, handed to the main thread as its return value."""

    error: BaseException


@dataclass(eq=False)
class Job:
    """One piece of long work and what to do with its results.

    Attributes
    ----------
    kind : ``"embed"``, ``"propagate"``, ``"everything"`` or ``"adapt"``
    title : what runs, for the user (``"propagating [1, 2]"``)
    steps : ``steps(cancel)`` -> generator (see the module docstring);
        ``cancel`` is a ``threading.Event`` set by :meth:`JobRunner.cancel`
    total : expected number of steps (0: unknown)
    background : speculative work (prefetching), shown less prominently
    on_item : ``on_item(value)`` for each yielded value that is neither a
        :class:`Progress` nor a ``str`` (main thread)
    on_result : ``on_result(value)`` with the generator's return value (main thread)
    on_error : ``on_error(exception)`` before the runner reports a failure
        (asynchronous jobs; blocking jobs raise to the caller)
    on_finished : ``on_finished()`` last, always (main thread)
    writes : True when the job writes into the labels layer when it ends (undo
        and redo of that layer are held while it runs); None: when its kind is
        in :data:`WRITING_KINDS`
    cancel : set when the job is cancelled
    """

    kind: JobKind
    title: str
    steps: Steps
    total: int = 0
    background: bool = False
    on_item: Callable[[Any], None] | None = None
    on_result: Callable[[Any], None] | None = None
    on_error: Callable[[BaseException], None] | None = None
    on_finished: Callable[[], None] | None = None
    writes: bool | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    id: int = -1

    @property
    def writes_labels(self) -> bool:
        """True when this job writes into the labels layer when it ends."""
        return self.kind in WRITING_KINDS if self.writes is None else bool(self.writes)


class JobSink(Protocol):
    """Where a launcher delivers a job's events, always on the main thread."""

    def yielded(self, job: Job, value: Any) -> None:
        """The generator yielded ``value``."""

    def returned(self, job: Job, value: Any) -> None:
        """The generator returned ``value``."""

    def failed(self, job: Job, error: BaseException) -> None:
        """The generator raised ``error``."""

    def finished(self, job: Job) -> None:
        """The work ended (after any of the above, or after a cancel)."""


#: ``launch(job, sink) -> handle``: runs ``job.steps(job.cancel)`` in a worker
#: thread, delivers its events to ``sink`` on the main thread, and returns a
#: handle with ``quit()`` (e.g. napari's worker).
Launch = Callable[[Job, JobSink], Any]


def caught(steps: Steps, cancel: threading.Event) -> Generator[Any, Any, Any]:
    """Run generator ``steps(cancel)``, returning any exception as a :class:`Failure`.

    superqt's ``GeneratorWorker`` swallows a ``RuntimeError`` raised in the
    generator (e.g. ``CheckpointError``) with a warning, emitting neither
    ``errored`` nor ``finished``; catching here makes every failure reach the
    main thread through ``returned``.
    """
    try:
        return (yield from steps(cancel))
    except Exception as err:  # reported as a message on the main thread
        return Failure(err)


def reporting(func: Callable[..., Any], poll: float = 0.1) -> Generator[Progress, Any, Any]:
    """Run ``func(progress=callback)`` in a helper thread, yielding its progress.

    For a blocking call that reports progress through a ``callback(done,
    total)`` (everything mode, adaptation) inside a job: yields
    :class:`Progress` whenever it changed (checked every ``poll`` seconds) and
    returns ``func``'s result, or raises its exception. Stopping ``func``
    early is up to ``func`` (e.g. a cancel event it checks).
    """
    lock = threading.Lock()
    state: dict[str, Any] = {"progress": None, "result": None, "error": None}

    def report(done: int, total: int) -> None:
        with lock:
            state["progress"] = Progress(int(done), int(total))

    def target() -> None:
        try:
            state["result"] = func(progress=report)
        except BaseException as err:  # re-raised in the generator's thread
            state["error"] = err

    helper = threading.Thread(target=target, name="napari-sam reporting", daemon=True)
    helper.start()
    last = None
    while True:
        helper.join(poll)
        alive = helper.is_alive()
        with lock:
            current = state["progress"]
        if current is not None and current != last:
            last = current
            yield current
        if not alive:
            break
    if state["error"] is not None:
        raise state["error"]
    return state["result"]


class JobRunner:
    """Runs jobs blocking or in workers, and mirrors them in the state.

    Parameters
    ----------
    state : the :class:`~napari_sam.annotation.state.AnnotatorState` whose
        ``jobs`` and ``message`` this runner updates
    launch : starts a job in a worker thread (see :data:`Launch`); None:
        only blocking runs
    """

    def __init__(self, state: AnnotatorState, launch: Launch | None = None) -> None:
        self.state = state
        self._launch = launch
        self._ids = itertools.count(1)
        self._active: dict[int, Job] = {}
        self._handles: dict[int, Any] = {}
        self._posted: deque[tuple[Level, str]] = deque()
        self.closed = False

    # ------------------------------------------------------------------ run
    def run(self, job: Job, *, blocking: bool) -> Any:
        """Run ``job``.

        Blocking: in this thread; returns the generator's return value (after
        ``on_result``), and raises its exception (after ``on_finished``). Off
        the main thread (e.g. inside another job) it just runs the generator:
        the state and the callbacks belong to the main thread.
        Otherwise: in a worker; returns the launcher's handle at once.
        """
        if blocking and threading.current_thread() is not threading.main_thread():
            gen = job.steps(job.cancel)
            while True:
                try:
                    next(gen)
                except StopIteration as stop:
                    return stop.value
        job.id = next(self._ids)
        self._active[job.id] = job
        status = JobStatus(job.id, job.kind, job.title, total=max(0, int(job.total)),
                           background=job.background)
        self.state.jobs = (*self.state.jobs, status)
        if blocking:
            return self._run_here(job)
        if self._launch is None:
            self.finished(job)
            raise RuntimeError(f"{job.title}: no worker launcher; run it with blocking=True")
        handle = self._launch(job, self)
        if job.id in self._active:  # a synchronous launcher may be done already
            self._handles[job.id] = handle
        return handle

    def _run_here(self, job: Job) -> Any:
        try:
            gen = job.steps(job.cancel)
            while True:
                try:
                    value = next(gen)
                except StopIteration as stop:
                    result = stop.value
                    break
                self.yielded(job, value)
            self.returned(job, result)
            return result
        finally:
            self.finished(job)

    def handle(self, kind: JobKind) -> Any:
        """The worker handle of the oldest running job of ``kind``, or None."""
        for job_id, job in self._active.items():
            if job.kind == kind:
                return self._handles.get(job_id)
        return None

    def running(self, kind: JobKind) -> bool:
        """True while a job of ``kind`` runs."""
        return any(job.kind == kind for job in self._active.values())

    def titles(self, kind: JobKind) -> list[str]:
        """What the running jobs of ``kind`` do (their titles), for messages."""
        return [job.title for job in self._active.values() if job.kind == kind]

    def writing(self) -> list[Job]:
        """The running jobs that write into the labels layer when they end."""
        return [job for job in self._active.values() if job.writes_labels]

    def cancel(self, kinds: Collection[JobKind] | None = None) -> bool:
        """Ask the running jobs (of ``kinds``) to stop; True if there was any.

        Sets each job's ``cancel`` event and quits its worker: a generator
        stops at its next yield, a call that checks the event stops sooner.
        """
        had = False
        for job_id, job in list(self._active.items()):
            if kinds is not None and job.kind not in kinds:
                continue
            had = True
            job.cancel.set()
            handle = self._handles.get(job_id)
            if handle is not None:
                handle.quit()
        return had

    def close(self) -> None:
        """Cancel every job; from now on results and messages are dropped
        (``on_finished`` still runs)."""
        self.cancel()
        self.closed = True
        self._posted.clear()

    # ------------------------------------------------------------- messages
    def post(self, level: Level, text: str) -> None:
        """Say ``text`` to the user; from a worker thread it waits for the main thread."""
        if threading.current_thread() is threading.main_thread():
            self._flush()
            if not self.closed:
                self.state.message = Message(level, text)
        else:
            self._posted.append((level, text))

    def _flush(self) -> None:
        while self._posted:
            level, text = self._posted.popleft()
            if not self.closed:
                self.state.message = Message(level, text)

    # ----------------------------------------------------- sink (main thread)
    def _update(self, job: Job, **changes: Any) -> None:
        self.state.jobs = tuple(
            replace(s, **changes) if s.id == job.id else s for s in self.state.jobs
        )

    def yielded(self, job: Job, value: Any) -> None:
        """A value of ``job``'s generator (see the module docstring)."""
        self._flush()
        current = next((s for s in self.state.jobs if s.id == job.id), None)
        if current is None:
            return
        if isinstance(value, Progress):
            self._update(job, done=value.done, total=value.total)
            return
        if isinstance(value, Status):
            self._update(job, text=value.text)
            return
        if isinstance(value, str):
            self._update(job, done=current.done + 1, text=value)
            return
        self._update(job, done=current.done + 1)
        if job.on_item is not None and not self.closed:
            job.on_item(value)

    def returned(self, job: Job, value: Any) -> None:
        """``job``'s generator returned ``value``."""
        self._flush()
        if job.on_result is not None and not self.closed:
            job.on_result(value)

    def failed(self, job: Job, error: BaseException) -> None:
        """``job``'s generator raised ``error`` (asynchronous jobs)."""
        self._flush()
        if self.closed:
            return
        if job.on_error is not None:
            job.on_error(error)
        if type(error).__name__ == "Cancelled":
            self.post("info", f"{job.title} cancelled")
        else:
            self.post("error", f"{job.title} failed: {type(error).__name__}: {error}")

    def finished(self, job: Job) -> None:
        """``job`` ended: ``on_finished``, then it leaves the state."""
        self._flush()
        self._active.pop(job.id, None)
        self._handles.pop(job.id, None)
        try:
            if job.on_finished is not None:
                job.on_finished()
        finally:
            self.state.jobs = tuple(s for s in self.state.jobs if s.id != job.id)


class HistoryHold:
    """Holds undo and redo of a Labels layer while a job will write into it.

    While :meth:`JobRunner.writing` is not empty (checked whenever the
    state's ``jobs`` change; a job leaves them only after its ``on_finished``,
    i.e. after its write), ``layer.undo`` and ``layer.redo`` are replaced on
    the layer instance, so napari's Ctrl+Z, the annotator's keys and scripts
    calling ``labels_layer.undo()`` all get the same answer: nothing changes,
    and a warning names the job and the way out. The layer's own methods are
    back as soon as the last such job is done.

    Parameters
    ----------
    state : the annotator's :class:`~napari_sam.annotation.state.AnnotatorState`
    runner : its :class:`JobRunner`
    layer : the Labels layer (duck-typed: ``undo``, ``redo``, ``name``)
    say : ``say(text)``: a warning for the user

    Attributes
    ----------
    active : True while undo and redo are held
    refused : how many undo/redo calls were held so far
    """

    def __init__(self, state: AnnotatorState, runner: JobRunner, layer: Any,
                 say: Callable[[str], None]) -> None:
        self.runner, self.layer, self._say = runner, layer, say
        self.active = False
        self.refused = 0
        self._titles: tuple[str, ...] = ()
        self._undo = lambda: self._refuse("undo")
        self._redo = lambda: self._refuse("redo")
        state.events.jobs.connect(self.update)

    def update(self, *args: Any) -> None:
        """Hold or release, after the running jobs changed."""
        writing = self.runner.writing()
        if writing:
            self._titles = tuple(job.title for job in writing)
        if writing and not self.active:
            self.active = True
            self.layer.undo, self.layer.redo = self._undo, self._redo
        elif not writing and self.active:
            self.active = False
            for name, mine in (("undo", self._undo), ("redo", self._redo)):
                if vars(self.layer).get(name) is mine:  # someone else's stays
                    delattr(self.layer, name)

    def _refuse(self, what: str) -> None:
        self.refused += 1
        running = " and ".join(self._titles) or "a write"
        name = getattr(self.layer, "name", "labels")
        self._say(f"{what} of {name!r} waits: {running} writes into it when it ends (one undo "
                  f"step); {what} works again then. To {what} now, press Cancel first (a "
                  "propagation still writes what it computed, which Ctrl+Z then removes)")
