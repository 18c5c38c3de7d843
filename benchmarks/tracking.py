"""Tracking through time: one click per nucleus, then ``propagate(..., axis="t")``.

Generated time-lapses (:func:`moving_nuclei`, ``(T, Y, X)``): nuclei of
:func:`napari_sam.synthetic.shapes.random_nucleus` pasted at positions that
drift together (``--drift`` px per frame) plus a random walk of their own
(``--jitter`` px per frame), rendered frame by frame with fresh camera noise
(:func:`napari_sam.synthetic.render`, fixed background, illumination and
gain). Nuclei leave the frame on one side and new ones enter on the other.

Every nucleus lying wholly inside frame 0 is clicked at its centre on frame 0
(bundled ``micro`` model, multimask, best mask, its clicked part), and all of
them are propagated along t together with the model's recommended options.
Per nucleus: on how many of the frames where it is visible (at least
``--min-area`` px) its id covers it with IoU >= 0.5 ("keeps its id"), and
whether its track runs on past its exit.

Run: ``OMP_NUM_THREADS=1 python benchmarks/tracking.py [--seeds 1 2 3]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def moving_nuclei(
    n_frames: int = 20,
    shape: tuple[int, int] = (128, 128),
    seed: int = 0,
    *,
    n_nuclei: int = 14,
    drift: tuple[float, float] = (0.5, 1.5),
    jitter: float = 0.7,
    radius: tuple[float, float] = (7.0, 11.0),
    photons: float = 600.0,
) -> tuple[np.ndarray, np.ndarray]:
    """A ``(T, Y, X)`` uint16 time-lapse of drifting nuclei and its uint32 labels.

    Each nucleus keeps its label id in every frame; a nucleus pasted later
    never covers an earlier one (it is hidden where they touch). Nuclei start
    on a canvas reaching ``n_frames * drift`` px beyond the frame against the
    drift, so some enter during the run.
    """
    from napari_sam.synthetic import render
    from napari_sam.synthetic.shapes import random_nucleus

    rng = np.random.default_rng(seed)
    h, w = shape
    drift_arr = np.asarray(drift, dtype=np.float64)
    reach = np.abs(drift_arr) * n_frames + 2 * radius[1]
    lo = -np.where(drift_arr > 0, reach, 0.0)
    hi = np.array([h, w], float) + np.where(drift_arr < 0, reach, 0.0)
    nuclei, pos = [], []
    for _ in range(50 * n_nuclei):  # non-overlapping start positions
        if len(nuclei) == n_nuclei:
            break
        p = rng.uniform(lo, hi)
        if all(np.hypot(*(p - q)) > 2.4 * radius[1] for q in pos):
            nuclei.append(random_nucleus(rng, 2, radius=radius))
            pos.append(p)
    bright = rng.uniform(0.5, 1.0, len(nuclei))
    pos_arr = np.array(pos)
    images = np.zeros((n_frames, h, w), np.uint16)
    labels = np.zeros((n_frames, h, w), np.uint32)
    background = np.full(shape, 0.06, np.float32)
    illumination = np.ones(shape, np.float32)
    for t in range(n_frames):
        expected = np.zeros(shape, np.float32)
        for k, obj in enumerate(nuclei):
            top = np.rint(pos_arr[k] - obj.center).astype(int)
            r0, c0 = max(0, top[0]), max(0, top[1])
            r1 = min(h, top[0] + obj.mask.shape[0])
            c1 = min(w, top[1] + obj.mask.shape[1])
            if r1 <= r0 or c1 <= c0:
                continue
            crop = (slice(r0 - top[0], r1 - top[0]), slice(c0 - top[1], c1 - top[1]))
            m = obj.mask[crop] & (labels[t, r0:r1, c0:c1] == 0)
            labels[t, r0:r1, c0:c1][m] = k + 1
            expected[r0:r1, c0:c1][m] = bright[k] * (0.7 + 0.3 * obj.profile[crop][m])
        images[t] = render(expected, rng, photons=photons, background=background,
                           illumination=illumination, gain=1.0, bit_depth=16)
        pos_arr = pos_arr + drift_arr + rng.normal(0.0, jitter, pos_arr.shape)
    return images, labels


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 0.0


def track_scene(
    predictor, images: np.ndarray, truth: np.ndarray, min_area: int, **options
) -> list[dict]:
    """Click every nucleus wholly inside frame 0, propagate along t, score each track."""
    from napari_sam.masks import keep_prompted_parts
    from napari_sam.propagation import propagate, stack_contrast_limits
    from napari_sam.training.validation import object_prompts

    limits = stack_contrast_limits(images)
    emb0 = predictor.embed(images[0], contrast_limits=limits)
    first = truth[0]
    ids, centres, _ = object_prompts(first, min_area=min_area)
    border = np.zeros(first.shape, bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    inside = [(i, c) for i, c in zip(ids, centres) if not (first[border] == i).any()]
    seeds = {}
    for oid, centre in inside:
        pred = predictor.predict(emb0, points=centre[None], multimask=True)
        mask = keep_prompted_parts(pred.best_mask, centre[None])
        if mask.any():
            seeds[int(oid)] = {0: mask}
    result = propagate(images, seeds, predictor, axis="t", contrast_limits=limits,
                       embeddings={0: emb0}, **options)
    out = result.mask_or_labels
    rows = []
    for oid in seeds:
        present = [t for t in range(len(truth)) if np.count_nonzero(truth[t] == oid) >= min_area]
        kept = [t for t in present if iou(out[t] == oid, truth[t] == oid) >= 0.5]
        gone = [t for t in range(len(truth)) if not (truth[t] == oid).any()]
        rows.append({
            "id": oid,
            "frames": len(present),
            "kept": len(kept),
            "past_exit": len([t for t in gone if (out[t] == oid).any()]),
            "stop": next((r.status for r in result.records
                          if r.object_id == oid and not r.accepted), "-"),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    import torch
    from scribble_quality import cpu_name

    from napari_sam.predictor import Predictor

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--drift", type=float, nargs=2, default=[0.5, 1.5])
    ap.add_argument("--jitter", type=float, default=0.7)
    ap.add_argument("--min-area", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    predictor = Predictor("micro", device="cpu")
    t0 = time.perf_counter()
    rows = []
    for seed in args.seeds:
        images, truth = moving_nuclei(args.frames, (args.size, args.size), seed,
                                      drift=tuple(args.drift), jitter=args.jitter)
        for row in track_scene(predictor, images, truth, args.min_area):
            rows.append({"seed": seed, **row})
    seconds = time.perf_counter() - t0
    share = np.array([r["kept"] / r["frames"] for r in rows])
    print(f"{len(rows)} tracked nuclei, seeds {args.seeds}, {args.frames} frames of "
          f"{args.size} px, drift {args.drift} px/frame + random walk {args.jitter} px, "
          f"micro ({predictor.precision}), {args.threads} thread(s), {cpu_name()}, "
          f"load {os.getloadavg()[0]:.1f}, {seconds:.0f} s")
    print("| seed | id | frames visible | frames with its id (IoU >= 0.5) | share | "
          "labelled past its exit | first stop |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {r['id']} | {r['frames']} | {r['kept']} | "
              f"{r['kept'] / r['frames']:.0%} | {r['past_exit']} | {r['stop']} |")
    print(f"mean share {share.mean():.1%}, median {np.median(share):.0%}, "
          f"nuclei >= 90 %: {np.mean(share >= 0.9):.0%} ({int(np.sum(share >= 0.9))} of "
          f"{len(share)}); frames labelled past an exit: {sum(r['past_exit'] for r in rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
