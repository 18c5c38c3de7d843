"""Embed a 2D microscopy slice once, then decode prompts against it cheaply.

Coordinate convention
---------------------
Everything public uses napari's ``(row, col)`` pixel coordinates of the slice:
points ``(N, 2)`` as ``(row, col)``, boxes as ``(row_min, col_min, row_max,
col_max)``. SAM wants ``(x, y)`` in its resized input frame; the conversion
happens in exactly one place, :meth:`Embedding.to_model_frame`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from napari_sam.prompt_checks import check_box, check_points

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from napari_sam.model.sam import Sam
    from napari_sam.tiling import TiledEmbedding


class Prediction:
    """Masks for one object (one prompt set).

    Parameters
    ----------
    masks : ``(K, H, W)`` bool masks, or None when ``upscaler`` computes them
    scores, logits : see Attributes
    upscaler : callable ``indices -> (len(indices), H, W)`` bool masks at the
        slice size; the masks are then computed on first access, and only the
        ones accessed (:attr:`best_mask` and :meth:`mask` upscale one mask)

    Attributes
    ----------
    masks : ``(K, H, W)`` bool at the slice's own resolution (K = 3 with
        ``multimask=True``, else 1), ordered as the model returns them;
        computed on first access (all K)
    scores : ``(K,)`` predicted IoU of each mask
    logits : ``(K, h, w)`` float32 low-res logits (256 x 256 for SAM), usable
        as the ``mask`` prompt of a later call
    """

    __slots__ = ("_masks", "_one", "_upscaler", "logits", "scores")

    def __init__(self, masks, scores, logits, *, upscaler=None) -> None:
        if masks is None and upscaler is None:
            raise ValueError("Prediction needs masks or an upscaler")
        self._masks = masks
        self._one: dict[int, np.ndarray] = {}
        self._upscaler = upscaler
        self.scores = scores
        self.logits = logits

    def __repr__(self) -> str:
        return f"Prediction(scores={np.asarray(self.scores).tolist()})"

    @property
    def masks(self) -> np.ndarray:
        """``(K, H, W)`` bool masks at the slice size (all K, upscaled on first access)."""
        if self._masks is None:
            k = len(self.scores)
            self._masks = self._upscaler(list(range(k)))
        return self._masks

    def mask(self, index: int) -> np.ndarray:
        """``(H, W)`` bool mask ``index`` at the slice size (only this one is upscaled)."""
        if self._masks is not None:
            return self._masks[index]
        index = int(index) % len(self.scores)
        if index not in self._one:
            self._one[index] = self._upscaler([index])[0]
        return self._one[index]

    @property
    def best_index(self) -> int:
        """Index of the mask with the highest predicted IoU."""
        return int(np.argmax(self.scores))

    @property
    def best_mask(self) -> np.ndarray:
        """``(H, W)`` bool mask with the highest predicted IoU."""
        return self.mask(self.best_index)


@dataclass(frozen=True)
class Embedding:
    """The image embedding of one slice and the geometry needed to decode against it.

    Attributes
    ----------
    features : ``(1, C, e, e)`` torch tensor (float32) on the model's device
    original_size : ``(H, W)`` of the slice
    input_size : ``(h, w)`` of the slice resized so its longest side is the model input size
    contrast_limits : the ``(low, high)`` used to normalize the slice (None: per-channel default)
    """

    features: Any
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    contrast_limits: tuple[float, float] | None = None
    metadata: dict = field(default_factory=dict)

    def to_model_frame(self, rows_cols: np.ndarray) -> np.ndarray:
        """``(..., 2)`` ``(row, col)`` slice pixels -> ``(..., 2)`` SAM ``(x, y)`` input pixels.

        This is the only place where napari's ``(row, col)`` becomes SAM's ``(x, y)``.
        """
        rc = np.asarray(rows_cols, dtype=np.float64)
        sy = self.input_size[0] / self.original_size[0]
        sx = self.input_size[1] / self.original_size[1]
        return np.stack([rc[..., 1] * sx, rc[..., 0] * sy], axis=-1)


@runtime_checkable
class PredictorProtocol(Protocol):
    """What the annotator, propagation and everything mode need from a predictor."""

    def embed(self, image: np.ndarray, *, contrast_limits: tuple[float, float] | None = None):
        """Embed one 2D slice ``(H, W)`` or ``(H, W, C)``; returns an opaque embedding."""

    def predict(
        self,
        embedding,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        multimask: bool = True,
    ) -> Prediction:
        """Masks for one object from ``(row, col)`` points, a box and/or a mask prompt."""


def resized_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """Shape of an ``(h, w)`` image scaled so that its longest side is ``long_side``."""
    scale = long_side / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def cpu_supports_bfloat16() -> bool:
    """True when this CPU has native bfloat16 matrix units (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _check_tiling(tiling: str) -> str:
    if tiling not in ("auto", "off"):
        raise ValueError(f"tiling must be 'auto' or 'off', got {tiling!r}")
    return tiling


def _resolve_precision(precision: str, device) -> Any:
    import torch

    if precision == "float32":
        return None
    if precision in ("bfloat16", "float16"):
        return getattr(torch, precision)
    if precision == "int8":
        if device.type != "cpu":
            raise ValueError(f"precision 'int8' is CPU only, the model is on {device.type}")
        return "int8"  # not an autocast dtype: the encoder's linear layers are quantized
    if precision != "auto":
        raise ValueError(
            "precision must be 'auto', 'float32', 'bfloat16', 'float16' or 'int8', "
            f"got {precision!r}"
        )
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_supports_bfloat16():
        return torch.bfloat16
    return None


class Predictor:
    """SAM on 2D microscopy slices: ``embed`` once per slice, ``predict`` per prompt.

    Parameters
    ----------
    model : a registry name, a checkpoint path, or a loaded :class:`~napari_sam.model.sam.Sam`
    device : ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"`` (ignored for a loaded model)
    precision : image-encoder precision: ``"auto"`` (bfloat16 on CPUs with
        AVX512-BF16/AMX and on CUDA, else float32), ``"float32"`` (exact),
        ``"bfloat16"``, ``"float16"``, or ``"int8"`` (CPU only: the encoder's
        linear layers in int8, approximate, see docs/benchmarks.md). The decoder
        always runs in float32.
    tiling : ``"auto"`` (default): slices larger than the model input (by 1.5x
        for inputs above 512 px, e.g. SAM's 1024) are embedded as overlapping
        tiles at native resolution
        (see :mod:`napari_sam.tiling`), so small objects in large slices are not
        shrunk away; ``"off"``: always resize the whole slice to the model input.
    tile_overlap : overlap of neighbouring tiles in pixels (default: a quarter
        of the model input); objects up to this size always fit one tile.

    Examples
    --------
    >>> predictor = Predictor("vit_b")                              # doctest: +SKIP
    >>> emb = predictor.embed(stack[7], contrast_limits=(100, 4000))  # doctest: +SKIP
    >>> pred = predictor.predict(emb, points=[[120, 64]], labels=[1])  # doctest: +SKIP
    >>> pred.best_mask.shape == stack.shape[1:]                     # doctest: +SKIP
    True
    """

    def __init__(
        self,
        model: str | os.PathLike | Sam = "micro",
        device: str = "auto",
        precision: str = "auto",
        tiling: str = "auto",
        tile_overlap: int | None = None,
    ) -> None:
        import torch

        from napari_sam.model.checkpoint import load_model

        if isinstance(model, torch.nn.Module):
            self.model = model.eval()
            self.model_name = type(model).__name__
        else:
            from napari_sam.prompt_checks import check_device

            check_device(device)  # "cuda" on a CPU-only torch: a message, not an AssertionError
            self.model = load_model(model, device)
            self.model_name = os.fspath(model)
        self.device = self.model.device
        self._dense_pe = None  # positional encoding of the embedding grid: a model constant
        # prompt-independent decoder work of the last few embeddings (see _prepared_decoder)
        self._prepared: list = []
        self.autocast_dtype = _resolve_precision(precision, self.device)
        self.precision = "float32" if self.autocast_dtype is None else str(
            self.autocast_dtype
        ).removeprefix("torch.")
        self._image_encoder = self.model.image_encoder
        if self.autocast_dtype == "int8":
            from napari_sam.model.quantize import quantize_image_encoder

            self._image_encoder = quantize_image_encoder(self.model.image_encoder)
            self.autocast_dtype = None
        self.tiling = _check_tiling(tiling)
        self.tile_overlap = tile_overlap

    @property
    def image_size(self) -> int:
        """Side of the square model input."""
        return self.model.img_size

    # ------------------------------------------------------------------ embed
    def preprocess(
        self, image: np.ndarray, contrast_limits: tuple[float, float] | None = None
    ) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """Slice -> padded, normalized ``(1, 3, S, S)`` model input, and its geometry."""
        import torch
        import torch.nn.functional as F

        from napari_sam.normalize import to_rgb_float

        rgb = to_rgb_float(image, contrast_limits)
        h, w = rgb.shape[:2]
        th, tw = resized_shape(h, w, self.image_size)
        x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None]
        if (th, tw) != (h, w):
            x = F.interpolate(x, (th, tw), mode="bilinear", align_corners=False, antialias=True)
            # 8-bit input: round like an 8-bit image resize would
            x = x.round().clamp(0, 255) if np.asarray(image).dtype == np.uint8 else x
        x = self.model.preprocess(x.to(self.device))
        return x, (h, w), (th, tw)

    def plan_tiles(self, shape: tuple[int, int], tiling: str | None = None):
        """The :class:`~napari_sam.tiling.TileGrid` for a ``(H, W)`` slice, or None (no tiling)."""
        from napari_sam.tiling import DEFAULT_TILE_THRESHOLD, plan_tiles

        if _check_tiling(self.tiling if tiling is None else tiling) == "off":
            return None
        # a small-input model (the bundled micro) is cheap and loses small objects
        # at any shrink; a 1024 px SAM is costly per tile and tolerates some
        threshold = 1.0 if self.image_size <= 512 else DEFAULT_TILE_THRESHOLD
        return plan_tiles(shape, self.image_size, overlap=self.tile_overlap, threshold=threshold)

    def embed(
        self,
        image: np.ndarray,
        *,
        contrast_limits: tuple[float, float] | None = None,
        tiling: str | None = None,
    ) -> Embedding | TiledEmbedding:
        """Compute the image embedding of one 2D slice.

        Parameters
        ----------
        image : ``(H, W)`` or ``(H, W, C)`` with C <= 3, any numeric dtype
        contrast_limits : ``(low, high)`` mapped to 0 and 255. Default: ``(0, 255)``
            for uint8, robust percentiles of the slice otherwise. Pass the same
            limits for every slice of a stack (see
            :func:`napari_sam.normalize.stack_intensity_range`).
        tiling : override the predictor's ``tiling`` (``"auto"`` or ``"off"``) for this call

        Returns
        -------
        An :class:`Embedding`, or for a slice larger than the model input
        (with tiling on, see :meth:`plan_tiles`) a :class:`~napari_sam.tiling.TiledEmbedding` whose
        tiles are embedded on first use; both decode with :meth:`predict`.
        """

        grid = self.plan_tiles(np.shape(image)[:2], tiling)
        if grid is not None:
            return self._embed_tiled(image, contrast_limits, grid)
        return self.embed_batch([image], contrast_limits=contrast_limits)[0]

    def embed_batch(
        self, images: list[np.ndarray], *, contrast_limits: tuple[float, float] | None = None
    ) -> list[Embedding]:
        """Whole-slice embeddings of several 2D slices in one encoder pass (never tiled).

        Used for the tiles of a :class:`~napari_sam.tiling.TiledEmbedding`; the
        slices may differ in shape (each is resized and padded to the model input).
        """
        import torch

        inputs = [self.preprocess(image, contrast_limits) for image in images]
        x = torch.cat([i[0] for i in inputs])
        if getattr(self._image_encoder, "channels_last", False):  # conv encoders
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.autocast_dtype is not None:
                with torch.autocast(self.device.type, dtype=self.autocast_dtype):
                    features = self._image_encoder(x)
            else:
                features = self._image_encoder(x)
        features = features.float().contiguous()
        limits = None if contrast_limits is None else tuple(contrast_limits)
        return [
            Embedding(
                features=features[k : k + 1],
                original_size=original,
                input_size=resized,
                contrast_limits=limits,
                metadata={"model": self.model_name, "precision": self.precision},
            )
            for k, (_, original, resized) in enumerate(inputs)
        ]

    def _embed_tiled(self, image, contrast_limits, grid) -> TiledEmbedding:
        from napari_sam.normalize import (
            check_contrast_limits,
            default_range,
            intensity_range,
            to_rgb_float,
            validate_slice,
        )
        from napari_sam.tiling import TiledEmbedding

        image = validate_slice(image)
        # one intensity mapping for every tile, computed from the whole slice
        if contrast_limits is not None:
            limits = check_contrast_limits(contrast_limits)
        else:
            limits = default_range(image)
        if limits is None and image.ndim == 2:
            limits = intensity_range(image)
        elif limits is None:  # several channels, each with its own percentiles
            image, limits = to_rgb_float(image), (0.0, 255.0)

        def embed_parts(parts: list[np.ndarray]) -> list[Embedding]:
            return self.embed_batch(parts, contrast_limits=limits)

        return TiledEmbedding(
            grid=grid,
            original_size=tuple(int(v) for v in np.shape(image)[:2]),
            contrast_limits=None if contrast_limits is None else tuple(contrast_limits),
            image=image,
            embed_fn=embed_parts,
            # small inputs (micro: 256 px) embed many tiles per pass faster; SAM's one at a time
            batch_size=16 if self.image_size <= 512 else 1,
            metadata={
                "model": self.model_name,
                "precision": self.precision,
                "tiling": {"tile": grid.tile, "overlap": grid.overlap, "n_tiles": len(grid)},
            },
        )

    # ---------------------------------------------------------------- predict
    def mask_prompt(self, emb: Embedding, mask: np.ndarray) -> np.ndarray:
        """A mask prompt as low-res logits ``(h, w)``.

        ``mask`` is either low-res logits of the model's mask size (e.g. a
        previous :attr:`Prediction.logits` entry) or a bool/0-1 mask of the
        slice's shape, which is resized into the model frame (+/- 8 logits).
        """
        import torch
        import torch.nn.functional as F

        m = np.asarray(mask)
        low_res = self.model.prompt_encoder.mask_input_size
        if m.shape == tuple(low_res) and m.dtype.kind == "f":
            return m.astype(np.float32)
        if m.shape != tuple(emb.original_size):
            raise ValueError(
                f"mask prompt has shape {m.shape}; expected low-res logits {tuple(low_res)} "
                f"or a mask of the slice's shape {emb.original_size}"
            )
        t = torch.from_numpy(m.astype(np.float32))[None, None]
        t = F.interpolate(t, emb.input_size, mode="bilinear", align_corners=False)
        s = self.image_size
        t = F.pad(t, (0, s - emb.input_size[1], 0, s - emb.input_size[0]))
        t = F.interpolate(t, tuple(low_res), mode="area")
        return ((t[0, 0] > 0.5).float() * 16.0 - 8.0).numpy()

    def predict(
        self,
        embedding: Embedding,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        multimask: bool = True,
    ) -> Prediction:
        """Masks for one object.

        Parameters
        ----------
        embedding : from :meth:`embed`
        points : ``(N, 2)`` ``(row, col)`` pixels of the slice
        labels : ``(N,)`` 1 = positive, 0 = negative (default: all positive)
        box : ``(row_min, col_min, row_max, col_max)``
        mask : low-res logits ``(256, 256)`` or a slice-shaped mask (see :meth:`mask_prompt`)
        multimask : 3 candidate masks (True) or the single-mask output (False)
        """
        batch = self.predict_batch(
            embedding,
            points=None if points is None else [points],
            labels=None if labels is None else [labels],
            boxes=None if box is None else [box],
            masks=None if mask is None else [mask],
            multimask=multimask,
        )
        return batch[0]

    def predict_batch(
        self,
        embedding: Embedding,
        points: list | np.ndarray | None = None,
        labels: list | np.ndarray | None = None,
        boxes: list | np.ndarray | None = None,
        masks: list | np.ndarray | None = None,
        multimask: bool = True,
        upscale: bool = True,
    ) -> list[Prediction]:
        """Masks for B objects in one decoder call (all prompts of one kind per call).

        ``points`` is ``(B, N, 2)`` (same N for every object), ``labels`` ``(B, N)``,
        ``boxes`` ``(B, 4)``, ``masks`` B mask prompts. Returns B predictions (none
        for B = 0). NaN or infinite coordinates, points outside the slice and
        objects without any prompt (``N = 0`` and no box or mask) raise
        ``ValueError``. With
        ``upscale=False`` the predictions' ``masks`` are the low-res masks (logits > 0)
        and can be upscaled later with :meth:`upscale`.
        """
        import torch

        from napari_sam.prompt_checks import check_batch

        points, labels, bsz = check_batch(points, labels, boxes, masks)
        if bsz == 0:  # no objects: no predictions
            return []
        from napari_sam.tiling import TiledEmbedding, predict_tiled

        size = tuple(embedding.original_size)
        if points is not None:  # NaN, inf, outside the slice: refused before any decoding
            label_list = labels if labels is not None else [None] * bsz
            checked = [check_points(p, l, size) for p, l in zip(points, label_list)]
        if boxes is not None:
            checked_boxes = np.stack([check_box(b, size) for b in boxes])
        if isinstance(embedding, TiledEmbedding):
            return predict_tiled(self, embedding, points, labels, boxes, masks, multimask)
        dev = self.device
        pt = None
        if points is not None:
            if len({c[0].shape[0] for c in checked}) != 1:
                raise ValueError("every object in a batch needs the same number of points")
            coords = np.stack([embedding.to_model_frame(c[0]) for c in checked])
            lab = np.stack([c[1] for c in checked])
            pt = (
                torch.as_tensor(coords, dtype=torch.float32, device=dev),
                torch.as_tensor(lab, dtype=torch.int64, device=dev),
            )
        bx = None
        if boxes is not None:
            corners = embedding.to_model_frame(checked_boxes.reshape(-1, 2, 2)).reshape(-1, 4)
            bx = torch.as_tensor(corners, dtype=torch.float32, device=dev)
        mk = None
        if masks is not None:
            mk = torch.as_tensor(
                np.stack([self.mask_prompt(embedding, m) for m in masks])[:, None], device=dev
            )
        with torch.inference_mode():
            sparse, dense = self.model.prompt_encoder(pt, bx, mk)
            if self._dense_pe is None:
                self._dense_pe = self.model.prompt_encoder.get_dense_pe()
            # without a mask prompt, the image side of the decoder is the same for
            # every prompt: decode with the work done once per embedding
            prepared = None if mk is not None else self._prepared_decoder(embedding)
            if prepared is not None:
                out = prepared.transformer(sparse, (1, 2, 3) if multimask else (0,))
                logits, iou = prepared.masks(out), out.iou
            else:
                logits, iou = self.model.mask_decoder(
                    embedding.features,
                    self._dense_pe,
                    sparse,
                    dense,
                    multimask,
                )
        logits_np = logits.float().cpu().numpy()
        iou_np = iou.float().cpu().numpy()
        if not upscale:
            low_np = (logits > self.model.mask_threshold).cpu().numpy()
            return [Prediction(low_np[i], iou_np[i], logits_np[i]) for i in range(bsz)]
        # masks at the slice size are computed when accessed, and only those accessed
        return [
            Prediction(
                None, iou_np[i], logits_np[i], upscaler=_MaskUpscaler(self, embedding, logits[i])
            )
            for i in range(bsz)
        ]

    def _prepared_decoder(self, embedding: Embedding):
        """The :class:`~napari_sam.model.prepared_decoder.PreparedDecoder` of ``embedding``.

        Kept for the last :attr:`prepared_cache_size` embeddings (by identity, through
        a weak reference, so a dropped embedding is never matched); None when the
        model's decoder does not have SAM's structure.
        """
        import weakref

        import torch

        from napari_sam.model.prepared_decoder import PreparedDecoder, supports_prepared_decoder

        for ref, feats, prepared in self._prepared:
            if ref() is embedding and feats is embedding.features:
                return prepared
        dec = self.model.mask_decoder
        if not supports_prepared_decoder(dec):
            return None
        if self._dense_pe is None:
            with torch.inference_mode():
                self._dense_pe = self.model.prompt_encoder.get_dense_pe()
        try:
            ref = weakref.ref(embedding)
        except TypeError:
            ref = None
        # the no-mask dense embedding: one (C,) vector broadcast over the grid
        no_mask = self.model.prompt_encoder.no_mask_embed.weight.reshape(-1)
        shared = self._prepared[-1][2] if self._prepared else None
        try:
            prepared = PreparedDecoder(
                dec, embedding.features, self._dense_pe, no_mask, positional=shared
            )
        except ValueError:
            return None
        if ref is not None:
            self._prepared = [*self._prepared[-(self.prepared_cache_size - 1) :], (
                ref, embedding.features, prepared
            )]
        return prepared

    #: How many embeddings keep their prepared decoder (each about 2.5x the embedding's memory).
    prepared_cache_size = 2

    def upscale(self, embedding: Embedding, logits: torch.Tensor) -> torch.Tensor:
        """Low-res logits ``(..., h, w)`` -> logits at the slice size ``(..., H, W)``.

        SAM's postprocessing (bilinear to the padded model input, crop to the
        resized slice, bilinear to the slice size), with the first step
        evaluated only on the low-res rows and columns the crop reads (the same
        values, fewer pixels for non-square slices).
        """
        import torch
        import torch.nn.functional as F

        t = torch.as_tensor(logits, device=self.device, dtype=torch.float32)
        lead = t.shape[:-2]
        t = t.reshape(-1, 1, *t.shape[-2:])
        s = self.image_size
        (ih, iw), (oh, ow) = embedding.input_size, embedding.original_size
        lh, lw = t.shape[-2:]
        if s % lh or s % lw:  # not an integer scale: SAM's postprocessing as is
            out = self.model.postprocess_masks(t, embedding.input_size, embedding.original_size)
            return out.reshape(*lead, *out.shape[-2:])
        fy, fx = s // lh, s // lw
        # output rows y < ih read low-res rows up to floor((y + 0.5) / fy - 0.5) + 1 <= nh - 1,
        # never the last row of the block, so the block's border clamping changes nothing
        nh, nw = min(lh, -(-ih // fy) + 1), min(lw, -(-iw // fx) + 1)
        out = F.interpolate(
            t[..., :nh, :nw], (nh * fy, nw * fx), mode="bilinear", align_corners=False
        )[..., :ih, :iw]
        if (ih, iw) != (oh, ow):
            out = F.interpolate(out, (oh, ow), mode="bilinear", align_corners=False)
        return out.reshape(*lead, *out.shape[-2:])

    def upscale_masks(self, embedding: Embedding, logits) -> np.ndarray:
        """Low-res logits ``(..., h, w)`` -> bool masks at the slice size ``(..., H, W)``.

        Equal to ``upscale(embedding, logits) > mask_threshold``, computed on
        less: a bilinear value is a convex combination of neighbouring low-res
        values, so a pixel whose low-res neighbours are all at or below the
        threshold is too. Only the low-res block around each mask's pixels
        above the threshold (with a margin of :attr:`_MASK_MARGIN` cells) is
        upscaled; inside it the values are those of :meth:`upscale` (the block
        is cut on whole cells, so its interpolation weights are the same).
        """
        import torch
        import torch.nn.functional as F

        thr = float(self.model.mask_threshold)
        t = torch.as_tensor(logits, device=self.device, dtype=torch.float32)
        lead = t.shape[:-2]
        lh, lw = t.shape[-2:]
        t = t.reshape(-1, lh, lw)
        s = self.image_size
        (ih, iw), (oh, ow) = embedding.input_size, embedding.original_size
        if s % lh or s % lw:  # not an integer scale: no block structure
            return (self.upscale(embedding, logits) > thr).cpu().numpy()
        fy, fx = s // lh, s // lw
        m = self._MASK_MARGIN
        out = np.zeros((t.shape[0], oh, ow), dtype=bool)
        with torch.inference_mode():
            for k in range(t.shape[0]):
                above = t[k] > thr
                rows = torch.nonzero(above.any(dim=1)).flatten()
                if rows.numel() == 0:
                    continue  # every value at or below the threshold: so is every pixel
                cols = torch.nonzero(above.any(dim=0)).flatten()
                a0, a1 = max(0, int(rows[0]) - m), min(lh, int(rows[-1]) + 1 + m)
                b0, b1 = max(0, int(cols[0]) - m), min(lw, int(cols[-1]) + 1 + m)
                y0, x0 = a0 * fy, b0 * fx
                y1, x1 = min(ih, a1 * fy), min(iw, b1 * fx)
                if y1 <= y0 or x1 <= x0:
                    continue  # the block lies in the padding that the crop removes
                block = F.interpolate(
                    t[k, a0:a1, b0:b1][None, None],
                    ((a1 - a0) * fy, (b1 - b0) * fx),
                    mode="bilinear",
                    align_corners=False,
                )[0, 0, : y1 - y0, : x1 - x0]
                if (ih, iw) == (oh, ow):
                    out[k, y0:y1, x0:x1] = (block > thr).cpu().numpy()
                    continue
                # the second resize reads pixels next to the block too: outside it
                # every value is at or below the threshold, and the threshold
                # itself stands in for them (the margin keeps it away from
                # pixels above the threshold, so no sign changes)
                crop = torch.full((ih, iw), thr, dtype=t.dtype, device=t.device)
                crop[y0:y1, x0:x1] = block
                full = F.interpolate(crop[None, None], (oh, ow), mode="bilinear",
                                     align_corners=False)[0, 0]
                out[k] = (full > thr).cpu().numpy()
        return out.reshape(*lead, oh, ow)

    #: Low-res cells around a mask's pixels above the threshold that :meth:`upscale_masks`
    #: upscales too (two keep the block's border rows, clamped differently from the
    #: whole image, below the threshold; the third keeps the second resize exact).
    _MASK_MARGIN = 3



class _MaskUpscaler:
    """Masks at the slice size from one prediction's low-res logits, on demand."""

    __slots__ = ("embedding", "logits", "predictor")

    def __init__(self, predictor: Predictor, embedding: Embedding, logits) -> None:
        self.predictor = predictor
        self.embedding = embedding
        self.logits = logits  # (K, h, w) torch

    def __call__(self, indices) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.predictor.upscale_masks(self.embedding, self.logits[list(indices)])


def segment_slice(
    image: np.ndarray,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    *,
    model: str | os.PathLike | Predictor = "micro",
    contrast_limits: tuple[float, float] | None = None,
    multimask: bool = True,
) -> np.ndarray:
    """Segment one object in one 2D slice in one call; returns an ``(H, W)`` bool mask.

    ``points`` are ``(N, 2)`` ``(row, col)``, ``box`` is ``(row_min, col_min,
    row_max, col_max)``; ``model`` is a registry name, a checkpoint path or a
    :class:`Predictor` (reuse one to avoid reloading the model). The mask is
    the best-scored one, keeping the parts the prompts select
    (:func:`napari_sam.masks.keep_prompted_parts`), as the annotator commits it.
    """
    from napari_sam.masks import keep_prompted_parts

    predictor = model if isinstance(model, Predictor) else Predictor(model)
    emb = predictor.embed(image, contrast_limits=contrast_limits)
    best = predictor.predict(emb, points, labels, box, multimask=multimask).best_mask
    return keep_prompted_parts(best, points, labels, box)
