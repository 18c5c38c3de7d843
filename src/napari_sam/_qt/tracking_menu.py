"""The dock widget's "along" menu: which axis Propagate follows (z, or time: tracking).

Filled per image from its leading axes: a ``(Z, Y, X)`` or ``(T, Y, X)``
image offers ``z`` and ``t (time)`` for its one axis (``t`` chosen when the
layer's ``axis_labels`` say so), a ``(T, Z, Y, X)`` image its axis names
(``t``, ``z``; ``z`` chosen); a 2D image nothing (disabled). The choice is
:attr:`napari_sam.annotation.actions.Choices.axis`.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QComboBox, QWidget

__all__ = ["AxisMenu"]

TIP = (
    "The axis Propagate follows. z: through the slices of a stack. t (time): tracking, "
    "one click follows an object through a time-lapse with the same id, its motion taken "
    "into account (a division or an exit ends the track; no lineage). Direction 'up' is "
    "towards higher indices (later frames)"
)


class AxisMenu(QComboBox):
    """Axis choices of the image being annotated; ``currentData()`` is the ``axis``."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setToolTip(TIP)
        self.set_annotator(None)

    def set_annotator(self, annotator: Any) -> None:
        """Offer the axes of ``annotator``'s image (None: none)."""
        from napari_sam.annotation.tracking import TIME_NAMES

        self.blockSignals(True)
        self.clear()
        names = tuple(annotator.layers.axis_names) if annotator is not None else ()
        if len(names) == 1:
            time = names[0].strip().lower() in TIME_NAMES
            self.addItem("z", "z")
            self.addItem("t (time)", "t")
            self.setCurrentIndex(1 if time else 0)
        else:
            for i, name in enumerate(names):
                lower = name.strip().lower()
                data = "t" if lower in TIME_NAMES else ("z" if i == len(names) - 1 else i)
                self.addItem(f"{name} (time)" if data == "t" else name, data)
            self.setCurrentIndex(max(0, len(names) - 1))
        self.setEnabled(bool(names))
        self.blockSignals(False)

    @property
    def axis(self) -> Any:
        """The chosen ``axis`` (None without an image)."""
        return self.currentData() if self.count() else None
