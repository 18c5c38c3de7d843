"""Status line and progress bar of the dock widget, observing the annotator's state."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QLabel, QProgressBar, QVBoxLayout, QWidget

__all__ = ["JobPanel"]


class JobPanel(QWidget):
    """The last message (a wrapped line) and the progress of the main running job.

    Follows an :class:`~napari_sam.annotation.state.AnnotatorState` given to
    :meth:`observe`: ``message`` changes the status line, ``jobs`` the bar
    (hidden while nothing runs; a busy indicator when the total is unknown).
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.progress = QProgressBar(self)
        self.progress.setTextVisible(True)
        self.progress.hide()
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        self._state: Any = None

    def observe(self, state: Any) -> None:
        """Follow ``state`` (None: stop following)."""
        if self._state is not None:
            self._state.events.message.disconnect(self._on_message)
            self._state.events.jobs.disconnect(self._on_jobs)
        self._state = state
        if state is not None:
            state.events.message.connect(self._on_message)
            state.events.jobs.connect(self._on_jobs)
        self._on_jobs(state.jobs if state is not None else ())

    def show_message(self, text: str, error: bool = False) -> None:
        """Show ``text`` in the status line (red for an error)."""
        self.status.setText(text)
        self.status.setStyleSheet("color: #e06060;" if error else "")

    def _on_message(self, message: Any, old: Any = None) -> None:
        self.show_message(message.text, error=message.level == "error")

    def _on_jobs(self, jobs: tuple, old: Any = None) -> None:
        job = self._state.main_job if self._state is not None else None
        if job is None:
            self.progress.hide()
            return
        self.progress.setRange(0, job.total)  # (0, 0): busy indicator
        self.progress.setValue(min(job.done, job.total))
        self.progress.setFormat(job.describe().replace("%", "%%"))
        self.progress.setToolTip(job.describe())
        self.progress.show()
