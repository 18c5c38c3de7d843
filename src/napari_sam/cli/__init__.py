"""The ``napari-sam`` command line: one module per subcommand in this package.

Each subcommand module defines ``register(subparsers)``, which adds its parser
and sets ``func=run`` on it; heavy imports happen inside ``run``. Subcommands
are discovered from the modules of this package, in alphabetical order.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-sam",
        description="Segment Anything for microscopy stacks, from the command line.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        importlib.import_module(f"{__name__}.{info.name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``napari-sam``; returns the exit status."""
    from napari_sam.cli._common import USER_ERRORS

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        print(f"napari-sam {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file or folder the system refused: one line, no traceback
        from napari_sam.cli._common import describe_os_error

        print(f"napari-sam {args.command}: error: {describe_os_error(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-sam {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
