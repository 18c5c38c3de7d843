"""Model and device choice: registry names plus "load from file...", and a device menu."""

from __future__ import annotations

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QWidget

from napari_sam.model.registry import DEFAULT_MODEL, available_models

__all__ = ["DEVICES", "LOAD_FROM_FILE", "ModelSelector"]

#: Menu entry that opens a file dialog for a checkpoint.
LOAD_FROM_FILE = "load from file..."
#: Device choices passed to the predictor.
DEVICES = ("auto", "cpu", "cuda", "mps")


class ModelSelector(QWidget):
    """Two menus: the model (registry name or checkpoint path) and the device.

    Emits ``changed(model, device)`` when the user picks another model or device.
    """

    changed = Signal(str, str)

    def __init__(self, parent: QWidget | None = None, model: str = DEFAULT_MODEL) -> None:
        super().__init__(parent)
        self.model_combo = QComboBox(self)
        self.model_combo.setToolTip(
            "SAM model: a registry name (downloaded once, then offline) or a checkpoint file"
        )
        for name in available_models():
            self.model_combo.addItem(name)
        self.model_combo.addItem(LOAD_FROM_FILE)
        self.device_combo = QComboBox(self)
        self.device_combo.addItems(DEVICES)
        self.device_combo.setToolTip("Where the model runs; auto: CUDA, then MPS, then CPU")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.model_combo, 3)
        layout.addWidget(self.device_combo, 1)
        self._model = model
        self.set_model(model)
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

    def set_model(self, model: str) -> None:
        """Select ``model`` (added to the menu when it is a path), without emitting."""
        index = self.model_combo.findText(model)
        if index < 0:
            self.model_combo.insertItem(self.model_combo.count() - 1, model)
            index = self.model_combo.findText(model)
        self.model_combo.blockSignals(True)
        self.model_combo.setCurrentIndex(index)
        self.model_combo.blockSignals(False)
        self._model = model

    def _on_model_activated(self, index: int) -> None:
        text = self.model_combo.itemText(index)
        if text == LOAD_FROM_FILE:
            path, _ = QFileDialog.getOpenFileName(
                self, "SAM checkpoint", "", "Checkpoints (*.pt *.pth *.safetensors);;All (*)"
            )
            if not path:
                self.set_model(self._model)  # back to the previous choice
                return
            text = path
        if text != self._model:
            self.set_model(text)
            self._emit()

    def _emit(self, *_: object) -> None:
        self.changed.emit(self._model, self.device)
