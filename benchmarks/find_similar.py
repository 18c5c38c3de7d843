""""Find all like this" from 3 exemplars vs everything mode alone, on nuclei with distractors.

Scenes: generated nuclei (:func:`napari_sam.synthetic.nuclei_2d`, 256 x 256)
plus objects of other kinds that everything mode also segments: small, very
bright round cells (:func:`napari_sam.synthetic.appearance.small_bright_cells`,
``--cells`` per scene) and debris specks and fibres
(:func:`~napari_sam.synthetic.appearance.debris`, ``--debris``). The target
class is the nuclei.

Per scene everything mode runs once (bundled ``micro`` model, its
recommended options); then ``--trials`` times 3 random true nuclei are the
exemplars of :func:`napari_sam.find_similar` (``candidates=`` the everything
result, so only the ranking differs). F1 at IoU 0.5 against the nuclei other
than the exemplars (one-to-one matches), for

* everything mode alone: all its objects except those on the exemplars
  (overlap > ``max_overlap``, as find_similar leaves them out);
* find_similar's proposals (score >= threshold) at a few thresholds, and
  with only some of its features (ablation).

Run: ``OMP_NUM_THREADS=1 python benchmarks/find_similar.py [--seeds 11 12 13 14]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def scene(seed: int, size: int, n_cells: int, n_debris: int):
    """``(image float32, nuclei labels, distractor-cell labels)``."""
    from napari_sam.synthetic import nuclei_2d
    from napari_sam.synthetic.appearance import debris, small_bright_cells

    image, nuclei = nuclei_2d((size, size), seed=seed)
    rng = np.random.default_rng(seed)
    image, both = small_bright_cells(image.astype(np.float32), nuclei, rng, n=n_cells)
    image = debris(image, both, rng, n=n_debris)
    cells = np.where(both > nuclei.max(), both, 0).astype(np.uint32)
    return image.astype(np.float32), nuclei, cells


def match(pred: np.ndarray, truth: np.ndarray, ignore: set[int]) -> tuple[int, int, int]:
    """One-to-one IoU >= 0.5 matches of label images: ``(TP, FP, FN)``; true ids in
    ``ignore`` count as neither found nor missed (predictions on them are not FPs)."""
    p = pred.ravel().astype(np.int64)
    t = truth.ravel().astype(np.int64)
    both = (p > 0) & (t > 0)
    nt = int(t.max()) + 1
    keys, inter = np.unique(p[both] * nt + t[both], return_counts=True)
    pa = np.bincount(p, minlength=int(p.max()) + 1)
    ta = np.bincount(t, minlength=nt)
    pid, tid = keys // nt, keys % nt
    iou = inter / (pa[pid] + ta[tid] - inter)
    hit = iou >= 0.5  # IoU > 0.5 pairs are unique on both sides
    matched_p = set(pid[hit].tolist())
    on_ignored = {int(a) for a, b in zip(pid[hit], tid[hit]) if int(b) in ignore}
    tp = len(matched_p) - len(on_ignored)
    n_pred = len(set(np.unique(p).tolist()) - {0}) - len(on_ignored)
    n_true = len(set(np.unique(t).tolist()) - {0} - ignore)
    return tp, n_pred - tp, n_true - tp


def f1(tp: int, fp: int, fn: int) -> float:
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0


def main(argv: list[str] | None = None) -> int:
    import torch
    from scribble_quality import cpu_name

    from napari_sam import find_similar
    from napari_sam.everything import segment_everything
    from napari_sam.predictor import Predictor
    from napari_sam.similar import DEFAULT_MAX_OVERLAP, DEFAULT_TOLERANCES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[11, 12, 13, 14])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--cells", type=int, default=12)
    ap.add_argument("--debris", type=int, default=25)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    predictor = Predictor("micro", device="cpu")
    big = 1e9
    variants = {f"find_similar, threshold {t}": (t, DEFAULT_TOLERANCES) for t in args.thresholds}
    t_emb, t_size, t_int = DEFAULT_TOLERANCES
    variants["  size + intensity only (threshold 0.5)"] = (0.5, (big, t_size, t_int))
    variants["  embedding only (threshold 0.5)"] = (0.5, (t_emb, big, big))
    counts: dict[str, list[tuple[int, int, int]]] = {"everything mode": []}
    cells_found: dict[str, int] = {}
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    seconds = {"everything": 0.0, "find_similar": 0.0}
    n_nuclei = 0
    for seed in args.seeds:
        image, nuclei, cells = scene(seed, args.size, args.cells, args.debris)
        n_nuclei += int(nuclei.max())
        emb = predictor.embed(image)
        t1 = time.perf_counter()
        everything = segment_everything(image, predictor=predictor, embedding=emb)
        seconds["everything"] += time.perf_counter() - t1
        for _ in range(args.trials):
            ids = rng.choice(np.arange(1, nuclei.max() + 1), 3, replace=False)
            exemplars = [nuclei == i for i in ids]
            ignore = {int(i) for i in ids}
            # everything mode alone, with the same exclusion of objects on the exemplars
            taken = np.logical_or.reduce(exemplars)
            lab = everything.labels
            area = np.bincount(lab.ravel())
            over = np.bincount(lab[taken].ravel(), minlength=len(area))
            drop = np.flatnonzero((over > DEFAULT_MAX_OVERLAP * area) & (area > 0))
            alone = np.where(np.isin(lab, drop[drop > 0]), 0, lab)
            counts["everything mode"].append(match(alone, nuclei, ignore))
            cells_found["everything mode"] = cells_found.get("everything mode", 0) + match(
                alone, cells, set())[0]
            for name, (thr, tol) in variants.items():
                t1 = time.perf_counter()
                res = find_similar(image, exemplars, predictor, candidates=everything,
                                   embedding=emb, threshold=thr, tolerances=tol)
                seconds["find_similar"] += time.perf_counter() - t1
                chosen = res.labels_above()
                counts.setdefault(name, []).append(match(chosen, nuclei, ignore))
                cells_found[name] = cells_found.get(name, 0) + match(chosen, cells, set())[0]
    n_runs = len(args.seeds) * args.trials
    print(f"{len(args.seeds)} scenes (seeds {args.seeds}, {args.size} px, {n_nuclei} nuclei, "
          f"{args.cells} bright cells and {args.debris} debris each), {args.trials} exemplar "
          f"triples each; micro ({predictor.precision}), {args.threads} thread(s), "
          f"{cpu_name()}, load {os.getloadavg()[0]:.1f}; everything {seconds['everything']:.0f} s, "
          f"find_similar {seconds['find_similar'] / (n_runs * len(variants)):.2f} s per call "
          f"(candidates given), total {time.perf_counter() - t0:.0f} s")
    print("| objects proposed | F1@0.5 | precision | recall | false positives per scene "
          "| of them bright cells |")
    print("|---|---|---|---|---|---|")
    for name, rows in counts.items():
        tp, fp, fn = (sum(r[k] for r in rows) for k in range(3))
        print(f"| {name} | {np.mean([f1(*r) for r in rows]):.3f} | {tp / max(1, tp + fp):.3f} | "
              f"{tp / max(1, tp + fn):.3f} | {fp / len(rows):.1f} | "
              f"{cells_found[name] / len(rows):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
