"""Which intensity range normalizes an image's slices: one robust range, or the display's.

Qt- and napari-free. ``"robust"`` (the default): one range for the whole
image, the 0.5-99.8 percentiles of a bounded sample
(:func:`napari_sam.normalize.stack_contrast_limits`), computed once per image
(in a worker when the annotator asks from a job, so lazy data is never read on
the GUI thread) and used for every slice, whatever the display shows.
``"display"``: the image layer's contrast limits at the time of the call
(re-embedding whenever they change).

Why robust is the default: napari's default contrast limits (the data's
min-max) and display windows that clip the objects cost the bundled model
quality (measured in docs/napari.md, "Intensity range").

The cache keys of embeddings hold a *token*: :data:`ROBUST` in robust mode
(the numbers may not be known yet), the display limits in display mode;
:meth:`IntensityRange.resolve` turns a token into ``(low, high)``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, cast

import numpy as np

__all__ = ["NORMALIZATIONS", "ROBUST", "IntensityRange", "check_normalization", "sample_view"]

Limits = tuple[float, float]

#: The normalization modes: one robust range per image, or the display's limits.
NORMALIZATIONS = ("robust", "display")
#: The token that stands for the image's robust range in cache keys.
ROBUST = ("robust",)

# robust ranges already measured: (image key, id of its array) -> (low, high)
_MEASURED: OrderedDict[tuple[Hashable, int], Limits] = OrderedDict()
_MEASURED_MAX = 32
_MEASURED_LOCK = threading.Lock()


def sample_view(source: Any, rgb: bool = False, max_pixels: int = 1_000_000) -> Any:
    """``source`` with every slice strided down to at most about ``max_pixels`` pixels
    (a view: nothing read), so that measuring a huge 2D image never reads all of it."""
    ys, xs = (source.shape[-3], source.shape[-2]) if rgb else (source.shape[-2], source.shape[-1])
    step = int(np.ceil(np.sqrt(ys * xs / max_pixels)))
    if step <= 1:
        return source
    stride = (slice(None, None, step), slice(None, None, step))
    index = (Ellipsis,) + tuple(stride) + ((slice(None),) if rgb else ())
    return source[index]


def check_normalization(mode: Any) -> str:
    """``mode`` if it is one of :data:`NORMALIZATIONS`, else a ValueError naming them."""
    if mode not in NORMALIZATIONS:
        raise ValueError(
            f"normalization must be one of {NORMALIZATIONS}, got {mode!r}: 'robust' uses one "
            "intensity range for the whole image, 'display' the layer's contrast limits"
        )
    return str(mode)


class IntensityRange:
    """The intensity range of one image, by mode.

    Parameters
    ----------
    source : the image array (numpy, dask or zarr; for a multiscale image its
        coarsest level); only a bounded sample is read
    rgb : the array has a trailing colour axis
    key : hashable identity of the image (e.g. the layer's ``unique_id``): the
        robust range is measured once per ``(key, source)`` and remembered
        (so a second annotator of the same layer reuses it)
    display : ``display() -> (low, high)``: the layer's contrast limits (main thread)
    mode : ``"robust"`` or ``"display"``
    """

    def __init__(
        self, source: Any, key: Hashable, display: Callable[[], Limits], mode: str = "robust",
        *, rgb: bool = False,
    ) -> None:
        self.source = source
        self.rgb = rgb
        self.key = key
        self._display = display
        self.mode = check_normalization(mode)
        self._lock = threading.Lock()

    @property
    def _memo_key(self) -> tuple[Hashable, int]:
        return (self.key, id(self.source))

    def token(self) -> Hashable:
        """What cache keys hold now: :data:`ROBUST`, or the display limits (main thread)."""
        if self.mode == "robust":
            return ROBUST
        low, high = self._display()
        return (float(low), float(high))

    @property
    def measured(self) -> Limits | None:
        """The robust range if it was measured already, else None (reads nothing)."""
        with _MEASURED_LOCK:
            return _MEASURED.get(self._memo_key)

    def robust(self) -> Limits:
        """The image's robust range, measured now (in the calling thread) if needed."""
        known = self.measured
        if known is not None:
            return known
        from napari_sam.normalize import stack_contrast_limits

        with self._lock:  # one measurement at a time per image
            known = self.measured
            if known is None:
                low, high = stack_contrast_limits(sample_view(self.source, self.rgb))
                known = (float(low), float(high))
                with _MEASURED_LOCK:
                    _MEASURED[self._memo_key] = known
                    while len(_MEASURED) > _MEASURED_MAX:
                        _MEASURED.popitem(last=False)
        return known

    def resolve(self, token: Hashable) -> Limits:
        """``(low, high)`` of a token from :meth:`token` (any thread)."""
        if token == ROBUST:
            return self.robust()
        low, high = cast("tuple[float, float]", token)
        return (float(low), float(high))

    def needs_measuring(self, token: Hashable) -> bool:
        """True when resolving ``token`` would read the image (robust, not measured yet)."""
        return token == ROBUST and self.measured is None

    def forget(self) -> None:
        """The image's data changed: measure again when next needed."""
        with _MEASURED_LOCK:
            _MEASURED.pop(self._memo_key, None)

    def describe(self) -> str:
        """One line for the user: the mode and, when known, the range."""
        if self.mode == "display":
            low, high = self._display()
            return f"display contrast limits ({low:g}, {high:g})"
        known = self.measured
        rng = f" ({known[0]:g}, {known[1]:g})" if known is not None else ""
        return f"robust range of the whole image{rng}"
