"""Throttled hover preview: the single-point mask under the mouse, decoder only (no zoom)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QObject, QTimer

from napari_sam.annotation.state import Message

if TYPE_CHECKING:  # pragma: no cover
    from napari_sam.annotator import Annotator

__all__ = ["HoverPreview"]


class HoverPreview(QObject):
    """While enabled, preview the mask under the mouse at most every ``interval_ms``.

    Mouse moves only store the position; a single-shot timer then calls
    :meth:`Annotator.hover` with the latest one, so a fast-moving mouse costs
    one decoder call per interval. Nothing happens on slices that have
    prompts or whose embedding is not ready yet.
    """

    def __init__(self, viewer: Any, interval_ms: int = 120, parent: QObject | None = None):
        super().__init__(parent)
        self.viewer = viewer
        self.annotator: Annotator | None = None
        self._position: tuple[float, ...] | None = None
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._fire)
        self._enabled = False

    @property
    def enabled(self) -> bool:
        """Whether mouse moves are followed."""
        return self._enabled

    def set_enabled(self, enabled: bool) -> None:
        """Start or stop following the mouse."""
        callbacks = self.viewer.mouse_move_callbacks
        if enabled and not self._enabled:
            callbacks.append(self._on_move)
        elif not enabled and self._enabled:
            if self._on_move in callbacks:
                callbacks.remove(self._on_move)
            self._timer.stop()
        self._enabled = enabled

    def _on_move(self, viewer: Any, event: Any) -> None:
        self._position = tuple(event.position)
        if not self._timer.isActive():
            self._timer.start()

    def _fire(self) -> None:
        ann = self.annotator
        if ann is None or ann.closed or self._position is None:
            return
        try:
            ann.hover(self._position)
        except (ValueError, TypeError) as err:  # never a traceback from a mouse move
            ann.state.message = Message("status", f"hover preview failed: {err}")
