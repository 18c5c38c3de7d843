"""SAM's mask decoder: a two-way transformer over prompt tokens and the image
embedding, upscaling, and hypernetwork heads for 3 + 1 masks and their IoU."""

from __future__ import annotations

import torch
from torch import nn

from napari_sam.model.common import MLP, LayerNorm2d
from napari_sam.model.transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """Predict masks from an image embedding and prompt embeddings.

    Output index 0 is the single-mask output (meant for unambiguous, multi-point
    prompts); indices ``1..num_multimask_outputs`` are the multimask candidates.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode a batch of prompts against one image.

        Parameters
        ----------
        image_embeddings : ``(1, C, h, w)`` (or ``(B, C, h, w)``, one per prompt)
        image_pe : ``(1, C, h, w)``
        sparse_prompt_embeddings : ``(B, N, C)``
        dense_prompt_embeddings : ``(B, C, h, w)``
        multimask_output : return the 3 candidates (True) or the single output

        Returns
        -------
        masks : ``(B, K, 4h, 4w)`` logits, K = 3 or 1
        iou_pred : ``(B, K)``
        """
        masks, iou_pred = self.predict_all(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        sel = slice(1, None) if multimask_output else slice(0, 1)
        return masks[:, sel], iou_pred[:, sel]

    def predict_all(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``num_mask_tokens`` outputs: ``(B, 4, 4h, 4w)`` logits and ``(B, 4)`` IoU."""
        b = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat(
            [output_tokens.unsqueeze(0).expand(b, -1, -1), sparse_prompt_embeddings], dim=1
        )
        if image_embeddings.shape[0] != b:
            image_embeddings = image_embeddings.expand(b, -1, -1, -1)
        src = image_embeddings + dense_prompt_embeddings
        pos_src = image_pe.expand(b, -1, -1, -1)
        _, c, h, w = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : 1 + self.num_mask_tokens, :]

        upscaled = self.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )
        _, c_up, h_up, w_up = upscaled.shape
        masks = (hyper_in @ upscaled.reshape(b, c_up, h_up * w_up)).reshape(b, -1, h_up, w_up)
        return masks, self.iou_prediction_head(iou_token_out)
