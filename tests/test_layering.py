"""Compute modules import neither napari nor Qt (the GUI layer stays thin)."""

from __future__ import annotations

import subprocess
import sys

import pytest

COMPUTE_MODULES = [
    "napari_sam.predictor",
    "napari_sam.normalize",
    "napari_sam.model.checkpoint",
    "napari_sam.labels",
    "napari_sam.io",
    "napari_sam.cache",
    "napari_sam.propagation",
    "napari_sam.everything",
    "napari_sam.store",
    "napari_sam.synthetic",
    "napari_sam.annotation.prompts",
    "napari_sam.annotation.slicing",
    "napari_sam.cli",
]

CODE = """
import importlib, sys
importlib.import_module({name!r})
print([m for m in ("napari", "qtpy", "PyQt6", "PySide6", "PyQt5", "magicgui") if m in sys.modules])
"""


@pytest.mark.parametrize("name", COMPUTE_MODULES)
def test_compute_module_has_no_gui_imports(name):
    out = subprocess.run(
        [sys.executable, "-c", CODE.format(name=name)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]", f"{name} imports {out}"
