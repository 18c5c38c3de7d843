"""Appearance changes the scene generators never make, and intensity windows.

Two users: training (:func:`random_appearance` draws a random chain of changes
for every scene, so the model does not learn the generators' brightness
statistics) and the stress sweep of the validation (``STRESS_CONDITIONS``,
fixed, named changes applied by ``apply_condition``, in :mod:`.stress` and
importable from here too).

Every change works on any 2D scene ``(image, labels)`` (``(Y, X)`` arrays,
labels 0 = background): the image is handled as float64 in the units of its
dtype and converted back to a microscope-like dtype at the end
(:func:`quantize`). Object-level changes (brightness, texture, nucleoli, rims)
multiply the object's signal above the local background by a factor map that
is blurred at object borders, so no change draws a sharp edge at the label
boundary that the model could learn as a shortcut. Distractors (out-of-focus
neighbours, debris) are unlabelled; small bright cells (mitotic or apoptotic)
are labelled objects.

The intensity *window* is what a user sets as contrast limits: the function
returns the ``(low, high)`` to normalize with, or None for the Predictor's
default (robust percentiles; ``(0, 255)`` for uint8).

numpy / scipy / scikit-image only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ._random import smooth_noise

Window = tuple[float, float] | None


# ----------------------------------------------------------------------------- basics


def dtype_max(dtype: np.dtype) -> float:
    """Largest value of an integer dtype, 1.0 for floats."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0


def background_level(image: np.ndarray, labels: np.ndarray) -> float:
    """Median of the pixels outside objects (the image's median when there are none)."""
    out = image[labels == 0]
    return float(np.median(out if out.size else image))


def _object_factor_map(labels: np.ndarray, factors: np.ndarray, soft: float) -> np.ndarray:
    """Per-pixel factor: ``factors[id]`` inside object ``id``, 1 outside, blurred by ``soft`` px."""
    lut = np.concatenate([[1.0], np.asarray(factors, dtype=np.float64)])
    fmap = lut[np.minimum(labels, lut.size - 1)]
    if soft > 0:
        # dilate each object's factor one blur width outwards so the PSF halo follows it
        grown = ndi.grey_dilation(np.where(labels > 0, fmap, 0.0), size=3)
        fmap = np.where((labels == 0) & (grown > 0), grown, fmap)
        fmap = ndi.gaussian_filter(fmap, soft)
    return fmap


def scale_objects(
    image: np.ndarray, labels: np.ndarray, factors: np.ndarray, soft: float = 1.5
) -> np.ndarray:
    """Multiply each object's signal above the background by ``factors[id - 1]``."""
    bg = background_level(image, labels)
    fmap = _object_factor_map(labels, factors, soft)
    return bg + (image - bg) * fmap


def heavy_tailed_brightness(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    sigma: float = 0.8,
    n_bright: int = 3,
    bright_gain: float = 8.0,
) -> np.ndarray:
    """Log-normal object brightness plus ``n_bright`` objects ``bright_gain`` times brighter."""
    n = int(labels.max())
    if n == 0:
        return image
    factors = np.exp(rng.normal(0.0, sigma, n))
    if n_bright > 0:
        ids = rng.choice(n, size=min(n, n_bright), replace=False)
        factors[ids] *= bright_gain
    return scale_objects(image, labels, factors)


def gamma(image: np.ndarray, g: float) -> np.ndarray:
    """Power-law intensity response ``(x / max) ** g * max`` (x >= 0)."""
    top = float(image.max())
    if top <= 0:
        return image
    return np.clip(image, 0, None) ** g * top ** (1.0 - g)


def low_photons(image: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    """Shot noise as if the 99.9th percentile collected ``photons`` photons."""
    top = float(np.percentile(image, 99.9))
    if top <= 0:
        return image
    lam = np.clip(image, 0, None) * (photons / top)
    return rng.poisson(lam).astype(np.float64) * (top / photons)


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return ndi.gaussian_filter(image, sigma)


def uneven_background(
    image: np.ndarray, rng: np.random.Generator, strength: float = 0.5, length: float | None = None
) -> np.ndarray:
    """Add a smooth positive background of ``strength`` x the image's signal range plus a ramp."""
    h, w = image.shape
    span = float(np.percentile(image, 99.5) - np.percentile(image, 1))
    length = length or max(h, w) / 3
    field = smooth_noise((h, w), rng, length)
    field = (field - field.min()) / max(1e-12, float(np.ptp(field)))
    angle = rng.uniform(0, 2 * np.pi)
    rows, cols = np.mgrid[0:h, 0:w]
    ramp = (np.cos(angle) * rows / h + np.sin(angle) * cols / w)
    ramp = (ramp - ramp.min()) / max(1e-12, float(np.ptp(ramp)))
    return image + strength * span * (0.6 * field + 0.4 * ramp)


def invert(image: np.ndarray) -> np.ndarray:
    """Dark objects on a bright background (the image mirrored in its range)."""
    return float(image.max()) + float(image.min()) - image


def rescale(image: np.ndarray, labels: np.ndarray, factor: float):
    """Resize by ``factor`` (image: antialiased linear; labels: nearest)."""
    from skimage.transform import resize

    h, w = image.shape
    shape = (max(1, round(h * factor)), max(1, round(w * factor)))
    img = resize(image, shape, order=1, anti_aliasing=factor < 1, preserve_range=True)
    lab = resize(labels, shape, order=0, anti_aliasing=False, preserve_range=True)
    return img, lab.astype(labels.dtype)


def crop(image: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator):
    """A random ``size`` x ``size`` crop (centred on an object when there is one)."""
    h, w = image.shape
    size = min(size, h, w)
    ids = np.flatnonzero(np.bincount(labels.ravel().astype(np.intp))[1:]) + 1
    if ids.size:
        rr, cc = np.nonzero(labels == rng.choice(ids))
        r0, c0 = int(rr.mean()) - size // 2, int(cc.mean()) - size // 2
    else:
        r0, c0 = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    r0 = int(np.clip(r0 + rng.integers(-size // 4, size // 4 + 1), 0, h - size))
    c0 = int(np.clip(c0 + rng.integers(-size // 4, size // 4 + 1), 0, w - size))
    return image[r0 : r0 + size, c0 : c0 + size], labels[r0 : r0 + size, c0 : c0 + size]


def quantize(image: np.ndarray, bits: int, top: float | None = None) -> np.ndarray:
    """To ``uint8``/``uint16`` (``bits`` 8, 12 or 16); ``top`` maps to the largest code.

    Values above ``top`` saturate, below 0 clip to 0; ``top`` defaults to the maximum.
    """
    top = float(image.max()) if top is None else float(top)
    codes = 2**bits - 1
    scaled = np.clip(image, 0, None) * (codes / max(top, 1e-12))
    out = np.clip(np.round(scaled), 0, codes)
    return out.astype(np.uint8 if bits <= 8 else np.uint16)


# ----------------------------------------------------------------------------- texture


def chromatin(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, amount: float = 0.5
) -> np.ndarray:
    """Fine granular texture inside objects (chromatin): signal x (1 + amount * noise)."""
    bg = background_level(image, labels)
    noise = smooth_noise(image.shape, rng, float(rng.uniform(1.2, 3.0)))
    fmap = np.clip(1.0 + amount * noise, 0.1, None)
    inside = _object_factor_map(labels, np.ones(int(labels.max())), 0.0) * (labels > 0)
    fmap = np.where(inside > 0, fmap, 1.0)
    return bg + (image - bg) * ndi.gaussian_filter(fmap, 0.7)


def nucleoli(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    per_object: tuple[int, int] = (1, 3),
    dark: bool = True,
) -> np.ndarray:
    """Small dark (or bright) round spots inside objects."""
    bg = background_level(image, labels)
    fmap = np.ones(image.shape)
    objects = ndi.find_objects(labels.astype(np.intp))
    for i, sl in enumerate(objects, start=1):
        if sl is None:
            continue
        rr, cc = np.nonzero(labels[sl] == i)
        if rr.size < 40:
            continue
        for _ in range(int(rng.integers(per_object[0], per_object[1] + 1))):
            k = int(rng.integers(rr.size))
            r, c = rr[k] + sl[0].start, cc[k] + sl[1].start
            rad = float(rng.uniform(1.0, 0.22 * np.sqrt(rr.size / np.pi) + 1.0))
            factor = rng.uniform(0.2, 0.6) if dark else rng.uniform(1.5, 2.5)
            r0, r1 = max(0, int(r - rad - 1)), min(image.shape[0], int(r + rad + 2))
            c0, c1 = max(0, int(c - rad - 1)), min(image.shape[1], int(c + rad + 2))
            yy, xx = np.mgrid[r0:r1, c0:c1]
            disc = ((yy - r) ** 2 + (xx - c) ** 2 <= rad**2) & (labels[r0:r1, c0:c1] == i)
            fmap[r0:r1, c0:c1][disc] = factor
    return bg + (image - bg) * ndi.gaussian_filter(fmap, 0.8)


def bright_rims(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, gain: float = 1.8
) -> np.ndarray:
    """Brighter object borders (nuclear envelope stains, edge effects)."""
    from skimage.segmentation import find_boundaries

    bg = background_level(image, labels)
    rim = find_boundaries(labels, mode="inner") & (labels > 0)
    rim = ndi.binary_dilation(rim, iterations=int(rng.integers(0, 2))) & (labels > 0)
    fmap = np.where(rim, gain, 1.0)
    return bg + (image - bg) * ndi.gaussian_filter(fmap, 0.8)


# ----------------------------------------------------------------------------- extra objects


def _signal_level(image: np.ndarray, labels: np.ndarray) -> float:
    """Median object signal above the background (the image's spread when no objects)."""
    bg = background_level(image, labels)
    inside = image[labels > 0]
    if inside.size:
        return max(1e-9, float(np.median(inside)) - bg)
    return max(1e-9, float(np.percentile(image, 99)) - bg)


def _blob(shape, r: float, c: float, radius: float, sigma: float) -> np.ndarray:
    rows, cols = np.ogrid[0 : shape[0], 0 : shape[1]]
    disc = ((rows - r) ** 2 + (cols - c) ** 2 <= radius**2).astype(np.float64)
    return ndi.gaussian_filter(disc, sigma) if sigma > 0 else disc


def out_of_focus(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, n: int = 4
) -> np.ndarray:
    """Unlabelled, strongly blurred nuclei (neighbours above or below the focal plane)."""
    level = _signal_level(image, labels)
    out = image.copy()
    h, w = image.shape
    for _ in range(n):
        radius = float(rng.uniform(5, 15))
        blob = _blob((h, w), rng.uniform(0, h), rng.uniform(0, w), radius, rng.uniform(3, 7))
        out += level * rng.uniform(0.15, 0.6) * blob / max(1e-12, float(blob.max()))
    return out


def debris(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, n: int = 8
) -> np.ndarray:
    """Unlabelled small bright specks and fibres outside objects."""
    level = _signal_level(image, labels)
    out = image.copy()
    h, w = image.shape
    for _ in range(n):
        r, c = rng.uniform(0, h), rng.uniform(0, w)
        if labels[int(min(r, h - 1)), int(min(c, w - 1))]:
            continue
        blob = _blob((h, w), r, c, rng.uniform(0.5, 2.0), 0.7)
        if rng.random() < 0.3:  # a short fibre
            blob = ndi.gaussian_filter1d(blob, rng.uniform(3, 8), axis=int(rng.integers(2)))
        out += level * rng.uniform(0.5, 3.0) * blob / max(1e-12, float(blob.max()))
    return out


def small_bright_cells(
    image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, n: int = 3
):
    """Labelled small, compact, very bright cells (mitotic / apoptotic) in free space."""
    level = _signal_level(image, labels)
    out, lab = image.copy(), labels.copy()
    h, w = image.shape
    free = ndi.distance_transform_edt(labels == 0)
    next_id = int(labels.max()) + 1
    for _ in range(n):
        radius = float(rng.uniform(2.5, 5.0))
        rr, cc = np.nonzero(free > radius + 2)
        if rr.size == 0:
            break
        k = int(rng.integers(rr.size))
        r, c = float(rr[k]), float(cc[k])
        disc = _blob((h, w), r, c, radius, 0.0) > 0.5
        lab[disc & (lab == 0)] = next_id
        out += level * rng.uniform(2.0, 5.0) * _blob((h, w), r, c, radius, 0.9)
        free = np.minimum(free, ndi.distance_transform_edt(~disc))
        next_id += 1
    return out, lab


# ----------------------------------------------------------------------------- windows


def window(image: np.ndarray, kind: str, rng: np.random.Generator | None = None) -> Window:
    """Contrast limits a user could set, by ``kind``.

    ``"auto"``: None (the Predictor's default); ``"minmax"``: the data's range;
    ``"napari"``: napari's default contrast limits (0-255 for uint8, else min-max);
    ``"dtype"``: 0 to the dtype's maximum;
    ``"narrow"``: top at 30 % of the range; ``"wide"``: the range grown by 50 %
    below and 100 % above; ``"offset"``: bottom at 40 % of the range;
    ``"random"``: any of the above with random proportions.
    """
    lo, hi = float(image.min()), float(image.max())
    span = max(hi - lo, 1e-9)
    if kind == "auto":
        return None
    if kind == "minmax":
        return (lo, hi)
    if kind == "napari":
        return (0.0, 255.0) if image.dtype == np.uint8 else (lo, hi)
    if kind == "dtype":
        return (0.0, dtype_max(image.dtype) if image.dtype.kind in "ui" else max(hi, 1.0))
    if kind == "narrow":
        return (lo, lo + 0.3 * span)
    if kind == "wide":
        return (lo - 0.5 * span, hi + 1.0 * span)
    if kind == "offset":
        return (lo + 0.4 * span, hi)
    if kind == "random":
        rng = rng or np.random.default_rng()
        p_lo, p_hi = np.percentile(image, [0.5, 99.8])
        low = float(rng.choice([lo, p_lo, lo + rng.uniform(-0.5, 0.45) * span]))
        high_kind = rng.random()
        if high_kind < 0.3:
            high = hi
        elif high_kind < 0.5:
            high = float(p_hi)
        else:
            high = lo + span * float(np.exp(rng.uniform(np.log(0.15), np.log(2.5))))
        if image.dtype.kind in "ui" and rng.random() < 0.1:
            low, high = 0.0, dtype_max(image.dtype)
        if high <= low + 1e-6 * span:
            high = low + 0.1 * span
        return (low, high)
    raise ValueError(
        f"unknown window kind {kind!r}; choose auto, minmax, napari, dtype, narrow, wide, "
        "offset, random"
    )


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class AppearanceConfig:
    """Probabilities of the random appearance changes in training (each drawn independently).

    ``window_prob``: a random user window (:func:`window` ``"random"``) instead
    of the default range; ``min_side``: smallest scene side after rescaling and
    cropping; ``min_contrast``: a random window is redrawn (at most 4 times, then
    the default range) until objects and background differ by this much after
    normalization (:func:`visible_contrast`), so no scene is made invisible;
    ``tiny_prob``: the scene shrunk x0.4-0.8 and cropped to ``min_side``-96 px
    around an object (a user's small crop of small objects).
    """

    prob: float = 0.8
    window_prob: float = 0.6
    brightness_prob: float = 0.5
    chromatin_prob: float = 0.3
    nucleoli_prob: float = 0.25
    rim_prob: float = 0.15
    out_of_focus_prob: float = 0.3
    debris_prob: float = 0.25
    small_cells_prob: float = 0.2
    gamma_prob: float = 0.4
    blur_prob: float = 0.2
    background_prob: float = 0.3
    photons_prob: float = 0.2
    invert_prob: float = 0.1
    rescale_prob: float = 0.25
    crop_prob: float = 0.1
    min_side: int = 40
    min_contrast: float = 0.06
    tiny_prob: float = 0.0


def random_appearance(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    cfg: AppearanceConfig | None = None,
) -> tuple[np.ndarray, np.ndarray, Window]:
    """A random chain of appearance changes and a random window (training).

    Returns ``(image, labels, contrast_limits)``; with probability ``1 - cfg.prob``
    the scene is returned unchanged with the default window (None).
    """
    cfg = cfg or AppearanceConfig()
    if rng.random() >= cfg.prob:
        return image, labels, None
    dtype = np.asarray(image).dtype
    img = np.asarray(image, dtype=np.float64)
    lab = labels
    if rng.random() < cfg.rescale_prob:
        h, w = img.shape
        low = max(0.4, cfg.min_side / min(h, w))
        factor = float(np.exp(rng.uniform(np.log(low), np.log(2.5))))
        img, lab = rescale(img, lab, factor)
    if rng.random() < cfg.crop_prob and min(img.shape) > cfg.min_side:
        img, lab = crop(img, lab, int(rng.integers(cfg.min_side, min(img.shape) + 1)), rng)
    # drawn only when enabled, so the default's random stream (earlier stages) is unchanged
    if cfg.tiny_prob > 0 and rng.random() < cfg.tiny_prob:
        factor = float(np.exp(rng.uniform(np.log(0.4), np.log(0.8))))
        if min(img.shape) * factor >= cfg.min_side:
            img, lab = rescale(img, lab, factor)
        size = int(rng.integers(cfg.min_side, 97))
        if min(img.shape) > size:
            img, lab = crop(img, lab, size, rng)
    if rng.random() < cfg.small_cells_prob:
        img, lab = small_bright_cells(img, lab, rng, n=int(rng.integers(1, 5)))
    if rng.random() < cfg.brightness_prob:
        img = heavy_tailed_brightness(
            img,
            lab,
            rng,
            sigma=float(rng.uniform(0.2, 1.0)),
            n_bright=int(rng.integers(0, 5)),
            bright_gain=float(np.exp(rng.uniform(np.log(2), np.log(20)))),
        )
    if rng.random() < cfg.chromatin_prob:
        img = chromatin(img, lab, rng, amount=float(rng.uniform(0.2, 0.8)))
    if rng.random() < cfg.nucleoli_prob:
        img = nucleoli(img, lab, rng, dark=rng.random() < 0.7)
    if rng.random() < cfg.rim_prob:
        img = bright_rims(img, lab, rng, gain=float(rng.uniform(1.3, 2.5)))
    if rng.random() < cfg.out_of_focus_prob:
        img = out_of_focus(img, lab, rng, n=int(rng.integers(1, 8)))
    if rng.random() < cfg.debris_prob:
        img = debris(img, lab, rng, n=int(rng.integers(2, 20)))
    if rng.random() < cfg.blur_prob:
        img = blur(img, float(rng.uniform(0.7, 2.5)))
    if rng.random() < cfg.background_prob:
        img = uneven_background(img, rng, strength=float(rng.uniform(0.1, 1.0)))
    if rng.random() < cfg.photons_prob:
        img = low_photons(img, float(np.exp(rng.uniform(np.log(15), np.log(300)))), rng)
    if rng.random() < cfg.gamma_prob:
        img = gamma(img, float(np.exp(rng.uniform(np.log(0.4), np.log(2.5)))))
    if rng.random() < cfg.invert_prob:
        img = invert(img)
    img = np.clip(img, 0, None)  # no negative intensities (a pedestal would hide the signal)
    if rng.random() < 0.15:
        out = img.astype(np.float32)
    else:
        bits = int(rng.choice([8, 12, 16])) if rng.random() < 0.5 else (
            8 if dtype == np.uint8 else 16
        )
        top = float(img.max())
        if rng.random() < 0.3:  # saturate the brightest pixels (at most ~3 %)
            top = max(top * float(rng.uniform(0.3, 1.0)), float(np.percentile(img, 97)))
        out = quantize(img, bits, top)
    limits = None
    if rng.random() < cfg.window_prob:
        for _ in range(4):
            limits = window(out, "random", rng)
            if visible_contrast(out, lab, limits) >= cfg.min_contrast:
                break
        else:
            limits = None
    return out, lab, limits


def visible_contrast(image: np.ndarray, labels: np.ndarray, limits: Window) -> float:
    """|median object - median background| after normalizing with ``limits`` (0-1 units).

    ``limits`` None uses the robust 0.5-99.8 percentile range. 1.0 when the
    scene has no objects or no background.
    """
    fg, bg = labels > 0, labels == 0
    if not fg.any() or not bg.any():
        return 1.0
    low, high = limits if limits is not None else np.percentile(image, [0.5, 99.8])
    scale = 1.0 / max(float(high) - float(low), 1e-12)
    obj = np.clip((float(np.median(image[fg])) - low) * scale, 0, 1)
    back = np.clip((float(np.median(image[bg])) - low) * scale, 0, 1)
    return float(abs(obj - back))


def __getattr__(name: str) -> Any:
    """The stress sweep's names live in :mod:`.stress` (imported on first use)."""
    if name in ("Condition", "STRESS_CONDITIONS", "apply_condition"):
        from napari_sam.synthetic import stress

        return getattr(stress, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
