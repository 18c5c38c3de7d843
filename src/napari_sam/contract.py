"""The predictor contract: what every caller of a predictor may use, written down once.

:class:`BasePredictor` is the contract. The annotator, propagation, everything
mode, the embedding store, adaptation and the CLI use a predictor only
through it; nothing outside this module asks a predictor what it has
(``hasattr``/``getattr``/``inspect.signature``). A predictor implements the
core, :meth:`~BasePredictor.embed` and one of
:meth:`~BasePredictor.predict` / :meth:`~BasePredictor.predict_batch` (each
has a default made of the other); everything else has a default that fits a
predictor answering at the slice's own resolution:

================================  ==============================================
core                              ``embed``, ``predict`` / ``predict_batch``
grouped decoding                  ``predict_objects`` (objects with the same
                                  prompt kinds share one ``predict_batch``)
geometry                          ``image_size``, ``plan_tiles``,
                                  ``embed_untiled``, ``lowres_decoding``,
                                  ``upscale``, ``lowres_extent``,
                                  ``mask_threshold``
identity                          ``model_name``, ``model``, ``device``,
                                  ``precision``, ``fingerprint``
fast paths (optional)             ``point_decoder``, ``embedding_geometry``
================================  ==============================================

:class:`napari_sam.predictor.Predictor` (SAM in torch) and the test
stand-ins (``tests/stand_ins.py``) subclass it. Objects that only have
``embed`` and ``predict`` (:class:`PredictorProtocol`, the documented minimum
for user code) are lifted to the contract by :func:`as_predictor`, which the
public entry points call once.

This module imports neither torch nor Qt.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Protocol, cast, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from napari_sam.tiling import TileGrid


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

    def __init__(
        self,
        masks: np.ndarray | None,
        scores: Any,
        logits: Any,
        *,
        upscaler: Callable[[list[int]], np.ndarray] | None = None,
    ) -> None:
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
            assert self._upscaler is not None  # __init__ guarantees one of the two
            self._masks = self._upscaler(list(range(len(self.scores))))
        return self._masks

    def mask(self, index: int) -> np.ndarray:
        """``(H, W)`` bool mask ``index`` at the slice size (only this one is upscaled)."""
        if self._masks is not None:
            return self._masks[index]
        assert self._upscaler is not None
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


@runtime_checkable
class PredictorProtocol(Protocol):
    """The documented minimum of a user's predictor: ``embed`` and ``predict``.

    Any such object works wherever a predictor is taken (it is lifted to
    :class:`BasePredictor` by :func:`as_predictor`); subclass
    :class:`BasePredictor` to use the rest of the contract (batching,
    identity for the embedding store, tiling).
    """

    def embed(self, image: np.ndarray, *, contrast_limits: tuple[float, float] | None = None
              ) -> Any:
        """Embed one 2D slice ``(H, W)`` or ``(H, W, C)``; returns an opaque embedding."""

    def predict(
        self,
        embedding: Any,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        multimask: bool = True,
    ) -> Prediction:
        """Masks for one object from ``(row, col)`` points, a box and/or a mask prompt."""


class PromptLike(Protocol):
    """The prompts of one object, as :meth:`BasePredictor.predict_objects` reads them.

    ``points`` ``(N, 2)`` ``(row, col)`` (N may be 0) or None, ``labels`` ``(N,)``
    1/0 or None (all positive), ``box`` ``(row_min, col_min, row_max, col_max)``
    or None, ``mask`` a mask prompt or None.
    """

    @property
    def points(self) -> Any: ...

    @property
    def labels(self) -> Any: ...

    @property
    def box(self) -> Any: ...

    @property
    def mask(self) -> Any: ...


def _item(values: Any, index: int) -> Any:
    return None if values is None else values[index]


class BasePredictor(abc.ABC):
    """The predictor contract (see the module docstring for the overview).

    Subclasses implement :meth:`embed` and :meth:`predict` or
    :meth:`predict_batch` (or both); the rest has defaults for a predictor
    whose predictions are at the slice's own size and which does not tile.

    Attributes
    ----------
    model_name : registry name or checkpoint path of the model; picks the
        registry's recommended options (propagation, everything mode) and
        names the model in stores and reports. None: not a registry model.
    model : the torch :class:`~napari_sam.model.sam.Sam` when there is one
        (adaptation, the model fingerprint of a store); None for stand-ins
    device : the torch device of ``model``, or None
    precision : the image encoder's precision (``"float32"``, ``"bfloat16"``,
        ...), part of an embedding store's identity; None when not applicable
    fingerprint : a string that identifies the weights (an embedding store
        trusts it); None: the store hashes ``model``
    image_size : side of the square model input; None when there is none
    mask_threshold : logits above it are inside a mask
    lowres_decoding : True when ``predict_batch(..., upscale=False)`` returns
        predictions whose ``logits`` are low-res and :meth:`upscale` maps them
        to the slice (everything mode then filters before upscaling); False:
        every prediction is at the slice's size
    """

    model_name: str | None = None
    model: Any = None
    device: Any = None
    precision: str | None = None
    fingerprint: str | None = None
    image_size: int | None = None
    mask_threshold: float = 0.0
    lowres_decoding: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if (cls.predict, cls.predict_batch) == (BasePredictor.predict, BasePredictor.predict_batch):
            raise TypeError(
                f"{cls.__name__} must implement predict or predict_batch (each has a default "
                "made of the other)"
            )

    # ------------------------------------------------------------------ core
    @abc.abstractmethod
    def embed(self, image: np.ndarray, *, contrast_limits: tuple[float, float] | None = None
              ) -> Any:
        """The embedding of one 2D slice ``(H, W)`` or ``(H, W, C)`` (opaque to callers).

        ``contrast_limits`` ``(low, high)`` are mapped to black and white; pass
        the same limits for every slice of a stack.
        """

    def predict(
        self,
        embedding: Any,
        points: Any = None,
        labels: Any = None,
        box: Any = None,
        mask: Any = None,
        multimask: bool = True,
    ) -> Prediction:
        """Masks for one object (default: a batch of one through :meth:`predict_batch`).

        Parameters
        ----------
        embedding : from :meth:`embed`
        points : ``(N, 2)`` ``(row, col)`` pixels of the slice
        labels : ``(N,)`` 1 = positive, 0 = negative (default: all positive)
        box : ``(row_min, col_min, row_max, col_max)``
        mask : a mask prompt (a slice-shaped mask, or logits of an earlier prediction)
        multimask : 3 candidate masks (True) or one (False)
        """
        return self.predict_batch(
            embedding,
            points=None if points is None else [points],
            labels=None if labels is None else [labels],
            boxes=None if box is None else [box],
            masks=None if mask is None else [mask],
            multimask=multimask,
        )[0]

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
        """Masks for B objects: one entry per object in each prompt list.

        ``points`` ``(B, N, 2)`` (the same N for every object), ``labels``
        ``(B, N)``, ``boxes`` ``(B, 4)``, ``masks`` B mask prompts. Returns B
        predictions (none for B = 0). The default calls :meth:`predict` per
        object; ``upscale=False`` asks for low-res predictions, which only a
        predictor with :attr:`lowres_decoding` gives (the default ignores it).

        Raises
        ------
        ValueError
            No prompt, or prompt lists of different lengths.
        """
        from napari_sam.prompt_checks import check_batch

        points, labels, n = check_batch(points, labels, boxes, masks)
        return [
            self.predict(
                embedding,
                points=_item(points, i),
                labels=_item(labels, i),
                box=_item(boxes, i),
                mask=_item(masks, i),
                multimask=multimask,
            )
            for i in range(n)
        ]

    def predict_objects(
        self,
        embedding: Any,
        objects: Sequence[PromptLike],
        *,
        multimask: bool | Sequence[bool] = True,
    ) -> list[Prediction]:
        """One prediction per object, in the order of ``objects``.

        Objects with the same prompt kinds (number of points, box or not,
        mask or not, and ``multimask``) are decoded in one :meth:`predict_batch`
        call. An object with zero points is decoded from its box and/or mask.

        Parameters
        ----------
        embedding : from :meth:`embed`
        objects : anything with ``points``, ``labels``, ``box`` and ``mask``
            (:class:`PromptLike`)
        multimask : for every object, or one entry per object
        """
        flags = (
            [bool(multimask)] * len(objects)
            if isinstance(multimask, bool)
            else [bool(m) for m in multimask]
        )
        groups: dict[tuple[int, bool, bool, bool], list[int]] = {}
        for i, obj in enumerate(objects):
            n_points = 0 if obj.points is None else len(obj.points)
            key = (n_points, obj.box is not None, obj.mask is not None, flags[i])
            groups.setdefault(key, []).append(i)
        results: list[Prediction | None] = [None] * len(objects)
        for (n_points, has_box, has_mask, multi), members in groups.items():
            chosen = [objects[i] for i in members]
            labels = [o.labels for o in chosen] if n_points else None
            if labels is not None and all(lab is None for lab in labels):
                labels = None
            preds = self.predict_batch(
                embedding,
                points=[o.points for o in chosen] if n_points else None,
                labels=labels,
                boxes=[o.box for o in chosen] if has_box else None,
                masks=[o.mask for o in chosen] if has_mask else None,
                multimask=multi,
            )
            for i, pred in zip(members, preds):
                results[i] = pred
        return cast("list[Prediction]", results)

    # -------------------------------------------------------------- geometry
    def embed_untiled(
        self, image: np.ndarray, *, contrast_limits: tuple[float, float] | None = None
    ) -> Any:
        """One whole-slice embedding, never tiled (the store, everything mode's crops).

        The default is :meth:`embed`; a predictor that tiles overrides it.
        """
        return self.embed(image, contrast_limits=contrast_limits)

    def plan_tiles(self, shape: tuple[int, int], tiling: str | None = None) -> TileGrid | None:
        """The :class:`~napari_sam.tiling.TileGrid` that :meth:`embed` uses for a slice
        of ``shape``, or None (not tiled; the default)."""
        return None

    def upscale(self, embedding: Any, logits: Any) -> Any:
        """Logits of :meth:`predict_batch` (``upscale=False``) -> logits at the slice size.

        The default returns them as they are (predictions at the slice size).
        """
        return logits

    def lowres_extent(self, embedding: Any, low_shape: tuple[int, int]) -> tuple[int, int]:
        """Rows and columns of low-res logits ``low_shape`` that show the slice.

        The rest is the padding of the model input; the default: all of them.
        """
        return (int(low_shape[0]), int(low_shape[1]))

    # ------------------------------------------------ slices, quick previews
    def with_image(self, embedding: Any, image: np.ndarray) -> Any:
        """``embedding`` (read back from a store) with its slice ``image``, for a
        predictor that decodes from the slice too (zoom); the default returns it as is."""
        return embedding

    def quick(self) -> AbstractContextManager[None]:
        """A context in which this thread's decoding skips optional second passes
        (the zoom into small objects), for previews that must come at once
        (hover); the default changes nothing."""
        return nullcontext()

    # ----------------------------------------------------------- fast paths
    def point_decoder(self, embedding: Any) -> Any | None:
        """An exact decoder for many single-point prompts on ``embedding``, or None.

        Everything mode uses it when given
        (:class:`~napari_sam.everything._decoder.PointDecoder`); default None.
        """
        return None

    def embedding_geometry(
        self, slice_shape: tuple[int, ...]
    ) -> tuple[tuple[int, int, int], tuple[int, int]] | None:
        """``((C, e, e), (h, w))``: feature map and resized input of a slice, without
        running the model; None (the default) when unknown (the store embeds one slice)."""
        return None


def geometry_from_config(
    config: Any, image_size: int | None, slice_shape: tuple[int, ...]
) -> tuple[tuple[int, int, int], tuple[int, int]] | None:
    """``((C, e, e), (h, w))`` of a slice's embedding from a model config
    (``embedding_size``, ``prompt_embed_dim``) and the model input size; None if unknown."""
    from napari_sam.predictor import resized_shape

    try:
        e, channels = int(config.embedding_size), int(config.prompt_embed_dim)
    except AttributeError:
        return None
    if not isinstance(image_size, int):
        return None
    h, w = int(slice_shape[0]), int(slice_shape[1])
    return (channels, e, e), resized_shape(h, w, image_size)


class _Lifted(BasePredictor):
    """A :class:`PredictorProtocol` object behind the contract (see :func:`as_predictor`).

    Its own ``predict_batch``, ``plan_tiles`` and identity attributes are
    used when it has them; its predictions are taken at the slice's size.
    """

    def __init__(self, obj: Any) -> None:
        self.wrapped = obj
        self._embed = getattr(obj, "embed", None)
        self._predict = getattr(obj, "predict", None)
        self._batch = getattr(obj, "predict_batch", None)
        self._plan = getattr(obj, "plan_tiles", None)
        self.model_name = getattr(obj, "model_name", None)
        self.model = getattr(obj, "model", None)
        self.device = getattr(obj, "device", None)
        precision = getattr(obj, "precision", None)
        self.precision = None if precision is None else str(precision)
        fingerprint = getattr(obj, "fingerprint", None)
        self.fingerprint = fingerprint if isinstance(fingerprint, str) and fingerprint else None
        size = getattr(obj, "image_size", None)
        self.image_size = size if isinstance(size, int) else None
        self.mask_threshold = float(getattr(self.model, "mask_threshold", 0.0))

    def __repr__(self) -> str:
        return f"as_predictor({self.wrapped!r})"

    def embed(self, image: np.ndarray, *, contrast_limits: tuple[float, float] | None = None
              ) -> Any:
        if self._embed is None:
            raise TypeError(
                f"predictor {type(self.wrapped).__name__} has no embed method; pass "
                "precomputed embeddings or a predictor with embed"
            )
        return self._embed(image, contrast_limits=contrast_limits)

    def embed_untiled(
        self, image: np.ndarray, *, contrast_limits: tuple[float, float] | None = None
    ) -> Any:
        if self._plan is not None and self._embed is not None:  # it tiles: ask for no tiles
            return self._embed(image, contrast_limits=contrast_limits, tiling="off")
        return self.embed(image, contrast_limits=contrast_limits)

    def predict(self, embedding: Any, points: Any = None, labels: Any = None, box: Any = None,
                mask: Any = None, multimask: bool = True) -> Prediction:
        if self._predict is None and self._batch is None:
            raise TypeError(f"predictor {type(self.wrapped).__name__} has no predict method")
        if self._predict is None:
            return super().predict(embedding, points, labels, box, mask, multimask)
        return self._predict(embedding, points=points, labels=labels, box=box, mask=mask,
                             multimask=multimask)

    def predict_batch(self, embedding: Any, points: Any = None, labels: Any = None,
                      boxes: Any = None, masks: Any = None, multimask: bool = True,
                      upscale: bool = True) -> list[Prediction]:
        if self._batch is None:
            return super().predict_batch(embedding, points, labels, boxes, masks, multimask)
        return list(self._batch(embedding, points=points, labels=labels, boxes=boxes,
                                masks=masks, multimask=multimask))

    def plan_tiles(self, shape: tuple[int, int], tiling: str | None = None) -> TileGrid | None:
        if self._plan is None:
            return None
        return self._plan(shape) if tiling is None else self._plan(shape, tiling)

    def with_image(self, embedding: Any, image: np.ndarray) -> Any:
        own = getattr(self.wrapped, "with_image", None)
        return embedding if own is None else own(embedding, image)

    def quick(self) -> AbstractContextManager[None]:
        own = getattr(self.wrapped, "quick", None)
        return nullcontext() if own is None else own()

    def embedding_geometry(
        self, slice_shape: tuple[int, ...]
    ) -> tuple[tuple[int, int, int], tuple[int, int]] | None:
        return geometry_from_config(getattr(self.model, "config", None), self.image_size,
                                    slice_shape)


def as_predictor(
    predictor: Any, *, need_embed: bool = True, need_predict: bool = True
) -> BasePredictor:
    """``predictor`` behind the contract: itself for a :class:`BasePredictor`, else lifted.

    Parameters
    ----------
    predictor : a :class:`BasePredictor`, or any object with ``embed`` and
        ``predict`` (or ``predict_batch``) like :class:`PredictorProtocol`
    need_embed : False when the caller has the embeddings (``embed`` may be missing)
    need_predict : False when the caller only reads the identity and geometry
        (the embedding store)

    Raises
    ------
    TypeError
        The object cannot predict (or embed, with ``need_embed``); the
        message names what is missing.
    """
    if isinstance(predictor, BasePredictor):
        return predictor
    name = type(predictor).__name__
    can_predict = callable(getattr(predictor, "predict", None)) or callable(
        getattr(predictor, "predict_batch", None)
    )
    if need_predict and not can_predict:
        raise TypeError(
            f"predictor {name} has no predict method; pass a napari_sam.Predictor or an "
            "object with embed/predict (napari_sam.PredictorProtocol)"
        )
    if need_embed and not callable(getattr(predictor, "embed", None)):
        raise TypeError(
            f"predictor {name} has no embed method and no embeddings were given; pass a "
            "napari_sam.Predictor or an object with embed/predict (napari_sam.PredictorProtocol)"
        )
    return _Lifted(predictor)
