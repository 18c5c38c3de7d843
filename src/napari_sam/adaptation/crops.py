"""Training views of the user's objects, at the resolution the Predictor sees them.

The Predictor shows the model a slice in one of three ways (see
:mod:`napari_sam.tiling`): a slice no larger than the model input (or, for
1024 px SAM models, up to 1.5x) is resized whole; a larger slice is cut into
native-resolution tiles of the model input size, and objects too large for
a tile are decoded on the *overview* (the whole slice resized). A training
view of an object is made the same way:

* whole slice (untiled) or overview: the slice resized to the model input;
* tile: a window of the model input size at native scale holding the object
  (with random offsets, flips, transposes and intensity jitter for models
  whose encoder is trained; exactly the Predictor's own tile for models
  trained on cached embeddings).

Normalization is the Predictor's: one ``(low, high)`` for the whole slice
(the given contrast limits, else ``(0, 255)`` for uint8, else the slice's
robust percentiles), applied with :func:`napari_sam.training.data.prepare_rgb`.
Coordinates are ``(row, col)``; windows are ``(row_min, col_min, row_max,
col_max)`` with the max exclusive.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_sam.adaptation.objects import Instance, LabelledData, SliceData

#: Smallest margin (pixels) kept between an object and the edge of a random crop.
CROP_MARGIN = 8
#: Smallest object area (pixels at model input) trained on in a view.
MIN_VIEW_AREA = 4


def slice_normalization(sl: SliceData) -> tuple[np.ndarray, tuple[float, float] | None]:
    """The slice and the ``(low, high)`` every view of it is normalized with.

    The rule of :meth:`napari_sam.predictor.Predictor.embed` for tiled slices,
    which equals the untiled one for a whole slice: the given limits, else the
    dtype's range (uint8, bool), else the robust percentiles of the whole
    grayscale slice; a multichannel slice without limits is mapped to 0-255
    per channel first.
    """
    from napari_sam.normalize import default_range, intensity_range, to_rgb_float

    image = np.asarray(sl.image)
    if sl.contrast_limits is not None:
        low, high = sl.contrast_limits
        return image, (low, high)
    limits = default_range(image)
    if limits is None and image.ndim == 2:
        limits = intensity_range(image)
    elif limits is None:
        image, limits = to_rgb_float(image), (0.0, 255.0)
    return image, limits


@dataclass(frozen=True)
class View:
    """Where the Predictor looks for an object.

    Attributes
    ----------
    kind : ``"whole"`` (untiled slice), ``"tile"`` or ``"overview"``
    window : ``(row_min, col_min, row_max, col_max)`` of the slice, max exclusive
    tile : tile index for ``"tile"`` (the Predictor's own tile), else -1
    """

    kind: str
    window: tuple[int, int, int, int]
    tile: int = -1


def _random_start(lo_obj: int, hi_obj: int, length: int, tile: int, rng) -> int | None:
    """First pixel of a ``tile`` window holding ``[lo_obj, hi_obj)`` with a margin, at random."""
    for margin in (CROP_MARGIN, 0):
        lo = max(0, hi_obj + margin - tile)
        hi = min(lo_obj - margin, length - tile)
        if lo <= hi:
            return int(rng.integers(lo, hi + 1))
    return None


class ViewPlanner:
    """Views of objects as a given Predictor would see them.

    Parameters
    ----------
    predictor : a :class:`~napari_sam.predictor.Predictor` (its ``plan_tiles``
        and ``image_size`` decide tiling and the tile size)
    """

    def __init__(self, predictor) -> None:
        self.predictor = predictor
        self._grids: dict[tuple[int, int], Any] = {}

    def grid(self, shape: tuple[int, int]):
        """The Predictor's :class:`~napari_sam.tiling.TileGrid` for ``shape``, or None."""
        if shape not in self._grids:
            self._grids[shape] = self.predictor.plan_tiles(shape)
        return self._grids[shape]

    def view(self, shape: tuple[int, int], bbox: Sequence[int], rng=None) -> View:
        """The view of an object with ``bbox`` in a slice of ``shape``.

        With ``rng`` a tile-sized window at a random position holding the object
        (training crops); without, the Predictor's own choice.
        """
        h, w = shape
        grid = self.grid(shape)
        if grid is None:
            return View("whole", (0, 0, h, w))
        r0, c0, r1, c1 = (int(v) for v in bbox)
        index, margin = grid.route((r0, c0, r1 - 1, c1 - 1))
        if margin < 0:  # no tile holds it: the Predictor decodes it on the overview
            return View("overview", (0, 0, h, w))
        if rng is None:
            return View("tile", grid.window(index), index)
        t = grid.tile
        top = _random_start(r0, r1, h, t, rng) if h > t else 0
        left = _random_start(c0, c1, w, t, rng) if w > t else 0
        if top is None or left is None:
            return View("tile", grid.window(index), index)
        return View("tile", (top, left, min(h, top + t), min(w, left + t)), -1)


def _inside(inst: Instance, window: Sequence[int]) -> bool:
    r0, c0, r1, c1 = inst.bbox
    return r0 >= window[0] and c0 >= window[1] and r1 <= window[2] and c1 <= window[3]


def _flip(arrays: list[np.ndarray], rng) -> list[np.ndarray]:
    """The same random flips and transpose applied to ``(H, W[, C])`` arrays."""
    flip_r, flip_c, transpose = rng.random(3) < 0.5
    out = []
    for a in arrays:
        if flip_r:
            a = a[::-1]
        if flip_c:
            a = a[:, ::-1]
        if transpose:
            a = a.swapaxes(0, 1)
        out.append(np.ascontiguousarray(a))
    return out


def jitter_rgb(rgb: np.ndarray, amount: float, rng) -> np.ndarray:
    """Mild intensity jitter of a 0-255 ``(3, h, w)`` input: gain ``1 +/- amount``, offset."""
    if amount <= 0:
        return rgb
    gain = float(np.exp(rng.uniform(-amount, amount)))
    offset = float(rng.uniform(-amount, amount)) * 60.0
    return np.clip(rgb * np.float32(gain) + np.float32(offset), 0.0, 255.0)


@dataclass
class SceneMaker:
    """Fresh, augmented training scenes around the training objects (encoder trained).

    Attributes
    ----------
    data : the user's objects
    train : indices of the training instances
    planner : the :class:`ViewPlanner` of the predictor being adapted
    img_size : model input size
    objects_per_scene : most objects trained per scene
    flip : random flips and transposes
    jitter : intensity jitter amount (see :func:`jitter_rgb`)
    """

    data: LabelledData
    train: Sequence[int]
    planner: ViewPlanner
    img_size: int
    objects_per_scene: int = 8
    flip: bool = True
    jitter: float = 0.1
    _norm: dict[int, tuple] = field(default_factory=dict, repr=False)
    _by_slice: dict[int, list[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for k in self.train:
            self._by_slice.setdefault(self.data.instances[k].slice_index, []).append(k)
        self._allowed = set(self.train)

    def normalization(self, slice_index: int):
        if slice_index not in self._norm:
            self._norm[slice_index] = slice_normalization(self.data.slices[slice_index])
        return self._norm[slice_index]

    def scene(self, anchor: int, rng, propagation: bool = False):
        """A :class:`~napari_sam.training.data.Scene` around training instance ``anchor``.

        With ``propagation`` (stack slices only) the objects are prompted from
        their mask on a neighbouring slice (the ``prompt_masks`` of the scene);
        None when that is impossible for this anchor.
        """
        from napari_sam.training.data import Scene, prepare_rgb, resize_labels

        data = self.data
        inst = data.instances[anchor]
        sl = data.slices[inst.slice_index]
        view = self.planner.view(sl.shape, inst.bbox, rng)
        r0, c0, r1, c1 = view.window
        candidates = [
            k for k in self._by_slice[inst.slice_index]
            if k != anchor and _inside(data.instances[k], view.window)
        ]
        pairs: dict[int, int] = {}
        if propagation:
            for k in [anchor, *candidates]:
                nb = [
                    n for n in data.neighbours(k, self._allowed)
                    if _inside(data.instances[n], view.window)
                ]
                if nb:
                    pairs[k] = nb[int(rng.integers(len(nb)))]
            if anchor not in pairs:
                return None
            candidates = [k for k in candidates if k in pairs]
        rng.shuffle(candidates)
        chosen = [anchor, *candidates[: self.objects_per_scene - 1]]
        image, limits = self.normalization(inst.slice_index)
        crop = image[r0:r1, c0:c1]
        lab = sl.labels[r0:r1, c0:c1]
        arrays = [crop, lab]
        if propagation:
            # one neighbour slice per scene: the first chosen object's
            nb_slice = data.slices[data.instances[pairs[anchor]].slice_index]
            chosen = [k for k in chosen if data.instances[pairs[k]].slice_index
                      == data.instances[pairs[anchor]].slice_index]
            arrays.append(nb_slice.labels[r0:r1, c0:c1])
        if self.flip:
            arrays = _flip(arrays, rng)
        rgb = prepare_rgb(arrays[0], self.img_size, limits)
        rgb = jitter_rgb(rgb, self.jitter, rng)
        size = (rgb.shape[1], rgb.shape[2])
        lab_r = resize_labels(arrays[1], size, self.img_size)
        ids = np.array([data.instances[k].label for k in chosen])
        masks = lab_r[None] == ids[:, None, None]
        prompt_masks = None
        if propagation:
            nb_r = resize_labels(arrays[2], size, self.img_size)
            prompt_masks = nb_r[None] == ids[:, None, None]
            keep = prompt_masks.sum((1, 2)) >= MIN_VIEW_AREA
            keep &= masks.sum((1, 2)) >= MIN_VIEW_AREA
        else:
            keep = masks.sum((1, 2)) >= MIN_VIEW_AREA
        if not keep.any():
            return None
        return Scene(
            rgb=rgb.astype(np.float32, copy=False),
            input_size=size,
            masks=masks[keep],
            kind="user",
            dense=None,
            prompt_masks=None if prompt_masks is None else prompt_masks[keep],
        )


@dataclass
class CachedView:
    """A view whose image embedding is computed once (encoder not trained).

    Attributes
    ----------
    slice_index : the slice
    view : where on the slice
    features : ``(1, C, e, e)`` float32 torch tensor (no gradient)
    input_size : ``(h, w)`` of the view resized to the model input
    instances : training instances wholly inside the view
    labels : ``(S, S)`` view labels resized into the padded model frame
    """

    slice_index: int
    view: View
    features: Any = field(repr=False)
    input_size: tuple[int, int]
    instances: list[int]
    labels: np.ndarray = field(repr=False)


def cached_views(
    data: LabelledData,
    train: Sequence[int],
    planner: ViewPlanner,
    embed,
    img_size: int,
    cancel=None,
) -> list[CachedView]:
    """One :class:`CachedView` per view the Predictor uses for the training instances.

    ``embed(slice_index)`` returns the slice's embedding from the predictor
    (an :class:`~napari_sam.predictor.Embedding` or a
    :class:`~napari_sam.tiling.TiledEmbedding`); ``cancel()`` is polled per slice.
    """
    from napari_sam.training.data import resize_labels

    groups: dict[tuple[int, View], list[int]] = {}
    for k in train:
        inst = data.instances[k]
        sl = data.slices[inst.slice_index]
        groups.setdefault((inst.slice_index, planner.view(sl.shape, inst.bbox)), []).append(k)
    views = []
    embeddings: dict[int, Any] = {}
    for (s, view), members in sorted(groups.items(), key=lambda g: (g[0][0], g[0][1].window)):
        if cancel is not None:
            cancel()
        if s not in embeddings:
            embeddings = {s: embed(s)}  # keep one slice's embedding at a time
        emb = embeddings[s]
        if view.kind == "tile":
            part = emb.tile(view.tile)
        elif view.kind == "overview":
            part = emb.overview()
        else:
            part = emb
        r0, c0, r1, c1 = view.window
        lab = resize_labels(
            np.ascontiguousarray(data.slices[s].labels[r0:r1, c0:c1]),
            tuple(part.input_size),
            img_size,
        )
        views.append(
            CachedView(
                s, view, part.features.detach().clone().float(), tuple(part.input_size),
                members, lab,
            )
        )
    return views


def cached_scene(view: CachedView, data: LabelledData, objects_per_scene: int, rng):
    """Masks of up to ``objects_per_scene`` random objects of a cached view, or None."""
    ids = np.array([data.instances[k].label for k in view.instances])
    rng.shuffle(ids)
    masks = view.labels[None] == ids[:objects_per_scene, None, None]
    keep = masks.sum((1, 2)) >= MIN_VIEW_AREA
    return masks[keep] if keep.any() else None
