"""The longest main-thread stall of the annotator's big label writes (issue 16, item 8).

A ``QTimer`` heartbeat ticks every 5 ms on the GUI thread while the annotator
(in a real ``napari.Viewer``, Qt event loop running) does one of:

* ``propagation``: an asynchronous propagation of ``--objects`` objects through
  every slice of a ``(Z, Y, X)`` stack (default 60x1024x1024). The
  propagation itself is a stand-in (each slice's masks are the seed's disks,
  shifted, after ``--slice-ms``, default 20 ms: a fast decoder), so the
  measurement is the main thread's part: showing each slice as it arrives,
  and writing them all at the end (one undo step).
* ``everything``: "Commit everything" of a whole-stack result with
  ``--objects`` 3D objects (ellipsoids spread over the stack), as the widget's
  button runs it.

The longest gap between two ticks (and from the start to the first tick, the
last tick to the end) is the longest time the GUI could not repaint or
answer. Reported: the longest gap over the whole action, and over its end
(from the last propagated slice shown to done).

Run (under Xvfb, or ``QT_QPA_PLATFORM=offscreen``)::

    OMP_NUM_THREADS=1 xvfb-run -a .venv/bin/python benchmarks/main_thread_stalls.py
    ... --shape 10 512 512 --repeats 3

Results: ``docs/reliability.md`` ("Main-thread stalls").
"""

from __future__ import annotations

import argparse
import itertools
import platform
import sys
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Heartbeat:
    """Ticks of a 5 ms ``QTimer`` on the GUI thread; ``longest(t0, t1)`` is the largest gap."""

    def __init__(self, interval_ms: int = 5) -> None:
        from qtpy.QtCore import Qt, QTimer

        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def start(self) -> None:
        self.ticks.clear()
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def longest(self, t0: float, t1: float) -> float:
        """Largest gap between ticks in ``[t0, t1]`` (edges included), seconds."""
        inside = [t for t in self.ticks if t0 <= t <= t1]
        points = [t0, *inside, t1]
        return max(b - a for a, b in itertools.pairwise(points))


def spin_until(predicate, timeout: float = 600.0) -> None:
    """Run the Qt event loop until ``predicate()`` is true."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    check = QTimer()
    check.setInterval(2)
    check.timeout.connect(lambda: loop.quit() if predicate() else None)
    check.start()
    end = time.perf_counter() + timeout
    while not predicate():
        if time.perf_counter() > end:
            raise TimeoutError("the annotator did not finish")
        loop.exec()
    check.stop()


class StandIn:
    """A predictor that embeds instantly (the propagation is a stand-in too)."""

    def embed(self, image, *, contrast_limits=None):
        return types.SimpleNamespace(original_size=tuple(np.shape(image)[:2]),
                                     contrast_limits=contrast_limits)

    def predict(self, *args, **kwargs):  # pragma: no cover - not used
        raise NotImplementedError


def disks(shape, n: int, radius: int, z: int = 0) -> list[np.ndarray]:
    h, w = shape
    rr, cc = np.ogrid[:h, :w]
    out = []
    for k in range(n):
        cy = h * (k + 1) / (n + 1)
        cx = w / 2 + (z % 7) * 3
        out.append((rr - cy) ** 2 + (cc - cx) ** 2 <= radius ** 2)
    return out


#: Seconds the stand-in propagation spends per slice (``--slice-ms``).
SLICE_SECONDS = [0.02]


def fake_propagate_iter(stack, seeds, predictor, *, direction="both", z_range=None,
                        contrast_limits=None, embeddings=None, **options):
    """Every slice, the seeds shifted by one column per slice, after ``SLICE_SECONDS``
    (a fast decoder: the worker stays fast, slices arrive spaced as in a real run)."""
    z0 = next(iter(next(iter(seeds.values()))))
    n = stack.shape[0]
    for z in [*range(z0 + 1, n), *range(z0 - 1, -1, -1)]:
        time.sleep(SLICE_SECONDS[0])
        masks = {oid: np.roll(m[z0], z - z0, axis=1) for oid, m in seeds.items()}
        yield types.SimpleNamespace(z=z, masks=masks, records={})


def everything_result(shape, n: int) -> np.ndarray:
    z, h, w = shape
    out = np.zeros(shape, dtype=np.uint32)
    rng = np.random.default_rng(0)
    zz, yy, xx = np.ogrid[:z, :h, :w]
    for k in range(1, n + 1):
        c = rng.uniform([0, 0.1 * h, 0.1 * w], [z, 0.9 * h, 0.9 * w])
        r = rng.uniform([z / 6, h / 20, w / 20], [z / 3, h / 10, w / 10])
        inside = (((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2
                  + ((xx - c[2]) / r[2]) ** 2) <= 1
        out[inside & (out == 0)] = k
    return out


def measure(kind: str, shape, objects: int) -> dict:
    import napari

    import napari_sam.propagation as propagation
    from napari_sam.annotator import Annotator

    viewer = napari.Viewer(show=False)
    image = viewer.add_image(np.zeros(shape, dtype=np.uint8) + 7, contrast_limits=(0, 255))
    ann = Annotator(viewer, image, predictor=StandIn(), store=None)
    beat = Heartbeat()
    result: dict = {}
    try:
        viewer.dims.set_current_step(0, 1)  # napari's first worker (progress bar) outside the clock
        ann.embed_in_background()
        spin_until(lambda: not ann.busy)
        if kind == "propagation":
            z0 = shape[0] // 2
            viewer.dims.set_current_step(0, z0)
            for k, mask in enumerate(disks(shape[1:], objects, min(shape[1:]) // 10), 1):
                ann.labels_layer.data[z0][mask] = k
            last_item = [0.0]
            ann.events.propagation_step.connect(
                lambda e: last_item.__setitem__(0, time.perf_counter()))
            original = propagation.propagate_iter
            propagation.propagate_iter = fake_propagate_iter
            try:
                ann.embedding((z0,))  # the intensity range is measured before the clock
                beat.start()
                t0 = time.perf_counter()
                ann.propagate(label_id=list(range(1, objects + 1)), blocking=False)
                spin_until(lambda: not ann.busy)
                t1 = time.perf_counter()
            finally:
                propagation.propagate_iter = original
            beat.stop()
            written = int((ann.labels_layer.data > 0).any((1, 2)).sum())
            result = {"whole": beat.longest(t0, t1), "end": beat.longest(last_item[0], t1),
                      "total": t1 - t0, "slices": written}
        else:
            found = everything_result(shape, objects)
            ann.stack.show_everything((), found, stack=True)
            done = []
            beat.start()
            t0 = time.perf_counter()
            from qtpy.QtCore import QTimer

            from napari_sam.annotation.actions import Choices, action

            button = action("commit_everything")  # what the widget's button runs
            QTimer.singleShot(0, lambda: done.append(button.run(ann, Choices())))
            spin_until(lambda: bool(done) and not ann.busy and ann.state.everything is None)
            t1 = time.perf_counter()
            beat.stop()
            objects = len(np.unique(ann.labels_layer.data)) - 1
            result = {"whole": beat.longest(t0, t1), "end": beat.longest(t0, t1),
                      "total": t1 - t0, "objects": objects}
        ann.labels_layer.undo()  # one step restores the labels
        assert ann.labels_layer.data.max() == (objects if kind == "propagation" else 0)
    finally:
        ann.close(remove_layers=True)
        viewer.close()
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(60, 1024, 1024))
    parser.add_argument("--objects", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kind", choices=("propagation", "everything", "both"), default="both")
    parser.add_argument("--slice-ms", type=float, default=20.0,
                        help="time the stand-in propagation takes per slice (its worker)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="unmeasured runs first (napari's first worker builds its widgets)")
    args = parser.parse_args(argv)
    SLICE_SECONDS[0] = args.slice_ms / 1000
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])  # noqa: F841
    import os

    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', '-')}; load {os.getloadavg()[0]:.1f}; "
          f"shape {tuple(args.shape)}, {args.objects} object(s), {args.slice_ms:g} ms per "
          "propagated slice")
    kinds = ("propagation", "everything") if args.kind == "both" else (args.kind,)
    for kind in kinds:
        for _ in range(args.warmup):
            measure(kind, (4, 64, 64), 1)
        rows = [measure(kind, tuple(args.shape), args.objects) for _ in range(args.repeats)]
        whole = [r["whole"] for r in rows]
        end = [r["end"] for r in rows]
        total = [r["total"] for r in rows]
        print(f"{kind}: longest stall {max(whole) * 1000:.0f} ms (median of runs "
              f"{np.median(whole) * 1000:.0f} ms); at the end {max(end) * 1000:.0f} ms; "
              f"action {np.median(total):.2f} s; {rows[0]}")


if __name__ == "__main__":
    main()
