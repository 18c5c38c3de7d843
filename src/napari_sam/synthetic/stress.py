"""The stress sweep of the validation: fixed, named appearance changes of a scene.

:data:`STRESS_CONDITIONS` (applied by :func:`apply_condition`) are made of the
changes of :mod:`.appearance`; also importable from there. numpy / scipy /
scikit-image only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .appearance import (
    Window,
    blur,
    crop,
    gamma,
    heavy_tailed_brightness,
    invert,
    low_photons,
    quantize,
    rescale,
    uneven_background,
    window,
)


@dataclass(frozen=True)
class Condition:
    """A named appearance change for the stress sweep.

    ``change(image, labels, rng) -> (image, labels)`` works on float64 images;
    the result is quantized to ``bits`` (None keeps the input's dtype; 0 keeps
    float32) and normalized with ``window`` (a :func:`window` kind).
    ``samples``: how many random draws of the change a validation scene gets
    (more for changes that keep only a few of its objects, such as small crops).
    """

    name: str
    description: str
    change: Callable | None = None
    bits: int | None = None
    window: str = "auto"
    samples: int = 1


def _identity(image, labels, rng):
    return image, labels


def _saturated(image, labels, rng):
    out = heavy_tailed_brightness(image, labels, rng, sigma=0.6, n_bright=3, bright_gain=25.0)
    return out, labels


def _tiny(image, labels, rng):
    img, lab = rescale(image, labels, 0.5)
    return crop(img, lab, 48, rng)


def _with(fn, *args, **kwargs):
    def change(image, labels, rng):
        return fn(image, *args, **kwargs), labels

    return change


def _with_rng(fn, **kwargs):
    def change(image, labels, rng):
        return fn(image, labels, rng, **kwargs), labels

    return change


def _scaled(factor):
    def change(image, labels, rng):
        return rescale(image, labels, factor)

    return change


def _low_photons(image, labels, rng):
    return low_photons(image, 25.0, rng), labels


def _uneven(image, labels, rng):
    return uneven_background(image, rng, strength=0.6), labels


_STRESS: list[Condition] = [
    Condition("clean", "unchanged, Predictor's default range"),
    Condition("window_minmax", "napari's default contrast limits (data min-max)", window="minmax"),
    Condition("window_dtype", "0 to the dtype's maximum (e.g. 0-65535)", window="dtype"),
    Condition("window_narrow", "top of the window at 30 % of the range", window="narrow"),
    Condition("window_wide", "window 2.5x wider than the data", window="wide"),
    Condition("window_offset", "bottom of the window at 40 % of the range", window="offset"),
    Condition("gamma_0.5", "gamma 0.5", _with(gamma, 0.5)),
    Condition("gamma_2", "gamma 2", _with(gamma, 2.0)),
    Condition("8bit", "quantized to 8 bits", _identity, bits=8),
    Condition(
        "saturated_minmax",
        "log-normal brightness, 3 objects 25x brighter and saturated (12 bit), min-max window",
        _saturated,
        bits=12,
        window="minmax",
    ),
    Condition(
        "saturated_auto",
        "as saturated_minmax, normalized with the Predictor's default (robust percentiles)",
        _saturated,
        bits=12,
    ),
    Condition("low_photons", "25 photons at the 99.9th percentile", _low_photons),
    Condition("blur_2", "extra Gaussian blur, sigma 2 px", _with(blur, 2.0)),
    Condition("uneven_background", "smooth background + ramp of 60 % of the signal", _uneven),
    Condition("inverted", "dark objects on a bright background", _with(invert)),
    Condition("scale_0.5", "rescaled x0.5", _scaled(0.5)),
    Condition("scale_2", "rescaled x2", _scaled(2.0)),
    Condition("scale_3", "rescaled x3", _scaled(3.0)),
    # a 48 px crop holds 3-12 objects: 8 crops per scene, so its mean is not a handful's
    Condition("tiny_48", "rescaled x0.5 and cropped to 48 x 48 px", _tiny, samples=8),
]

#: The stress sweep's conditions by name (validation only, never drawn in this form in training).
STRESS_CONDITIONS: dict[str, Condition] = {c.name: c for c in _STRESS}


def apply_condition(
    image: np.ndarray,
    labels: np.ndarray,
    name: str,
    seed: int = 0,
    default_window: str = "auto",
    sample: int = 0,
) -> tuple[np.ndarray, np.ndarray, Window]:
    """Apply stress condition ``name`` to a scene.

    ``default_window`` is the :func:`window` kind used by conditions that set
    none: ``"auto"`` (the Predictor's robust default) or ``"napari"`` (napari's
    default contrast limits, as the annotator gets them from the image layer).
    ``sample`` numbers the random draws of one scene (0 to the condition's
    ``samples`` - 1; 0 is the draw of ``seed`` alone).

    Returns
    -------
    image : ``(Y', X')`` uint8/uint16 (or the input dtype)
    labels : ``(Y', X')`` labels of the changed scene
    contrast_limits : ``(low, high)`` to normalize with, or None for the default
    """
    try:
        cond = STRESS_CONDITIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown stress condition {name!r}; choose from {sorted(STRESS_CONDITIONS)}"
        ) from None
    rng = np.random.default_rng(seed if sample == 0 else (seed, sample))
    dtype = np.asarray(image).dtype
    kind = default_window if cond.window == "auto" else cond.window
    if cond.change is None:
        return image, labels, window(image, kind, rng)
    img, lab = cond.change(np.asarray(image, dtype=np.float64), labels, rng)
    bits = cond.bits
    if bits is None:
        bits = {1: 8, 2: 16}.get(dtype.itemsize, 16) if dtype.kind in "ui" else 0
    if bits == 0:
        out = img.astype(np.float32)
    else:
        top = float(np.percentile(img, 99.95)) * 1.02 if cond.bits else float(img.max())
        if cond.name.startswith("saturated") and (lab > 0).any() and (lab == 0).any():
            # the brightest objects saturate, the background never does
            top = max(float(np.percentile(img[lab > 0], 75)),
                      float(np.percentile(img[lab == 0], 99.5)))
        out = quantize(np.clip(img, 0, None), bits, top)
    return out, lab, window(out, kind, rng)
