"""The dock widget: a thin face on :class:`napari_sam.annotator.Annotator`.

One annotator is active at a time, for the image chosen in the menu. Its
layers carry a tag (``metadata["napari_sam"]``), so switching back and forth,
or closing the widget and opening it again, adopts them instead of making a
second set (:func:`~napari_sam.annotation.layer_set.existing_layers`); the
helper layers of the images not being annotated are hidden, and shown again
on switching back. Switching cancels the old annotator's work in flight (its
results are dropped). Every long computation runs in a worker
(``blocking=False``) with a progress bar and Cancel.

Closing the widget (its title-bar x, which napari turns into a removal from
the window) stops the annotator: workers cancelled, keys unbound, events
disconnected. Labels and helper layers stay in the viewer.

The buttons and the key bindings come from one table
(:data:`napari_sam.annotation.actions.ACTIONS`); the job panel observes the
annotator's evented state (:class:`~napari_sam.annotation.state.AnnotatorState`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from qtpy.QtCore import QEvent, Qt
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QRadioButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from napari_sam._qt.extra_keys import ExtraKeys
from napari_sam._qt.hover import HoverPreview
from napari_sam._qt.job_panel import JobPanel
from napari_sam._qt.key_bindings import KEY_BINDINGS, bind_annotator_keys, key_layers
from napari_sam._qt.model_selector import ModelSelector
from napari_sam._qt.options_panel import OptionsPanel, Overrides
from napari_sam._qt.review_panel import ReviewPanel
from napari_sam._qt.similar_panel import SimilarPanel
from napari_sam._qt.tips import BATCH_TIP, NORMALIZATION_TIP, STOP_TIP
from napari_sam._qt.tracking_menu import AxisMenu
from napari_sam.annotation.actions import ACTIONS, Action, Choices, action, key_for
from napari_sam.cache import DEFAULT_CACHE_SIZE, EmbeddingCache
from napari_sam.everything import EverythingStackParams
from napari_sam.model.registry import DEFAULT_MODEL

__all__ = ["NEW_LABELS", "NORMALIZATION_ITEMS", "AnnotatorWidget"]

#: Labels menu entry that creates a new Labels layer.
NEW_LABELS = "new labels layer"
#: Intensity range menu: (text, Annotator normalization).
NORMALIZATION_ITEMS = (("robust (whole image)", "robust"),
                       ("display contrast limits", "display"))
#: Learn-from-labels menu: (text, Annotator.adapt objects).
ADAPT_ITEMS = (("all objects of the labels layer", "all"),
               ("objects committed in this session", "session"))

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
        self._predictor = predictor  # given, or the last base model loaded (shared)
        self.cache = EmbeddingCache(cache_size)
        self._layers: dict[Any, dict[str, Any]] = {}  # image uid -> adopted layers
        self._models: dict[Any, tuple] = {}  # image uid -> (adapted model, predictor, base)
        self._hidden: dict[Any, list[tuple[Any, bool]]] = {}  # image uid -> (layer, visible)
        self._unbind: Callable[[], None] | None = None
        self.extra_keys = ExtraKeys(self.choices)  # refine key, scribble layer (issue 19)
        self.hover = HoverPreview(napari_viewer, parent=self)
        self.buttons: dict[str, QPushButton] = {}
        self._opening = False
        self._docked = False
        self._closed = False
        self._build(model)
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)
        self.viewer.layers.selection.events.active.connect(self._on_active_layer)
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
        self.labels_combo.activated.connect(self._on_labels_chosen)
        form.addRow("commits go to", self.labels_combo)
        self.model_selector = ModelSelector(self, model)
        self.model_selector.changed.connect(self._on_model_changed)
        form.addRow("model", self.model_selector)
        self.normalization_combo = QComboBox(self)
        for text, mode in NORMALIZATION_ITEMS:
            self.normalization_combo.addItem(text, mode)
        self.normalization_combo.setToolTip(NORMALIZATION_TIP)
        self.normalization_combo.currentIndexChanged.connect(self._on_normalization)
        form.addRow("intensity range", self.normalization_combo)
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
        self.batch_check.setToolTip(BATCH_TIP.format(key=key_for("segment_batch")))
        self.batch_check.toggled.connect(self._on_batch)
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
        grid = _grid(actions)
        self.direction_combo = QComboBox(actions)
        self.direction_combo.addItems(["both", "up", "down"])
        self.direction_combo.setToolTip("Propagate towards both ends, higher z (up) or lower z")
        row = grid.rowCount()
        grid.addWidget(QLabel("propagate", actions), row, 0)
        grid.addWidget(self.direction_combo, row, 1)
        self.stop_slider = QSlider(Qt.Orientation.Horizontal, actions)
        self.stop_slider.setRange(-2, 2)
        self.stop_slider.setValue(0)
        self.stop_slider.setPageStep(1)
        self.stop_slider.setTickPosition(QSlider.TickPosition.TicksBelow)
        self.stop_slider.setToolTip(STOP_TIP)
        stop = QHBoxLayout()
        stop.addWidget(QLabel("stop earlier", actions))
        stop.addWidget(self.stop_slider, 1)
        stop.addWidget(QLabel("later", actions))
        grid.addLayout(stop, row + 1, 0, 1, 2)
        self.axis_menu = AxisMenu(actions)  # z, or t: tracking through time
        grid.addWidget(QLabel("along", actions), row + 2, 0)
        grid.addWidget(self.axis_menu, row + 2, 1)

        box = self._button_box("everything", layout)
        self.stack_check = QCheckBox("whole stack (objects linked through z)", box)
        self.stack_check.setToolTip(
            "Segment every slice of the stack (z, at this time point) and link the objects "
            "through z; 'Commit everything' then commits 3D objects (one undo step)"
        )
        _add_row(box, self.stack_check)
        # everything mode's options, generated from the fields of EverythingStackParams
        self.everything_options = OptionsPanel(EverythingStackParams, "options", model, box)
        _add_row(box, self.everything_options)
        self.similar_panel = SimilarPanel(box)  # the threshold of "find all like this"
        _add_row(box, self.similar_panel)
        self.everything_box = box
        self.review_panel = ReviewPanel(self, self.run_action)
        layout.addWidget(self.review_panel)
        learn = self._button_box("learn", layout, title="learn from your labels")
        self.adapt_combo = QComboBox(learn)
        for text, objects in ADAPT_ITEMS:
            self.adapt_combo.addItem(text, objects)
        self.adapt_combo.setToolTip(
            "What 'Learn from labels' learns from. It always starts from the base model's "
            "weights, holds about 20 % of the objects back, and uses the adapted model for "
            "this image only when it segments those better"
        )
        _grid(learn).addWidget(self.adapt_combo, 0, 1)
        self._button_box("files", layout, title="prompt files")

        self.jobs = JobPanel(self, cancel=lambda: self.run_action("cancel"))
        self.status = self.jobs.status
        layout.addWidget(self.jobs)
        keys = ", ".join(f"{a.label} {a.name.replace('_', ' ')}" for a in KEY_BINDINGS)
        self.setToolTip(f"Keys (with the image or a SAM layer selected): {keys}")
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
        if self._opening or self._closed:  # the annotator adding its own layers
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
        """The layer commits go to (selected), the other Labels layers of the image's
        shape, each saying what it holds, and "new labels layer"."""
        from napari.layers import Labels

        from napari_sam.annotation.layer_set import layer_role

        ann = self.annotator
        self.labels_combo.blockSignals(True)
        self.labels_combo.clear()
        if ann is not None:
            target = ann.labels_layer
            self.labels_combo.addItem(target.name, target)
            for layer in self.viewer.layers:
                if (isinstance(layer, Labels) and layer is not target and not layer.multiscale
                        and layer_role(layer, ann.image_layer) in (None, "labels")
                        and not _is_helper(layer)
                        and tuple(layer.data.shape) == ann.geometry.shape):
                    self.labels_combo.addItem(f"{layer.name} ({_holds(layer)})", layer)
            self.labels_combo.setToolTip(
                f"Commits go to {target.name!r}. Other Labels layers of the image's shape "
                "are listed with what they hold: choosing one adds new objects to it (its "
                "labels are kept, never replaced)"
            )
        self.labels_combo.addItem(NEW_LABELS, None)
        self.labels_combo.setCurrentIndex(0)
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
            kept["new_labels"] = True
        else:
            kept["labels_layer"] = chosen
            kept.pop("new_labels", None)
        self._close_annotator()
        self._open_annotator(image)
        self._refresh_labels()
        self._update_enabled()
        new = self.annotator
        if new is not None and chosen is not None and new.labels_layer is chosen:
            top = int(chosen.data.max())
            if top:
                self._show(f"commits now go to {chosen.name!r}, which already holds labels "
                           f"(up to id {top}): they are kept, new objects get ids from "
                           f"{top + 1}. Choose {image.name + ' labels'!r} or "
                           f"'{NEW_LABELS}' to keep your objects apart", error=True)

    def _on_image_chosen(self, index: int) -> None:
        layer = self.image_combo.itemData(index) if index >= 0 else None
        if self.annotator is not None and layer is self.annotator.image_layer:
            return
        self._close_annotator(hide=True)
        if layer is None:
            self._show("add an image layer to annotate")
        else:
            self._open_annotator(layer)
        self._refresh_labels()
        self._update_enabled()

    def _open_annotator(self, layer: Any) -> None:
        from napari_sam.annotation.layer_set import existing_layers
        from napari_sam.annotator import USER_ERRORS, Annotator

        uid = layer.unique_id
        memory = self._layers.get(uid, {})
        kept = existing_layers(self.viewer, layer)  # e.g. after the widget was reopened
        if memory.get("new_labels"):  # the user asked for a new labels layer
            kept.pop("labels_layer", None)
        kept.update({k: v for k, v in memory.items()
                     if k.endswith("_layer") and v in self.viewer.layers})
        model, predictor, base = self.model_selector.model, self._predictor, None
        if uid in self._models:  # this image's adapted model
            model, predictor, base = self._models[uid]
        self._show_helpers(uid)
        self._opening = True
        try:
            ann = Annotator(
                self.viewer, layer, predictor=predictor, model=model,
                device=self.model_selector.device, cache=self.cache, background=True,
                auto_segment=self.auto_check.isChecked(), normalization=self.normalization,
                **kept,
            )
        except USER_ERRORS as err:
            self._show(f"cannot annotate {layer.name!r}: {err}", error=True)
            return
        finally:
            self._opening = False
        ann.adapter.base = base
        self._layers[uid] = {
            "labels_layer": ann.labels_layer, "points_layer": ann.points_layer,
            "shapes_layer": ann.shapes_layer, "preview_layer": ann.preview_layer,
        }
        ann.positive = self.positive_radio.isChecked()
        ann.points_layer.events.feature_defaults.connect(self._sync_mode)
        self.jobs.observe(ann.state)
        ann.state.events.jobs.connect(self._update_enabled)
        ann.state.events.model.connect(self._on_annotator_model)
        self.annotator = ann
        self.hover.annotator = ann
        self._unbind = bind_annotator_keys(ann, self.choices)
        self._observe_extras(ann)
        self.model_selector.set_model(ann.model)
        self.everything_options.set_model(ann.model)
        ann.embed_in_background()  # start embedding the slice on screen

    def _close_annotator(self, hide: bool = False) -> None:
        """Stop the annotator; ``hide``: also hide its helper layers (another image)."""
        from napari_sam.annotation.adapting import is_adapted

        ann, self.annotator = self.annotator, None
        self.hover.annotator = None
        if self._unbind is not None:
            self._unbind()
            self._unbind = None
        self._observe_extras(None)
        if ann is None:
            return
        uid = ann.image_layer.unique_id
        if is_adapted(ann.model) and ann.predictor is not None:
            self._models[uid] = (ann.model, ann.predictor, ann.adapter.base)
            base = ann.adapter.base
            if self._predictor is None and base is not None and base[1] is not None:
                self._predictor = base[1]  # the base model serves the other images
        else:
            self._models.pop(uid, None)
            if self._predictor is None and ann.predictor is not None:
                self._predictor = ann.predictor  # reuse the loaded model for the next image
        ann.points_layer.events.feature_defaults.disconnect(self._sync_mode)
        self.jobs.observe(None)
        ann.state.events.jobs.disconnect(self._update_enabled)
        ann.state.events.model.disconnect(self._on_annotator_model)
        ann.close()
        if hide:
            self._hide_helpers(uid, ann.layers.helpers)

    def _hide_helpers(self, uid: Any, layers: tuple) -> None:
        """Hide an image's helper layers (not deleted), remembering which were shown."""
        shown = self._hidden.setdefault(uid, [])
        for layer in layers:
            if layer in self.viewer.layers and all(layer is not ly for ly, _ in shown):
                shown.append((layer, bool(layer.visible)))
                layer.visible = False

    def _show_helpers(self, uid: Any) -> None:
        for layer, visible in self._hidden.pop(uid, []):
            if layer in self.viewer.layers:
                layer.visible = visible

    def _observe_extras(self, ann: Any) -> None:
        """The panels of issue 19 follow ``ann`` (None: nothing)."""
        self.extra_keys.detach()
        if ann is not None:
            self.extra_keys.attach(ann)
        self.axis_menu.set_annotator(ann)
        self.similar_panel.observe(ann)
        self.review_panel.observe(ann)

    def _update_enabled(self, *_: Any) -> None:
        on = self.annotator is not None
        for name, button in self.buttons.items():
            button.setEnabled(on if name != "cancel" else on and self.annotator.busy)

    # ----------------------------------------------------------- actions
    @property
    def everything_params(self) -> Overrides:
        """Everything mode's options set in the panel or by a script (others: defaults)."""
        return self.everything_options.overrides

    @everything_params.setter
    def everything_params(self, values: Mapping[str, Any]) -> None:
        self.everything_options.overrides.replace(values)

    @property
    def normalization(self) -> str:
        """The chosen intensity range mode (``"robust"`` or ``"display"``)."""
        return str(self.normalization_combo.currentData())

    def choices(self) -> Choices:
        """The settings of the widget that actions read (also those started by keys)."""
        return Choices(
            batch=self.batch_check.isChecked(), direction=self.direction_combo.currentText(),
            stack=self.stack_check.isChecked(), everything_params=dict(self.everything_params),
            stop=int(self.stop_slider.value()),
            adapt_objects=str(self.adapt_combo.currentData()), axis=self.axis_menu.axis,
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

    def _on_batch(self, on: bool) -> None:
        ann = self.annotator
        if ann is not None and ann.auto_segment and ann.preview is not None:
            self.run_action("segment")  # the preview follows the choice

    def _on_normalization(self, index: int) -> None:
        if self.annotator is not None:
            self.annotator.normalization = self.normalization
            self._show(f"intensity range: {self.annotator.intensity.describe()}")

    def _on_model_changed(self, model: str, device: str) -> None:
        self._predictor = None  # a given predictor is replaced by the chosen model
        ann = self.annotator
        if ann is None:
            return
        self._models.pop(ann.image_layer.unique_id, None)
        base = ann.adapter.base
        if base is not None and base[0] == model and base[1] is not None:
            ann.set_model(model, predictor=base[1])  # back to the base model, still loaded
            self._predictor = base[1]
        else:
            ann.set_model(model, device=device)
        self._show(f"model {self.model_selector.model_combo.currentText()} on {device} "
                   "(loaded when needed)")
        ann.embed_in_background()

    def _on_annotator_model(self, model: str, old: Any = None) -> None:
        """The annotator switched model itself (an adapted one): the menu follows."""
        self.model_selector.refresh()
        self.model_selector.set_model(model)
        self.everything_options.set_model(model)

    def _on_active_layer(self, event: Any = None) -> None:
        """Say which layers take the keys when the user selects another one."""
        ann, active = self.annotator, self.viewer.layers.selection.active
        if ann is None or active is None or self._opening:
            return
        if all(active is not layer for layer in key_layers(ann)):
            self._show(f"{active.name!r} is selected: the SAM keys "
                       f"({key_for('segment')}, {key_for('commit')}...) work with "
                       f"{ann.image_layer.name!r} or its SAM layers selected")

    # ----------------------------------------------------------- status
    def _show(self, message: str, error: bool = False) -> None:
        self.jobs.show_message(message, error=error)

    # ----------------------------------------------------------- closing
    def close_annotator(self) -> None:
        """Stop workers, unbind keys and disconnect (the layers stay)."""
        if self._closed:
            return
        self._closed = True
        self.hover.set_enabled(False)
        self._close_annotator()
        for emitter, slot in ((self.viewer.layers.events.inserted, self._refresh_images),
                              (self.viewer.layers.events.removed, self._refresh_images),
                              (self.viewer.layers.selection.events.active,
                               self._on_active_layer)):
            emitter.disconnect(slot)

    def closeEvent(self, event: Any) -> None:
        self.close_annotator()
        super().closeEvent(event)

    def event(self, event: Any) -> bool:
        """napari's title-bar x takes the widget out of its dock (``setParent(None)``)
        and deletes the dock, without a close event: stop the annotator then."""
        if event.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked:
                self.close_annotator()
        return super().event(event)


def _grid(box: QWidget) -> QGridLayout:
    """The grid of a box made by :meth:`AnnotatorWidget._button_box`."""
    grid = box.layout()
    assert isinstance(grid, QGridLayout)
    return grid


def _add_row(box: QWidget, widget: QWidget) -> None:
    """``widget`` on a new row of a button box, across both columns."""
    grid = _grid(box)
    grid.addWidget(widget, grid.rowCount(), 0, 1, 2)


def _is_helper(layer: Any) -> bool:
    """A layer an annotator made that is not a labels output (preview, everything)."""
    from napari_sam.annotation.layer_set import METADATA_KEY

    tag = getattr(layer, "metadata", {}).get(METADATA_KEY)
    return isinstance(tag, dict) and tag.get("role") not in (None, "labels")


def _holds(layer: Any) -> str:
    """What a Labels layer holds, for the menu (cheap for large arrays)."""
    import numpy as np

    data = layer.data
    if not isinstance(data, np.ndarray) or data.size > 50_000_000:
        return "existing layer"
    top = int(data.max()) if data.size else 0
    return f"existing, ids up to {top}" if top else "existing, empty"
