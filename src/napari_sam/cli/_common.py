"""Options and helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import sys


class UserError(Exception):
    """A problem with the user's input, reported without a traceback."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    UserError,
    ValueError,
    KeyError,
    FileNotFoundError,
    RuntimeError,  # CheckpointError derives from it
)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--device``, ``--precision``: the same in every subcommand."""
    from napari_sam.model.registry import DEFAULT_MODEL

    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"registry name (see `napari-sam models`) or checkpoint path [{DEFAULT_MODEL}]",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps [auto]")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16", "int8"],
        help="image-encoder precision [auto]",
    )


def progress_printer(label: str):
    """A ``callback(done, total)`` that draws a one-line progress bar on stderr."""

    def callback(done: int, total: int) -> None:
        if total:
            width = 30
            filled = int(width * done / total)
            sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
            if done >= total:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(f"\r{label} {done}")
        sys.stderr.flush()

    return callback
