"""Key bindings of the annotator, from the action table, on its own layers and its image.

The keys are those of :data:`napari_sam.annotation.actions.ACTIONS` (the same
table the widget's buttons come from). They are bound per layer instance
(``layer.bind_key``), never globally: on the annotator's points, boxes and
preview layers, its labels layer when it made it, and the image layer (people
select it to adjust the contrast and then press a key). Every key is Shift +
a letter napari does not use on these layers. On the labels layer, Ctrl+Z and
Shift+Ctrl+Z still undo and redo (napari's own actions) and then refresh the
status line (napari emits no undo event). :func:`bind_annotator_keys`
returns the function that removes them again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from napari_sam.annotation.actions import ACTIONS, Action, Choices, key_for

if TYPE_CHECKING:  # pragma: no cover
    from napari_sam.annotator import Annotator

__all__ = ["KEY_BINDINGS", "KeyAction", "bind_annotator_keys", "key_for", "key_layers"]

#: One key binding (an :class:`~napari_sam.annotation.actions.Action` with a key).
KeyAction = Action
#: The actions that have a key, in table order.
KEY_BINDINGS: tuple[Action, ...] = tuple(a for a in ACTIONS if a.key)


def _guarded(
    annotator: Annotator, action: Action, choices: Callable[[], Choices]
) -> Callable[[Any], None]:
    from napari.utils.notifications import show_error

    from napari_sam.annotator import USER_ERRORS

    def handler(layer: Any) -> None:
        if annotator.closed:
            return
        try:
            action.run(annotator, choices())
        except USER_ERRORS as err:
            show_error(f"{action.description} failed: {err}")

    handler.__doc__ = action.description
    handler.__name__ = f"napari_sam_{action.name}"
    return handler


def _history_key(annotator: Annotator, redo: bool) -> Callable[[Any], None]:
    def handler(layer: Any) -> None:
        layer.redo() if redo else layer.undo()
        if not annotator.closed:
            annotator.segmenter.after_undo("redone" if redo else "undone")

    handler.__doc__ = "Redo, then refresh the SAM status" if redo else "Undo, then refresh"
    handler.__name__ = f"napari_sam_{'redo' if redo else 'undo'}"
    return handler


def key_layers(annotator: Annotator, image: bool = True) -> list[Any]:
    """The layers that get the annotator's keys (see the module doc)."""
    layers = [annotator.points_layer, annotator.shapes_layer, annotator.preview_layer]
    if getattr(annotator, "scribble_layer", None) is not None:  # painted strokes
        layers.append(annotator.scribble_layer)
    if annotator.owns_labels:
        layers.append(annotator.labels_layer)
    if image:
        layers.append(annotator.image_layer)
    return layers


def bind_annotator_keys(
    annotator: Annotator, choices: Callable[[], Choices] | None = None, *, image: bool = True
) -> Callable[[], None]:
    """Bind :data:`KEY_BINDINGS` on :func:`key_layers` (``image``: the image layer too).

    The labels layer gets them when the annotator created it (a user's own
    Labels layer is left alone). ``choices()`` gives the widget's current
    settings (default: :class:`~napari_sam.annotation.actions.Choices`'s
    defaults). Returns ``unbind()``, which removes exactly the bindings added here.
    """
    from napari.utils.key_bindings import coerce_keybinding

    choices = choices or Choices
    layers = key_layers(annotator, image)
    bound: list[tuple[Any, Any, Any, Any]] = []  # (layer, key, handler, before)
    for layer in layers:
        for action in KEY_BINDINGS:
            handler = _guarded(annotator, action, choices)
            before = layer.keymap.get(coerce_keybinding(action.key))  # given back on unbind
            layer.bind_key(action.key, handler, overwrite=True)
            bound.append((layer, action.key, handler, before))
    from app_model.types import KeyCode, KeyMod

    labels = annotator.labels_layer
    undo_key = KeyMod.CtrlCmd | KeyCode.KeyZ  # Cmd+Z on macOS, as napari binds it
    for key, redo in ((undo_key, False), (undo_key | KeyMod.Shift, True)):
        handler = _history_key(annotator, redo)
        before = labels.keymap.get(coerce_keybinding(key))
        labels.bind_key(key, handler, overwrite=True)
        bound.append((labels, key, handler, before))

    def unbind() -> None:
        for layer, key, handler, before in bound:
            if layer.keymap.get(coerce_keybinding(key)) is handler:  # still ours
                layer.bind_key(key, before, overwrite=True)
        bound.clear()

    return unbind
