"""Keys beyond :func:`~napari_sam._qt.key_bindings.bind_annotator_keys`: the refine key on
a user's own labels layer, and every annotator key on a scribble layer made later.

A labels layer the annotator adopted (painted, imported) keeps its own keys,
except the refine key (Shift+R: refine the label under the cursor), which is
what one presses there. A scribble layer created after the keys were bound
(the "Scribbles" button) gets the annotator's keys as soon as it is added.
Everything bound here is removed by :meth:`ExtraKeys.detach`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari_sam._qt.key_bindings import KEY_BINDINGS, _guarded
from napari_sam.annotation.actions import Choices, action

__all__ = ["ExtraKeys"]


class ExtraKeys:
    """The extra key bindings of one annotator (see the module doc)."""

    def __init__(self, choices: Callable[[], Choices]) -> None:
        self.choices = choices
        self.annotator: Any = None
        self._bound: list[tuple[Any, str, Any, Any]] = []

    def _bind(self, layer: Any, actions: Any) -> None:
        from napari.utils.key_bindings import coerce_keybinding

        for act in actions:
            handler = _guarded(self.annotator, act, self.choices)
            before = layer.keymap.get(coerce_keybinding(act.key))
            layer.bind_key(act.key, handler, overwrite=True)
            self._bound.append((layer, act.key, handler, before))

    def attach(self, annotator: Any) -> None:
        """Bind for ``annotator`` (after :func:`bind_annotator_keys`)."""
        self.detach()
        self.annotator = annotator
        if not annotator.owns_labels:
            self._bind(annotator.labels_layer, [action("refine_here")])
        annotator.viewer.layers.events.inserted.connect(self._on_inserted)

    def _on_inserted(self, event: Any) -> None:
        from napari_sam.annotation.layer_set import layer_role
        from napari_sam.annotation.scribbling import SCRIBBLE_ROLE

        ann, layer = self.annotator, getattr(event, "value", None)
        if ann is not None and layer is not None and not ann.closed and \
                layer_role(layer, ann.image_layer) == SCRIBBLE_ROLE:
            self._bind(layer, KEY_BINDINGS)

    def detach(self) -> None:
        """Remove every binding made here."""
        from napari.utils.key_bindings import coerce_keybinding

        if self.annotator is not None:
            self.annotator.viewer.layers.events.inserted.disconnect(self._on_inserted)
        for layer, key, handler, before in self._bound:
            if layer.keymap.get(coerce_keybinding(key)) is handler:  # still ours
                layer.bind_key(key, before, overwrite=True)
        self._bound.clear()
        self.annotator = None
