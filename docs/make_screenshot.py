"""Make ``docs/screenshot.png``: the SAM annotator on the sample nuclei stack.

Run under a display (or ``xvfb-run -a``)::

    xvfb-run -a python docs/make_screenshot.py            # offline, deterministic
    xvfb-run -a python docs/make_screenshot.py --model vit_b_lm

Without ``--model`` the masks come from a ground-truth stand-in predictor
(``tests/stand_ins.py``: it returns the true object a prompt selects), so the
picture is reproducible without downloading weights; it shows the workflow and
the UI, not a model's accuracy. With ``--model`` a real SAM model is used.

What the picture shows: slice 16 of the synthetic stack with several committed
nuclei, one of them propagated through z, and an uncommitted preview of the
object under the last positive point; the dock widget on the right.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _predictor(model: str | None, image: np.ndarray, truth: np.ndarray):
    if model:
        from napari_sam.predictor import Predictor

        return Predictor(model)
    sys.path.insert(0, str(ROOT / "tests"))
    from stand_ins import OraclePredictor

    return OraclePredictor(truth, image)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="registry name or checkpoint path")
    parser.add_argument("--out", default=str(ROOT / "docs" / "screenshot.png"))
    args = parser.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_sam._qt.annotator_widget import AnnotatorWidget
    from napari_sam._sample_data import make_sample_nuclei

    (image_data, image_kw, _), (truth, _, _) = make_sample_nuclei()
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1400, 1100)
    viewer.add_image(image_data, **image_kw)
    widget = AnnotatorWidget(viewer, predictor=_predictor(args.model, image_data, truth))
    viewer.window.add_dock_widget(widget, name="SAM annotator", area="right")
    ann = widget.annotator
    ann.auto_segment = False

    z = 16
    viewer.dims.set_current_step(0, z)
    ids = [i for i in np.unique(truth[z]) if i]
    centres = {i: np.argwhere(truth[z] == i).mean(axis=0) for i in ids}
    for i in ids[:-1]:  # commit all but one
        ann.add_point((z, *centres[i]))
        ann.segment()
        ann.commit()
    ann.propagate(label_id=int(ann.labels_layer.data[(z, *np.round(centres[ids[0]]).astype(int))]))
    ann.add_point((z, *centres[ids[-1]]))  # the last one stays an uncommitted preview
    ann.segment()
    viewer.layers.selection.active = ann.points_layer
    for _ in range(20):  # let the window settle to its final canvas size
        QApplication.processEvents()
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
    viewer.screenshot(path=args.out, canvas_only=False, flash=False)
    print(f"wrote {args.out}")
    widget.close_annotator()
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
