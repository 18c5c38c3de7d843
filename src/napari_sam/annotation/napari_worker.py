"""napari glue of the job runner: workers (napari's ``thread_worker``) and notifications.

:func:`launch` is the :data:`~napari_sam.annotation.jobs.Launch` of the
annotator's :class:`~napari_sam.annotation.jobs.JobRunner`. It imports
``napari.qt.threading`` when called (never at import), runs the job's
generator in a ``GeneratorWorker`` with a progress bar in napari's activity
dock, and delivers every event to the runner on the main thread (Qt queued
signals). Needs a running Qt event loop for the results to arrive.
:func:`pump_events` lets Qt repaint in the middle of a long write on the
main thread (the labels writer's ``pause``).
"""

from __future__ import annotations

import logging
import threading
import time
from functools import partial
from typing import Any

from napari_sam.annotation.jobs import Failure, Job, JobSink, Progress, Status, caught

__all__ = ["launch", "notify", "pump_events"]

logger = logging.getLogger("napari_sam")


def notify(viewer: Any, message: Any) -> None:
    """Show a :class:`~napari_sam.annotation.state.Message`: a ``"status"`` in the viewer's
    status bar, anything louder as a napari notification (and in the log)."""
    if message.level == "status":
        viewer.status = message.text
        return
    from napari.utils.notifications import show_error, show_info, show_warning

    getattr(logger, message.level)(message.text)
    {"info": show_info, "warning": show_warning, "error": show_error}[message.level](message.text)


#: Seconds of main-thread work between two :func:`pump_events` that do something.
PUMP_INTERVAL = 0.02
_last_pump = [0.0]


def pump_events() -> None:
    """Let Qt repaint and run its timers and queued signals now, but no user input.

    Called between the slices of a long write on the main thread (the
    labels writer's ``pause``): the GUI keeps drawing, and a click or a key
    press waits (Qt keeps it) until the write is done, so no paint stroke or
    undo can come between the slices of one undo step. At most every
    :data:`PUMP_INTERVAL` seconds; nothing without a Qt application or off the
    main thread.
    """
    now = time.perf_counter()
    if now - _last_pump[0] < PUMP_INTERVAL:
        return
    if threading.current_thread() is not threading.main_thread():
        return
    from qtpy.QtCore import QCoreApplication, QEventLoop

    app = QCoreApplication.instance()
    if app is None:
        return
    app.processEvents(QEventLoop.ProcessEventsFlag.ExcludeUserInputEvents)
    _last_pump[0] = time.perf_counter()


def launch(job: Job, sink: JobSink) -> Any:
    """Start ``job`` in a napari worker; returns the worker (``quit()``, ``finished``...)."""
    from napari.qt.threading import create_worker

    worker = create_worker(caught, job.steps, job.cancel,
                           _progress={"total": job.total, "desc": f"SAM: {job.title}"},
                           _ignore_errors=True)
    pbar = getattr(worker, "pbar", None)

    def yielded(value: Any) -> None:
        if isinstance(value, Progress) and pbar is not None:  # the job's own count
            pbar.total = value.total
            pbar.update(value.done - pbar.n)
        elif isinstance(value, Status) and pbar is not None and pbar.n > 0:
            pbar.update(-1)  # napari counted the yield as a step; a status is none
        sink.yielded(job, value)

    def returned(value: Any) -> None:
        if isinstance(value, Failure):
            sink.failed(job, value.error)
        else:
            sink.returned(job, value)

    worker.yielded.connect(yielded)
    worker.returned.connect(returned)
    worker.errored.connect(partial(sink.failed, job))
    worker.finished.connect(partial(sink.finished, job))
    worker.start()
    return worker
