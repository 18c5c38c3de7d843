"""Embed a 2D microscopy slice once, then decode prompts against it cheaply.

Coordinate convention
---------------------
Everything public uses napari's ``(row, col)`` pixel coordinates of the slice:
points ``(N, 2)`` as ``(row, col)``, boxes as ``(row_min, col_min, row_max,
col_max)``. SAM wants ``(x, y)`` in its resized input frame; the conversion
happens in exactly one place, :meth:`Embedding.to_model_frame`.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_sam.contract import BasePredictor, Prediction, PredictorProtocol
from napari_sam.prompt_checks import check_batch, check_box, check_points
from napari_sam.zoom import CropCache, Zooming

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from napari_sam.everything._decoder import PointDecoder
    from napari_sam.model.sam import Sam
    from napari_sam.tiling import TiledEmbedding, TileGrid

__all__ = ["Embedding", "Prediction", "Predictor", "PredictorProtocol", "segment_slice"]


@dataclass(frozen=True)
class Embedding:
    """The image embedding of one slice and the geometry needed to decode against it.

    Attributes
    ----------
    features : ``(1, C, e, e)`` torch tensor (float32) on the model's device
    original_size : ``(H, W)`` of the slice
    input_size : ``(h, w)`` of the slice resized so its longest side is the model input size
    contrast_limits : the ``(low, high)`` used to normalize the slice (None: per-channel default)
    image : the slice itself, kept by a predictor that zooms into small objects
        (:mod:`napari_sam.zoom`), else None
    """

    features: Any
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    contrast_limits: tuple[float, float] | None = None
    metadata: dict = field(default_factory=dict)
    image: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_model_frame(self, rows_cols: np.ndarray) -> np.ndarray:
        """``(..., 2)`` ``(row, col)`` slice pixels -> ``(..., 2)`` SAM ``(x, y)`` input pixels.

        This is the only place where napari's ``(row, col)`` becomes SAM's ``(x, y)``.
        """
        rc = np.asarray(rows_cols, dtype=np.float64)
        sy = self.input_size[0] / self.original_size[0]
        sx = self.input_size[1] / self.original_size[1]
        return np.stack([rc[..., 1] * sx, rc[..., 0] * sy], axis=-1)


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


def _check_tiling(tiling: str, name: str = "tiling") -> str:
    if tiling not in ("auto", "off"):
        raise ValueError(f"{name} must be 'auto' or 'off', got {tiling!r}")
    return tiling


def _resolve_precision(precision: str, device: Any) -> Any:
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


class Predictor(Zooming, BasePredictor):
    """SAM on 2D microscopy slices: ``embed`` once per slice, ``predict`` per prompt.

    The :class:`~napari_sam.contract.BasePredictor` contract, implemented with
    this package's torch SAM. Slices larger than the model input are handed
    to the tiling layer (:mod:`napari_sam.tiling`), which embeds and decodes
    them tile by tile with this predictor's whole-slice :meth:`embed_batch`
    and decoder.

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
    zoom : ``"auto"`` (default): with a model whose input is at most 512 px
        (cheap to embed, e.g. the bundled micro), objects smaller than
        :data:`napari_sam.zoom.ZOOM_BELOW` model-input pixels are decoded again
        on an enlarged crop around them, and the zoomed mask is kept when the
        model trusts it more (see :mod:`napari_sam.zoom`); ``"off"``: never.

    Examples
    --------
    >>> predictor = Predictor("vit_b")                              # doctest: +SKIP
    >>> emb = predictor.embed(stack[7], contrast_limits=(100, 4000))  # doctest: +SKIP
    >>> pred = predictor.predict(emb, points=[[120, 64]], labels=[1])  # doctest: +SKIP
    >>> pred.best_mask.shape == stack.shape[1:]                     # doctest: +SKIP
    True
    """

    model: Sam
    model_name: str
    precision: str
    image_size: int
    #: ``predict_batch(..., upscale=False)`` gives low-res masks; :meth:`upscale` maps them.
    lowres_decoding = True
    #: How many embeddings keep their prepared decoder (each about 2.5x the embedding's memory).
    prepared_cache_size = 2

    def __init__(
        self,
        model: str | os.PathLike | Sam = "micro",
        device: str = "auto",
        precision: str = "auto",
        tiling: str = "auto",
        tile_overlap: int | None = None,
        zoom: str = "auto",
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
        self.image_size = int(self.model.img_size)
        self.mask_threshold = float(self.model.mask_threshold)
        self._dense_pe: Any = None  # positional encoding of the embedding grid: a model constant
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
        self.zoom = _check_tiling(zoom, "zoom")
        self._thread = threading.local()  # quick(): per-thread
        self._crops = CropCache()  # crop embeddings of the zoom, reused by later calls

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

    def plan_tiles(self, shape: tuple[int, int], tiling: str | None = None) -> TileGrid | None:
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
        from napari_sam.tiling import TiledEmbedding

        grid = self.plan_tiles(np.shape(image)[:2], tiling)
        if grid is None:
            return self.embed_untiled(image, contrast_limits=contrast_limits)
        return TiledEmbedding.from_image(
            image,
            grid,
            contrast_limits,
            self.embed_batch,
            # small inputs (micro: 256 px) embed many tiles per pass faster; SAM's one at a time
            batch_size=16 if self.image_size <= 512 else 1,
            metadata={"model": self.model_name, "precision": self.precision},
        )

    def embed_untiled(
        self, image: np.ndarray, *, contrast_limits: tuple[float, float] | None = None
    ) -> Embedding:
        """The whole slice resized to the model input: one :class:`Embedding`, never tiled."""
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
        limits = None if contrast_limits is None else _pair(contrast_limits)
        return [
            Embedding(
                features=features[k : k + 1],
                original_size=original,
                input_size=resized,
                contrast_limits=limits,
                metadata={"model": self.model_name, "precision": self.precision},
                image=np.asarray(images[k]) if self._zoom_on else None,
            )
            for k, (_, original, resized) in enumerate(inputs)
        ]

    def embedding_geometry(
        self, slice_shape: tuple[int, ...]
    ) -> tuple[tuple[int, int, int], tuple[int, int]] | None:
        """``((C, e, e), (h, w))`` of a slice's :class:`Embedding`, from the model's config."""
        from napari_sam.contract import geometry_from_config

        return geometry_from_config(self.model.config, self.image_size, slice_shape)

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

    def predict_batch(
        self,
        embedding: Any,
        points: Any = None,
        labels: Any = None,
        boxes: Any = None,
        masks: Any = None,
        multimask: bool = True,
        upscale: bool = True,
    ) -> list[Prediction]:
        """Masks for B objects in one decoder call (all prompts of one kind per call).

        ``points`` is ``(B, N, 2)`` (same N for every object), ``labels`` ``(B, N)``,
        ``boxes`` ``(B, 4)``, ``masks`` B mask prompts (low-res logits ``(256, 256)``
        or slice-shaped masks, see :meth:`mask_prompt`). Returns B predictions (none
        for B = 0). NaN or infinite coordinates, points outside the slice and
        objects without any prompt (``N = 0`` and no box or mask) raise
        ``ValueError``. With
        ``upscale=False`` the predictions' ``masks`` are the low-res masks (logits > 0)
        and can be upscaled later with :meth:`upscale`. A
        :class:`~napari_sam.tiling.TiledEmbedding` is decoded by the tiling layer
        (:func:`~napari_sam.tiling.predict_tiled`), at the slice's size.
        """
        from napari_sam.tiling import TiledEmbedding, predict_tiled

        if not isinstance(embedding, TiledEmbedding):
            preds = self._decode(embedding, points, labels, boxes, masks, multimask, upscale)
        else:
            points, labels, bsz = check_batch(points, labels, boxes, masks)
            if bsz == 0:
                return []
            _check_prompts(points, labels, boxes, bsz, _size(embedding.original_size))
            preds = predict_tiled(self._decode, embedding, points, labels, boxes, masks,
                                  multimask)
        if upscale and masks is None and preds and self.zooms:
            from napari_sam.zoom import zoom_predictions

            preds = zoom_predictions(
                embedding, preds, points, labels, boxes, input_size=self.image_size,
                decode=self._decode, embed_batch=self.embed_batch,
                mask_prompt=self.mask_prompt, multimask=multimask, cache=self._crops,
            )
        return preds

    def _decode(
        self,
        embedding: Embedding,
        points: Any = None,
        labels: Any = None,
        boxes: Any = None,
        masks: Any = None,
        multimask: bool = True,
        upscale: bool = True,
    ) -> list[Prediction]:
        """:meth:`predict_batch` on a whole-slice :class:`Embedding`."""
        import torch

        from napari_sam.upscaling import MaskUpscaler

        points, labels, bsz = check_batch(points, labels, boxes, masks)
        if bsz == 0:  # no objects: no predictions
            return []
        size = _size(embedding.original_size)
        # NaN, inf, outside the slice: refused before any decoding
        checked, checked_boxes = _check_prompts(points, labels, boxes, bsz, size)
        dev = self.device
        pt = None
        if checked is not None:
            if len({c[0].shape[0] for c in checked}) != 1:
                raise ValueError("every object in a batch needs the same number of points")
            coords = np.stack([embedding.to_model_frame(c[0]) for c in checked])
            lab = np.stack([c[1] for c in checked])
            pt = (
                torch.as_tensor(coords, dtype=torch.float32, device=dev),
                torch.as_tensor(lab, dtype=torch.int64, device=dev),
            )
        bx = None
        if checked_boxes is not None:
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
                None, iou_np[i], logits_np[i],
                upscaler=MaskUpscaler(self.model, embedding, logits[i]),
            )
            for i in range(bsz)
        ]

    def _prepared_decoder(self, embedding: Embedding) -> Any:
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

    def point_decoder(self, embedding: Any) -> PointDecoder | None:
        """Everything mode's exact decoder of single points on a whole-slice ``embedding``."""
        from napari_sam.everything._decoder import PointDecoder, supports_fast_decoder

        if not isinstance(embedding, Embedding) or not supports_fast_decoder(self.model):
            return None
        return PointDecoder(self.model, embedding.features)

    # ---------------------------------------------------------------- upscale
    def upscale(self, embedding: Embedding, logits: Any) -> torch.Tensor:
        """Low-res logits ``(..., h, w)`` -> logits at the slice size ``(..., H, W)``.

        SAM's postprocessing, computed on the rows and columns the crop keeps
        (:func:`napari_sam.upscaling.upscale_logits`).
        """
        from napari_sam.upscaling import upscale_logits

        return upscale_logits(self.model, embedding, logits)

    def upscale_masks(self, embedding: Embedding, logits: Any) -> np.ndarray:
        """Low-res logits ``(..., h, w)`` -> bool masks at the slice size ``(..., H, W)``.

        Equal to ``upscale(embedding, logits) > mask_threshold``, computed only
        around each mask (:func:`napari_sam.upscaling.upscale_masks`).
        """
        from napari_sam.upscaling import upscale_masks

        return upscale_masks(self.model, embedding, logits)

    def lowres_extent(self, embedding: Any, low_shape: tuple[int, int]) -> tuple[int, int]:
        """Rows and columns of ``low_shape`` logits that show the slice (not the padding)."""
        h, w = int(low_shape[0]), int(low_shape[1])
        if not isinstance(embedding, Embedding):
            return h, w
        inp, size = embedding.input_size, self.image_size
        return min(h, math.ceil(inp[0] * h / size)), min(w, math.ceil(inp[1] * w / size))


def _pair(values: Any) -> tuple[float, float]:
    """``(low, high)`` as given (a 2-sequence; the values are kept as they are)."""
    low, high = values
    return low, high


def _size(values: Any) -> tuple[int, int]:
    h, w = values
    return int(h), int(w)


def _check_prompts(
    points: Any, labels: Any, boxes: Any, bsz: int, size: tuple[int, int]
) -> tuple[list[tuple[np.ndarray, np.ndarray]] | None, np.ndarray | None]:
    """Points and boxes of a batch checked against the slice (NaN, inf, outside)."""
    checked = None
    if points is not None:
        label_list = labels if labels is not None else [None] * bsz
        checked = [check_points(p, lab, size) for p, lab in zip(points, label_list)]
    boxes_checked = None if boxes is None else np.stack([check_box(b, size) for b in boxes])
    return checked, boxes_checked


def segment_slice(
    image: np.ndarray,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    *,
    model: str | os.PathLike | BasePredictor = "micro",
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

    predictor = model if isinstance(model, BasePredictor) else Predictor(model)
    emb = predictor.embed(image, contrast_limits=contrast_limits)
    best = predictor.predict(emb, points, labels, box, multimask=multimask).best_mask
    return keep_prompted_parts(best, points, labels, box)
