"""The annotator's state: one evented object that the widget (or a script) observes.

Qt- and napari-free (a ``psygnal`` evented dataclass). Every field is replaced,
never mutated in place, so each change emits exactly one event:
``state.events.<field>.connect(callback)`` gets ``(new, old)``;
``state.events.connect(callback)`` gets every change. Changes happen on the
main thread only (the job runner hands worker results over first).

What lives here is what a user sees or what the next action depends on:
the preview, the running jobs with their progress and status text, the last
commit (what propagation starts from), the pending everything result, the
slice on screen, prompts waiting for their slice's embedding, and the last
message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from psygnal import SignalGroupDescriptor

__all__ = ["AnnotatorState", "Commit", "EverythingResult", "JobStatus", "Message"]

Index = tuple[int, ...]
#: What a job does.
JobKind = Literal["embed", "propagate", "everything", "adapt"]
#: How loud a message is: ``"status"`` lines replace each other, the others
#: are also notifications.
Level = Literal["status", "info", "warning", "error"]


@dataclass(frozen=True)
class JobStatus:
    """A running job as the user sees it.

    Attributes
    ----------
    id : unique per runner
    kind : ``"embed"``, ``"propagate"``, ``"everything"`` or ``"adapt"``
    title : what runs, e.g. ``"embedding slice (3,)"``
    done, total : progress (``total == 0``: unknown)
    text : the live status line (e.g. ``"model"``, ``"batch 3 of 8"``)
    background : speculative work (prefetching) the user did not ask for
    """

    id: int
    kind: JobKind
    title: str
    done: int = 0
    total: int = 0
    text: str = ""
    background: bool = False

    @property
    def fraction(self) -> float | None:
        """``done / total`` in [0, 1], or None when the total is unknown."""
        return min(1.0, self.done / self.total) if self.total > 0 else None

    def describe(self) -> str:
        """One line: title, progress and status text."""
        count = f" {self.done}/{self.total}" if self.total > 0 else ""
        text = f" ({self.text})" if self.text else ""
        return f"{self.title}{count}{text}"


@dataclass(frozen=True)
class Commit:
    """Object ids written by a commit on one slice (one int per leading axis)."""

    slice_index: Index
    label_ids: tuple[int, ...]


@dataclass(frozen=True)
class EverythingResult:
    """The everything result waiting for review in the everything layer.

    Attributes
    ----------
    index : the slice, or (``stack``) the leading indices of the stack
    stack : a whole-stack result (3D objects) rather than one slice
    n_objects : objects found
    """

    index: Index
    stack: bool
    n_objects: int


@dataclass(frozen=True, eq=False)
class Message:
    """A message to the user (each instance is a new message, even with equal text)."""

    level: Level
    text: str


@dataclass(eq=False)
class AnnotatorState:
    """Everything the annotator shows or remembers between user actions.

    Attributes
    ----------
    preview : the uncommitted :class:`~napari_sam.annotation.preview.Preview`, or None
    jobs : the running jobs, oldest first
    last_commit : the last commit (the default objects of a propagation), or None
    everything : the everything result under review, or None
    review : the doubtful slices of the last (or running) propagation, a
        :class:`~napari_sam.annotation.review.ReviewList`, or None
    current_slice : the slice the viewer shows (one int per leading axis), or None
    waiting : :class:`~napari_sam.annotation.prompts.SlicePrompts` waiting for the
        embedding of their slice (decoded when it is ready), or None
    message : the last message
    model : the model in use (registry name, checkpoint path, or an adapted model's
        path / name)
    """

    #: one signal per field (psygnal's evented dataclass, declared so that it is typed)
    events: ClassVar[SignalGroupDescriptor] = SignalGroupDescriptor()

    preview: Any = None
    jobs: tuple[JobStatus, ...] = ()
    last_commit: Commit | None = None
    everything: EverythingResult | None = None
    review: Any = None
    current_slice: Index | None = None
    waiting: Any = None
    message: Message = field(default_factory=lambda: Message("status", ""))
    model: str = ""

    @property
    def busy(self) -> bool:
        """True while any job runs."""
        return bool(self.jobs)

    @property
    def main_job(self) -> JobStatus | None:
        """The job to show first: the oldest one the user asked for, else the oldest."""
        for job in self.jobs:
            if not job.background:
                return job
        return self.jobs[0] if self.jobs else None

    def running(self, kind: JobKind) -> bool:
        """True while a job of ``kind`` runs."""
        return any(job.kind == kind for job in self.jobs)
