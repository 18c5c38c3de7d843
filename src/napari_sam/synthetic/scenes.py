"""High-level scene generators returning ``(image, labels)``.

Every generator is deterministic for a given ``seed`` (an int, a SeedSequence or a
:class:`numpy.random.Generator`, which is then advanced) and returns

* ``image`` – ``(Y, X)`` or ``(Z, Y, X)``; uint8 for ``bit_depth=8``, uint16 for 12
  and 16 bits, or float32 with ``dtype="float32"`` (see
  :func:`napari_sam.synthetic.imaging.render`);
* ``labels`` – uint32 of the same shape, 0 = background, objects ``1..N`` with
  consecutive ids and no overlap (objects may touch);
* with ``return_info=True`` also a dict ``info`` with at least ``"kind"``,
  ``"n_objects"``, ``"bit_depth"``, ``"psf_sigma"`` and ``"interior_points"`` (an
  ``(N, ndim)`` int array: a voxel deep inside each object, usable as a prompt).

Sizes are in pixels (xy pixels for stacks). Generation is vectorized: a 256x256
scene takes a few tens of milliseconds, a (32, 256, 256) stack about a second.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from ._random import SeedLike, as_rng, smooth_noise
from ._scene_parts import _finish, _lut, _nuclear_fluorescence, _profile_map, _shape
from .imaging import render
from .placement import place_objects, tessellation
from .shapes import random_nucleus, star_convex
from .stacks import nuclei_stack as nuclei_stack
from .stacks import sample_nuclei_stack as sample_nuclei_stack

__all__ = [
    "SCENES_2D",
    "cells_membrane_2d",
    "nuclei_2d",
    "phase_contrast_2d",
    "puncta_2d",
    "random_scene_2d",
]


def nuclei_2d(
    shape: Sequence[int] = (256, 256),
    n_objects: int | None = None,
    seed: SeedLike = 0,
    *,
    radius: tuple[float, float] = (6.0, 14.0),
    elongation: tuple[float, float] = (1.0, 1.6),
    irregularity: float = 0.2,
    cluster_prob: float = 0.35,
    dividing_prob: float = 0.05,
    brightness: tuple[float, float] = (0.35, 1.0),
    texture: float = 0.2,
    bit_depth: int = 16,
    photons: float = 600.0,
    background: float = 0.06,
    illumination: float = 0.25,
    psf_sigma: float = 1.2,
    read_noise: float = 2.0,
    dtype: str | np.dtype | None = None,
    return_info: bool = False,
):
    """Fluorescent nuclei (DNA stain) in 2D.

    Round to irregular nuclei of varying size and brightness, some clustered and
    touching, a few dividing (two-lobed, brighter), with chromatin texture and
    darker nucleoli; blurred, unevenly illuminated, noisy.

    Parameters
    ----------
    shape : (int, int)
        ``(Y, X)``.
    n_objects : int, optional
        Nuclei to attempt; defaults to one per ~1900 px². Fewer are placed when the
        image is full.
    seed : int, numpy.random.Generator or None
        Randomness; equal seeds give equal output.
    radius, elongation, irregularity, dividing_prob
        Geometry, see :func:`napari_sam.synthetic.shapes.random_nucleus`.
    cluster_prob : float
        Probability that a nucleus is placed touching an earlier one.
    brightness : (float, float)
        Range of relative nucleus brightness.
    texture : float
        Relative amplitude of the chromatin texture.
    bit_depth, photons, background, illumination, psf_sigma, read_noise, dtype
        Image formation, see :func:`napari_sam.synthetic.imaging.render`.
    return_info : bool
        Also return a dict of metadata (see module docstring).

    Returns
    -------
    image : numpy.ndarray
        ``(Y, X)`` uint8 / uint16 / float32.
    labels : numpy.ndarray
        ``(Y, X)`` uint32, nuclei ``1..N``.
    """
    shape = _shape(shape, 2)
    rng = as_rng(seed)
    if n_objects is None:
        n_objects = max(1, round(shape[0] * shape[1] / 1900))
    objects = [
        random_nucleus(
            rng,
            2,
            radius=radius,
            elongation=elongation,
            irregularity=irregularity,
            dividing_prob=dividing_prob,
        )
        for _ in range(int(n_objects))
    ]
    labels, placements = place_objects(shape, objects, rng, cluster_prob=cluster_prob)
    expected = _nuclear_fluorescence(
        labels, placements, rng, brightness=brightness, texture=texture, texture_length=2.0
    )
    image = render(
        expected,
        rng,
        bit_depth=bit_depth,
        photons=photons,
        background=background,
        illumination=illumination,
        psf_sigma=psf_sigma,
        read_noise=read_noise,
        dtype=dtype,
    )
    info = {
        "kind": "nuclei_2d",
        "bit_depth": bit_depth,
        "psf_sigma": (float(psf_sigma),) * 2,
        "dividing": [p.label for p in placements if p.obj.kind == "dividing"],
    }
    return _finish(image, labels, info, return_info)


def cells_membrane_2d(
    shape: Sequence[int] = (256, 256),
    n_objects: int | None = None,
    seed: SeedLike = 0,
    *,
    cell_size: float = 28.0,
    jitter: float = 0.3,
    warp: float = 0.12,
    gap_fraction: float = 0.08,
    brightness: tuple[float, float] = (0.5, 1.0),
    membrane_variation: float = 0.35,
    cytoplasm: float = 0.12,
    bit_depth: int = 16,
    photons: float = 500.0,
    background: float = 0.05,
    illumination: float = 0.25,
    psf_sigma: float = 1.2,
    read_noise: float = 2.0,
    dtype: str | np.dtype | None = None,
    return_info: bool = False,
):
    """Tissue-like cells outlined by a membrane stain, in 2D.

    Cells tile the image as a warped Voronoi tessellation with a few gaps. The
    image shows bright, unevenly stained membranes and dim cytoplasm; the labels
    are the full cell areas (each membrane is split between the two cells it
    separates), so neighbouring labels touch.

    Parameters
    ----------
    shape : (int, int)
        ``(Y, X)``.
    n_objects : int, optional
        Approximate number of cells; overrides ``cell_size`` when given.
    seed : int, numpy.random.Generator or None
        Randomness; equal seeds give equal output.
    cell_size, jitter, warp, gap_fraction
        Tessellation, see :func:`napari_sam.synthetic.shapes.tessellation`.
    brightness : (float, float)
        Range of per-cell membrane brightness.
    membrane_variation : float
        Relative amplitude of brightness fluctuations along the membranes.
    cytoplasm : float
        Mean cytoplasm intensity relative to a bright membrane.
    bit_depth, photons, background, illumination, psf_sigma, read_noise, dtype
        Image formation, see :func:`napari_sam.synthetic.imaging.render`.
    return_info : bool
        Also return a dict of metadata.

    Returns
    -------
    image : numpy.ndarray
        ``(Y, X)`` uint8 / uint16 / float32.
    labels : numpy.ndarray
        ``(Y, X)`` uint32, cells ``1..N``.
    """
    shape = _shape(shape, 2)
    rng = as_rng(seed)
    if n_objects is not None:
        cell_size = float(np.sqrt(2.0 * shape[0] * shape[1] / (np.sqrt(3.0) * max(n_objects, 1))))
    labels = tessellation(
        shape, rng, cell_size=cell_size, jitter=jitter, warp=warp, gap_fraction=gap_fraction
    )
    n = int(labels.max())
    memb_lut = _lut(rng.uniform(*brightness, n))
    memb_lut[0] = float(np.mean(brightness))
    cyto_lut = _lut(cytoplasm * rng.uniform(0.5, 1.5, n))
    edges = find_boundaries(labels, mode="thick")
    along = np.clip(1.0 + membrane_variation * smooth_noise(shape, rng, 5.0), 0.15, None)
    grain = smooth_noise(shape, rng, 1.5)
    expected = cyto_lut[labels] * np.clip(1.0 + 0.3 * grain, 0.0, None)
    expected += np.where(edges, memb_lut[labels] * along, np.float32(0.0))
    image = render(
        expected,
        rng,
        bit_depth=bit_depth,
        photons=photons,
        background=background,
        illumination=illumination,
        psf_sigma=psf_sigma,
        read_noise=read_noise,
        dtype=dtype,
    )
    info = {
        "kind": "cells_membrane_2d",
        "bit_depth": bit_depth,
        "psf_sigma": (float(psf_sigma),) * 2,
        "cell_size": cell_size,
    }
    return _finish(image, labels, info, return_info)


def puncta_2d(
    shape: Sequence[int] = (256, 256),
    n_objects: int | None = None,
    seed: SeedLike = 0,
    *,
    radius: tuple[float, float] = (1.2, 2.8),
    elongation: tuple[float, float] = (1.0, 1.4),
    brightness: tuple[float, float] = (0.4, 1.0),
    cluster_prob: float = 0.25,
    cytoplasm: float = 0.08,
    bit_depth: int = 16,
    photons: float = 400.0,
    background: float = 0.04,
    illumination: float = 0.2,
    psf_sigma: float = 1.0,
    read_noise: float = 2.0,
    dtype: str | np.dtype | None = None,
    return_info: bool = False,
):
    """Small puncta / organelles (vesicles, spots) in 2D.

    Puncta are tiny ellipses, most of them inside dim, smooth "cell" regions of
    diffuse cytoplasmic signal, some clustered. Labels are the exact puncta
    footprints before blurring.

    Parameters
    ----------
    shape : (int, int)
        ``(Y, X)``.
    n_objects : int, optional
        Puncta to attempt; defaults to one per ~550 px².
    seed : int, numpy.random.Generator or None
        Randomness; equal seeds give equal output.
    radius : (float, float)
        Range of puncta radii in pixels.
    elongation : (float, float)
        Range of long/short axis ratios.
    brightness : (float, float)
        Range of relative puncta brightness.
    cluster_prob : float
        Probability that a punctum is placed touching an earlier one.
    cytoplasm : float
        Intensity of the diffuse signal in cell regions.
    bit_depth, photons, background, illumination, psf_sigma, read_noise, dtype
        Image formation, see :func:`napari_sam.synthetic.imaging.render`.
    return_info : bool
        Also return a dict of metadata.

    Returns
    -------
    image : numpy.ndarray
        ``(Y, X)`` uint8 / uint16 / float32.
    labels : numpy.ndarray
        ``(Y, X)`` uint32, puncta ``1..N``.
    """
    shape = _shape(shape, 2)
    rng = as_rng(seed)
    if n_objects is None:
        n_objects = max(1, round(shape[0] * shape[1] / 550))
    region = np.clip(smooth_noise(shape, rng, 0.15 * max(shape)) + 0.3, 0.0, 1.0)
    cells = ndi.gaussian_filter(region, 2.0)
    # Puncta are tiny: draw them from a per-scene library of random shapes (sizes,
    # orientations, sub-pixel offsets), which is much faster than one shape each.
    library = [
        random_nucleus(rng, 2, radius=radius, elongation=elongation, irregularity=0.0)
        for _ in range(min(int(n_objects), 48))
    ]
    picks: Any = rng.integers(0, len(library), int(n_objects)) if library else []
    objects = [library[i] for i in picks]
    labels, placements = place_objects(
        shape, objects, rng, cluster_prob=cluster_prob, min_visible=0.8, density=0.05 + cells
    )
    profile = _profile_map(shape, placements)
    bright = _lut(rng.uniform(*brightness, len(placements)))
    expected = cytoplasm * cells + bright[labels] * (0.6 + 0.4 * profile)
    image = render(
        expected,
        rng,
        bit_depth=bit_depth,
        photons=photons,
        background=background,
        illumination=illumination,
        psf_sigma=psf_sigma,
        read_noise=read_noise,
        dtype=dtype,
    )
    info = {"kind": "puncta_2d", "bit_depth": bit_depth, "psf_sigma": (float(psf_sigma),) * 2}
    return _finish(image, labels, info, return_info)


def phase_contrast_2d(
    shape: Sequence[int] = (256, 256),
    n_objects: int | None = None,
    seed: SeedLike = 0,
    *,
    radius: tuple[float, float] = (8.0, 18.0),
    elongation: tuple[float, float] = (1.2, 3.0),
    irregularity: float = 0.3,
    cluster_prob: float = 0.3,
    mitotic_prob: float = 0.06,
    darkness: float = 0.35,
    halo: float = 2.5,
    halo_width: float = 4.5,
    texture: float = 0.15,
    bit_depth: int = 8,
    photons: float = 3000.0,
    illumination: float = 0.2,
    psf_sigma: float = 0.8,
    read_noise: float = 3.0,
    dtype: str | np.dtype | None = None,
    return_info: bool = False,
):
    """Phase-contrast-like cultured cells in 2D.

    Elongated, irregular cells are darker than the grey background and surrounded
    by bright halos (a high-pass of the optical thickness); rounded mitotic cells
    are small, thick and high-contrast with strong halos. Transmitted light gives
    many photons, hence low noise.

    Parameters
    ----------
    shape : (int, int)
        ``(Y, X)``.
    n_objects : int, optional
        Cells to attempt; defaults to one per ~2600 px².
    seed : int, numpy.random.Generator or None
        Randomness; equal seeds give equal output.
    radius, elongation, irregularity
        Cell geometry, see :func:`napari_sam.synthetic.shapes.random_nucleus`.
    cluster_prob : float
        Probability that a cell is placed touching an earlier one.
    mitotic_prob : float
        Probability of a small, round, thick (mitotic) cell.
    darkness : float
        How much darker than the background a flat cell's interior is.
    halo : float
        Strength of the halo (bright outside, dark inside the edge).
    halo_width : float
        Width of the halo in pixels.
    texture : float
        Amplitude of granular texture inside cells.
    bit_depth, photons, illumination, psf_sigma, read_noise, dtype
        Image formation, see :func:`napari_sam.synthetic.imaging.render` (no
        additive background).
    return_info : bool
        Also return a dict of metadata.

    Returns
    -------
    image : numpy.ndarray
        ``(Y, X)`` uint8 / uint16 / float32.
    labels : numpy.ndarray
        ``(Y, X)`` uint32, cells ``1..N``.
    """
    shape = _shape(shape, 2)
    rng = as_rng(seed)
    if n_objects is None:
        n_objects = max(1, round(shape[0] * shape[1] / 2600))
    objects, mitotic = [], []
    for _ in range(int(n_objects)):
        if rng.random() < mitotic_prob:
            r = 0.55 * rng.uniform(*radius)
            objects.append(star_convex((r, r), rng=rng, irregularity=0.04))
            mitotic.append(True)
        else:
            objects.append(
                random_nucleus(
                    rng, 2, radius=radius, elongation=elongation, irregularity=irregularity
                )
            )
            mitotic.append(False)
    labels, placements = place_objects(shape, objects, rng, cluster_prob=cluster_prob)
    by_id = {id(obj): m for obj, m in zip(objects, mitotic)}
    is_mitotic = np.array([by_id[id(p.obj)] for p in placements], dtype=bool)
    n = len(placements)
    thick = np.where(is_mitotic, 1.6, rng.uniform(0.6, 1.0, n))
    dark = np.where(is_mitotic, -0.5, darkness * rng.uniform(0.6, 1.3, n))
    profile = _profile_map(shape, placements)
    phase = ndi.gaussian_filter(_lut(thick)[labels] * profile, 1.0)
    high_pass = phase - ndi.gaussian_filter(phase, halo_width, truncate=3.0)
    body = ndi.gaussian_filter(_lut(dark)[labels] * np.sqrt(profile), 1.0)
    grain = smooth_noise(shape, rng, 1.5)
    expected = 1.0 - body - 1.5 * halo * high_pass - texture * phase * grain
    np.clip(expected, 0.05, None, out=expected)
    image = render(
        expected,
        rng,
        bit_depth=bit_depth,
        photons=photons,
        background=0.0,
        illumination=illumination,
        psf_sigma=psf_sigma,
        read_noise=read_noise,
        dtype=dtype,
    )
    info = {
        "kind": "phase_contrast_2d",
        "bit_depth": bit_depth,
        "psf_sigma": (float(psf_sigma),) * 2,
        "mitotic": [p.label for p, m in zip(placements, is_mitotic) if m],
    }
    return _finish(image, labels, info, return_info)


SCENES_2D: dict[str, Callable[..., Any]] = {
    "nuclei": nuclei_2d,
    "membrane": cells_membrane_2d,
    "puncta": puncta_2d,
    "phase": phase_contrast_2d,
}
"""The 2D generators by short name, as used by :func:`random_scene_2d`."""

_KIND_WEIGHTS = {"nuclei": 0.4, "membrane": 0.2, "puncta": 0.15, "phase": 0.25}


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def random_scene_2d(
    rng_or_seed: SeedLike = None,
    shape: Sequence[int] = (256, 256),
    *,
    kinds: Sequence[str] | None = None,
    return_info: bool = False,
):
    """A random 2D scene with randomized settings, e.g. for training.

    Picks one of :data:`SCENES_2D` (nuclei 40 %, membrane 20 %, puncta 15 %,
    phase 25 % by default) and randomizes bit depth (8/12/16), occasionally float32
    output, photon budget, read noise, background, illumination, PSF width, object
    size, density, clustering and texture.

    Parameters
    ----------
    rng_or_seed : int, numpy.random.Generator or None
        Randomness; equal seeds give equal output. A Generator is advanced, so
        repeated calls with it give a stream of different scenes.
    shape : (int, int)
        ``(Y, X)``.
    kinds : sequence of str, optional
        Restrict to these keys of :data:`SCENES_2D` (chosen uniformly).
    return_info : bool
        Also return metadata; ``info["kind"]`` names the generator (e.g.
        ``"nuclei_2d"``) and ``info["params"]`` holds the settings passed to it.

    Returns
    -------
    image : numpy.ndarray
        ``(Y, X)`` uint8, uint16 or float32.
    labels : numpy.ndarray
        ``(Y, X)`` uint32, objects ``1..N``.
    """
    rng = as_rng(rng_or_seed)
    shape = _shape(shape, 2)
    if kinds is None:
        names = list(_KIND_WEIGHTS)
        p = np.array([_KIND_WEIGHTS[k] for k in names])
    else:
        names = list(kinds)
        unknown = set(names) - set(SCENES_2D)
        if unknown or not names:
            raise ValueError(f"unknown kinds {sorted(unknown)}; choose from {sorted(SCENES_2D)}")
        p = np.ones(len(names))
    kind = names[int(rng.choice(len(names), p=p / p.sum()))]
    area = shape[0] * shape[1]
    size = _loguniform(rng, 0.6, 1.6)
    params: dict[str, Any] = {
        "bit_depth": int(rng.choice([8, 12, 16])),
        "read_noise": float(rng.uniform(0.5, 4.0)),
        "illumination": float(rng.uniform(0.0, 0.5)),
        "psf_sigma": float(rng.uniform(0.7, 2.0)),
        "dtype": "float32" if rng.random() < 0.1 else None,
    }
    if kind == "nuclei":
        r = (5.0 * size, 13.0 * size)
        coverage = rng.uniform(0.08, 0.4)
        params.update(
            radius=r,
            n_objects=max(1, round(coverage * area / (np.pi * np.mean(r) ** 2))),
            irregularity=float(rng.uniform(0.0, 0.3)),
            elongation=(1.0, float(rng.uniform(1.1, 2.0))),
            cluster_prob=float(rng.uniform(0.0, 0.7)),
            dividing_prob=float(rng.uniform(0.0, 0.1)),
            texture=float(rng.uniform(0.0, 0.4)),
            photons=_loguniform(rng, 60.0, 3000.0),
            background=float(rng.uniform(0.01, 0.25)),
        )
    elif kind == "membrane":
        params.update(
            cell_size=float(28.0 * size),
            warp=float(rng.uniform(0.0, 0.15)),
            jitter=float(rng.uniform(0.1, 0.33)),
            gap_fraction=float(rng.uniform(0.0, 0.25)),
            membrane_variation=float(rng.uniform(0.1, 0.6)),
            cytoplasm=float(rng.uniform(0.02, 0.25)),
            photons=_loguniform(rng, 60.0, 3000.0),
            background=float(rng.uniform(0.01, 0.2)),
        )
    elif kind == "puncta":
        r = (max(1.0, 1.2 * size), 2.8 * size)
        params.update(
            radius=r,
            n_objects=max(1, round(area / _loguniform(rng, 200.0, 1500.0))),
            cluster_prob=float(rng.uniform(0.0, 0.5)),
            cytoplasm=float(rng.uniform(0.0, 0.2)),
            photons=_loguniform(rng, 60.0, 3000.0),
            background=float(rng.uniform(0.01, 0.15)),
            psf_sigma=float(rng.uniform(0.7, 1.5)),
        )
    else:
        r = (8.0 * size, 18.0 * size)
        coverage = rng.uniform(0.1, 0.45)
        params.update(
            radius=r,
            n_objects=max(1, round(coverage * area / (1.8 * np.pi * np.mean(r) ** 2))),
            elongation=(1.0, float(rng.uniform(1.5, 3.5))),
            irregularity=float(rng.uniform(0.1, 0.35)),
            cluster_prob=float(rng.uniform(0.0, 0.6)),
            darkness=float(rng.uniform(0.15, 0.5)),
            halo=float(rng.uniform(0.8, 3.5)),
            halo_width=float(rng.uniform(2.5, 6.0)),
            texture=float(rng.uniform(0.0, 0.3)),
            photons=_loguniform(rng, 500.0, 20000.0),
            psf_sigma=float(rng.uniform(0.5, 1.5)),
        )
    if not return_info:
        return SCENES_2D[kind](shape, seed=rng, **params)
    image, labels, info = SCENES_2D[kind](shape, seed=rng, return_info=True, **params)
    info["params"] = params
    return image, labels, info
