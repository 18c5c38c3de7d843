"""Embedding and prompt-to-mask speed, ours against the official segment-anything.

Both implementations get identical random vit_b weights and the same
1024x1024 uint8 RGB slice, in the same process, one after the other, so the
printed ratios compare like with like on this machine.

Every embedding row also says how far it is from this machine's limit: the
encoder's FLOPs (counted from the architecture, ``encoder_flops``) per second,
as a fraction of the measured matrix-product peak of the path's dtype (a
vit_b-shaped ``nn.Linear``: 4096 tokens, 768 -> 3072, 3072 -> 768, 768 -> 2304;
the fastest of the three; measured at the start, between the interleaved
rounds and at the end, the highest used: see :class:`Peaks`), next to the CPU
flags that decide that peak, the one-thread peak, and the time floor of the
work that is no product (:func:`softmax_floor`).

Usage::

    .venv/bin/python benchmarks/speed.py [--arch vit_b] [--repeats 3] [--threads 2]
    .venv/bin/python benchmarks/speed.py --predict-only --threads 1   # prompt-to-mask rows
    .venv/bin/python benchmarks/speed.py --peak-only                  # machine and peaks only
    .venv/bin/python benchmarks/speed.py --threads 1 --cpu-time       # 1 thread, CPU time
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from napari_sam.model.encoder_flops import attention_units, encoder_flops
from napari_sam.model.sam import CONFIGS, build_sam
from napari_sam.predictor import Predictor
from oracle import build_official, official, randomize_

#: the clock of :func:`timed`: wall time, or the process's CPU time (``--cpu-time``)
CLOCK = time.perf_counter


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t = CLOCK()
        out = fn()
        times.append(CLOCK() - t)
    return statistics.median(times), out


#: CPU flags that decide the matrix-product peak of each path
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")

#: vit_b's linear layers: (tokens, in, out)
GEMM_SHAPES = ((4096, 768, 3072), (4096, 3072, 768), (4096, 768, 2304))


def cpu_description() -> str:
    """CPU model and which of :data:`FLAGS` it has (Linux ``/proc/cpuinfo``)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "model":
                    model_number = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
        model = f"{model} (model {model_number})"
    except (OSError, UnboundLocalError):
        pass
    have = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in FLAGS)
    return f"{model}, {os.cpu_count()} CPUs; {have}"


def load_average() -> str:
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def matmul_peak(dtype: torch.dtype | str, repeats: int = 10, warmup: int = 3) -> float:
    """FLOP/s of the fastest vit_b-shaped ``nn.Linear`` in ``dtype`` (or ``"int8"``).

    Per shape ``warmup`` calls first (oneDNN's kernel generation and, on AMX
    CPUs, the tile configuration and the process's first use of the AMX
    state), then the fastest of ``repeats`` calls: what the machine can do
    when nothing else runs, so the fractions of it are not flattered by load.
    ``"int8"``: dynamically quantized linear layers, as ``precision="int8"`` runs them.
    """
    best = 0.0
    for tokens, n_in, n_out in GEMM_SHAPES:
        layer = torch.nn.Linear(n_in, n_out)
        x = torch.randn(tokens, n_in)
        if dtype == "int8":
            from napari_sam.model.quantize import quantize_image_encoder

            layer = quantize_image_encoder(torch.nn.Sequential(layer))[0]
        else:
            layer, x = layer.to(dtype), x.to(dtype)
        with torch.inference_mode():
            for _ in range(warmup):
                layer(x)
            t = min(timed(lambda layer=layer, x=x: layer(x), 1)[0] for _ in range(repeats))
        best = max(best, 2 * tokens * n_in * n_out / t)
    return best


PEAK_DTYPES = (("float32", torch.float32), ("bfloat16", torch.bfloat16), ("int8", "int8"))


class Peaks:
    """Matmul peaks measured several times during a run; the highest is the machine's.

    On a shared machine one measurement can be far too low: with another
    process busy on one of the cores (at a higher priority), a two-thread
    product waits for its starved thread (this Xeon, 2 threads: bfloat16
    1875 GFLOP/s quiet, 336-697 with a training run on the other core). So
    the peak is measured at the start, after every round of the interleaved
    runs and at the end, and the fractions use the highest; the spread is
    printed, and the one-thread peak shows how far two threads scale.
    """

    def __init__(self) -> None:
        self.runs: dict[str, list[float]] = {name: [] for name, _ in PEAK_DTYPES}
        self.loads: list[str] = []

    def measure(self, repeats: int = 10) -> None:
        self.loads.append(load_average())
        for name, dtype in PEAK_DTYPES:
            self.runs[name].append(matmul_peak(dtype, repeats))

    def best(self) -> dict[str, float]:
        return {name: max(v) for name, v in self.runs.items()}

    def report(self) -> str:
        lines = [f"matmul peak (vit_b-shaped nn.Linear, {torch.get_num_threads()} threads, "
                 f"best of 10 calls after 3 warm-up calls, measured {len(self.loads)} times, "
                 f"loads {', '.join(self.loads)}):"]
        for name, values in self.runs.items():
            lines.append(f"  {name}: {max(values) / 1e9:.0f} GFLOP/s (all: "
                         + ", ".join(f"{v / 1e9:.0f}" for v in values) + ")")
        return "\n".join(lines)


def one_thread_peaks() -> dict[str, float]:
    """:func:`matmul_peak` on one thread (the thread count restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {name: matmul_peak(dtype) for name, dtype in PEAK_DTYPES}
    finally:
        torch.set_num_threads(threads)


def attention_work(encoder) -> tuple[int, float]:
    """``(scores, executed FLOPs)`` of one forward pass's attention on the bfloat16 path.

    The fused kernel runs the augmented queries and keys (head dim plus the
    relative-position columns, :func:`augmented_head_dim`) and values padded
    to the same width, so it executes more product FLOPs than the model's count.
    """
    from napari_sam.model.vit_attention import augmented_head_dim

    scores, flops = 0, 0.0
    for block, (units, side) in zip(encoder.blocks, attention_units(encoder)):
        heads = block.attn.num_heads
        hc = block.attn.qkv.in_features // heads
        d = augmented_head_dim(hc, side, side)
        n = side * side
        scores += units * heads * n * n
        flops += units * heads * 4 * n * n * d
    return scores, flops


def softmax_floor(encoder, repeats: int = 3) -> float:
    """Seconds of a float32 softmax over every attention score of one forward pass.

    Attention's exponentials, maxima and sums are no product: whatever the
    matmul peak, an encoder pass takes at least this long on top of its
    products (the fused kernel does this work, and more, in float32). Measured
    as ``torch.softmax`` in place over cache-sized chunks (about 1 M scores),
    the fastest of ``repeats``.
    """
    parts = [  # (rows of scores, keys per row)
        (units * block.attn.num_heads * side * side, side * side)
        for block, (units, side) in zip(encoder.blocks, attention_units(encoder))
    ]
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            total = 0.0
            for rows, keys in parts:
                chunk = max(1, (256 * 4096) // keys)
                x = torch.randn(chunk, keys)
                t = CLOCK()
                for _ in range(-(-rows // chunk)):
                    torch.softmax(x, -1, out=x)
                total += CLOCK() - t
            best = min(best, total)
    return best


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
    parser.add_argument(
        "--peak-only", action="store_true", help="only the machine and the matmul peaks"
    )
    parser.add_argument(
        "--cpu-time", action="store_true",
        help="time by the process's CPU time (one thread only: the time preemption by "
             "other processes takes is not counted, so a shared machine's load does not "
             "enter the ratios)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        if torch.get_num_threads() != 1:
            parser.error("--cpu-time needs --threads 1 (CPU time adds up the threads)")
        global CLOCK
        CLOCK = time.process_time
        print("timing: process CPU time (one thread)")
    load_before = load_average()
    print(f"cpu: {cpu_description()}")
    print(f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"load average (1/5/15 min) {load_before}")
    peaks = Peaks()
    peaks.measure()
    if args.peak_only:
        print(peaks.report())
        single = one_thread_peaks()
        print("one thread: " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in single.items())
              + " GFLOP/s")
        return

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
        peaks.measure()  # between the rounds: the machine's best moment counts
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    t_off = medians["official set_image, float32"]
    rows = [(name, t, t_off / t) for name, t in medians.items()]
    # the dtype whose matmul peak each embedding row is measured against
    peak_of = {
        "official set_image, float32": "float32",
        "official set_image, bfloat16 autocast": "bfloat16",
        "ours embed, exact float32": "float32",
        f"ours embed, fast ({fast.precision})": fast.precision,
        "ours embed, int8 linear layers (precision='int8')": "int8",
    }
    flops = encoder_flops(ours.image_encoder)

    if args.arch == "vit_b" and args.size == 1024:
        rows += mobile_sam_rows(image, args.repeats, t_off)

    pred_rows = predict_rows(their_pred, exact, image, point, max(5, args.repeats * 5))
    peaks.measure()
    single = one_thread_peaks()
    print(peaks.report())
    print("one thread: " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in single.items())
          + " GFLOP/s (two threads scale the peak by "
          + ", ".join(f"{peaks.best()[k] / v:.2f}" for k, v in single.items()) + ")")
    best_peaks = peaks.best()
    floor = softmax_floor(ours.image_encoder)
    n_scores, attn_executed = attention_work(ours.image_encoder)
    attn_model = flops["attention_global"] + flops["attention_windowed"]
    executed = flops["total"] - attn_model + attn_executed
    peak_bf16 = best_peaks["bfloat16"]
    print(
        f"time floor of the bfloat16 path: products {flops['total'] / 1e9:.0f} GFLOP (executed "
        f"{executed / 1e9:.0f}: the augmented attention's bias columns and value padding) at "
        f"the bfloat16 peak {flops['total'] / peak_bf16:.2f} s ({executed / peak_bf16:.2f} s), "
        f"plus a float32 softmax of the {n_scores / 1e6:.0f} M attention scores {floor:.2f} s: "
        f"at most {100 * flops['total'] / peak_bf16 / (executed / peak_bf16 + floor):.0f} % "
        "of the bfloat16 peak (layer norms, GELU and copies not counted)"
    )

    print(f"model: {args.arch} (random weights), slice {args.size}x{args.size} uint8 RGB, "
          f"median of {args.repeats}, interleaved")
    print("encoder FLOPs (analytic): " + ", ".join(
        f"{k} {v / 1e9:.1f} G" for k, v in flops.items()))
    print(f"import napari_sam: {import_time() * 1000:.0f} ms")
    print(f"load average at the end: {load_average()}")
    print()
    print("| step | seconds | speed-up vs official float32 | encoder GFLOP/s | of the peak |")
    print("|---|---|---|---|---|")
    for name, t, ratio in rows:
        peak = peak_of.get(name)
        if peak in best_peaks:
            achieved = flops["total"] / t
            extra = f"{achieved / 1e9:.0f} | {100 * achieved / best_peaks[peak]:.0f} % of {peak}"
        else:
            extra = " | "
        print(f"| {name} | {t:.2f} | {ratio:.2f}x | {extra} |")
    for name, t, ratio in pred_rows:
        print(f"| {name} | {t * 1000:.1f} ms | {ratio:.2f}x | | |")
    print("\n(fractions of the highest peak measurement)")


if __name__ == "__main__":
    main()
