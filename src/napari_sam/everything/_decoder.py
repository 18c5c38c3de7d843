"""Decoding many single-point prompts against one embedding, cheaply and exactly.

Everything mode decodes thousands of single positive points against one
embedding. :class:`PointDecoder` is the restructured decoder of
:mod:`napari_sam.model.prepared_decoder` (prompt-independent work once per
embedding, image-side projections re-associated through the prompt tokens, the
mask upscaling only for prompts with a candidate whose predicted IoU passes the
threshold) with the prompt encoder in front and the 3 multimask outputs.

The result equals :meth:`napari_sam.predictor.Predictor.predict_batch` up to
float rounding (verified in ``tests/test_everything.py``).
"""

from __future__ import annotations

from typing import Any

from napari_sam.model.prepared_decoder import (
    DecoderOutput,
    PreparedDecoder,
    supports_prepared_decoder,
)

#: Transformer output for a batch of prompts (the name everything mode uses).
Stage1 = DecoderOutput


def supports_fast_decoder(model: Any) -> bool:
    """True for this package's :class:`~napari_sam.model.sam.Sam` with SAM's decoder
    (3 multimask outputs); used by :meth:`napari_sam.predictor.Predictor.point_decoder`."""
    if model is None:
        return False
    dec = getattr(model, "mask_decoder", None)
    return (
        dec is not None
        and supports_prepared_decoder(dec)
        and hasattr(model, "prompt_encoder")
        and getattr(dec, "num_multimask_outputs", 0) == 3
    )


class PointDecoder(PreparedDecoder):
    """Single-point prompts -> SAM's 3 multimask candidates, for one embedding.

    Parameters
    ----------
    model : :class:`napari_sam.model.sam.Sam`
    features : ``(1, C, e, e)`` image embedding (``Embedding.features``)
    """

    def __init__(self, model, features) -> None:
        import torch

        self.model = model
        with torch.inference_mode():
            pe = model.prompt_encoder.get_dense_pe()
            _, dense = model.prompt_encoder(None, None, None)
        super().__init__(model.mask_decoder, features, pe, dense)

    def decode_points(self, coords: Any, labels: Any, tokens_per_chunk: int = 1024) -> Stage1:
        """Run the prompt encoder, the two-way transformer and the IoU head.

        Parameters
        ----------
        coords : ``(B, N, 2)`` torch float, SAM ``(x, y)`` input-frame pixels
        labels : ``(B, N)`` torch int64, 1 positive / 0 negative
        tokens_per_chunk : image tokens per step of the passes over the image
        """
        import torch

        with torch.inference_mode():
            sparse, _ = self.model.prompt_encoder((coords, labels), None, None)
        return super().transformer(sparse, (1, 2, 3), tokens_per_chunk)
