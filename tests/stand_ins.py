"""Stand-in predictors that answer prompts from ground-truth labels.

Reusable by any test or benchmark that needs exact, fast, torch-free
segmentation (propagation, everything mode, the annotator). Import with
``from stand_ins import OraclePredictor`` from a test (``tests/`` is on
``sys.path`` under pytest); benchmarks add ``tests/`` to ``sys.path``.

API
---
``OraclePredictor(labels, images=None, *, clip_to_box=False, miss_score=0.05)``
    ``labels`` is ``(Z, Y, X)`` (or ``(Y, X)``) ground truth. ``embed(image)``
    finds which slice ``image`` is by exact content (``images`` is the stack
    whose slices will be passed in; default: ``labels`` itself) and returns an
    :class:`OracleEmbedding` holding ``z``. It implements the predictor
    contract (:class:`napari_sam.contract.BasePredictor`): ``predict`` /
    ``predict_batch`` take the same arguments as
    :class:`napari_sam.predictor.Predictor`'s, give the same
    :class:`~napari_sam.contract.Prediction` result and return the TRUE
    object that the prompt selects:

    * positive points vote for the label under them, the box for the label
      under its centre, a mask prompt for the label it overlaps most; the
      label with most votes wins (ties: points, then box, then mask);
    * labels under negative points are never chosen;
    * a hit gives K identical masks (K = 3 with ``multimask``, else 1) with
      score 1.0; a prompt on background gives empty masks with score
      ``miss_score``. Logits are slice-shaped (+8 inside, -8 outside) and can
      be passed back as ``mask``.

    Bookkeeping for assertions: ``embedded`` (list of z, one per ``embed``
    call), ``decoder_calls`` (``predict`` + ``predict_batch`` calls) and
    ``prompts_decoded`` (objects decoded).

``NoisyOraclePredictor(labels, images=None, *, seed=0, ...)``
    The oracle with SAM-like failures: shifted and dilated/eroded masks,
    occasional merges with a touching neighbour, and "ghost" masks with a
    middling score where the prompt hits background. Deterministic for a
    given seed, slice, target and prompt.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_sam.contract import BasePredictor, Prediction

__all__ = ["NoisyOraclePredictor", "OracleEmbedding", "OraclePredictor", "ellipsoid_labels"]


@dataclass(frozen=True)
class OracleEmbedding:
    """The stand-in's embedding: which slice, and its ``(H, W)``."""

    z: int
    original_size: tuple[int, int]
    contrast_limits: tuple[float, float] | None = None


def _key(image: np.ndarray) -> tuple:
    a = np.ascontiguousarray(image)
    return (a.shape, a.dtype.str, hashlib.blake2b(a.tobytes(), digest_size=16).digest())


class OraclePredictor(BasePredictor):
    """Exact stand-in for :class:`napari_sam.predictor.Predictor` (see the module doc).

    ``predict_batch`` is its own (one decoder call per batch, for the
    bookkeeping); the rest of the contract keeps its defaults (predictions at
    the slice's size, no tiles).
    """

    def __init__(
        self,
        labels: np.ndarray,
        images: np.ndarray | None = None,
        *,
        clip_to_box: bool = False,
        miss_score: float = 0.05,
    ) -> None:
        labels = np.asarray(labels)
        if labels.ndim == 2:
            labels = labels[None]
        if labels.ndim != 3 or labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be integer (Z, Y, X) or (Y, X), got {labels.shape}")
        self.labels = labels
        images = labels if images is None else np.asarray(images)
        if images.ndim == labels.ndim - 1:
            images = images[None]
        if images.shape[:3] != labels.shape:
            raise ValueError(
                f"images {images.shape} must have the labels' (Z, Y, X) {labels.shape} first"
            )
        self._by_key: dict[tuple, list[int]] = {}
        for z in range(images.shape[0]):
            self._by_key.setdefault(_key(images[z]), []).append(z)
        self.clip_to_box = clip_to_box
        self.miss_score = float(miss_score)
        self.embedded: list[int] = []
        self.decoder_calls = 0
        self.prompts_decoded = 0

    # ------------------------------------------------------------------ embed
    def embed(self, image, *, contrast_limits=None) -> OracleEmbedding:
        """Find the slice ``image`` is; raises ValueError for an unknown image."""
        zs = self._by_key.get(_key(np.asarray(image)))
        if not zs:
            raise ValueError("image is not a slice of the oracle's stack")
        if len(zs) > 1 and any(not np.array_equal(self.labels[zs[0]], self.labels[z]) for z in zs):
            raise ValueError(f"image matches slices {zs} whose labels differ; cannot tell")
        self.embedded.append(zs[0])
        limits = None if contrast_limits is None else tuple(contrast_limits)
        return OracleEmbedding(zs[0], self.labels.shape[1:], limits)

    # ---------------------------------------------------------------- predict
    def _check(self, emb, points, labels, box, mask):
        if points is None and box is None and mask is None:
            raise ValueError("no prompt: give points, a box or a mask")
        h, w = emb.original_size
        pts = lab = None
        if points is not None:
            pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
            lab = np.ones(len(pts), int) if labels is None else np.asarray(labels).ravel()
            if len(lab) != len(pts):
                raise ValueError("one label per point")
            if ((pts < 0) | (pts > [h - 1, w - 1])).any():
                raise ValueError(f"points {pts.tolist()} outside the {h}x{w} slice")
        bx = None
        if box is not None:
            bx = np.asarray(box, dtype=np.float64).ravel()
            if bx.shape != (4,) or bx[2] <= bx[0] or bx[3] <= bx[1]:
                raise ValueError(f"bad box {box}")
        mk = None
        if mask is not None:
            mk = np.asarray(mask)
            if mk.shape != (h, w):
                raise ValueError(f"mask prompt {mk.shape} != slice {(h, w)}")
            mk = mk > 0
        return pts, lab, bx, mk

    def target(self, z: int, points, labels, box, mask) -> int:
        """The true label the prompt selects on slice ``z`` (0: background)."""
        truth = self.labels[z]
        votes: dict[int, list[int]] = {}  # label -> [votes, strongest cue (3 points .. 1 mask)]
        excluded: set[int] = set()

        def vote(value: int, cue: int) -> None:
            if value:
                entry = votes.setdefault(value, [0, 0])
                entry[0] += 1
                entry[1] = max(entry[1], cue)

        if points is not None:
            for (r, c), positive in zip(np.rint(points).astype(int), labels):
                if positive:
                    vote(int(truth[r, c]), 3)
                else:
                    excluded.add(int(truth[r, c]))
        if box is not None:
            r, c = np.rint([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]).astype(int)
            vote(int(truth[r, c]), 2)
        if mask is not None:
            under = truth[mask]
            under = under[under != 0]
            if under.size:
                ids, counts = np.unique(under, return_counts=True)
                vote(int(ids[np.argmax(counts)]), 1)
        votes = {k: v for k, v in votes.items() if k not in excluded}
        if not votes:
            return 0
        return max(votes, key=lambda k: (votes[k][0], votes[k][1], -k))

    def answer(self, z: int, target: int, points, labels, box, mask) -> tuple[np.ndarray, float]:
        """The ``(H, W)`` mask and score returned for ``target`` (hook for subclasses)."""
        if target == 0:
            return np.zeros(self.labels.shape[1:], bool), self.miss_score
        return self.labels[z] == target, 1.0

    def predict(self, embedding, points=None, labels=None, box=None, mask=None, multimask=True):
        """Like :meth:`napari_sam.predictor.Predictor.predict`."""
        self.decoder_calls += 1
        return self._predict_one(embedding, points, labels, box, mask, multimask)

    def _predict_one(self, embedding, points, labels, box, mask, multimask):
        self.prompts_decoded += 1
        pts, lab, bx, mk = self._check(embedding, points, labels, box, mask)
        z = embedding.z
        target = self.target(z, pts, lab, bx, mk)
        out, score = self.answer(z, target, pts, lab, bx, mk)
        if self.clip_to_box and bx is not None:
            r0, c0, r1, c1 = np.rint(bx).astype(int)
            clipped = np.zeros_like(out)
            clipped[r0 : r1 + 1, c0 : c1 + 1] = out[r0 : r1 + 1, c0 : c1 + 1]
            out = clipped
        k = 3 if multimask else 1
        masks = np.repeat(out[None], k, axis=0)
        logits = np.where(masks, np.float32(8.0), np.float32(-8.0))
        return Prediction(masks, np.full(k, score, np.float32), logits)

    def predict_batch(
        self,
        embedding,
        points=None,
        labels=None,
        boxes=None,
        masks=None,
        multimask=True,
        upscale=True,
    ):
        """Like :meth:`napari_sam.predictor.Predictor.predict_batch` (one decoder call)."""
        from napari_sam.prompt_checks import check_batch

        points, labels, n = check_batch(points, labels, boxes, masks)
        self.decoder_calls += 1
        return [
            self._predict_one(
                embedding,
                None if points is None else points[i],
                None if labels is None else labels[i],
                None if boxes is None else boxes[i],
                None if masks is None else masks[i],
                multimask,
            )
            for i in range(n)
        ]


class NoisyOraclePredictor(OraclePredictor):
    """The oracle with SAM-like errors, for benchmarks where stop rules matter.

    Parameters
    ----------
    labels, images
        As for :class:`OraclePredictor`.
    seed : int
        Randomness; each answer is drawn from a generator seeded by
        ``(seed, z, target, prompt)``, so it does not depend on call order.
    max_shift : int
        The true mask is shifted by up to this many pixels in y and x.
    max_radius : int
        ... then dilated or eroded by up to this many pixels.
    p_merge : float
        Probability that the mask also takes a touching neighbour (a leak).
    p_ghost : float
        Probability that a prompt on background returns a ghost (the prompt's
        region, eroded by one pixel and shifted) instead of an empty mask.
    ghost_score : (float, float)
        Range of the ghost's score.

    Scores of hits are ``0.5 + 0.5 * IoU(answer, truth)``.
    """

    def __init__(
        self,
        labels,
        images=None,
        *,
        seed: int = 0,
        max_shift: int = 1,
        max_radius: int = 1,
        p_merge: float = 0.1,
        p_ghost: float = 0.5,
        ghost_score: tuple[float, float] = (0.5, 0.85),
        clip_to_box: bool = True,
    ) -> None:
        super().__init__(labels, images, clip_to_box=clip_to_box)
        self.seed = int(seed)
        self.max_shift = int(max_shift)
        self.max_radius = int(max_radius)
        self.p_merge = float(p_merge)
        self.p_ghost = float(p_ghost)
        self.ghost_score = ghost_score

    def _rng(self, z, target, points, box, mask) -> np.random.Generator:
        h = hashlib.blake2b(digest_size=8)
        for part in (points, box):
            if part is not None:
                h.update(np.rint(np.asarray(part)).astype(np.int64).tobytes())
        if mask is not None:
            h.update(np.packbits(mask).tobytes())
        return np.random.default_rng([self.seed, z, target, int.from_bytes(h.digest(), "little")])

    def _shift(self, mask: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
        dy, dx = (int(v) for v in rng.integers(-max_shift, max_shift + 1, size=2))
        out = np.zeros_like(mask)
        h, w = mask.shape
        out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = mask[
            max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
        ]
        return out

    def answer(self, z, target, points, labels, box, mask):
        truth = self.labels[z]
        rng = self._rng(z, target, points, box, mask)
        if target == 0:
            if rng.random() >= self.p_ghost:
                return np.zeros(truth.shape, bool), self.miss_score
            if mask is not None:
                region = mask
            elif box is not None:
                r0, c0, r1, c1 = box
                rr, cc = np.indices(truth.shape)
                ry, rx = max((r1 - r0) / 2, 1), max((c1 - c0) / 2, 1)
                region = ((rr - (r0 + r1) / 2) / ry) ** 2 + ((cc - (c0 + c1) / 2) / rx) ** 2 <= 1
            else:
                rr, cc = np.indices(truth.shape)
                p = points[labels == 1][0]
                region = (rr - p[0]) ** 2 + (cc - p[1]) ** 2 <= 16
            ghost = self._shift(ndi.binary_erosion(region), rng, 1)
            return ghost, float(rng.uniform(*self.ghost_score))
        true_mask = truth == target
        out = true_mask
        if rng.random() < self.p_merge:
            near = _crop_apply(true_mask, 2, lambda m: ndi.binary_dilation(m, iterations=2))
            neighbours = np.unique(truth[near & ~true_mask])
            neighbours = neighbours[(neighbours != 0) & (neighbours != target)]
            if neighbours.size:
                out = out | (truth == rng.choice(neighbours))
        if self.max_shift:
            out = self._shift(out, rng, self.max_shift)
        radius = int(rng.integers(-self.max_radius, self.max_radius + 1))
        if radius > 0:
            out = _crop_apply(out, radius, lambda m: ndi.binary_dilation(m, iterations=radius))
        elif radius < 0:
            out = _crop_apply(out, 1, lambda m: ndi.binary_erosion(m, iterations=-radius))
        union = np.count_nonzero(out | true_mask)
        overlap = np.count_nonzero(out & true_mask) / union if union else 0.0
        return out, 0.5 + 0.5 * overlap


def _crop_apply(mask: np.ndarray, pad: int, op) -> np.ndarray:
    """Apply a morphological ``op`` only around ``mask``'s bounding box (grown by ``pad``)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return mask.copy()
    cols = np.flatnonzero(mask.any(axis=0))
    box = (
        slice(max(0, rows[0] - pad), rows[-1] + 1 + pad),
        slice(max(0, cols[0] - pad), cols[-1] + 1 + pad),
    )
    out = np.zeros_like(mask)
    out[box] = op(mask[box])
    return out


def ellipsoid_labels(
    shape: tuple[int, int, int],
    objects: list[tuple[tuple[float, float, float], tuple[float, float, float]]],
) -> np.ndarray:
    """uint16 ``(Z, Y, X)`` labels of axis-aligned ellipsoids, ids 1..N in list order.

    ``objects`` holds ``((cz, cy, cx), (rz, ry, rx))`` per ellipsoid, in voxels;
    later objects do not overwrite earlier ones.
    """
    zz, yy, xx = np.indices(shape, dtype=np.float64)
    labels = np.zeros(shape, np.uint16)
    for i, ((cz, cy, cx), (rz, ry, rx)) in enumerate(objects, start=1):
        inside = ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        labels[inside & (labels == 0)] = i
    return labels
