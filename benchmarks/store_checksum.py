"""What the per-slice checksum costs: CRC-32 of a slice's features next to reading the slice.

For a ViT-sized feature map (256 x 64 x 64) in float16 and float32, and a tiled
``micro`` slice of 512 x 512 px (3 x 3 tiles + overview, 10 x 64 x 32 x 32),
random features are written into a one-slice store; then, as medians of
``--repeat`` runs: the CRC-32 alone (:func:`napari_sam.store._integrity.features_checksum`),
the raw chunk read (zarr decode only), and ``store.read_features`` (decode +
checksum check) and ``store[index]`` (+ float32 torch tensor).

Usage::

    .venv/bin/python benchmarks/store_checksum.py [--repeat 30] [--markdown]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_sam.signature import image_signature
from napari_sam.store import EmbeddingStore
from napari_sam.store._integrity import features_checksum

CASES = [
    ("ViT map 256x64x64", "float16", (256, 64, 64), None, 1024),
    ("ViT map 256x64x64", "float32", (256, 64, 64), None, 1024),
    (
        "micro tiled 512 px (10x64x32x32)",
        "float16",
        (64, 32, 32),
        {"tile": 256, "overlap": 64, "n_tiles": 9},
        512,
    ),
]


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def run(repeat: int) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for name, dtype, shape, tiling, size in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            stack = np.zeros((1, size, size), np.uint8)
            store = EmbeddingStore.create(
                Path(tmp) / "e.zarr",
                stack_shape=stack.shape,
                model_name="bench",
                model_fingerprint="bench:1",
                contrast_limits=(0, 255),
                input_size=(size, size) if tiling is None else (256, 256),
                embedding_shape=shape,
                image_signature=image_signature(stack),
                tiling=tiling,
                dtype=dtype,
            )
            chunk = rng.standard_normal(store.metadata.chunk_shape).astype(dtype)
            store.write(0, chunk)
            rows.append(
                {
                    "case": name,
                    "dtype": dtype,
                    "MiB": chunk.nbytes / 2**20,
                    "crc32 ms": _median_ms(lambda c=chunk: features_checksum(c), repeat),
                    "raw read ms": _median_ms(lambda s=store: np.asarray(s._features[0]), repeat),
                    "read_features ms": _median_ms(lambda s=store: s.read_features(0), repeat),
                    "store[i] ms": _median_ms(lambda s=store: s[0], repeat),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rows = run(args.repeat)
    keys = list(rows[0])
    if args.markdown:
        print("| " + " | ".join(keys) + " |")
        print("|" + "---|" * len(keys))
    for r in rows:
        cells = [f"{v:.2f}" if isinstance(v, float) else str(v) for v in r.values()]
        print(("| " + " | ".join(cells) + " |") if args.markdown else "  ".join(cells))


if __name__ == "__main__":
    main()
