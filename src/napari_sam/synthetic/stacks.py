"""3D scenes: a nuclei stack with exact labels, and the plugin's sample stack.

The 3D half of :mod:`.scenes` (importable from there too).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._random import SeedLike, as_rng
from ._scene_parts import _finish, _nuclear_fluorescence, _shape
from .imaging import render, stack_psf_sigma
from .placement import place_objects
from .shapes import random_nucleus


def nuclei_stack(
    shape: Sequence[int] = (32, 256, 256),
    n_objects: int | None = None,
    seed: SeedLike = 0,
    *,
    anisotropy: float = 2.0,
    radius: tuple[float, float] = (7.0, 13.0),
    elongation: tuple[float, float] = (1.0, 1.5),
    flatness: tuple[float, float] = (0.65, 0.95),
    max_tilt: float = 30.0,
    irregularity: float = 0.2,
    cluster_prob: float = 0.35,
    dividing_prob: float = 0.04,
    brightness: tuple[float, float] = (0.35, 1.0),
    texture: float = 0.2,
    z_margin: int = 1,
    bit_depth: int = 16,
    photons: float = 600.0,
    background: float = 0.06,
    illumination: float = 0.25,
    psf_sigma: float = 1.2,
    axial_ratio: float = 3.5,
    depth_attenuation: float = 0.25,
    read_noise: float = 2.0,
    dtype: str | np.dtype | None = None,
    return_info: bool = False,
):
    """Fluorescent nuclei in a 3D ``(Z, Y, X)`` stack with anisotropic sampling.

    Nuclei (flattened ellipsoids with tilted orientations, irregular blobs and a
    few two-lobed dividing nuclei) are built in physical space and sampled with a
    z step ``anisotropy`` times the xy pixel size. Every nucleus starts and ends
    inside the stack (at least ``z_margin`` slices from the first and last slice);
    in xy they may be cut by the border. Some touch each other. The PSF is much
    wider along z than in xy, and intensity decreases with depth.

    Parameters
    ----------
    shape : (int, int, int)
        ``(Z, Y, X)``.
    n_objects : int, optional
        Nuclei to attempt; defaults to one per 40000 physical voxels
        (``Z * anisotropy * Y * X``).
    seed : int, numpy.random.Generator or None
        Randomness; equal seeds give equal output.
    anisotropy : float
        z step / xy pixel size; view with ``scale=(anisotropy, 1, 1)``.
    radius, elongation, flatness, max_tilt, irregularity, dividing_prob
        Geometry in xy pixels, see :func:`napari_sam.synthetic.shapes.random_nucleus`.
    cluster_prob : float
        Probability that a nucleus is placed touching an earlier one.
    brightness : (float, float)
        Range of relative nucleus brightness.
    texture : float
        Relative amplitude of the chromatin texture.
    z_margin : int
        Empty slices kept above and below every nucleus.
    bit_depth, photons, background, illumination, read_noise, dtype
        Image formation, see :func:`napari_sam.synthetic.imaging.render`.
    psf_sigma : float
        Lateral PSF width in pixels.
    axial_ratio : float
        Axial/lateral PSF width in physical units (see
        :func:`napari_sam.synthetic.imaging.stack_psf_sigma`).
    depth_attenuation : float
        Fractional intensity loss from the first to the last slice.
    return_info : bool
        Also return a dict of metadata (adds ``"scale"`` and ``"z_extent"``, the
        first and last slice of every nucleus).

    Returns
    -------
    image : numpy.ndarray
        ``(Z, Y, X)`` uint8 / uint16 / float32.
    labels : numpy.ndarray
        ``(Z, Y, X)`` uint32; each 3D nucleus is one id in ``1..N``.
    """
    shape = _shape(shape, 3)
    rng = as_rng(seed)
    spacing = (float(anisotropy), 1.0, 1.0)
    if n_objects is None:
        n_objects = max(1, round(shape[0] * anisotropy * shape[1] * shape[2] / 40000))
    objects = [
        random_nucleus(
            rng,
            3,
            radius=radius,
            elongation=elongation,
            irregularity=irregularity,
            dividing_prob=dividing_prob,
            flatness=flatness,
            max_tilt=max_tilt,
            spacing=spacing,
        )
        for _ in range(int(n_objects))
    ]
    labels, placements = place_objects(
        shape,
        objects,
        rng,
        cluster_prob=cluster_prob,
        inside_axes=(0,),
        margin=z_margin,
        spacing=spacing,
    )
    expected = _nuclear_fluorescence(
        labels,
        placements,
        rng,
        brightness=brightness,
        texture=texture,
        texture_length=(2.0 / anisotropy, 2.0, 2.0),
    )
    psf = stack_psf_sigma(psf_sigma, anisotropy, axial_ratio)
    image = render(
        expected,
        rng,
        bit_depth=bit_depth,
        photons=photons,
        background=background,
        illumination=illumination,
        psf_sigma=psf,
        read_noise=read_noise,
        depth_attenuation=depth_attenuation,
        dtype=dtype,
    )
    info = {
        "kind": "nuclei_stack",
        "bit_depth": bit_depth,
        "psf_sigma": psf,
        "scale": spacing,
        "dividing": [p.label for p in placements if p.obj.kind == "dividing"],
        "z_extent": np.array(
            [(p.offset[0], p.offset[0] + p.obj.mask.shape[0] - 1) for p in placements],
            dtype=np.int64,
        ).reshape(-1, 2),
    }
    return _finish(image, labels, info, return_info)


def sample_nuclei_stack() -> tuple[np.ndarray, np.ndarray]:
    """Small deterministic nuclei stack for the plugin's sample data and demos.

    Recommended display scale: ``scale=(2.0, 0.5, 0.5)`` (z step 2 µm, 0.5 µm
    pixels; z is 4x coarser than xy).

    Returns
    -------
    image : numpy.ndarray
        ``(24, 192, 192)`` uint16 (16-bit camera, most of the range unused).
    labels : numpy.ndarray
        ``(24, 192, 192)`` uint32 with 12 nuclei, ids ``1..12``; every nucleus
        starts and ends inside the stack.
    """
    image, labels = nuclei_stack(
        (24, 192, 192),
        n_objects=12,
        seed=7,
        anisotropy=4.0,
        radius=(12.0, 18.0),
        flatness=(0.75, 0.95),
        cluster_prob=0.4,
        dividing_prob=0.08,
        z_margin=2,
        bit_depth=16,
    )
    return image, labels
