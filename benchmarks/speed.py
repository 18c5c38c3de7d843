"""Embedding and prompt-to-mask speed, ours against the official segment-anything.

Both implementations get identical random vit_b weights and the same
1024x1024 uint8 RGB slice, in the same process, one after the other, so the
printed ratios compare like with like on this machine.

Usage::

    .venv/bin/python benchmarks/speed.py [--arch vit_b] [--repeats 3] [--markdown]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from napari_sam.model.sam import CONFIGS, build_sam
from napari_sam.predictor import Predictor
from oracle import build_official, official, randomize_


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def import_time() -> float:
    code = "import time; t=time.perf_counter(); import napari_sam; print(time.perf_counter()-t)"
    runs = [float(subprocess.check_output([sys.executable, "-c", code])) for _ in range(3)]
    return min(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_b")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    point = np.array([[args.size * 0.4, args.size * 0.6]])  # (row, col)

    ours = randomize_(build_sam(args.arch), seed=0)
    theirs = build_official(CONFIGS[args.arch])
    theirs.load_state_dict(ours.state_dict())
    sa = official()
    their_pred = sa.SamPredictor(theirs)

    rows = []
    t_off, _ = timed(lambda: their_pred.set_image(image), args.repeats)
    rows.append(("official set_image, float32", t_off, 1.0))

    def official_bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            their_pred.set_image(image)

    t_off_bf16, _ = timed(official_bf16, args.repeats)
    rows.append(("official set_image, bfloat16 autocast", t_off_bf16, t_off / t_off_bf16))
    their_pred.set_image(image)
    t_off_pred, _ = timed(
        lambda: their_pred.predict(point_coords=point[:, ::-1], point_labels=np.array([1])),
        max(5, args.repeats * 5),
    )

    exact = Predictor(ours, precision="float32")
    t_exact, emb = timed(lambda: exact.embed(image), args.repeats)
    rows.append(("ours embed, exact float32", t_exact, t_off / t_exact))
    fast = Predictor(ours, precision="auto")
    t_fast, _ = timed(lambda: fast.embed(image), args.repeats)
    rows.append((f"ours embed, fast ({fast.precision})", t_fast, t_off / t_fast))
    t_pred, _ = timed(
        lambda: exact.predict(emb, points=point, labels=[1]), max(5, args.repeats * 5)
    )

    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"model: {args.arch} (random weights), slice {args.size}x{args.size} uint8 RGB, "
          f"median of {args.repeats}")
    print(f"import napari_sam: {import_time() * 1000:.0f} ms")
    print()
    print("| step | seconds | speed-up vs official float32 |")
    print("|---|---|---|")
    for name, t, ratio in rows:
        print(f"| {name} | {t:.2f} | {ratio:.2f}x |")
    label = "predict (1 point, 3 masks at slice size)"
    print(f"| official {label} | {t_off_pred * 1000:.0f} ms | 1.00x |")
    print(f"| ours {label} | {t_pred * 1000:.0f} ms | "
          f"{t_off_pred / t_pred:.2f}x |")


if __name__ == "__main__":
    main()
