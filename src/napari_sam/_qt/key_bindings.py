"""Key bindings of the annotator, bound on the annotator's own layers only.

Every binding is Shift + a letter that napari 0.9 does not use on Points,
Shapes or Labels layers or the viewer (napari uses Shift+A, Shift+L, Shift+P
and Shift+V; see ``napari.utils.shortcuts``). They are bound per layer
instance (``layer.bind_key``), never globally, and :func:`bind_annotator_keys`
returns the function that removes them again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from napari_sam.annotator import Annotator

__all__ = ["KEY_BINDINGS", "KeyAction", "bind_annotator_keys", "key_for"]


@dataclass(frozen=True)
class KeyAction:
    """One key binding.

    Attributes
    ----------
    key : napari key string, e.g. ``"Shift-S"``
    name : action name used by the widget (``"segment"``...)
    description : one line for tooltips and docs
    run : ``run(annotator)`` performs the action (asynchronously where it can)
    """

    key: str
    name: str
    description: str
    run: Callable[[Annotator], Any]

    @property
    def label(self) -> str:
        """The key as shown to users, e.g. ``"Shift+S"``."""
        return self.key.replace("-", "+")


KEY_BINDINGS: tuple[KeyAction, ...] = (
    KeyAction("Shift-S", "segment", "Segment the prompts of the current slice",
              lambda a: a.segment(blocking=False)),
    KeyAction("Shift-B", "segment_batch",
              "Segment each positive point as its own object (batch)",
              lambda a: a.segment(batch=True, blocking=False)),
    KeyAction("Shift-N", "next_mask", "Show the next candidate mask", lambda a: a.next_mask()),
    KeyAction("Shift-C", "commit", "Commit the preview into the labels layer (new id)",
              lambda a: a.commit()),
    KeyAction("Shift-T", "toggle", "Toggle positive / negative points",
              lambda a: a.toggle_positive()),
    KeyAction("Shift-X", "clear", "Clear the prompts of this slice and the preview",
              lambda a: a.clear()),
    KeyAction("Shift-Z", "propagate", "Propagate the committed object(s) through z",
              lambda a: a.propagate(blocking=False)),
    KeyAction("Shift-Q", "cancel", "Cancel the running embedding / propagation",
              lambda a: a.cancel()),
)


def key_for(name: str) -> str:
    """The user-facing key (e.g. ``"Shift+S"``) of the action ``name``."""
    for action in KEY_BINDINGS:
        if action.name == name:
            return action.label
    raise KeyError(f"no key binding named {name!r}; known: {[a.name for a in KEY_BINDINGS]}")


def _guarded(annotator: Annotator, action: KeyAction) -> Callable[[Any], None]:
    from napari.utils.notifications import show_error

    from napari_sam.annotator import USER_ERRORS

    def handler(layer: Any) -> None:
        if annotator.closed:
            return
        try:
            action.run(annotator)
        except USER_ERRORS as err:
            show_error(f"{action.description} failed: {err}")

    handler.__doc__ = action.description
    handler.__name__ = f"napari_sam_{action.name}"
    return handler


def bind_annotator_keys(annotator: Annotator) -> Callable[[], None]:
    """Bind :data:`KEY_BINDINGS` on the annotator's points, shapes and preview layers.

    The labels layer gets them too when the annotator created it (a user's
    own Labels layer is left alone). Returns ``unbind()``, which removes
    exactly the bindings added here.
    """
    layers = [annotator.points_layer, annotator.shapes_layer, annotator.preview_layer]
    if annotator.owns_labels:
        layers.append(annotator.labels_layer)
    bound: list[tuple[Any, str, Any]] = []
    for layer in layers:
        for action in KEY_BINDINGS:
            handler = _guarded(annotator, action)
            layer.bind_key(action.key, handler, overwrite=True)
            bound.append((layer, action.key, handler))

    def unbind() -> None:
        from napari.utils.key_bindings import coerce_keybinding

        for layer, key, handler in bound:
            if layer.keymap.get(coerce_keybinding(key)) is handler:  # still ours
                layer.bind_key(key, None)
        bound.clear()

    return unbind
