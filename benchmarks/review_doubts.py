"""What the review of a propagation lists, and whether it holds the tracks that go wrong.

Runs with the bundled ``micro`` model, its defaults: every object lying wholly
inside the seed slice (more than 60 px; tracking: every nucleus inside frame 0)
is clicked at its centre there (multimask, best mask, its clicked part), then
all are propagated together, through z from the middle slice of the sample
stack and of two generated stacks (``nuclei_stack`` seeds 5, 6), or along t
from frame 0 of four generated time-lapses (``benchmarks/tracking.py``
``moving_nuclei``, 20 frames of 192 px, seeds 1-2 fast, 3-4 slow). Every
update goes through :class:`napari_sam.annotation.review.PropagationReview`
as in the annotator (records and masks).

A direction of an object "goes wrong" at the first slice, going away from the
seed, where its mask has IoU < 0.5 with its object while that is visible
(>= 30 px) or where it goes on (> 30 px) past its object. It is "listed on the
way" when the review lists that object on a slice between the seed and one
past that first wrong slice.

Run: ``OMP_NUM_THREADS=1 python benchmarks/review_doubts.py``
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def run(name: str, image, truth, z0: int, predictor, axis=None, min_area: int = 60) -> tuple:
    from napari_sam.annotation.review import PropagationReview
    from napari_sam.masks import keep_prompted_parts
    from napari_sam.propagation import propagate_iter

    t0 = time.time()
    first = np.asarray(truth[z0])
    rim = np.concatenate([first[:2].ravel(), first[-2:].ravel(), first[:, :2].ravel(),
                          first[:, -2:].ravel()])
    ids = [int(i) for i in np.unique(first) if i and i not in rim
           and (first == i).sum() > min_area]
    emb = predictor.embed(np.asarray(image[z0]))
    seeds = {}
    for k, i in enumerate(ids, 1):
        c = np.argwhere(first == i).mean(axis=0)
        p = predictor.predict(emb, points=c[None], labels=np.ones(1), multimask=True)
        seeds[k] = {z0: keep_prompted_parts(np.asarray(p.best_mask), c[None], np.ones(1))}
    review = PropagationReview(SimpleNamespace(review=None, message=SimpleNamespace(text="")),
                               SimpleNamespace(axis_names=("z",), where=str), None,
                               lambda *args: None)
    labels = np.zeros(truth.shape, np.uint16)
    for u in propagate_iter(image, seeds, predictor, **({"axis": axis} if axis else {})):
        review.step(SimpleNamespace(slice_index=(u.z,), records=tuple(u.records.values()),
                                    masks=u.masks))
        for k, m in u.masks.items():
            labels[u.z][m & (labels[u.z] == 0)] = k
    review.finished()
    doubts = review.state.review.doubts
    wrong_dirs = caught = 0
    for k, tid in enumerate(ids, 1):
        wrong = []
        for z in range(len(truth)):
            true, mine = truth[z] == tid, labels[z] == k
            if true.sum() < 30:
                if mine.sum() > 30:
                    wrong.append(z)
                continue
            if mine.any() and np.count_nonzero(mine & true) / np.count_nonzero(mine | true) < 0.5:
                wrong.append(z)
        listed = [d.slice_index[0] for d in doubts if d.object_id == k]
        for side in (1, -1):
            zs = [z for z in wrong if (z - z0) * side > 0]
            if zs:
                first_wrong = min(zs, key=lambda z: abs(z - z0))
                wrong_dirs += 1
                caught += any((d - z0) * side > 0 and abs(d - z0) <= abs(first_wrong - z0) + 1
                              for d in listed)
    slices = sum(1 for _, r in review.records if r.status in ("seed", "ok", "end", "z_range"))
    print(f"{name}: {len(ids)} objects, {slices} object-slices, {len(doubts)} rows on "
          f"{len(review.state.review.slices)} of {review.state.review.n_slices} slices; "
          f"directions going wrong {wrong_dirs}, listed on the way {caught} "
          f"({time.time() - t0:.0f} s)", flush=True)
    return len(ids), slices, len(doubts), wrong_dirs, caught


def main() -> int:
    from tracking import moving_nuclei

    from napari_sam.predictor import Predictor
    from napari_sam.synthetic import nuclei_stack, sample_nuclei_stack

    predictor = Predictor("micro")
    totals = {"z": np.zeros(5, int), "t": np.zeros(5, int)}
    image, truth = sample_nuclei_stack()
    totals["z"] += run("sample stack", image, truth, image.shape[0] // 2, predictor)
    for seed in (5, 6):
        image, truth = nuclei_stack(seed=seed)
        totals["z"] += run(f"nuclei_stack seed {seed}", image, truth, image.shape[0] // 2,
                           predictor)
    for seed, drift, jitter in ((1, (1.5, 3.0), 1.0), (2, (1.5, 3.0), 1.0),
                                (3, (0.5, 1.5), 0.7), (4, (0.5, 1.5), 0.7)):
        movie, truth = moving_nuclei(20, (192, 192), seed=seed, n_nuclei=24, drift=drift,
                                     jitter=jitter)
        totals["t"] += run(f"moving_nuclei seed {seed}", movie, truth, 0, predictor, axis="t",
                           min_area=0)
    for key, (objects, slices, rows, wrong, caught) in totals.items():
        print(f"{key}: {objects} objects, {slices} object-slices, {rows} rows; {wrong} "
              f"directions going wrong, {caught} listed on the way")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
