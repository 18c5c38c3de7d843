"""Key bindings of the annotator, from the action table, on the annotator's own layers only.

The keys are those of :data:`napari_sam.annotation.actions.ACTIONS` (the same
table the widget's buttons come from). They are bound per layer instance
(``layer.bind_key``), never globally, and :func:`bind_annotator_keys` returns
the function that removes them again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from napari_sam.annotation.actions import ACTIONS, Action, Choices, key_for

if TYPE_CHECKING:  # pragma: no cover
    from napari_sam.annotator import Annotator

__all__ = ["KEY_BINDINGS", "KeyAction", "bind_annotator_keys", "key_for"]

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


def bind_annotator_keys(
    annotator: Annotator, choices: Callable[[], Choices] | None = None
) -> Callable[[], None]:
    """Bind :data:`KEY_BINDINGS` on the annotator's points, shapes and preview layers.

    The labels layer gets them too when the annotator created it (a user's
    own Labels layer is left alone). ``choices()`` gives the widget's current
    settings (default: :class:`~napari_sam.annotation.actions.Choices`'s
    defaults). Returns ``unbind()``, which removes exactly the bindings added here.
    """
    choices = choices or Choices
    layers = [annotator.points_layer, annotator.shapes_layer, annotator.preview_layer]
    if annotator.owns_labels:
        layers.append(annotator.labels_layer)
    bound: list[tuple[Any, str, Any]] = []
    for layer in layers:
        for action in KEY_BINDINGS:
            handler = _guarded(annotator, action, choices)
            layer.bind_key(action.key, handler, overwrite=True)
            bound.append((layer, action.key, handler))

    def unbind() -> None:
        from napari.utils.key_bindings import coerce_keybinding

        for layer, key, handler in bound:
            if layer.keymap.get(coerce_keybinding(key)) is handler:  # still ours
                layer.bind_key(key, None)
        bound.clear()

    return unbind
