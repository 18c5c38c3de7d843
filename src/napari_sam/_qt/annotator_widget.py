"""The dock widget: a thin face on :class:`napari_sam.annotator.Annotator`.

One annotator is active at a time, for the image chosen in the menu. Its
layers are remembered per image, so switching back and forth reuses them;
switching cancels the old annotator's work in flight (its results are
dropped). Every long computation runs in a worker (``blocking=False``).

The buttons and the key bindings come from one table
(:data:`napari_sam.annotation.actions.ACTIONS`); the status line and the
progress bar observe the annotator's evented state
(:class:`~napari_sam.annotation.state.AnnotatorState`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QLabel,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from napari_sam._qt.hover import HoverPreview
from napari_sam._qt.job_panel import JobPanel
from napari_sam._qt.key_bindings import KEY_BINDINGS, bind_annotator_keys
from napari_sam._qt.model_selector import ModelSelector
from napari_sam.annotation.actions import ACTIONS, Action, Choices, action, key_for
from napari_sam.cache import DEFAULT_CACHE_SIZE, EmbeddingCache
from napari_sam.model.registry import DEFAULT_MODEL

__all__ = ["NEW_LABELS", "AnnotatorWidget"]

#: Labels menu entry that creates a new Labels layer.
NEW_LABELS = "new labels layer"


class AnnotatorWidget(QWidget):
    """SAM annotation dock widget.

    Parameters
    ----------
    napari_viewer : the viewer (npe2 passes it)
    predictor : optional predictor to use instead of loading the chosen model
        (scripts and tests)
    model : initial model (registry name or checkpoint path)
    cache_size : slice embeddings kept in memory, shared by all images
    """

    def __init__(
        self,
        napari_viewer: Any,
        predictor: Any = None,
        model: str = DEFAULT_MODEL,
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.annotator: Any = None
        self._predictor = predictor  # given, or the last one loaded (shared between images)
        self.cache = EmbeddingCache(cache_size)
        self._layers: dict[Any, dict[str, Any]] = {}  # image uid -> adopted layers
        self._unbind: Callable[[], None] | None = None
        self.hover = HoverPreview(napari_viewer, parent=self)
        self.buttons: dict[str, QPushButton] = {}
        #: extra keyword arguments of napari_sam.everything.segment_everything
        self.everything_params: dict[str, Any] = {}
        self._opening = False
        self._build(model)
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self._refresh_images()

    # ------------------------------------------------------------------ UI
    def _build(self, model: str) -> None:
        layout = QVBoxLayout(self)
        form = QFormLayout()
        self.image_combo = QComboBox(self)
        self.image_combo.setToolTip("Image layer to annotate (one image layer = one stack)")
        self.image_combo.currentIndexChanged.connect(self._on_image_chosen)
        form.addRow("image", self.image_combo)
        self.labels_combo = QComboBox(self)
        self.labels_combo.setToolTip(
            "Labels layer to write into: a new one, or an existing layer of the image's "
            "shape (its labels are kept)"
        )
        self.labels_combo.activated.connect(self._on_labels_chosen)
        form.addRow("labels", self.labels_combo)
        self.model_selector = ModelSelector(self, model)
        self.model_selector.changed.connect(self._on_model_changed)
        form.addRow("model", self.model_selector)
        layout.addLayout(form)

        prompts = QGroupBox("prompts", self)
        grid = QGridLayout(prompts)
        self.positive_radio = QRadioButton("positive", prompts)
        self.negative_radio = QRadioButton("negative", prompts)
        self.positive_radio.setChecked(True)
        group = QButtonGroup(prompts)
        group.addButton(self.positive_radio)
        group.addButton(self.negative_radio)
        tip = f"New points are foreground / background ({key_for('toggle')} toggles)"
        self.positive_radio.setToolTip(tip)
        self.negative_radio.setToolTip(tip)
        self.positive_radio.toggled.connect(self._on_mode)
        self.batch_check = QCheckBox("each positive point is an object", prompts)
        self.batch_check.setToolTip(
            f"Segment every positive point as its own object ({key_for('segment_batch')})"
        )
        self.auto_check = QCheckBox("segment on every prompt", prompts)
        self.auto_check.setChecked(True)
        self.auto_check.setToolTip("Preview as soon as a point or box is added")
        self.auto_check.toggled.connect(self._on_auto)
        self.hover_check = QCheckBox("hover preview", prompts)
        self.hover_check.setToolTip(
            "Preview the object under the mouse (slices without prompts, embedding ready)"
        )
        self.hover_check.toggled.connect(self.hover.set_enabled)
        grid.addWidget(self.positive_radio, 0, 0)
        grid.addWidget(self.negative_radio, 0, 1)
        grid.addWidget(self.batch_check, 1, 0, 1, 2)
        grid.addWidget(self.auto_check, 2, 0)
        grid.addWidget(self.hover_check, 2, 1)
        layout.addWidget(prompts)

        actions = self._button_box("actions", layout)
        grid = actions.layout()
        self.direction_combo = QComboBox(actions)
        self.direction_combo.addItems(["both", "up", "down"])
        self.direction_combo.setToolTip("Propagate towards both ends, higher z (up) or lower z")
        grid.addWidget(QLabel("propagate", actions), grid.rowCount(), 0)
        grid.addWidget(self.direction_combo, grid.rowCount() - 1, 1)

        box = self._button_box("everything", layout)
        self.stack_check = QCheckBox("whole stack (objects linked through z)", box)
        self.stack_check.setToolTip(
            "Segment every slice of the stack (z, at this time point) and link the objects "
            "through z; 'Commit everything' then commits 3D objects (one undo step)"
        )
        box.layout().addWidget(self.stack_check, 1, 0, 1, 2)
        self.everything_box = box
        self._button_box("files", layout, title="prompt files")

        self.jobs = JobPanel(self)
        self.status = self.jobs.status
        layout.addWidget(self.jobs)
        keys = ", ".join(f"{a.label} {a.name.replace('_', ' ')}" for a in KEY_BINDINGS)
        self.setToolTip(f"Keys (on the SAM points/boxes layers): {keys}")
        layout.addStretch(1)

    def _button_box(self, group: str, layout: QVBoxLayout, title: str = "") -> QGroupBox:
        """A box with the buttons of the actions of ``group``, two per row."""
        box = QGroupBox(title or group, self)
        grid = QGridLayout(box)
        for i, act in enumerate(a for a in ACTIONS if a.group == group and a.text):
            button = QPushButton(act.text, box)
            button.setToolTip(act.tooltip)
            button.clicked.connect(lambda checked=False, act=act: self.run_action(act))
            grid.addWidget(button, i // 2, i % 2)
            self.buttons[act.name] = button
        layout.addWidget(box)
        return box

    # ------------------------------------------------------------ images
    def _image_layers(self) -> list[Any]:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_images(self, event: Any = None) -> None:
        if self._opening:  # the annotator adding its own layers
            return
        images = self._image_layers()
        current = self.annotator.image_layer if self.annotator is not None else None
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        for layer in images:
            self.image_combo.addItem(layer.name, layer)
        if current in images:
            self.image_combo.setCurrentIndex(images.index(current))
        self.image_combo.blockSignals(False)
        if current not in images:
            self._on_image_chosen(self.image_combo.currentIndex())
        self._refresh_labels()
        self._update_enabled()

    def _refresh_labels(self) -> None:
        """List "new" and the Labels layers of the image's shape (not our helper layers)."""
        from napari.layers import Labels

        ann = self.annotator
        self.labels_combo.blockSignals(True)
        self.labels_combo.clear()
        self.labels_combo.addItem(NEW_LABELS, None)
        if ann is not None:
            ours = {ly.get("preview_layer") for ly in self._layers.values()}
            ours.add(ann.everything_layer)
            for layer in self.viewer.layers:
                if (isinstance(layer, Labels) and layer not in ours and not layer.multiscale
                        and tuple(layer.data.shape) == ann.geometry.shape):
                    self.labels_combo.addItem(layer.name, layer)
                    if layer is ann.labels_layer:
                        self.labels_combo.setCurrentIndex(self.labels_combo.count() - 1)
        self.labels_combo.blockSignals(False)

    def _on_labels_chosen(self, index: int) -> None:
        ann = self.annotator
        chosen = self.labels_combo.itemData(index)
        if ann is None or chosen is ann.labels_layer:
            return
        image = ann.image_layer
        kept = self._layers.setdefault(image.unique_id, {})
        if chosen is None:
            kept.pop("labels_layer", None)  # a new one
        else:
            kept["labels_layer"] = chosen
        self._close_annotator()
        self._open_annotator(image)
        self._refresh_labels()
        self._update_enabled()

    def _on_image_chosen(self, index: int) -> None:
        layer = self.image_combo.itemData(index) if index >= 0 else None
        if self.annotator is not None and layer is self.annotator.image_layer:
            return
        self._close_annotator()
        if layer is None:
            self._show("add an image layer to annotate")
        else:
            self._open_annotator(layer)
        self._refresh_labels()
        self._update_enabled()

    def _open_annotator(self, layer: Any) -> None:
        from napari_sam.annotator import USER_ERRORS, Annotator

        kept = {
            k: v for k, v in self._layers.get(layer.unique_id, {}).items()
            if v in self.viewer.layers
        }
        self._opening = True
        try:
            ann = Annotator(
                self.viewer, layer, predictor=self._predictor,
                model=self.model_selector.model, device=self.model_selector.device,
                cache=self.cache, background=True, auto_segment=self.auto_check.isChecked(),
                **kept,
            )
        except USER_ERRORS as err:
            self._show(f"cannot annotate {layer.name!r}: {err}", error=True)
            return
        finally:
            self._opening = False
        self._layers[layer.unique_id] = {
            "labels_layer": ann.labels_layer, "points_layer": ann.points_layer,
            "shapes_layer": ann.shapes_layer, "preview_layer": ann.preview_layer,
        }
        ann.positive = self.positive_radio.isChecked()
        ann.points_layer.events.feature_defaults.connect(self._sync_mode)
        self.jobs.observe(ann.state)
        ann.state.events.jobs.connect(self._update_enabled)
        self.annotator = ann
        self.hover.annotator = ann
        self._unbind = bind_annotator_keys(ann, self.choices)
        ann.embed_in_background()  # start embedding the slice on screen

    def _close_annotator(self) -> None:
        ann, self.annotator = self.annotator, None
        self.hover.annotator = None
        if self._unbind is not None:
            self._unbind()
            self._unbind = None
        if ann is not None:
            if self._predictor is None and ann.predictor is not None:
                self._predictor = ann.predictor  # reuse the loaded model for the next image
            ann.points_layer.events.feature_defaults.disconnect(self._sync_mode)
            self.jobs.observe(None)
            ann.state.events.jobs.disconnect(self._update_enabled)
            ann.close()

    def _update_enabled(self, *_: Any) -> None:
        on = self.annotator is not None
        for name, button in self.buttons.items():
            button.setEnabled(on if name != "cancel" else on and self.annotator.busy)

    # ----------------------------------------------------------- actions
    def choices(self) -> Choices:
        """The settings of the widget that actions read (also those started by keys)."""
        return Choices(
            batch=self.batch_check.isChecked(), direction=self.direction_combo.currentText(),
            stack=self.stack_check.isChecked(), everything_params=dict(self.everything_params),
        )

    def run_action(self, act: Action | str) -> Any:
        """Run an action of the table (a button's click); the core's errors become
        notifications and the status line, never tracebacks."""
        from napari.utils.notifications import show_error

        from napari_sam.annotator import USER_ERRORS

        act = action(act) if isinstance(act, str) else act
        if self.annotator is None:
            self._show("choose an image layer first", error=True)
            return None
        choices = self.choices()
        if act.path is not None:
            ask = QFileDialog.getSaveFileName if act.path == "save" else QFileDialog.getOpenFileName
            path, _ = ask(self, act.text.rstrip("."), "", "JSON (*.json)")
            if not path:
                return None
            choices = replace(choices, path=path)
        try:
            return act.run(self.annotator, choices)
        except USER_ERRORS as err:
            show_error(f"{act.name.replace('_', ' ')} failed: {err}")
            self._show(str(err))
            return None
        finally:
            self._update_enabled()

    def _on_mode(self, positive: bool) -> None:
        if self.annotator is not None:
            self.annotator.positive = positive

    def _sync_mode(self, event: Any = None) -> None:
        """Follow Shift+T (or any change of the points' default) in the radio buttons."""
        if self.annotator is not None:
            radio = self.positive_radio if self.annotator.positive else self.negative_radio
            if not radio.isChecked():
                radio.blockSignals(True)
                radio.setChecked(True)
                radio.blockSignals(False)

    def _on_auto(self, on: bool) -> None:
        if self.annotator is not None:
            self.annotator.auto_segment = on

    def _on_model_changed(self, model: str, device: str) -> None:
        self._predictor = None  # a given predictor is replaced by the chosen model
        if self.annotator is not None:
            self.annotator.set_model(model, device=device)
            self._show(f"model {model} on {device} (loaded when needed)")
            self.annotator.embed_in_background()

    # ----------------------------------------------------------- status
    def _show(self, message: str, error: bool = False) -> None:
        self.jobs.show_message(message, error=error)

    # ----------------------------------------------------------- closing
    def close_annotator(self) -> None:
        """Stop workers, unbind keys and disconnect (the layers stay)."""
        self.hover.set_enabled(False)
        self._close_annotator()
        for emitter in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            emitter.disconnect(self._refresh_images)

    def closeEvent(self, event: Any) -> None:
        self.close_annotator()
        super().closeEvent(event)
