"""Make the dock widget's screenshots of docs/napari.md: a long job, and an empty mask.

Run under a display (or ``xvfb-run -a``)::

    xvfb-run -a python docs/make_widget_screenshots.py     # writes docs/widget_*.png

* ``docs/widget_long_job.png``: a propagation through the sample nuclei stack
  half-way: the job line (what runs, where it started), the progress bar with
  Cancel, and on slice 10 the object arriving in the preview (yellow).
* ``docs/widget_empty_mask.png``: a click on background: the status line says
  that no object was found there and what to try; nothing can be committed.

The masks come from a ground-truth stand-in predictor (``tests/stand_ins.py``)
slowed to 0.6 s per embedding, so the pictures are reproducible offline; they
show the widget, not a model's accuracy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _slow_oracle(truth: np.ndarray, image: np.ndarray, delay: float):
    sys.path.insert(0, str(ROOT / "tests"))
    from stand_ins import OraclePredictor

    class SlowOracle(OraclePredictor):
        def embed(self, image, *, contrast_limits=None):
            time.sleep(delay)  # about what the bundled model takes per slice on a laptop
            return super().embed(image, contrast_limits=contrast_limits)

    return SlowOracle(truth, image)


def _settle(app, seconds: float = 0.3) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def _wait(app, condition, timeout: float = 60.0) -> None:
    end = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > end:
            raise TimeoutError("the widget did not reach the state to photograph")
        app.processEvents()
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs"), help="folder for the PNG files")
    parser.add_argument("--delay", type=float, default=0.6, help="seconds per embedding")
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_sam._qt.annotator_widget import AnnotatorWidget
    from napari_sam._sample_data import make_sample_nuclei

    out = Path(args.out)
    (image, image_kw, _), (truth, truth_kw, _) = make_sample_nuclei()
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 1150)
    viewer.add_image(image, **image_kw)
    viewer.add_labels(truth, **truth_kw)
    widget = AnnotatorWidget(viewer, predictor=_slow_oracle(truth, image, args.delay))
    viewer.window.add_dock_widget(widget, name="SAM annotator", area="right")
    app = QApplication.instance()
    ann = widget.annotator
    ann.prefetch = False
    z = 12
    viewer.dims.set_current_step(0, z)
    _settle(app)
    viewer.reset_view()
    _wait(app, lambda: not ann.busy)

    # 1. a propagation half-way
    ids = [i for i in np.unique(truth[z]) if i]
    sizes = {i: int((truth == i).sum()) for i in ids}
    target = max(ids, key=sizes.get)  # a big nucleus: many slices to go
    centre = np.argwhere(truth[z] == target).mean(axis=0)
    ann.add_point((z, *centre))
    _wait(app, lambda: ann.preview is not None and not ann.busy)
    widget.buttons["commit"].click()
    widget.buttons["propagate"].click()
    viewer.dims.set_current_step(0, z - 2)  # watch a slice below grow in the preview
    _wait(app, lambda: ann.busy and ann.preview_layer.data[z - 2].any())
    _settle(app, 0.2)
    viewer.screenshot(path=str(out / "widget_long_job.png"), canvas_only=False, flash=False)
    print(f"wrote {out / 'widget_long_job.png'}: {widget.jobs.job.text()!r} "
          f"{widget.jobs.progress.value()}/{widget.jobs.progress.maximum()}")
    _wait(app, lambda: not ann.busy, timeout=120)
    print(f"then: {widget.status.text()!r}")
    viewer.dims.set_current_step(0, z)
    _wait(app, lambda: not ann.busy)

    # 2. a click on background: "no object found"
    background = np.argwhere(truth[z] == 0)
    row, col = background[len(background) // 3]
    ann.add_point((z, row, col))
    _wait(app, lambda: ann.preview is not None and not ann.busy)
    widget.buttons["commit"].click()  # refused, and says why
    _settle(app)
    viewer.screenshot(path=str(out / "widget_empty_mask.png"), canvas_only=False, flash=False)
    print(f"wrote {out / 'widget_empty_mask.png'}: {widget.status.text()!r}")

    widget.close_annotator()
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
