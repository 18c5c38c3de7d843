"""Make ``docs/review.png`` and ``docs/find_similar.png`` (issue 19 in the dock widget).

Run under a display (or ``xvfb-run -a``)::

    xvfb-run -a python docs/make_review_screenshots.py            # bundled micro model
    xvfb-run -a python docs/make_review_screenshots.py --oracle   # ground-truth stand-in

* ``review.png``: a generated time-lapse (``benchmarks/tracking.py``,
  ``moving_nuclei``: 20 frames of 128 x 128 px, seed 1, nuclei drifting about
  3.4 px per frame); every nucleus inside frame 0 clicked there and committed,
  then tracked along t with the bundled ``micro`` model ("along: t (time)");
  the dock's "propagation review" table lists the doubtful frames, and "Next
  doubtful" has moved the viewer to the first of them.
* ``find_similar.png``: a generated 256 x 256 scene of nuclei plus small bright
  cells and debris (``benchmarks/find_similar.py``, seed 11); three nuclei
  clicked and committed (the exemplars: outlined in the labels layer), then
  "Find all like this": the candidates scoring >= 0.5 filled in the review
  layer (the bright cells and debris are left out), the similarity slider
  under the everything buttons.

With ``--oracle`` the masks come from ``tests/stand_ins.py`` (reproducible
without the model; every propagated slice is then exact and nothing is doubtful).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _predictor(oracle: bool, image: np.ndarray, truth: np.ndarray):
    if not oracle:
        from napari_sam.predictor import Predictor

        return Predictor("micro")
    sys.path.insert(0, str(ROOT / "tests"))
    from stand_ins import OraclePredictor

    return OraclePredictor(truth, image)


def _settle(viewer, reset: bool = True) -> None:
    from qtpy.QtWidgets import QApplication

    for _ in range(20):
        QApplication.processEvents()
    if reset:
        viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()


def _open(viewer, predictor):
    from napari_sam._qt.annotator_widget import AnnotatorWidget

    widget = AnnotatorWidget(viewer, predictor=predictor)
    viewer.window.add_dock_widget(widget, name="SAM annotator", area="right")
    ann = widget.annotator
    ann.auto_segment = False
    widget.auto_check.setChecked(False)
    return widget, ann


def review(out: Path, oracle: bool) -> None:
    import napari

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from tracking import moving_nuclei

    movie, truth = moving_nuclei(20, (192, 192), seed=1, n_nuclei=24, drift=(1.5, 3.0),
                                 jitter=1.0)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 1250)
    viewer.add_image(movie, name="moving nuclei", axis_labels=("t", "y", "x"))
    widget, ann = _open(viewer, _predictor(oracle, movie, truth))
    assert widget.axis_menu.currentText() == "t (time)"
    viewer.dims.set_current_step(0, 0)
    first = truth[0]
    inner = [int(i) for i in np.unique(first[2:-2, 2:-2]) if i
             and not np.isin(i, np.concatenate([first[:2].ravel(), first[-2:].ravel(),
                                                first[:, :2].ravel(), first[:, -2:].ravel()]))]
    widget.batch_check.setChecked(True)
    for i in inner:
        ann.add_point((0, *np.argwhere(first == i).mean(axis=0)))
    ann.segment(batch=True)
    ids = ann.commit()
    written = ann.propagate(label_id=ids, axis="t")
    review = ann.review
    frames = sum(len(v) for v in written.values())
    print(f"tracked {len(ids)} nuclei, {frames} object-frames; {len(review.slices)} doubtful "
          f"frame(s) of {review.n_slices}: "
          f"{[(d.slice_index, d.object_id, d.reason) for d in review.doubts]}")
    _score_review(ann.labels_layer.data, truth, dict(zip(ids, inner)), review)
    ann.next_doubtful()
    viewer.layers.selection.active = ann.points_layer
    _settle(viewer)
    viewer.screenshot(path=str(out), canvas_only=False, flash=False)
    print(f"wrote {out}")
    widget.close_annotator()
    viewer.close()


def _score_review(labels: np.ndarray, truth: np.ndarray, true_of: dict, review) -> None:
    """Print, for each track that goes wrong (IoU < 0.5 with its nucleus on a frame
    where that is visible, >= 30 px), its first wrong frame and the frames the review
    lists for it."""
    wrong: dict[int, list[int]] = {}
    for lid, tid in true_of.items():
        for t in range(len(truth)):
            true = truth[t] == tid
            if true.sum() < 30:
                continue
            mine = labels[t] == lid
            if np.count_nonzero(mine & true) / max(1, np.count_nonzero(mine | true)) < 0.5:
                wrong.setdefault(lid, []).append(t)
    rows = len(review.doubts)
    print(f"review: {len(review.slices)} frame(s) listed ({rows} rows); tracks going wrong:")
    for lid, frames in wrong.items():
        listed = sorted(d.slice_index[0] for d in review.doubts if d.object_id == lid)
        print(f"  label {lid}: wrong on {len(frames)} frames from t={frames[0]}; listed at "
              f"{listed}")


def find_similar(out: Path, oracle: bool) -> None:
    import napari

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from find_similar import scene

    image, nuclei, cells = scene(11, 256, 12, 25)
    truth = np.where(nuclei > 0, nuclei, cells).astype(np.uint32)
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1500, 1250)
    layer = viewer.add_image(image, name="nuclei and distractors", colormap="gray")
    layer.contrast_limits = tuple(np.percentile(image, (0.5, 99.8)))
    widget, ann = _open(viewer, _predictor(oracle, image, truth))
    ids = [int(i) for i in np.unique(nuclei) if i]
    areas = {i: int((nuclei == i).sum()) for i in ids}
    chosen = sorted(ids, key=lambda i: areas[i])[len(ids) // 4:: max(1, len(ids) // 3)][:3]
    widget.batch_check.setChecked(True)
    for i in chosen:
        ann.add_point(tuple(np.argwhere(nuclei == i).mean(axis=0)))
    ann.segment(batch=True)
    exemplars = ann.commit()
    res = ann.find_similar(exemplars)
    widget.similar_panel.slider.setValue(50)
    n = int((res.scores >= 0.5).sum())
    print(f"exemplars {exemplars}: {n} of {len(res.candidates)} candidates >= 0.5")
    ann.labels_layer.contour = 2  # the exemplars as outlines over the candidates
    viewer.layers.move(viewer.layers.index(ann.labels_layer), len(viewer.layers) - 3)
    viewer.layers.selection.active = ann.points_layer
    _settle(viewer)
    viewer.screenshot(path=str(out), canvas_only=False, flash=False)
    print(f"wrote {out}")
    widget.close_annotator()
    viewer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--oracle", action="store_true",
                        help="ground-truth stand-in instead of the bundled micro model")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    parser.add_argument("--only", choices=("review", "find_similar"), default=None)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.only in (None, "review"):
        review(out / "review.png", args.oracle)
    if args.only in (None, "find_similar"):
        find_similar(out / "find_similar.png", args.oracle)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
