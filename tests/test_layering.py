"""Compute modules import neither napari nor Qt (the GUI layer stays thin).

Every module of ``napari_sam.annotation`` is listed here: the Qt-free ones may
not import napari, Qt or magicgui anywhere (not even inside a function); the
napari glue modules may, but only inside functions, so importing any module of
the package loads no GUI.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import napari_sam.annotation

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
    "napari_sam.cli",
]

#: annotation/ modules that never touch napari or Qt (layers are duck-typed).
ANNOTATION_QT_FREE = [
    "actions",
    "adapting",
    "embedder",
    "extended",
    "intensity",
    "jobs",
    "layers",
    "preview",
    "prompt_layers",
    "prompts",
    "propagating",
    "refining",
    "review",
    "scheduler",
    "scribbling",
    "segmenting",
    "similar_jobs",
    "slicing",
    "stack",
    "stack_jobs",
    "state",
    "store_link",
    "tracking",
]
#: annotation/ modules that are napari glue (imports inside functions only).
ANNOTATION_NAPARI_GLUE = {
    "layer_set": "creates and adopts the layers (napari.layers, colormaps)",
    "napari_worker": "starts jobs in napari.qt.threading workers, shows notifications",
    "extra_layers": "creates the scribble Labels layer (napari colormaps)",
}

GUI = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "magicgui")

CODE = """
import importlib, sys
importlib.import_module({name!r})
print([m for m in ("napari", "qtpy", "PyQt6", "PySide6", "PyQt5", "magicgui") if m in sys.modules])
"""


def _annotation_modules() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(napari_sam.annotation.__path__))


def _imports(module: str) -> set[str]:
    """Top-level names of every module imported anywhere in ``module``'s source."""
    path = Path(napari_sam.annotation.__path__[0]) / f"{module}.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_every_annotation_module_is_classified():
    listed = set(ANNOTATION_QT_FREE) | set(ANNOTATION_NAPARI_GLUE)
    assert set(_annotation_modules()) == listed, (
        "add new annotation modules to ANNOTATION_QT_FREE or ANNOTATION_NAPARI_GLUE"
    )


@pytest.mark.parametrize("module", ANNOTATION_QT_FREE)
def test_qt_free_annotation_module_never_imports_a_gui(module):
    assert not _imports(module) & set(GUI), f"annotation.{module} imports a GUI package"


@pytest.mark.parametrize(
    "name",
    COMPUTE_MODULES + [f"napari_sam.annotation.{m}" for m in _annotation_modules()],
)
def test_compute_module_has_no_gui_imports(name):
    out = subprocess.run(
        [sys.executable, "-c", CODE.format(name=name)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "[]", f"{name} imports {out}"
