"""``python -m napari_sam.training {train,validate,export}``."""

from __future__ import annotations

import sys

from napari_sam.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
