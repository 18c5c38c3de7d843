"""``napari-sam embed``: compute a stack's embedding store, in parallel with Dask.

Examples::

    napari-sam embed stack.tif --out stack.embeddings.zarr                # local cluster
    napari-sam embed stack.tif --out emb.zarr --workers 4 --model vit_b_lm
    napari-sam embed stack.zarr --out emb.zarr --scheduler tcp://10.0.0.5:8786
    napari-sam embed stack.npy --out emb.zarr --workers 0                 # no Dask

Interrupting the command (or a killed job) loses at most the slices being
computed: rerunning it computes only the missing slices.
"""

from __future__ import annotations

import argparse
import os
import sys

#: Default number of local worker processes.
DEFAULT_WORKERS = 2
#: Default seconds to wait for a scheduler.
DEFAULT_TIMEOUT = 10.0


def register(sub) -> None:
    from napari_sam.cli._common import add_model_options

    p = sub.add_parser(
        "embed",
        help="compute the embeddings of a stack into a zarr store (in parallel with Dask)",
        description=(
            "Embed every slice of STACK into the embedding store --out (created, or completed "
            "if it exists). Slices already in the store are not recomputed. By default a local "
            "Dask cluster of --workers processes does the work; --scheduler uses a running "
            "cluster instead (its workers must see STACK and --out at the same paths)."
        ),
    )
    p.add_argument("stack", help="image stack: .tif/.tiff, .zarr or .npy (read slice by slice)")
    p.add_argument(
        "--out",
        "-o",
        required=True,
        metavar="STORE",
        help="embedding store directory to create or complete, e.g. stack.embeddings.zarr",
    )
    add_model_options(p)
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="address of a running Dask scheduler, e.g. tcp://127.0.0.1:8786 "
        "(default: start a local cluster)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        metavar="N",
        help=f"worker processes of the local cluster; 0: compute in this process without "
        f"Dask [{DEFAULT_WORKERS}]",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"how long to wait for --scheduler to answer [{DEFAULT_TIMEOUT:g}]",
    )
    p.add_argument(
        "--contrast-limits",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        help="intensities mapped to black and white for every slice (default: the store's, "
        "else 0-255 for 8-bit and a robust range of the stack otherwise)",
    )
    p.add_argument(
        "--rgb",
        action="store_true",
        help="the last axis is colour (up to 3 channels): slices are (Y, X, C)",
    )
    p.add_argument(
        "--dtype",
        choices=["float16", "float32"],
        default="float16",
        help="storage type of a new store [float16]",
    )
    p.add_argument(
        "--max-slices",
        type=int,
        metavar="N",
        help="compute at most N missing slices, then stop (rerun to continue)",
    )
    p.add_argument("--overwrite", action="store_true", help="recompute into a new store")
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="do not re-read stored slices to check them against the image",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> None:
    from napari_sam.cli._common import UserError, check_device_option, check_store_path

    if args.workers < 0:
        raise UserError(f"--workers must be >= 0, got {args.workers}")
    if not args.timeout > 0:
        raise UserError(f"--timeout must be > 0 seconds, got {args.timeout}")
    if args.max_slices is not None and args.max_slices < 0:
        raise UserError(f"--max-slices must be >= 0, got {args.max_slices}")
    if not os.path.exists(args.stack):
        raise FileNotFoundError(f"image file not found: {args.stack!r}")
    check_device_option(args.device)
    check_store_path(args.out)


def _warn_damage(message: str) -> None:
    """Damaged slices found by the verification: one line on stderr (they are recomputed)."""
    sys.stderr.write(f"\nnapari-sam embed: warning: {message}\n")


def _scheduler_address(address: str) -> str:
    return address if "://" in address else f"tcp://{address}"


def _connect(address: str, timeout: float):
    from distributed import Client

    from napari_sam.cli._common import UserError

    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as err:
        raise UserError(
            f"no Dask scheduler answered at {address} within {timeout:g} s ({err}). Check the "
            "address and that the scheduler is running, or leave out --scheduler to start a "
            "local cluster"
        ) from err


def _run_distributed(args: argparse.Namespace, progress):
    import logging

    from napari_sam.store import embed_stack_distributed

    options = {
        "device": args.device,
        "precision": args.precision,
        "contrast_limits": args.contrast_limits,
        "slice_axes": 3 if args.rgb else 2,
        "dtype": args.dtype,
        "verify": not args.no_verify,
        "overwrite": args.overwrite,
        "max_slices": args.max_slices,
        "progress": progress,
        "on_damage": _warn_damage,
    }
    if args.scheduler:
        address = _scheduler_address(args.scheduler)
        with _connect(address, args.timeout) as client:
            return embed_stack_distributed(
                args.stack, args.out, args.model, client=client, **options
            )
    from distributed import Client, LocalCluster

    from napari_sam.cli._common import check_dask_scratch

    check_dask_scratch()  # a worker that cannot write its scratch space never starts
    n = args.workers
    with (
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):
        threads = max(1, (os.cpu_count() or 1) // n)
        return embed_stack_distributed(
            args.stack, args.out, args.model, client=client, torch_threads=threads, **options
        )


def _run_local(args: argparse.Namespace, progress):
    from napari_sam.io import read_image
    from napari_sam.predictor import Predictor
    from napari_sam.store import EmbeddingStore, embed_missing

    stack = read_image(args.stack, lazy=True)
    predictor = Predictor(args.model, device=args.device, precision=args.precision)
    store = EmbeddingStore.for_stack(
        args.out,
        stack,
        predictor,
        contrast_limits=args.contrast_limits,
        slice_axes=3 if args.rgb else 2,
        dtype=args.dtype,
        overwrite=args.overwrite,
    )
    return embed_missing(
        store,
        stack,
        predictor,
        verify=not args.no_verify,
        max_slices=args.max_slices,
        progress=progress,
        on_damage=_warn_damage,
    )


def run(args: argparse.Namespace) -> int:
    from napari_sam.cli._common import UserError, progress_printer
    from napari_sam.store import StoreWriteError

    _check_args(args)
    progress = None if args.quiet else progress_printer("embedding")
    try:
        if args.workers == 0 and not args.scheduler:
            report = _run_local(args, progress)
        else:
            report = _run_distributed(args, progress)
    except (StoreWriteError, FileExistsError) as err:
        raise UserError(str(err)) from err
    except BaseException:
        if progress is not None:
            sys.stderr.write("\n")
        raise
    if progress is not None and report.missing:
        sys.stderr.write("\n")  # the progress bar ends its line only when complete
    print(f"{args.out}: {report.summary()}")
    return 0
