"""The options of a propagation run, declared once (:class:`PropagationParams`).

:func:`~napari_sam.propagation.propagate`,
:func:`~napari_sam.propagation.propagate_iter` and
:meth:`~napari_sam.propagation.engine.Engine.create` take them as
``params=None, **overrides``; ``napari-sam propagate`` makes its flags from
them (:func:`napari_sam.options.add_arguments`). The values are checked when
a run starts (:meth:`~napari_sam.propagation.engine.Engine.create`), with
the stack they apply to.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from typing import Any

from napari_sam.options import option
from napari_sam.propagation.inputs import DIRECTIONS

#: Default prompt mode (see the benchmark table in docs/propagation.md).
DEFAULT_PROMPT_MODE = "box+mask"
#: Default lowest IoU between an object's masks on neighbouring slices.
DEFAULT_IOU_THRESHOLD = 0.4
#: Default lowest predicted IoU (model score) of an accepted mask.
DEFAULT_SCORE_THRESHOLD = 0.5
#: Default smallest accepted mask, in pixels ("vanished" below).
DEFAULT_MIN_AREA = 8
#: Default largest area ratio between a mask and the one it was propagated from.
DEFAULT_MAX_GROWTH = 2.0
#: Default of the "faded" rule (off); models that run past object ends recommend one
#: in the registry (:attr:`napari_sam.model.registry.ModelInfo.propagation`).
DEFAULT_FADE_THRESHOLD = 0.0
#: Default of the "faded" rule's step part: the contrast may fall to this share of the
#: previous slice's per step (only where ``fade_threshold`` > 0; docs/propagation.md).
DEFAULT_FADE_STEP = 0.6
#: Default share of an object's own score on its keyframe that is enough to go on where
#: the score is below ``score_threshold`` (docs/propagation.md, "Small objects").
DEFAULT_KEYFRAME_SCORE_SHARE = 0.7
#: Defaults along a time axis (``axis="t"``), instead of the model's z recommendation:
#: an object moves between frames, so negative points just outside its last mask
#: land on it, and a point on its interior keeps it (docs/propagation.md, "Tracking").
TRACKING_DEFAULTS: dict[str, Any] = {"prompt_mode": "box+points+mask", "fade_threshold": 0.0}


def parse_z_range(text: str) -> tuple[int | None, int | None]:
    """``"a:b"`` (command line) -> ``(a, b)``; either side may be empty (None)."""
    parts = text.split(":")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected A:B (e.g. 10:40), got {text!r}")
    try:
        start, stop = (int(p) if p.strip() else None for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected integers A:B (e.g. 10:40), got {text!r}"
        ) from None
    return start, stop


def parse_axis(text: str) -> str | int:
    """``"t"``/``"z"`` (any case) or an integer axis index (command line)."""
    name = text.strip().lower()
    if name in ("t", "z"):
        return name
    try:
        return int(name)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected t, z or an axis index (e.g. 0), got {text!r}"
        ) from None


@dataclass(frozen=True)
class PropagationParams:
    """Everything a propagation run can be told besides the stack, the seeds and the predictor.

    Each field is one keyword argument of
    :func:`~napari_sam.propagation.propagate_iter` (and ``propagate``); the
    ones with a flag are options of ``napari-sam propagate``. Defaults left
    to the model (``prompt_mode``, ``fade_threshold`` None) take the
    registry's recommendation for the predictor's ``model_name``; along a
    time axis (``axis="t"``, or an index of a stack with several leading
    axes other than the one before Y) they are ``"box+points+mask"`` and 0
    (:data:`TRACKING_DEFAULTS`, docs/propagation.md, "Tracking through time");
    :meth:`for_model` fills them in.

    Attributes
    ----------
    prompt_mode : str
        How the mask on slice z prompts slice z ± 1: ``"box"``, ``"points"``,
        ``"mask"``, ``"neg"`` (negative points outside the mask) joined with
        ``+``; default: the model's recommendation (``"box+mask+neg"`` for
        the bundled ``micro``), else ``"box+mask"`` (docs/propagation.md).
    direction : {"both", "up", "down"}
        ``"up"`` towards higher z, ``"down"`` towards lower z; gaps between
        keyframes are filled from both ends with ``"both"``, else from the
        end the direction allows.
    z_range : (start, stop) or slice
        Only slices ``start <= z < stop`` (Python slice rules; None = stack end).
    iou_threshold, score_threshold, min_area, max_growth : stop rules
        "changed" (IoU with the previous slice's mask lower), "low_score"
        (the model's predicted IoU lower), "vanished" (fewer pixels),
        "changed" (area above this multiple of the previous slice's: masks
        that leak and diffuse towards the stack ends).
    box_margin : float
        Box prompts: bounding box grown by this fraction of its larger side
        (at least 2 px).
    n_points : int
        Positive points per prompt in the ``points`` modes.
    fade_threshold : float
        Stop ("faded") when the object's contrast (mean intensity in the mask
        minus the median of a 3-pixel ring around it) falls below this share
        of its contrast on the keyframe (:mod:`napari_sam.propagation.fade`);
        0 turns it off. Default: the model's recommendation (0.4 for
        ``micro``), else 0.
    fade_step : float
        With the "faded" rule on (``fade_threshold`` > 0), also stop when the
        contrast falls below this share of its value on the previous accepted
        slice: out-of-focus light past an object's end drops faster per slice
        than the object fades inside (small objects: their keyframe contrast
        is low already). 0 turns this part off.
    keyframe_score_share : float
        A mask scoring below ``score_threshold`` is still accepted when its
        score reaches this share of the object's own score on its keyframe
        (the model re-predicting the keyframe from the same kind of prompt,
        decoded only when needed): models score small objects low even
        where they segment them well, so a fixed threshold would stop them
        at the first slice. 0: ``score_threshold`` alone.
    motion : bool
        Follow moving objects: each step's prompt (and the mask it is judged
        against) is the previous mask shifted by the object's last motion.
        Default: on along a time axis, off in z.
    axis : int or {"t", "z"}
        The axis to propagate along: any leading axis of the stack, as an
        index or a name (``"t"`` the first leading axis, ``"z"`` the one
        before Y). Objects keep their id along it, so ``axis="t"`` tracks
        objects through a time-lapse (no lineage). Default: the first axis of
        a ``(Z, Y, X[, C])`` stack.
    position : sequence of int
        The displayed slice's index along every leading axis (napari's
        ``dims.current_step[:n]``); the entry along ``axis`` is ignored.
        Required when the stack has more than one leading axis.
    stop_markers : dict
        ``{object_id or None: iterable of z}``: slices the object must not
        reach (None: every object); a direction stops there ("stop_marker").
    contrast_limits : (float, float)
        Intensity range for every slice's embedding; default: ``(0, 255)``
        for uint8, else :func:`napari_sam.normalize.stack_intensity_range`,
        computed once.
    embeddings : mapping or callable
        ``embeddings[z]`` or ``embeddings(z)`` -> the predictor's embedding of
        slice z (e.g. the annotator's cache); a ``KeyError`` or None falls
        back to ``predictor.embed``.
    """

    prompt_mode: str | None = option(
        None, widget=False,
        help="how the mask on slice z prompts slice z +/- 1: box, points, mask, neg joined "
        "with '+'",
        shown_default=f"the model's recommendation: box+mask+neg for micro; else "
        f"{DEFAULT_PROMPT_MODE}",
    )
    direction: str = option(
        "both", choices=DIRECTIONS,
        help="up: towards higher z, down: towards lower z, both: both ways",
    )
    z_range: Any = option(
        None, parse=parse_z_range, metavar="A:B",
        help="only slices A <= z < B (Python slice; A or B may be empty)",
        shown_default="all", widget=False,
    )
    iou_threshold: float = option(
        DEFAULT_IOU_THRESHOLD, help="stop when the IoU with the previous slice is lower"
    )
    score_threshold: float = option(
        DEFAULT_SCORE_THRESHOLD, help="stop when the model's score is lower"
    )
    min_area: int = option(DEFAULT_MIN_AREA, help="stop when the mask has fewer pixels")
    max_growth: float = option(
        DEFAULT_MAX_GROWTH,
        help="stop when the mask's area exceeds this multiple of the previous slice's",
    )
    box_margin: float = option(
        0.1, help="box prompts: bounding box grown by this fraction of its larger side"
    )
    n_points: int = option(3, help="positive points per prompt in the points modes")
    fade_threshold: float | None = option(
        None,
        help="stop when the object's contrast falls below this share of its seed's; 0: off",
        shown_default="the model's recommendation: 0.4 for micro; else 0",
    )
    fade_step: float = option(
        DEFAULT_FADE_STEP,
        help="with the faded rule on, also stop when the contrast falls below this share of "
        "the previous slice's; 0: off",
    )
    keyframe_score_share: float = option(
        DEFAULT_KEYFRAME_SCORE_SHARE,
        help="accept a mask scoring below score-threshold when it reaches this share of the "
        "object's score on its keyframe; 0: off",
    )
    motion: bool | None = option(
        None, widget=False, help="follow moving objects (the prompt shifted by the last motion)",
        shown_default="on along t, off in z",
    )
    axis: str | int | None = option(
        None, parse=parse_axis, metavar="t|z|INDEX",
        help="axis to propagate along: t (the first axis: time in T,Y,X or T,Z,Y,X), z (the "
        "axis before Y) or its index",
        shown_default="the first axis of a Z,Y,X stack", widget=False,
    )
    position: Any = option(
        None, flag=None, widget=False,
        help="index of the displayed slice along every leading axis",
    )
    stop_markers: Any = option(
        None, flag=None, widget=False,
        help="{object id or None: slices the object must not reach}",
    )
    contrast_limits: tuple[float, float] | None = option(
        None, flag=None, widget=False,
        help="intensities mapped to black and white, the same for every slice",
    )
    embeddings: Any = option(
        None, flag=None, widget=False,
        help="embeddings[z] or embeddings(z): precomputed slice embeddings",
    )

    def for_model(self, model_name: str | None, *, tracking: bool = False) -> PropagationParams:
        """These options with the ones left to the model (None) filled in.

        ``prompt_mode`` and ``fade_threshold``: the registry's recommendation
        for ``model_name`` (:func:`napari_sam.model.registry.recommended_propagation`),
        else :data:`DEFAULT_PROMPT_MODE` and :data:`DEFAULT_FADE_THRESHOLD`; along
        a time axis (``tracking``) :data:`TRACKING_DEFAULTS`. ``motion``: on
        along a time axis, else off.
        """
        from napari_sam.model.registry import recommended_propagation

        recommended = TRACKING_DEFAULTS if tracking else recommended_propagation(model_name)
        values: dict[str, Any] = {}
        if self.prompt_mode is None:
            values["prompt_mode"] = recommended.get("prompt_mode", DEFAULT_PROMPT_MODE)
        if self.fade_threshold is None:
            values["fade_threshold"] = recommended.get("fade_threshold", DEFAULT_FADE_THRESHOLD)
        if self.motion is None:
            values["motion"] = bool(tracking)
        return replace(self, **values) if values else self
