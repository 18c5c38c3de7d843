""""Find all like this" in the dock widget: the similarity threshold slider.

The button is the action table's ``find_similar`` (in the everything box).
The slider sets :attr:`napari_sam.Annotator.similar_threshold`: the result
under review is re-ranked at once (nothing recomputed) and the review layer
shows the candidates scoring at least the threshold; "Commit everything"
commits them.
"""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QHBoxLayout, QLabel, QSlider, QWidget

__all__ = ["SimilarPanel"]


class SimilarPanel(QWidget):
    """``similarity >= [----|----] 0.50``: the threshold of "find all like this".

    Attributes
    ----------
    slider : 0..100 (hundredths of the score)
    value_label : the threshold, and how many candidates pass it
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.slider = QSlider(Qt.Orientation.Horizontal, self)
        self.slider.setRange(0, 100)
        self.slider.setValue(50)
        self.slider.setPageStep(5)
        self.slider.setToolTip(
            "'Find all like this': show the candidates whose similarity to the exemplars "
            "(embedding features, size, intensity) is at least this; moving it re-ranks "
            "without computing again")
        self.value_label = QLabel("0.50", self)
        self.value_label.setMinimumWidth(90)
        row.addWidget(QLabel("similarity >=", self))
        row.addWidget(self.slider, 1)
        row.addWidget(self.value_label)
        self.slider.valueChanged.connect(self._on_slider)
        self._annotator: Any = None

    @property
    def threshold(self) -> float:
        """The slider's threshold in [0, 1]."""
        return self.slider.value() / 100.0

    def observe(self, annotator: Any) -> None:
        """Drive ``annotator``'s threshold (None: stop); it takes the slider's value."""
        self._annotator = annotator
        if annotator is not None:
            annotator.similar.threshold = self.threshold
        self._on_slider(self.slider.value())

    def _on_slider(self, value: int) -> None:
        ann = self._annotator
        text = f"{value / 100:.2f}"
        if ann is not None and not ann.closed:
            if ann.similar.result is not None:
                n = ann.similar.set_threshold(value / 100)
                text += f" ({n} shown)"
            else:
                ann.similar.threshold = value / 100
        self.value_label.setText(text)
