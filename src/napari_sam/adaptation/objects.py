"""The user's objects: slices and label arrays -> checked objects, and the held-back split.

numpy only. Every nonzero id of a label array is one object the user vouches
for; in a stack ``(Z, Y, X)`` an id is one 3D object with one 2D *instance*
per slice it appears on. Arrays are ``(row, col)``; an instance's ``bbox`` is
``(row_min, col_min, row_max, col_max)`` with the max **exclusive**.

Intensity normalization follows the annotator: a 2D image is normalized with
the given contrast limits (None: the Predictor's per-slice default); every
slice of a stack with one range for the whole stack
(:func:`napari_sam.normalize.stack_contrast_limits`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Instances with fewer pixels than this are skipped (stray paint, one-pixel objects).
DEFAULT_MIN_AREA = 9


@dataclass(frozen=True)
class SliceData:
    """One 2D slice holding at least one object.

    Attributes
    ----------
    source : index of the image in the list given to :func:`collect`
    z : index of the slice in its stack, or None for a 2D image
    image : ``(H, W)`` or ``(H, W, C)`` (C <= 3) slice, as given
    labels : ``(H, W)`` integer labels of the slice (0 = background)
    contrast_limits : ``(low, high)`` the slice is normalized with, or None for
        the Predictor's per-slice default (what the annotator passes)
    """

    source: int
    z: int | None
    image: Any = field(repr=False)
    labels: np.ndarray = field(repr=False)
    contrast_limits: tuple[float, float] | None

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return tuple(int(v) for v in self.labels.shape)  # type: ignore[return-value]


@dataclass(frozen=True)
class Instance:
    """One object on one slice.

    Attributes
    ----------
    slice_index : index into :attr:`LabelledData.slices`
    label : the object's id
    area : pixels on this slice
    bbox : ``(row_min, col_min, row_max, col_max)``, max exclusive
    """

    slice_index: int
    label: int
    area: int
    bbox: tuple[int, int, int, int]


@dataclass(frozen=True)
class UserObject:
    """One object the user labelled: an id of one image (2D or 3D).

    Attributes
    ----------
    source : index of its image
    label : its id
    instances : indices into :attr:`LabelledData.instances`, by increasing z
    """

    source: int
    label: int
    instances: tuple[int, ...]

    @property
    def key(self) -> tuple[int, int]:
        """``(source, label)``."""
        return (self.source, self.label)


@dataclass
class LabelledData:
    """Everything :func:`collect` found.

    Attributes
    ----------
    slices : slices holding objects
    instances : every usable 2D instance
    objects : every usable object
    notes : what was skipped and why (for the report)
    is_3d : whether any image is a stack (propagation-style prompts apply)
    """

    slices: list[SliceData]
    instances: list[Instance]
    objects: list[UserObject]
    notes: list[str]
    is_3d: bool

    def neighbours(self, instance_index: int, allowed: set[int]) -> list[int]:
        """Instances of the same object on the slices directly above and below (in ``allowed``)."""
        inst = self.instances[instance_index]
        sl = self.slices[inst.slice_index]
        if sl.z is None:
            return []
        out = []
        for k in allowed:
            other = self.instances[k]
            osl = self.slices[other.slice_index]
            if (
                other.label == inst.label
                and osl.source == sl.source
                and osl.z is not None
                and abs(osl.z - sl.z) == 1
            ):
                out.append(k)
        return out


def _as_list(images, labels) -> tuple[list, list, bool]:
    """Normalize ``images``/``labels`` to lists; True when one image was given."""
    single = not isinstance(labels, (list, tuple))
    if single:
        return [images], [labels], True
    if not isinstance(images, (list, tuple)):
        raise ValueError(
            f"labels is a list of {len(labels)} arrays but images is one array; pass a list "
            "of images of the same length (one per label array)"
        )
    if len(images) != len(labels):
        raise ValueError(
            f"got {len(images)} images but {len(labels)} label arrays; pass one label array "
            "per image"
        )
    if not labels:
        raise ValueError("no images given: pass an image and its labels")
    return list(images), list(labels), False


def _per_image_limits(contrast_limits, n: int) -> list:
    """``None``, one ``(low, high)`` for all, or one entry per image -> list of n entries."""
    if contrast_limits is None:
        return [None] * n
    items = list(contrast_limits)
    if len(items) == 2 and all(np.isscalar(v) for v in items):
        return [tuple(float(v) for v in items)] * n
    if len(items) != n:
        raise ValueError(
            f"contrast_limits has {len(items)} entries for {n} images; pass one (low, high) "
            "for all images, or one (low, high) or None per image"
        )
    return [None if c is None else tuple(float(v) for v in c) for c in items]


def _check_pair(image, labels, i: int) -> int:
    """Check one image/labels pair; returns the number of spatial label dims (2 or 3)."""
    shape = tuple(int(v) for v in np.shape(image))
    lab = np.asarray(labels) if not hasattr(labels, "dtype") else labels
    lshape = tuple(int(v) for v in lab.shape)
    where = "" if i < 0 else f" (image {i})"
    if lab.dtype.kind not in "iub":
        raise ValueError(
            f"labels{where} have dtype {lab.dtype}; they must be integer ids (0 = background): "
            "pass labels.astype(np.uint32)"
        )
    if len(lshape) not in (2, 3):
        raise ValueError(
            f"labels{where} have shape {lshape}; pass a 2D slice (Y, X) or a stack (Z, Y, X) "
            "(index higher dimensions first, e.g. labels[t])"
        )
    if shape[: len(lshape)] != lshape or len(shape) - len(lshape) not in (0, 1):
        raise ValueError(
            f"labels{where} have shape {lshape} but the image has shape {shape}; the labels "
            "must cover the image pixel for pixel (image (Y, X) or (Y, X, C) with labels "
            "(Y, X); stack (Z, Y, X) or (Z, Y, X, C) with labels (Z, Y, X))"
        )
    if len(shape) > len(lshape) and shape[-1] > 3:
        raise ValueError(
            f"image{where} has {shape[-1]} channels (shape {shape}); SAM takes at most 3: "
            "choose the channels, e.g. image[..., :3]"
        )
    return len(lshape)


def _instances_of(plane: np.ndarray) -> list[tuple[int, int, tuple[int, int, int, int]]]:
    """``(label, area, bbox)`` of every nonzero id of an ``(H, W)`` label plane."""
    from scipy import ndimage as ndi

    plane = np.asarray(plane)
    if plane.dtype == np.bool_:
        plane = plane.astype(np.uint8)
    if plane.dtype.kind == "i" and plane.size and plane.min() < 0:
        raise ValueError(
            f"labels contain negative ids (e.g. {int(plane.min())}); ids must be >= 0 with "
            "0 = background"
        )
    ids, inverse = np.unique(plane, return_inverse=True)
    compact = inverse.reshape(plane.shape)
    areas = np.bincount(compact.ravel(), minlength=ids.size)
    out = []
    for k, sl in enumerate(ndi.find_objects(compact), start=1):
        if sl is None or ids[k] == 0:
            continue
        out.append(
            (int(ids[k]), int(areas[k]), (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop))
        )
    if ids.size and ids[0] != 0:  # no background: index 0 is an object too
        rr, cc = np.nonzero(compact == 0)
        out.insert(0, (int(ids[0]), int(rr.size), (rr.min(), cc.min(), rr.max() + 1, cc.max() + 1)))
    return out


def collect(
    images,
    labels,
    contrast_limits=None,
    *,
    ids: Sequence[int] | None = None,
    min_area: int = DEFAULT_MIN_AREA,
) -> LabelledData:
    """Check the user's images and labels and list their objects.

    Parameters
    ----------
    images : one image or a list: ``(Y, X)``, ``(Y, X, C)``, a stack ``(Z, Y, X)``
        or ``(Z, Y, X, C)`` (numpy, or lazy arrays that index to numpy)
    labels : the matching label array(s), ``(Y, X)`` or ``(Z, Y, X)``, integer
    contrast_limits : None, one ``(low, high)`` for every image, or one entry
        (``(low, high)`` or None) per image
    ids : only these object ids (e.g. the ones committed in this session);
        every id must exist in some image
    min_area : instances smaller than this (pixels) are skipped with a note

    Returns
    -------
    LabelledData

    Raises
    ------
    ValueError
        Shapes that do not match, non-integer labels, no objects, ``ids`` not
        present, or nothing left after skipping tiny objects (the message names
        the value and the fix).
    """
    from napari_sam.normalize import check_contrast_limits, stack_contrast_limits, validate_slice

    image_list, label_list, single = _as_list(images, labels)
    limits = _per_image_limits(contrast_limits, len(image_list))
    wanted = None if ids is None else {int(v) for v in ids}
    slices: list[SliceData] = []
    instances: list[Instance] = []
    by_object: dict[tuple[int, int], list[int]] = {}
    seen_ids: set[int] = set()
    tiny: dict[tuple[int, int], int] = {}
    is_3d = False
    lim: tuple[float, float] | None
    planes: Sequence[int | None]
    for i, (image, lab) in enumerate(zip(image_list, label_list)):
        lab = lab if hasattr(lab, "dtype") else np.asarray(lab)
        ndim = _check_pair(image, lab, -1 if single else i)
        if ndim == 3:
            is_3d = True
            lim = stack_contrast_limits(image, limits[i])
            planes = range(lab.shape[0])
        else:
            lim = None if limits[i] is None else check_contrast_limits(limits[i])
            planes = [None]
        for z in planes:
            plane = np.asarray(lab if z is None else lab[z])
            if not plane.any():
                continue
            found = _instances_of(plane)
            seen_ids.update(label for label, _, _ in found)
            if wanted is not None:
                found = [f for f in found if f[0] in wanted]
            usable = [f for f in found if f[1] >= min_area]
            for label, area, _ in found:
                if area < min_area:
                    tiny[(i, label)] = max(tiny.get((i, label), 0), area)
            if not usable:
                continue
            img = np.asarray(image if z is None else image[z])
            validate_slice(img)
            slices.append(SliceData(i, z, img, plane, lim))
            for label, area, bbox in usable:
                by_object.setdefault((i, label), []).append(len(instances))
                instances.append(Instance(len(slices) - 1, label, area, bbox))
    if wanted is not None:
        missing = sorted(wanted - seen_ids)
        if missing:
            raise ValueError(
                f"ids {missing} are not present on any slice of the labels; pass ids that "
                "exist (or ids=None for every object)"
            )
    if not seen_ids:
        raise ValueError(
            "the labels hold no objects (every value is 0); label at least 2 objects "
            "(more is better: about 10 gives most of the gain)"
        )
    notes = []
    skipped = sorted(k for k in tiny if k not in by_object)
    if skipped:
        shown = ", ".join(f"{label}" for _, label in skipped[:10])
        more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        notes.append(
            f"skipped {len(skipped)} object(s) smaller than {min_area} px (ids {shown}{more}): "
            "too small to learn from"
        )
    if not by_object:
        raise ValueError(
            f"every object is smaller than {min_area} pixels (largest: "
            f"{max(tiny.values())} px); label whole objects, not single pixels"
        )
    objects = [
        UserObject(src, label, tuple(idx)) for (src, label), idx in sorted(by_object.items())
    ]
    return LabelledData(slices, instances, objects, notes, is_3d)


@dataclass(frozen=True)
class Split:
    """Which objects train and which are held back for the check.

    Attributes
    ----------
    train, check : indices into :attr:`LabelledData.objects`
    weak : True when the check is weak (fewer than 3 objects; with one object
        the check uses the training object itself)
    note : explanation for the report ("" when the check is ordinary)
    """

    train: tuple[int, ...]
    check: tuple[int, ...]
    weak: bool
    note: str = ""


def split_objects(n_objects: int, holdout: float, rng: np.random.Generator) -> Split:
    """Hold back about ``holdout`` of the objects (at least 1) for the no-worse check.

    Parameters
    ----------
    n_objects : number of usable objects (>= 1)
    holdout : fraction held back, in ``(0, 0.5]``
    rng : the run's generator (the split is random but reproducible)
    """
    if not 0 < holdout <= 0.5:
        raise ValueError(
            f"holdout must be in (0, 0.5] (the fraction of objects held back to check the "
            f"adapted model), got {holdout!r}"
        )
    order = [int(v) for v in rng.permutation(n_objects)]
    if n_objects == 1:
        return Split(
            (order[0],),
            (order[0],),
            True,
            "only 1 object: it is used both to train and to check, so the check is weak; "
            "label more objects for a real check",
        )
    n_check = min(n_objects - 1, max(1, round(holdout * n_objects)))
    check, train = tuple(sorted(order[:n_check])), tuple(sorted(order[n_check:]))
    weak = n_objects < 3
    note = (
        f"only {n_objects} objects: the check uses {n_check} held-back object(s), so it is "
        "weak; label more objects for a reliable check"
        if weak
        else ""
    )
    return Split(train, check, weak, note)
