"""``napari_sam.annotation.jobs.reporting``: a blocking call's progress as a generator."""

from __future__ import annotations

import threading

import pytest

from napari_sam.annotation.jobs import reporting


def _drain(gen):
    yielded = []
    while True:
        try:
            yielded.append(next(gen))
        except StopIteration as stop:
            return yielded, stop.value


def test_reporting_yields_progress_and_returns_the_result():
    steps = threading.Event()

    def work(progress):
        for i in range(1, 4):
            progress(i, 3)
            threading.Event().wait(0.03)  # let the generator see each step
        steps.set()
        return "labels"

    yielded, result = _drain(reporting(work, poll=0.01))
    assert result == "labels" and steps.is_set()
    assert yielded[-1] == (3, 3)
    assert yielded == sorted(set(yielded))  # only changes, in order
    assert all(total == 3 for _, total in yielded)


def test_reporting_reraises_the_calls_error_in_the_generator():
    def work(progress):
        progress(1, 2)
        raise ValueError("bad slice")

    with pytest.raises(ValueError, match="bad slice"):
        _drain(reporting(work, poll=0.01))


def test_reporting_without_progress_returns():
    yielded, result = _drain(reporting(lambda progress: 7, poll=0.01))
    assert (yielded, result) == ([], 7)
