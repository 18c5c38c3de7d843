"""Model and device choice: registry names, adapted models, "load from file...", devices."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QWidget

from napari_sam.model.registry import DEFAULT_MODEL, available_models

__all__ = ["DEVICES", "LOAD_FROM_FILE", "ModelSelector", "adapted_models", "model_label"]

#: Menu entry that opens a file dialog for a checkpoint.
LOAD_FROM_FILE = "load from file..."
#: Device choices passed to the predictor.
DEVICES = ("auto", "cpu", "cuda", "mps")


def adapted_models(folder: str | Path | None = None) -> list[Path]:
    """Saved adapted models (weights with their JSON record) in ``folder``
    (default ``cache_dir()/adapted``), by name."""
    from napari_sam.adaptation import read_record

    if folder is None:
        from napari_sam.model.checkpoint import cache_dir

        folder = cache_dir() / "adapted"
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.pt") if read_record(p) is not None)


def model_label(model: str) -> str:
    """How a model reads in the menu: registry names as they are, adapted models as
    ``"micro adapted to nuclei"``, other paths as their file name."""
    from napari_sam.annotation.adapting import is_adapted
    from napari_sam.model.registry import ADAPTED_TAG, base_model_name

    if model in available_models() or model == LOAD_FROM_FILE:
        return model
    if is_adapted(model):
        base = base_model_name(model)
        if ADAPTED_TAG in model:
            return f"{base} adapted (not saved)"
        image = Path(model).stem.split("__")[0]
        return f"{base} adapted to {image}"
    return Path(model).name or model


class ModelSelector(QWidget):
    """Two menus: the model (registry name, adapted model or checkpoint path) and the device.

    The model menu lists the registry models (the way back to a base model),
    the adapted models saved under ``cache_dir()/adapted`` ("micro adapted to
    <image>"), and "load from file...". Each entry's data is the model's name
    or path. Emits ``changed(model, device)`` when the user picks another
    model or device.
    """

    changed = Signal(str, str)

    def __init__(self, parent: QWidget | None = None, model: str = DEFAULT_MODEL) -> None:
        super().__init__(parent)
        self.model_combo = QComboBox(self)
        self.model_combo.setToolTip(
            "SAM model: a registry name (downloaded once, then offline), a model adapted to "
            "your labels ('Learn from labels'; pick its base model to go back), or a "
            "checkpoint file"
        )
        self.device_combo = QComboBox(self)
        self.device_combo.addItems(DEVICES)
        self.device_combo.setToolTip("Where the model runs; auto: CUDA, then MPS, then CPU")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.model_combo, 3)
        layout.addWidget(self.device_combo, 1)
        self._model = model
        self.refresh()
        self.model_combo.activated.connect(self._on_model_activated)
        self.device_combo.currentTextChanged.connect(self._emit)

    @property
    def model(self) -> str:
        """The chosen registry name or checkpoint path."""
        return self._model

    @property
    def device(self) -> str:
        """The chosen device."""
        return self.device_combo.currentText()

    def models(self) -> list[str]:
        """The models listed (names or paths), in menu order."""
        return [str(self.model_combo.itemData(i)) for i in range(self.model_combo.count())]

    def refresh(self) -> None:
        """List the registry and the saved adapted models again (keeps the choice)."""
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for name in available_models():
            self.model_combo.addItem(name, name)
        for path in adapted_models():
            self.model_combo.addItem(model_label(str(path)), str(path))
            self.model_combo.setItemData(self.model_combo.count() - 1, str(path), 3)  # tooltip
        self.model_combo.addItem(LOAD_FROM_FILE, LOAD_FROM_FILE)
        self.model_combo.blockSignals(False)
        self.set_model(self._model)

    def set_model(self, model: str) -> None:
        """Select ``model`` (added to the menu when it is not listed), without emitting."""
        index = self.model_combo.findData(model)
        if index < 0:
            self.model_combo.insertItem(self.model_combo.count() - 1, model_label(model), model)
            index = self.model_combo.findData(model)
        self.model_combo.blockSignals(True)
        self.model_combo.setCurrentIndex(index)
        self.model_combo.blockSignals(False)
        self._model = model

    def _on_model_activated(self, index: int) -> None:
        model = str(self.model_combo.itemData(index))
        if model == LOAD_FROM_FILE:
            path, _ = QFileDialog.getOpenFileName(
                self, "SAM checkpoint", "", "Checkpoints (*.pt *.pth *.safetensors);;All (*)"
            )
            if not path:
                self.set_model(self._model)  # back to the previous choice
                return
            model = path
        if model != self._model:
            self.set_model(model)
            self._emit()

    def _emit(self, *_: object) -> None:
        self.changed.emit(self._model, self.device)
