"""The annotator's user actions, declared once: name, button text, key, tooltip, callback.

Qt- and napari-free. The dock widget makes its buttons from :data:`ACTIONS`
and :mod:`napari_sam._qt.key_bindings` binds the keys from the same table, so
a button and its key always do the same thing. Every key is Shift + a letter
that napari 0.9 does not use on Points, Shapes or Labels layers or the
viewer (napari uses Shift+A, Shift+L, Shift+P and Shift+V; see
``napari.utils.shortcuts``).

A callback is ``run(annotator, choices)``: the :class:`Choices` are the
widget's current settings (which direction to propagate, whole stack...);
key bindings without a widget use the defaults. Long work is started
asynchronously (``blocking=False``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["ACTIONS", "Action", "Choices", "action", "key_for"]


@dataclass(frozen=True)
class Choices:
    """The widget's settings that actions read.

    Attributes
    ----------
    batch : every positive point is its own object (the Segment action)
    direction : ``"both"``, ``"up"`` or ``"down"`` (the Propagate action)
    stack : everything mode on the whole stack rather than the slice
    everything_params : extra keyword arguments of everything mode
    path : the file chosen for an action with :attr:`Action.path`
    stop : the propagation stop slider, -2 (stop earlier) .. 2 (later); 0 is the
        model's recommendation (:func:`~napari_sam.annotation.propagating.stop_rule_options`)
    adapt_objects : ``"all"`` or ``"session"``: what "Learn from labels" learns from
    axis : the propagation axis (the "along" menu): None (z, or t when the image's axis
        labels say so), ``"t"``, ``"z"``, a leading axis name or index
    """

    batch: bool = False
    direction: str = "both"
    stack: bool = False
    everything_params: Mapping[str, Any] = field(default_factory=dict)
    path: str | None = None
    stop: int = 0
    adapt_objects: str = "all"
    axis: Any = None


@dataclass(frozen=True)
class Action:
    """One user action.

    Attributes
    ----------
    name : identifier (``"segment"``); the widget's ``buttons[name]``
    text : button text, or ``""`` for a key-only action
    key : napari key string (``"Shift-S"``), or None for a button-only action
    description : one line for tooltips and docs
    run : ``run(annotator, choices)`` performs the action
    group : the widget box holding the button (``"actions"``, ``"everything"``,
        ``"learn"``, ``"files"``, ``"review"``: the review panel of a propagation)
    path : ``"save"`` or ``"open"``: the widget asks for a file first
        (``choices.path``)
    """

    name: str
    text: str
    key: str | None
    description: str
    run: Callable[[Any, Choices], Any]
    group: str = "actions"
    path: Literal["save", "open"] | None = None

    @property
    def label(self) -> str:
        """The key as shown to users, e.g. ``"Shift+S"`` (``""`` without a key)."""
        return "" if self.key is None else self.key.replace("-", "+")

    @property
    def tooltip(self) -> str:
        """The description, with the key when there is one."""
        return f"{self.description} ({self.label})" if self.key else self.description


def _propagate(annotator: Any, choices: Choices) -> Any:
    from napari_sam.annotation.propagating import stop_rule_options

    if choices.axis is not None:  # the "along" menu: time (annotation/tracking) or z
        return _along(annotator, choices)
    options = stop_rule_options(annotator.model, choices.stop) if choices.stop else {}
    return annotator.propagate(direction=choices.direction, blocking=False, **options)


def _along(annotator: Any, choices: Choices) -> Any:
    """Propagate along ``choices.axis``; along time the stop slider starts from the time
    defaults (:func:`~napari_sam.annotation.tracking.tracking_stop_options`)."""
    from napari_sam.annotation.propagating import stop_rule_options
    from napari_sam.annotation.tracking import tracking_stop_options

    time = annotator.tracker.resolve(choices.axis)[1]
    options = {} if not choices.stop else (
        tracking_stop_options(choices.stop) if time
        else stop_rule_options(annotator.model, choices.stop))
    return annotator.propagate(direction=choices.direction, blocking=False, axis=choices.axis,
                               **options)


ACTIONS: tuple[Action, ...] = (
    Action("segment", "Segment", "Shift-S", "Segment the prompts of the current slice",
           lambda a, c: a.segment(batch=c.batch, blocking=False)),
    Action("segment_batch", "", "Shift-B",
           "Segment each positive point as its own object (batch)",
           lambda a, c: a.segment(batch=True, blocking=False)),
    Action("next_mask", "Next mask", "Shift-N", "Show the next candidate mask",
           lambda a, c: a.next_mask()),
    Action("commit", "Commit", "Shift-C", "Commit the preview into the labels layer (new id)",
           lambda a, c: a.commit()),
    Action("toggle", "", "Shift-T", "Toggle positive / negative points",
           lambda a, c: a.toggle_positive()),
    Action("clear", "Clear", "Shift-X", "Clear the prompts of this slice and the preview",
           lambda a, c: a.clear()),
    Action("propagate", "Propagate", "Shift-Z", "Propagate the committed object(s) through z",
           _propagate),
    Action("cancel", "Cancel", "Shift-Q",
           "Cancel the running job (model loading, embedding, propagation, everything, "
           "learning)",
           lambda a, c: a.cancel()),
    Action("scribbles", "Scribbles", None,
           "Add (or select) the scribble layer: paint 1 on the object, 2 on the background; "
           "paths and lines on the boxes layer are strokes too (magenta: background)",
           lambda a, c: a.add_scribble_layer()),
    Action("refine", "Refine label", None,
           "Refine the selected label on this slice: its mask is the prompt, add points, then "
           "Commit replaces it on this slice only (other labels untouched)",
           lambda a, c: a.refine(blocking=False)),
    Action("refine_here", "", "Shift-R",
           "Refine the label under the cursor (else the selected label) on this slice",
           lambda a, c: a.refine(at_cursor=True, blocking=False)),
    Action("next_doubtful", "Next doubtful", "Shift-D",
           "Go to the next doubtful slice of the last propagation (a stop rule fired, or the "
           "score / IoU with the previous slice is low or dropped)",
           lambda a, c: a.next_doubtful(), group="review"),
    Action("everything", "Everything", None,
           "Segment every object of this slice into the 'everything' layer for review",
           lambda a, c: a.segment_everything(blocking=False, stack=c.stack,
                                             **dict(c.everything_params)),
           group="everything"),
    Action("commit_everything", "Commit everything", None,
           "Merge the 'everything' layer into the labels (existing labels are kept)",
           lambda a, c: a.commit_everything(blocking=False), group="everything"),
    Action("find_similar", "Find all like this", "Shift-F",
           "Find objects like the last committed (or the selected) label(s) into the "
           "'everything' layer; the threshold re-ranks them, 'Commit everything' commits",
           lambda a, c: a.find_similar(blocking=False, stack=c.stack, **dict(c.everything_params)),
           group="everything"),
    Action("adapt", "Learn from labels", None,
           "Fine-tune the model on the objects of the labels layer (about a minute on a "
           "CPU); it is used for this image when it beats the base model on held-back objects",
           lambda a, c: a.adapt(objects=c.adapt_objects, blocking=False), group="learn"),
    Action("save_prompts", "Save prompts...", None,
           "Save all prompts to a JSON file (image pixel coordinates)",
           lambda a, c: a.save_prompts(c.path), group="files", path="save"),
    Action("load_prompts", "Load prompts...", None, "Add the prompts of a JSON file",
           lambda a, c: a.load_prompts(c.path), group="files", path="open"),
)


def action(name: str) -> Action:
    """The action called ``name``."""
    for act in ACTIONS:
        if act.name == name:
            return act
    raise KeyError(f"no action named {name!r}; known: {[a.name for a in ACTIONS]}")


def key_for(name: str) -> str:
    """The user-facing key (e.g. ``"Shift+S"``) of the action ``name``.

    Raises
    ------
    KeyError
        No action of that name has a key.
    """
    act = action(name)
    if act.key is None:
        raise KeyError(f"action {name!r} has no key")
    return act.label
