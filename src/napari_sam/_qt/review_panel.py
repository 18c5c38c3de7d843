"""The review of a propagation in the dock widget: the doubtful slices as a small table.

Observes ``state.review`` (:class:`~napari_sam.annotation.review.ReviewList`),
which the annotator updates with every propagated slice: one row per
doubtful object and slice (where, which label, why). Clicking a row shows
that slice and selects the label; "Next doubtful" (the action table's
``next_doubtful``, also a key) goes to the next one after the slice on screen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtWidgets import (
    QAbstractItemView,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_sam.annotation.actions import ACTIONS

__all__ = ["ReviewPanel"]

#: Rows shown before the table scrolls.
VISIBLE_ROWS = 5


class ReviewPanel(QGroupBox):
    """Doubtful slices of the last propagation, with "Next doubtful".

    Parameters
    ----------
    parent : the dock widget
    run_action : ``run_action(action)`` of the dock widget (the buttons of the
        ``"review"`` group of :data:`~napari_sam.annotation.actions.ACTIONS`)

    Attributes
    ----------
    table : one row per :class:`~napari_sam.annotation.review.Doubt`
    summary : one line: how many doubtful slices, of how many, still running
    buttons : the action buttons by name
    """

    def __init__(self, parent: QWidget | None, run_action: Callable[[Any], Any]) -> None:
        super().__init__("propagation review", parent)
        layout = QVBoxLayout(self)
        self.summary = QLabel("propagate or track an object: the slices to check are "
                              "listed here", self)
        self.summary.setWordWrap(True)
        self.table = QTableWidget(0, 3, self)
        self.table.setHorizontalHeaderLabels(["slice", "label", "why"])
        rows, header = self.table.verticalHeader(), self.table.horizontalHeader()
        assert rows is not None and header is not None  # (a table has both)
        rows.setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.table.setMaximumHeight(header.height() + VISIBLE_ROWS * rows.defaultSectionSize()
                                    + 4)
        self.table.cellClicked.connect(self._on_row)
        self.table.hide()
        row = QHBoxLayout()
        self.buttons: dict[str, QPushButton] = {}
        for act in (a for a in ACTIONS if a.group == "review" and a.text):
            button = QPushButton(act.text, self)
            button.setToolTip(act.tooltip)
            button.clicked.connect(lambda checked=False, act=act: run_action(act))
            row.addWidget(button)
            self.buttons[act.name] = button
        row.addStretch(1)
        layout.addWidget(self.summary)
        layout.addWidget(self.table)
        layout.addLayout(row)
        self._annotator: Any = None
        self._doubts: tuple = ()

    def observe(self, annotator: Any) -> None:
        """Follow ``annotator``'s ``state.review`` (None: stop)."""
        if self._annotator is not None:
            self._annotator.state.events.review.disconnect(self._on_review)
        self._annotator = annotator
        if annotator is not None:
            annotator.state.events.review.connect(self._on_review)
        self._on_review(annotator.state.review if annotator is not None else None)

    def _on_review(self, review: Any, old: Any = None) -> None:
        ann = self._annotator
        self._doubts = tuple(review.doubts) if review is not None else ()
        for button in self.buttons.values():
            button.setEnabled(bool(self._doubts))
        if review is None or ann is None:
            self.table.setRowCount(0)
            self.table.hide()
            return
        n = len(review.slices)
        running = " (running)" if review.running else ""
        self.summary.setText(
            f"{n} doubtful slice(s) of {review.n_slices} along {review.axis}{running}: check "
            "these" if n else f"no doubtful slice in {review.n_slices} along "
            f"{review.axis}{running}")
        self.table.setRowCount(len(self._doubts))
        for i, doubt in enumerate(self._doubts):
            cells = (ann.layers.where(doubt.slice_index), str(doubt.object_id), doubt.reason)
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setToolTip(doubt.reason)
                self.table.setItem(i, j, item)
        self.table.setVisible(bool(self._doubts))

    def _on_row(self, row: int, column: int = 0) -> None:
        ann = self._annotator
        if ann is not None and not ann.closed and 0 <= row < len(self._doubts):
            ann.reviewer.go_to(self._doubts[row])
