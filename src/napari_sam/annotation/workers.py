"""Generator work that runs off the GUI thread, with failures handed back as values.

Qt-free. The annotator starts workers with ``napari.qt.threading.create_worker``
on :func:`caught`; this module only defines the contract.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["Failure", "StartWorker", "caught", "reporting", "unless_failed"]


@dataclass(frozen=True)
class Failure:
    """An exception raised in a worker, handed to the main thread as its return value."""

    error: BaseException


def caught(func: Callable[..., Iterator[Any]], *args: Any) -> Iterator[Any]:
    """Run generator ``func(*args)``, returning any exception as a :class:`Failure`.

    superqt's ``GeneratorWorker`` swallows a ``RuntimeError`` raised in the
    generator (e.g. ``CheckpointError``) with a warning, emitting neither
    ``errored`` nor ``finished``; catching here makes every failure reach the
    main thread through ``returned``.
    """
    try:
        return (yield from func(*args))
    except Exception as err:  # reported as a notification on the main thread
        return Failure(err)


def reporting(func: Callable[..., Any], poll: float = 0.1) -> Iterator[tuple[int, int]]:
    """Run ``func(progress=callback)`` in a helper thread, yielding its progress.

    For a blocking call that reports progress through a ``callback(done,
    total)`` (everything mode) inside a generator worker: yields ``(done,
    total)`` whenever it changed (checked every ``poll`` seconds) and returns
    ``func``'s result, or raises its exception. Stopping ``func`` early is up
    to ``func`` (e.g. a cancel event it checks).
    """
    import threading

    lock = threading.Lock()
    state: dict[str, Any] = {"progress": None, "result": None, "error": None}

    def report(done: int, total: int) -> None:
        with lock:
            state["progress"] = (int(done), int(total))

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


def unless_failed(
    on_result: Callable[[Any], None], on_error: Callable[[BaseException], None], result: Any
) -> None:
    """Pass a worker's return value to ``on_result``, or a :class:`Failure` to ``on_error``."""
    if isinstance(result, Failure):
        on_error(result.error)
    else:
        on_result(result)


class StartWorker(Protocol):
    """Starts ``steps(*args)`` (a generator function) in a worker thread.

    Callbacks run on the main thread: ``on_yield(value)`` for each yielded
    value, ``on_result(value)`` with the return value, ``on_error(exception)``
    on failure, ``on_finished()`` always, last. Returns a handle with ``quit()``.
    """

    def __call__(
        self,
        steps: Callable[..., Iterator[Any]],
        *args: Any,
        desc: str,
        total: int,
        on_result: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_yield: Callable[[Any], None] | None = None,
        on_finished: Callable[[], None] | None = None,
    ) -> Any:
        """Start the work; see the class docstring."""
