"""Peak memory while embedding a stack into the on-disk store: bounded, whatever the depth.

Each run happens in a fresh child process: a ``(N, 512, 512)`` uint16 stack
on disk (a zarr array, one chunk per slice, so the input is not held in memory
either) is embedded into a new zarr store by :func:`napari_sam.store.embed_stack`,
then one slice is read back from the reopened store. A stand-in predictor
returns embeddings of the real SAM size (``(1, 256, 64, 64)`` float32, 4 MiB per
slice) so that the run takes seconds; ``--model vit_tiny`` uses the tiny random
model instead (much smaller embeddings).

Measured per run: Python/numpy peak allocations (``tracemalloc``, above what
was allocated before) while computing the stack-wide intensity range (a
bounded sample of slices, see :func:`napari_sam.normalize.stack_intensity_range`),
while embedding every slice into the store, and while reading one slice back
from the reopened store; the child's maximum resident set
size (``ru_maxrss``: includes the interpreter, numpy, zarr and torch), wall
time and the store's size on disk. The last column is what keeping all the
float32 embeddings in memory would take.

Usage::

    .venv/bin/python benchmarks/store_memory.py [--slices 50 200] [--size 512] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

MiB = 2**20


class StandInPredictor:
    """Embeds a slice into ``(1, 256, 64, 64)`` float32 features (SAM's size), cheaply."""

    model_name = "stand-in-256x64x64"
    fingerprint = "stand-in:256x64x64"
    precision = "float32"

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.weights = rng.standard_normal((256, 1, 1)).astype(np.float32)
        self.bias = rng.standard_normal((256, 64, 64)).astype(np.float32)

    def embed(self, image, *, contrast_limits=None):
        import torch

        from napari_sam.normalize import to_rgb_float
        from napari_sam.predictor import Embedding, resized_shape

        gray = to_rgb_float(image, contrast_limits)[..., 0]
        h, w = gray.shape
        small = gray[: h - h % 64, : w - w % 64].reshape(64, h // 64, 64, w // 64).mean((1, 3))
        features = small[None] / 255.0 * self.weights + self.bias
        return Embedding(
            features=torch.from_numpy(features.astype(np.float32))[None],
            original_size=(h, w),
            input_size=resized_shape(h, w, 1024),
            contrast_limits=contrast_limits,
        )

    def predict(self, *args, **kwargs):  # pragma: no cover - not used
        raise NotImplementedError


def make_stack(path: Path, n: int, size: int) -> None:
    """Write a ``(n, size, size)`` uint16 zarr stack slice by slice (never all in memory)."""
    import zarr

    out = zarr.open_array(
        str(path), mode="w", shape=(n, size, size), chunks=(1, size, size), dtype=np.uint16
    )
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:size, :size]
    for z in range(n):
        blob = ((yy - size / 2) ** 2 + (xx - size / 2 - z) ** 2 < (size / 5) ** 2) * 1500
        out[z] = rng.integers(100, 900, (size, size)) + blob


def child(stack_path: str, store_path: str, model: str) -> dict:
    """One measured run (in a fresh process)."""
    from napari_sam.store import EmbeddingStore, default_contrast_limits, embed_stack

    if model == "stand-in":
        predictor = StandInPredictor()
    else:
        import torch

        from napari_sam.model.sam import build_sam
        from napari_sam.predictor import Predictor

        torch.manual_seed(0)
        predictor = Predictor(build_sam(model), precision="float32")
    import zarr

    stack = zarr.open_array(stack_path, mode="r")
    # warm up on 2 slices so that lazy imports (torch, zarr codecs) are not measured
    warm = embed_stack(stack[:2], predictor, store_path + ".warmup")
    warm[0]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t = time.perf_counter()
    limits = default_contrast_limits(stack)  # what embed_stack does when given no limits
    range_peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    store = embed_stack(stack, predictor, store_path, contrast_limits=limits)
    seconds = time.perf_counter() - t
    embed_peak = tracemalloc.get_traced_memory()[1] - base
    assert store.missing() == []
    reopened = EmbeddingStore.open(store_path, mode="r")
    base = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    emb = reopened[stack.shape[0] // 2]
    read_peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    feature_bytes = emb.features.numel() * 4
    size_on_disk = sum(f.stat().st_size for f in Path(store_path).rglob("*") if f.is_file())
    return {
        "slices": int(stack.shape[0]),
        "seconds": seconds,
        "range_peak": range_peak,
        "embed_peak": embed_peak,
        "read_peak": read_peak,
        "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "disk": size_on_disk,
        "in_ram": feature_bytes * int(stack.shape[0]),
        "feature_shape": list(emb.features.shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--model", default="stand-in", help="stand-in (default) or vit_tiny")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument(
        "--child", nargs=3, metavar=("STACK", "STORE", "MODEL"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return

    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="store_memory_"))
    try:
        for n in args.slices:
            stack = workdir / f"stack{n}.zarr"
            make_stack(stack, n, args.size)
            store = workdir / f"store{n}.zarr"
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(stack), str(store), args.model],
                check=True,
                capture_output=True,
                text=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            shutil.rmtree(store)
            shutil.rmtree(stack)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    header = (
        "slices",
        "embed s",
        "peak: intensity range MiB",
        "peak: embed loop MiB",
        "peak: read 1 slice MiB",
        "max RSS MiB",
        "store on disk MiB",
        "all embeddings in RAM MiB",
    )
    lines = []
    for r in rows:
        lines.append(
            (
                str(r["slices"]),
                f"{r['seconds']:.1f}",
                f"{r['range_peak'] / MiB:.1f}",
                f"{r['embed_peak'] / MiB:.1f}",
                f"{r['read_peak'] / MiB:.1f}",
                f"{r['max_rss'] / MiB:.0f}",
                f"{r['disk'] / MiB:.0f}",
                f"{r['in_ram'] / MiB:.0f}",
            )
        )
    print(
        f"stack (N, {args.size}, {args.size}) uint16 zarr on disk, predictor {args.model}, "
        f"features {rows[0]['feature_shape']} float32, stored float16"
    )
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for line in lines:
            print("| " + " | ".join(line) + " |")
    else:
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
        print("  ".join(h.rjust(w) for h, w in zip(header, widths)))
        for line in lines:
            print("  ".join(c.rjust(w) for c, w in zip(line, widths)))
    first, last = rows[0], rows[-1]
    print(
        f"peak ratio {last['slices']}/{first['slices']} slices: tracemalloc "
        f"{last['embed_peak'] / first['embed_peak']:.2f}x, max RSS "
        f"{last['max_rss'] / first['max_rss']:.2f}x (depth ratio "
        f"{last['slices'] / first['slices']:.0f}x)"
    )


if __name__ == "__main__":
    main()
