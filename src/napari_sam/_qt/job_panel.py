"""What runs and the last message, in the dock widget: a job line, a progress bar with
Cancel, and the status line, all observing the annotator's state."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

__all__ = ["JobPanel"]


class JobPanel(QWidget):
    """The main running job (what, how far, Cancel) and the last message.

    Follows an :class:`~napari_sam.annotation.state.AnnotatorState` given to
    :meth:`observe`: ``jobs`` drives the job line (``"embedding z=3: loading
    model micro (first use)"``), the bar (a busy indicator when the total is
    unknown) and the Cancel button, all hidden while nothing runs; ``message``
    the status line underneath. ``cancel`` is called when Cancel is clicked.
    """

    def __init__(self, parent: QWidget | None = None, cancel: Any = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.job = QLabel("", self)
        self.job.setWordWrap(True)
        self.progress = QProgressBar(self)
        self.progress.setTextVisible(True)
        self.cancel_button = QPushButton("Cancel", self)
        self.cancel_button.setToolTip("Stop the running job (Shift+Q)")
        self._cancel = cancel
        self.cancel_button.clicked.connect(self._on_cancel)
        row = QHBoxLayout()
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_button)
        self.status = QLabel("", self)
        self.status.setWordWrap(True)
        layout.addWidget(self.job)
        layout.addLayout(row)
        layout.addWidget(self.status)
        self._state: Any = None
        self._show_job(None)

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

    def _on_cancel(self) -> None:
        if self._cancel is not None:
            self._cancel()

    def _show_job(self, job: Any) -> None:
        for widget in (self.job, self.progress, self.cancel_button):
            widget.setVisible(job is not None)

    def _on_jobs(self, jobs: tuple, old: Any = None) -> None:
        job = self._state.main_job if self._state is not None else None
        self._show_job(job)
        if job is None:
            return
        others = len(self._state.jobs) - 1
        more = f" (+{others} more)" if others > 0 else ""
        self.job.setText(f"{job.title}{': ' + job.text if job.text else ''}{more}")
        self.progress.setRange(0, job.total)  # (0, 0): busy indicator
        self.progress.setValue(min(job.done, job.total))
        self.progress.setFormat(f"{job.done}/{job.total}" if job.total > 0 else "working")
        self.progress.setToolTip(job.describe())
        self.cancel_button.setEnabled(True)
