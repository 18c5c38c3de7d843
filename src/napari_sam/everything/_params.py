"""Parameters, results and cancellation of everything mode."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

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


@dataclass(frozen=True)
class EverythingParams:
    """Validated parameters of everything mode (see :func:`segment_everything`)."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float | None = None
    stability_score_thresh: float | None = None
    stability_offset: float = 1.0
    box_nms_thresh: float | None = None
    min_area: int = 16
    max_area: int | None = None
    min_visible_fraction: float = 0.2
    containment_thresh: float | str | None = "auto"
    crop_layers: int = 0
    crop_overlap_ratio: float = 512 / 1500
    crop_points_downscale: int = 1
    fast_decoder: bool = True
    tiling: str = "auto"

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
        return replace(
            self, **{name: float(recommended.get(name, MODEL_DEFAULTS[name])) for name in unset}
        )


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
