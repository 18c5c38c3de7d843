"""Training data: random synthetic scenes, normalized exactly as the Predictor does.

A training sample is one procedurally generated 2D scene from
:mod:`napari_sam.synthetic`, randomly flipped/transposed, mapped to 0-255 RGB
with :func:`napari_sam.normalize.to_rgb_float` (robust percentiles), resized so
its long side is the model input size (the same call as
:meth:`napari_sam.predictor.Predictor.preprocess`) and later normalized and
zero-padded by :meth:`napari_sam.model.sam.Sam.preprocess`. The labels are
resized with nearest-neighbour sampling and zero-padded to the square model frame.

Coordinates: arrays are ``(row, col)``; masks are ``(S, S)`` in the padded
model input frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: Default mix of scene kinds (keys of :data:`napari_sam.synthetic.SCENES_2D`).
DEFAULT_KIND_WEIGHTS: dict[str, float] = {
    "nuclei": 0.5,
    "phase": 0.2,
    "membrane": 0.2,
    "puncta": 0.1,
}


@dataclass(frozen=True)
class DataConfig:
    """How training scenes are drawn.

    Attributes
    ----------
    kind_weights : relative frequency of each scene kind of
        :func:`napari_sam.synthetic.random_scene_2d` (which randomizes bit depth,
        noise, PSF, illumination, object size, density, clustering and texture)
    base_shape : ``(Y, X)`` of most scenes (the model input size keeps them unresized)
    other_shape_prob : probability of a scene with another shape (non-square or
        larger), drawn from ``other_sides`` per axis; it is resized to the model
        input like any slice (teaches padding and scale changes)
    other_sides : candidate side lengths for those scenes
    objects_per_image : objects (masks) trained per scene
    min_area : smallest object area in model-input pixels that is trained on
    flip : random flips and transposes
    stack_prob : probability that a training image is a slice of a random
        :func:`napari_sam.synthetic.nuclei_stack` instead of a 2D scene; its
        objects are prompted like propagation does (the object's mask on the
        neighbouring slice, slightly perturbed, as mask prompt plus its box
        grown by 10 %), and the target is the object's mask on this slice,
        which is empty where the object has ended (teaches stopping)
    stack_slices : slices drawn from one generated stack before a new one is made
    stack_depth : slices per generated stack
    appearance_prob : probability that a 2D scene gets a random chain of
        appearance changes the generators never make and a random user window
        (:func:`napari_sam.synthetic.appearance.random_appearance`: heavy-tailed
        and saturated brightness, chromatin, nucleoli, rims, out-of-focus
        neighbours, debris, small bright cells, gamma, blur, uneven background,
        low photon counts, inversion, rescaling, crops, bit depth, contrast limits)
    stack_window_prob : probability that a generated stack is normalized with a
        random user window (one per stack, as napari's contrast limits) instead
        of its robust range
    small_stack_prob : probability that a generated stack is small (sides 48-96
        px, nuclei of radius 3.5-7 px, strongly anisotropic), as users' crops are
    appearance : overrides of the probabilities of
        :class:`napari_sam.synthetic.appearance.AppearanceConfig` (field name ->
        value, e.g. ``{"invert_prob": 0.2, "tiny_prob": 0.15}``); empty: its defaults
    """

    kind_weights: Mapping[str, float] = field(
        default_factory=lambda: dict(DEFAULT_KIND_WEIGHTS)
    )
    base_shape: tuple[int, int] = (256, 256)
    other_shape_prob: float = 0.25
    other_sides: tuple[int, ...] = (160, 192, 256, 320, 384)
    objects_per_image: int = 8
    min_area: int = 12
    flip: bool = True
    stack_prob: float = 0.0
    stack_slices: int = 6
    stack_depth: int = 16
    appearance_prob: float = 0.0
    stack_window_prob: float = 0.0
    small_stack_prob: float = 0.0
    appearance: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from dataclasses import fields

        from napari_sam.synthetic.appearance import AppearanceConfig

        known = {f.name for f in fields(AppearanceConfig)} - {"prob"}
        unknown = sorted(set(self.appearance) - known)
        if unknown:
            raise ValueError(
                f"unknown appearance settings {unknown}; choose from {sorted(known)}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind_weights"] = dict(self.kind_weights)
        d["appearance"] = dict(self.appearance)
        return d


@dataclass
class Scene:
    """One prepared training scene.

    Attributes
    ----------
    rgb : float32 ``(3, h, w)`` 0-255 RGB, resized so ``max(h, w)`` is the model
        input size (not yet normalized or padded)
    input_size : ``(h, w)``
    masks : bool ``(B, S, S)`` masks of the B objects to train on, in the padded frame
    kind : generator name (e.g. ``"nuclei_2d"``)
    dense : uint8 ``(2, S, S)`` dense targets of the whole scene: foreground (any
        object) and object boundaries (pixels next to another label or background),
        used by the auxiliary encoder loss
    prompt_masks : bool ``(B, S, S)`` or None: for stack slices, each object's
        mask on the neighbouring slice (the propagation prompt); ``masks`` may
        then be empty
    """

    rgb: np.ndarray
    input_size: tuple[int, int]
    masks: np.ndarray
    kind: str
    dense: np.ndarray | None = None
    prompt_masks: np.ndarray | None = None


def resized_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """The Predictor's resize rule (see :func:`napari_sam.predictor.resized_shape`)."""
    from napari_sam.predictor import resized_shape as rule

    return rule(h, w, long_side)


def prepare_rgb(
    image: np.ndarray,
    img_size: int,
    contrast_limits: tuple[float, float] | None = None,
) -> np.ndarray:
    """Slice ``(H, W)`` or ``(H, W, C)`` -> float32 ``(3, h, w)`` 0-255, long side ``img_size``.

    The same operations, in the same order, as
    :meth:`napari_sam.predictor.Predictor.preprocess` before ``Sam.preprocess``.
    """
    import torch
    import torch.nn.functional as F

    from napari_sam.normalize import to_rgb_float

    rgb = to_rgb_float(image, contrast_limits)
    h, w = rgb.shape[:2]
    th, tw = resized_shape(h, w, img_size)
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
    if (th, tw) != (h, w):
        x = F.interpolate(x, (th, tw), mode="bilinear", align_corners=False, antialias=True)
        x = x.round().clamp(0, 255) if np.asarray(image).dtype == np.uint8 else x
    return x[0].numpy()


def resize_labels(labels: np.ndarray, size: tuple[int, int], img_size: int) -> np.ndarray:
    """Nearest-neighbour resize of ``(H, W)`` labels to ``size``, zero-padded to ``(S, S)``."""
    h, w = labels.shape
    th, tw = size
    rows = np.minimum(((np.arange(th) + 0.5) * h / th).astype(np.intp), h - 1)
    cols = np.minimum(((np.arange(tw) + 0.5) * w / tw).astype(np.intp), w - 1)
    out = np.zeros((img_size, img_size), dtype=labels.dtype)
    out[:th, :tw] = labels[rows[:, None], cols[None, :]]
    return out


def select_objects(
    labels: np.ndarray, k: int, rng: np.random.Generator, min_area: int = 1
) -> np.ndarray:
    """Up to ``k`` distinct object ids of ``labels`` with area >= ``min_area``, at random."""
    areas = np.bincount(labels.ravel().astype(np.intp))
    ids = np.flatnonzero(areas >= max(1, min_area))
    ids = ids[ids != 0]
    if ids.size <= k:
        return rng.permutation(ids)
    return rng.choice(ids, size=k, replace=False)


def _augment(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    if rng.random() < 0.5:
        image, labels = image[::-1], labels[::-1]
    if rng.random() < 0.5:
        image, labels = image[:, ::-1], labels[:, ::-1]
    if rng.random() < 0.5:
        image, labels = image.T, labels.T
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def draw_shape(cfg: DataConfig, rng: np.random.Generator) -> tuple[int, int]:
    """Scene shape: ``cfg.base_shape`` or, with ``other_shape_prob``, random sides."""
    if rng.random() < cfg.other_shape_prob:
        return (int(rng.choice(cfg.other_sides)), int(rng.choice(cfg.other_sides)))
    return (cfg.base_shape[0], cfg.base_shape[1])


def draw_kind(cfg: DataConfig, rng: np.random.Generator) -> str:
    names = list(cfg.kind_weights)
    p = np.asarray([cfg.kind_weights[n] for n in names], dtype=np.float64)
    if names == [] or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"kind_weights must hold non-negative weights, got {cfg.kind_weights}")
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def sample_scene(
    rng: np.random.Generator, img_size: int, cfg: DataConfig | None = None
) -> Scene:
    """Draw and prepare one training scene (retries until it has a trainable object)."""
    from napari_sam.synthetic import random_scene_2d

    cfg = cfg or DataConfig()
    for _ in range(100):
        kind = draw_kind(cfg, rng)
        shape = draw_shape(cfg, rng)
        image, labels, info = random_scene_2d(rng, shape, kinds=[kind], return_info=True)
        if cfg.flip:
            image, labels = _augment(image, labels, rng)
        limits = None
        if cfg.appearance_prob > 0 and rng.random() < cfg.appearance_prob:
            from napari_sam.synthetic.appearance import AppearanceConfig, random_appearance

            settings: dict[str, Any] = {**cfg.appearance, "prob": 1.0}
            image, labels, limits = random_appearance(
                image, labels, rng, AppearanceConfig(**settings)
            )
        scene = prepare_scene(
            image, labels, img_size, cfg, rng, kind=info["kind"], contrast_limits=limits
        )
        if scene is not None:
            return scene
    raise RuntimeError("could not draw a scene with a trainable object in 100 tries")


def prepare_scene(
    image: np.ndarray,
    labels: np.ndarray,
    img_size: int,
    cfg: DataConfig,
    rng: np.random.Generator,
    kind: str = "custom",
    contrast_limits: tuple[float, float] | None = None,
) -> Scene | None:
    """Normalize (with ``contrast_limits``, default: the Predictor's range) and resize
    a scene, pick its objects; None when no object qualifies."""
    rgb = prepare_rgb(image, img_size, contrast_limits)
    size = (rgb.shape[1], rgb.shape[2])
    lab = resize_labels(labels, size, img_size)
    ids = select_objects(lab, cfg.objects_per_image, rng, cfg.min_area)
    if ids.size == 0:
        return None
    masks = lab[None] == ids[:, None, None]
    return Scene(
        rgb=rgb.astype(np.float32, copy=False),
        input_size=size,
        masks=masks,
        kind=kind,
        dense=dense_targets(lab),
    )


def dense_targets(labels: np.ndarray) -> np.ndarray:
    """uint8 ``(2, H, W)``: foreground and inner object boundaries of a label image."""
    from skimage.segmentation import find_boundaries

    fg = labels > 0
    edge = find_boundaries(labels, mode="inner") & fg
    return np.stack([fg, edge]).astype(np.uint8)


@dataclass
class StackSource:
    """Serves training slices from randomly generated nuclei stacks (see ``stack_prob``).

    One stack is generated and ``stack_slices`` slices are drawn from it before
    the next one is made (a stack costs as much as tens of 2D scenes).
    """

    stack: np.ndarray | None = None
    labels: np.ndarray | None = None
    limits: tuple[float, float] | None = None
    used: int = 0
    params: dict = field(default_factory=dict)

    def _generate(
        self, rng: np.random.Generator, shape: tuple[int, int], depth: int, cfg: DataConfig
    ) -> None:
        from napari_sam.normalize import default_range, stack_intensity_range
        from napari_sam.synthetic import nuclei_stack

        size = float(np.exp(rng.uniform(np.log(0.7), np.log(1.4))))
        radius = (6.0 * size, 13.0 * size)
        anisotropy = float(rng.uniform(1.5, 4.0))
        if cfg.small_stack_prob > 0 and rng.random() < cfg.small_stack_prob:
            shape = (int(rng.integers(48, 97)), int(rng.integers(48, 97)))
            low = float(rng.uniform(3.5, 5.0))
            radius = (low, low + float(rng.uniform(1.0, 2.5)))
            anisotropy = float(rng.uniform(2.5, 5.0))
        self.params = {
            "anisotropy": anisotropy,
            "radius": radius,
            "elongation": (1.0, float(rng.uniform(1.1, 1.8))),
            "irregularity": float(rng.uniform(0.0, 0.3)),
            "cluster_prob": float(rng.uniform(0.0, 0.6)),
            "brightness": (float(rng.uniform(0.2, 0.5)), 1.0),
            "photons": float(np.exp(rng.uniform(np.log(80.0), np.log(2500.0)))),
            "psf_sigma": float(rng.uniform(0.8, 1.8)),
            "axial_ratio": float(rng.uniform(2.5, 4.5)),
            "bit_depth": int(rng.choice([8, 12, 16])),
        }
        self.stack, self.labels = nuclei_stack((depth, *shape), seed=rng, **self.params)
        fixed = default_range(self.stack[:1, :1, :1])
        self.limits = fixed if fixed is not None else stack_intensity_range(self.stack)
        if cfg.stack_window_prob > 0 and rng.random() < cfg.stack_window_prob:
            from napari_sam.synthetic.appearance import visible_contrast, window

            mid = self.stack.shape[0] // 2
            for _ in range(4):
                limits = window(self.stack, "random", rng)
                if visible_contrast(self.stack[mid], self.labels[mid], limits) >= 0.06:
                    self.limits = limits
                    break
        self.used = 0

    def next(self, rng: np.random.Generator, img_size: int, cfg: DataConfig) -> Scene | None:
        """One slice with propagation-style objects; None when no object qualifies."""
        if self.stack is None or self.used >= cfg.stack_slices:
            self._generate(rng, (cfg.base_shape[0], cfg.base_shape[1]), cfg.stack_depth, cfg)
        assert self.stack is not None and self.labels is not None  # made by _generate
        self.used += 1
        n_z = self.stack.shape[0]
        z = int(rng.integers(0, n_z))
        zn = int(np.clip(z + rng.choice([-1, 1]), 0, n_z - 1))
        image, lab, lab_n = self.stack[z], self.labels[z], self.labels[zn]
        if cfg.flip:
            stacked = np.stack([lab, lab_n])
            flip_r, flip_c, transpose = rng.random(3) < 0.5
            if flip_r:
                image, stacked = image[::-1], stacked[:, ::-1]
            if flip_c:
                image, stacked = image[:, ::-1], stacked[:, :, ::-1]
            if transpose:
                image, stacked = image.T, stacked.transpose(0, 2, 1)
            image, lab, lab_n = np.ascontiguousarray(image), stacked[0], stacked[1]
        rgb = prepare_rgb(image, img_size, self.limits)
        size = (rgb.shape[1], rgb.shape[2])
        lab_r = resize_labels(np.ascontiguousarray(lab), size, img_size)
        lab_nr = resize_labels(np.ascontiguousarray(lab_n), size, img_size)
        ids = select_objects(lab_nr, cfg.objects_per_image, rng, cfg.min_area)
        if ids.size == 0:
            return None
        return Scene(
            rgb=rgb.astype(np.float32, copy=False),
            input_size=size,
            masks=lab_r[None] == ids[:, None, None],
            kind="nuclei_stack",
            dense=dense_targets(lab_r),
            prompt_masks=lab_nr[None] == ids[:, None, None],
        )


def scene_batch(
    rng: np.random.Generator,
    n: int,
    img_size: int,
    cfg: DataConfig | None = None,
    stacks: StackSource | None = None,
) -> list[Scene]:
    """``n`` training scenes (2D scenes, or stack slices with ``cfg.stack_prob``)."""
    cfg = cfg or DataConfig()
    scenes: list[Scene] = []
    while len(scenes) < n:
        if stacks is not None and cfg.stack_prob > 0 and rng.random() < cfg.stack_prob:
            scene = stacks.next(rng, img_size, cfg)
            if scene is None:
                continue
        else:
            scene = sample_scene(rng, img_size, cfg)
        scenes.append(scene)
    return scenes


def stack_inputs(model, scenes: Sequence[Scene]):
    """Scenes -> ``(N, 3, S, S)`` normalized, padded model input on the model's device."""
    import torch

    return torch.cat(
        [model.preprocess(torch.from_numpy(s.rgb)[None].to(model.device)) for s in scenes]
    )
