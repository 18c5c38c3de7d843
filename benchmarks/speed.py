"""Embedding and prompt-to-mask speed, ours against the official segment-anything.

Both implementations get identical random vit_b weights and the same
1024x1024 uint8 RGB slice, in the same process, one after the other, so the
printed ratios compare like with like on this machine.

Usage::

    .venv/bin/python benchmarks/speed.py [--arch vit_b] [--repeats 3] [--markdown]
    .venv/bin/python benchmarks/speed.py --predict-only --threads 1   # prompt-to-mask rows
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


def mobile_sam_rows(image: np.ndarray, repeats: int, t_ref: float) -> list:
    """MobileSAM (vit_t): its own code against ours, identical random weights.

    The ratio column stays "speed-up vs official vit_b float32" (``t_ref``).
    """
    import mobile_oracle  # tests/ is on sys.path

    ours = build_sam("vit_t")
    rows = []
    if mobile_oracle.available():
        theirs = mobile_oracle.randomize_(mobile_oracle.build_mobile_sam_vit_t(), seed=0).eval()
        ours.load_state_dict(theirs.state_dict())
        their_pred = mobile_oracle.mobile_sam().SamPredictor(theirs)
        t, _ = timed(lambda: their_pred.set_image(image), repeats)
        rows.append(("MobileSAM's own set_image (vit_t), float32", t, t_ref / t))
    exact = Predictor(ours, precision="float32")
    t, _ = timed(lambda: exact.embed(image), repeats)
    rows.append(("ours embed vit_t (MobileSAM), exact float32", t, t_ref / t))
    return rows


def predict_rows(their_pred, ours: Predictor, image: np.ndarray, point: np.ndarray, n: int):
    """Prompt-to-mask: one positive point, masks at the slice size, interleaved, median of n.

    The official ``SamPredictor.predict`` returns its 3 masks at the slice size;
    ours is timed getting the best mask (``best_mask``: only that one is
    upscaled) and, separately, all 3 (``masks``). The last row is a first
    prompt on an embedding, which also prepares the decoder's prompt-independent work.
    """
    their_pred.set_image(image)
    emb = ours.embed(image)
    label = np.array([1])

    def first_prompt():
        ours._prepared.clear()  # forget the prepared decoder of emb
        return ours.predict(emb, points=point, labels=label).best_mask

    variants = {
        "official predict (1 point, 3 masks at slice size)": lambda: their_pred.predict(
            point_coords=point[:, ::-1], point_labels=label
        ),
        "ours predict + best_mask (1 point, best mask at slice size)": lambda: ours.predict(
            emb, points=point, labels=label
        ).best_mask,
        "ours predict + masks (1 point, 3 masks at slice size)": lambda: ours.predict(
            emb, points=point, labels=label
        ).masks,
        "ours first prompt on an embedding (prepares the decoder), best_mask": first_prompt,
    }
    for fn in variants.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(n):
        for name, fn in variants.items():
            times[name].append(timed(fn, 1)[0])
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    t_ref = next(iter(medians.values()))
    return [(name, t, t_ref / t) for name, t in medians.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_b")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--skip-bf16", action="store_true", help="skip official bfloat16 run")
    parser.add_argument(
        "--predict-only", action="store_true", help="only the prompt-to-mask rows"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    point = np.array([[args.size * 0.4, args.size * 0.6]])  # (row, col)

    ours = randomize_(build_sam(args.arch), seed=0)
    theirs = build_official(CONFIGS[args.arch])
    theirs.load_state_dict(ours.state_dict())
    sa = official()
    their_pred = sa.SamPredictor(theirs)

    exact = Predictor(ours, precision="float32")
    fast = Predictor(ours, precision="auto")
    int8 = Predictor(ours, precision="int8")
    if args.predict_only:
        print(f"{torch.get_num_threads()} torch threads, {args.arch} random weights, "
              f"slice {args.size}x{args.size}, median of {max(5, args.repeats * 5)}, interleaved")
        for name, t, ratio in predict_rows(
            their_pred, exact, image, point, max(5, args.repeats * 5)
        ):
            print(f"| {name} | {t * 1000:.1f} ms | {ratio:.2f}x |")
        return

    def official_bf16():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            their_pred.set_image(image)

    # Interleaved: each repeat runs every variant once, so a change in the load
    # of a shared machine affects all of them alike; the median is reported.
    variants = {
        "official set_image, float32": lambda: their_pred.set_image(image),
        "official set_image, bfloat16 autocast": official_bf16,
        "ours embed, exact float32": lambda: exact.embed(image),
        f"ours embed, fast ({fast.precision})": lambda: fast.embed(image),
        "ours embed, int8 linear layers (precision='int8')": lambda: int8.embed(image),
    }
    if args.skip_bf16:
        del variants["official set_image, bfloat16 autocast"]
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            times[name].append(timed(fn, 1)[0])
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    t_off = medians["official set_image, float32"]
    rows = [(name, t, t_off / t) for name, t in medians.items()]

    if args.arch == "vit_b" and args.size == 1024:
        rows += mobile_sam_rows(image, args.repeats, t_off)

    pred_rows = predict_rows(their_pred, exact, image, point, max(5, args.repeats * 5))

    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"model: {args.arch} (random weights), slice {args.size}x{args.size} uint8 RGB, "
          f"median of {args.repeats}, interleaved")
    print(f"import napari_sam: {import_time() * 1000:.0f} ms")
    print()
    print("| step | seconds | speed-up vs official float32 |")
    print("|---|---|---|")
    for name, t, ratio in rows:
        print(f"| {name} | {t:.2f} | {ratio:.2f}x |")
    for name, t, ratio in pred_rows:
        print(f"| {name} | {t * 1000:.1f} ms | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
