"""``import napari_sam`` stays light: no torch, Qt or napari.

Its import time is measured by ``benchmarks/speed.py``, not asserted here.
"""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys, time
t = time.perf_counter()
import napari_sam
dt = time.perf_counter() - t
heavy = [m for m in ("torch", "napari", "qtpy", "PyQt6", "PySide6", "PyQt5") if m in sys.modules]
print(dt, heavy)
"""


def test_import_is_light():
    out = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, check=True
    ).stdout.split(maxsplit=1)
    assert out[1].strip() == "[]"


def test_public_names_resolve_lazily():
    import napari_sam

    for name in ("Predictor", "Prediction", "load_model", "available_models", "segment_slice"):
        assert callable(getattr(napari_sam, name))
    assert set(napari_sam.__all__) >= {"Annotator", "propagate", "segment_everything"}
