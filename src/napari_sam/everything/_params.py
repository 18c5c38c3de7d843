"""Parameters, results and cancellation of everything mode."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from napari_sam.options import documented, option

ProgressCallback = Callable[[int, int], None]

#: ``tiling`` values: ``"auto"`` adds the predictor's tiles as crops, ``"off"`` does not.
TILING_MODES = ("auto", "off")


class Cancelled(Exception):
    """Raised when the ``cancel`` event/callable asked everything mode to stop.

    Nothing is returned and nothing is written: the caller's data is unchanged.
    """


@dataclass(frozen=True)
class ObjectRecord:
    """One object of a 2D everything result.

    Attributes
    ----------
    id : label value in :attr:`EverythingResult.labels` (1..N)
    area : pixels of the object in the label image (after overlap resolution)
    predicted_iou : the model's predicted IoU of the mask
    stability_score : IoU of the mask thresholded at logit ``+offset`` and ``-offset``
    bbox : ``(row_min, col_min, row_max, col_max)`` half-open, of the labelled pixels
    """

    id: int
    area: int
    predicted_iou: float
    stability_score: float
    bbox: tuple[int, int, int, int]


@dataclass
class EverythingResult:
    """Result of :func:`segment_everything`.

    Attributes
    ----------
    labels : ``(H, W)`` uint32, 0 = background, objects ``1..N``
    objects : one :class:`ObjectRecord` per id, in id order
    stats : candidate counts after each stage (``"prompts"``, ``"candidates"``
        (3 per prompt), ``"passed_filters"``, ``"after_area"``, ``"after_nms"``,
        ``"after_mask_dedup"``, ``"after_containment"``, ``"objects"``) and the
        number of ``"crops"``
        embedded (whole slice, crop layers, tiles)
    timings : wall-clock seconds spent in ``"embed"`` (image encoder),
        ``"decode"`` (mask decoder and the IoU/stability filters), ``"masks"``
        (upscaling, clean-up and compaction of the kept masks) and ``"resolve"``
        (NMS, de-duplication, label image)
    """

    labels: np.ndarray
    objects: list[ObjectRecord]
    stats: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


#: SAM's predicted-IoU threshold, for models without a recommendation of their own.
DEFAULT_PRED_IOU_THRESH = 0.8

#: The values of the options left to the model (None, or ``"auto"`` for
#: ``containment_thresh``) for models without a recommendation of their own.
MODEL_DEFAULTS = {
    "pred_iou_thresh": DEFAULT_PRED_IOU_THRESH,
    "stability_score_thresh": 0.9,
    "box_nms_thresh": 0.7,
    "containment_thresh": 0.8,
}


def parse_containment(value: str) -> float | str | None:
    """``--containment-thresh`` on the command line: a number, ``none`` or ``auto``."""
    word = value.strip().lower()
    if word in ("none", "auto"):
        return None if word == "none" else "auto"
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number, 'none' or 'auto', got {value!r}"
        ) from None


@documented
@dataclass(frozen=True)
class EverythingParams:
    """The options of everything mode on a slice, declared once.

    :func:`~napari_sam.everything.segment_everything` takes them as keyword
    arguments (or ``params=``), ``napari-sam everything`` as flags and an
    options panel through :func:`napari_sam.options.widget_spec`; each
    field's help is in its declaration (listed below). ``pred_iou_thresh``,
    ``stability_score_thresh``, ``box_nms_thresh`` (None) and
    ``containment_thresh`` (``"auto"``) are left to the model: the
    registry's recommendation (:meth:`for_model`), else SAM's values
    (:data:`MODEL_DEFAULTS`). Values are checked when the object is made.
    """

    points_per_side: int = option(
        32, help="prompt grid per side: points_per_side**2 prompts on the whole slice and "
        "each crop; tiles get the slice's point spacing, at least points_per_side // 2"
    )
    points_per_batch: int = option(64, help="prompts per decoder call (memory vs. speed)")
    pred_iou_thresh: float | None = option(
        None, help="keep candidates whose predicted IoU is above this",
        shown_default="the model's recommendation: micro 0.6; others 0.8",
    )
    stability_score_thresh: float | None = option(
        None, flag="--stability-thresh",
        help="keep candidates whose stability score is at least this",
        shown_default="the model's recommendation: micro 0.85; others 0.9",
    )
    stability_offset: float = option(
        1.0, help="logit offset of the stability score (IoU of the masks logits > +offset "
        "and logits > -offset)"
    )
    box_nms_thresh: float | None = option(
        None, help="candidates overlapping a better one with IoU above this are duplicates",
        shown_default="the model's recommendation: micro 0.5; others 0.7",
    )
    min_area: int = option(
        16, help="smallest object in pixels; also the largest hole filled and the largest "
        "island removed from a mask"
    )
    max_area: int | None = option(
        None, help="largest object in pixels (none: no limit)",
        widget=False,  # None (no limit) has no spin-box value; a panel needs a checkbox
    )
    min_visible_fraction: float = option(
        0.2, help="drop an object when less than this fraction of its mask stays visible "
        "under smaller objects"
    )
    containment_thresh: float | str | None = option(
        "auto", parse=parse_containment,
        help="drop a mask when this fraction of it lies inside a larger, better-scored mask "
        "(an object's sub-parts); 'none' keeps nested masks",
        shown_default="auto: the model's recommendation: micro 0.5; others 0.8",
    )
    crop_layers: int = option(
        0, help="zoomed-in crop layers for small objects (4**i crops in layer i, each "
        "embedded)"
    )
    crop_overlap_ratio: float = option(
        512 / 1500, help="overlap of neighbouring crops, as a fraction of layer 1's crop size",
        widget=False,  # SAM's constant; a spin box would round it
    )
    crop_points_downscale: int = option(
        1, help="points per side in crop layer i: points_per_side // downscale**i"
    )
    fast_decoder: bool = option(
        True, help="use the predictor's exact fast decoder of single points when it has one",
        widget=False,
    )
    tiling: str = option(
        "auto", choices=TILING_MODES,
        help="auto: slices larger than the model input are also segmented tile by tile at "
        "native resolution (small objects); off: only resized to the model input",
    )

    def __post_init__(self) -> None:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")

        positive_int("points_per_side")
        positive_int("points_per_batch")
        positive_int("crop_points_downscale")
        for name in ("stability_score_thresh", "box_nms_thresh", "min_visible_fraction"):
            value = getattr(self, name)
            if value is None and name != "min_visible_fraction":
                continue  # the model's recommendation (for_model)
            if not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1] (or None: the model's), got {value!r}")
        cont = self.containment_thresh
        if isinstance(cont, str):
            if cont != "auto":
                raise ValueError(
                    f"containment_thresh must be a fraction in (0, 1], None or 'auto', got {cont!r}"
                )
        elif cont is not None and not 0.0 < float(cont) <= 1.0:
            raise ValueError(
                f"containment_thresh must be in (0, 1], None or 'auto', got {cont!r}"
            )
        if self.pred_iou_thresh is not None and not math.isfinite(float(self.pred_iou_thresh)):
            raise ValueError(f"pred_iou_thresh must be finite, got {self.pred_iou_thresh!r}")
        if not float(self.stability_offset) > 0:
            raise ValueError(f"stability_offset must be > 0, got {self.stability_offset!r}")
        if int(self.min_area) < 0:
            raise ValueError(f"min_area must be >= 0 pixels, got {self.min_area!r}")
        if self.max_area is not None and int(self.max_area) < max(1, int(self.min_area)):
            raise ValueError(
                f"max_area={self.max_area!r} is smaller than min_area={self.min_area!r}; "
                "use max_area=None for no upper limit"
            )
        if int(self.crop_layers) < 0 or int(self.crop_layers) > 4:
            raise ValueError(f"crop_layers must be 0..4, got {self.crop_layers!r}")
        if not 0.0 <= float(self.crop_overlap_ratio) < 1.0:
            raise ValueError(
                f"crop_overlap_ratio must be in [0, 1), got {self.crop_overlap_ratio!r}"
            )
        if self.tiling not in TILING_MODES:
            raise ValueError(f"tiling must be 'auto' or 'off', got {self.tiling!r}")

    def for_model(self, model_name: str | None) -> EverythingParams:
        """These parameters with the ones left to the model filled in.

        ``pred_iou_thresh``, ``stability_score_thresh`` and ``box_nms_thresh``
        left at None, and ``containment_thresh`` left at ``"auto"``, take the
        registry's recommendation for ``model_name``
        (:func:`napari_sam.model.registry.recommended_everything`), else
        :data:`MODEL_DEFAULTS` (SAM's values; 0.8 for the containment rule).
        """
        # containment_thresh=None turns the rule off: only "auto" is left to the model
        unset = [
            name
            for name in MODEL_DEFAULTS
            if getattr(self, name) == ("auto" if name == "containment_thresh" else None)
        ]
        if not unset:
            return self
        from napari_sam.model.registry import recommended_everything

        recommended = recommended_everything(model_name)
        values: dict[str, Any] = {
            name: float(recommended.get(name, MODEL_DEFAULTS[name])) for name in unset
        }
        return replace(self, **values)

    def resolved(self, name: str) -> float:
        """The value of an option left to the model, once :meth:`for_model` filled it in.

        Raises
        ------
        ValueError
            It is still left to the model (None or ``"auto"``).
        """
        value = getattr(self, name)
        if value is None or isinstance(value, str):
            raise ValueError(
                f"{name}={value!r} is left to the model; call for_model(model_name) first"
            )
        return float(value)


@documented
@dataclass(frozen=True)
class EverythingStackParams(EverythingParams):
    """:class:`EverythingParams` and how objects are linked through z, for
    :func:`~napari_sam.everything.segment_everything_stack`."""

    min_z_extent: int = option(
        2, help="stacks: smallest number of slices an object spans (gaps included)"
    )
    link_iou: float = option(
        0.3, help="stacks: smallest IoU between an object's masks on linked slices"
    )
    max_gap: int = option(
        1, help="stacks: most consecutive slices without the object that are bridged (0: none)"
    )
    fill_gaps: bool = option(
        True, help="stacks: fill a bridged gap with the overlap of the masks on both sides"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < float(self.link_iou) <= 1.0:
            raise ValueError(f"link_iou must be in (0, 1], got {self.link_iou!r}")
        if int(self.min_z_extent) < 1:
            raise ValueError(f"min_z_extent must be >= 1 slice, got {self.min_z_extent!r}")
        if int(self.max_gap) < 0:
            raise ValueError(f"max_gap must be >= 0 slices, got {self.max_gap!r}")


def check_cancel(cancel: Any) -> None:
    """Raise :class:`Cancelled` if ``cancel`` (an Event-like or a callable) is set."""
    if cancel is None:
        return
    is_set = getattr(cancel, "is_set", None)
    if is_set is not None:
        stop = is_set()
    elif callable(cancel):
        stop = cancel()
    else:
        raise TypeError(
            f"cancel must be a threading.Event (anything with is_set()) or a callable "
            f"returning bool, got {type(cancel).__name__}"
        )
    if stop:
        raise Cancelled("everything mode was cancelled")
