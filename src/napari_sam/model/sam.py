"""The assembled SAM model and its architecture configurations.

:class:`Sam` holds an image encoder, a prompt encoder and a mask decoder, plus
the pixel normalization. It knows nothing of microscopy or napari: it takes
``(B, 3, S, S)`` padded, normalized images and SAM-frame ``(x, y)`` prompts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.mask_decoder import MaskDecoder
from napari_sam.model.prompt_encoder import PromptEncoder
from napari_sam.model.tiny_vit import VIT_T_OPTIONS
from napari_sam.model.transformer import TwoWayTransformer

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamConfig:
    """Architecture of a SAM model (everything a state dict needs to load strictly).

    ``encoder`` is ``"vit"`` (SAM's ViT) or ``"tiny_vit"`` (MobileSAM's TinyViT);
    ``encoder_options`` holds the encoder's own parameters.
    """

    encoder: str = "vit"
    encoder_options: dict = field(default_factory=dict)
    img_size: int = 1024
    patch_size: int = 16
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    decoder_depth: int = 2
    decoder_heads: int = 8
    decoder_mlp_dim: int = 2048
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    num_multimask_outputs: int = 3

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 for SAM)."""
        return self.img_size // self.patch_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SamConfig:
        return cls(**d)


def _vit(embed_dim: int, depth: int, num_heads: int, global_attn: tuple[int, ...]) -> dict:
    return {
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": num_heads,
        "global_attn_indexes": global_attn,
        "window_size": 14,
    }


#: Named architectures. ``vit_tiny`` is a small random-weight model for tests.
CONFIGS: dict[str, SamConfig] = {
    "vit_b": SamConfig(encoder_options=_vit(768, 12, 12, (2, 5, 8, 11))),
    "vit_l": SamConfig(encoder_options=_vit(1024, 24, 16, (5, 11, 17, 23))),
    "vit_h": SamConfig(encoder_options=_vit(1280, 32, 16, (7, 15, 23, 31))),
    # MobileSAM: TinyViT-5M encoder with SAM's prompt encoder and mask decoder
    "vit_t": SamConfig(encoder="tiny_vit", encoder_options=dict(VIT_T_OPTIONS)),
    "vit_tiny": SamConfig(
        encoder_options={
            "embed_dim": 64,
            "depth": 2,
            "num_heads": 2,
            "global_attn_indexes": (1,),
            "window_size": 5,
        },
        img_size=256,
        prompt_embed_dim=64,
        mask_in_chans=8,
        decoder_heads=4,
        decoder_mlp_dim=128,
        iou_head_hidden_dim=64,
    ),
}


class Sam(nn.Module):
    """Segment Anything: image encoder, prompt encoder, mask decoder."""

    mask_threshold: float = 0.0
    # registered buffers (declared for the type checker: nn.Module's attributes are
    # typed "Tensor | Module")
    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, ...] = PIXEL_MEAN,
        pixel_std: tuple[float, ...] = PIXEL_STD,
        config: SamConfig | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)
        self.config = config

    @property
    def img_size(self) -> int:
        """Side of the square model input (1024 for SAM)."""
        return int(self.image_encoder.img_size)  # type: ignore[arg-type]  # a plain int

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``(B, 3, h, w)`` 0-255 RGB and zero-pad to ``(B, 3, S, S)``."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        return F.pad(x, (0, self.img_size - w, 0, self.img_size - h))

    def postprocess_masks(
        self,
        masks: torch.Tensor,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
    ) -> torch.Tensor:
        """Low-res logits ``(B, K, 4h, 4w)`` -> logits at ``original_size``.

        ``input_size`` is the resized image's ``(h, w)`` inside the padded input.
        """
        masks = F.interpolate(
            masks, (self.img_size, self.img_size), mode="bilinear", align_corners=False
        )
        masks = masks[..., : input_size[0], : input_size[1]]
        if tuple(masks.shape[-2:]) == tuple(original_size):
            return masks  # resizing to the same size is the identity
        return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)


#: Image encoders by config name: ``"module:Class"``. Each class takes
#: ``img_size``, ``patch_size`` (total stride), ``out_chans`` and its own options,
#: has an ``img_size`` attribute, and maps ``(B, 3, S, S)`` to
#: ``(B, out_chans, S / patch_size, S / patch_size)``. Its module provides
#: ``infer_config(state_dict) -> SamConfig | None`` for checkpoints of that encoder.
ENCODERS: dict[str, str] = {
    "vit": "napari_sam.model.image_encoder:ImageEncoderViT",
    "tiny_vit": "napari_sam.model.tiny_vit:TinyViT",
    "micro": "napari_sam.model.micro_encoder:MicroEncoder",
}


def encoder_class(name: str) -> type[nn.Module]:
    """The image encoder class registered as ``name`` in :data:`ENCODERS`."""
    import importlib

    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known: {sorted(ENCODERS)}")
    module, cls = ENCODERS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_image_encoder(config: SamConfig) -> nn.Module:
    """The image encoder named by ``config.encoder``."""
    return encoder_class(config.encoder)(
        img_size=config.img_size,
        patch_size=config.patch_size,
        out_chans=config.prompt_embed_dim,
        **config.encoder_options,
    )


def build_sam(config: SamConfig | str) -> Sam:
    """Build a randomly initialised :class:`Sam` in eval mode from a config or its name."""
    if isinstance(config, str):
        if config not in CONFIGS:
            raise ValueError(f"unknown architecture {config!r}; known: {sorted(CONFIGS)}")
        config = CONFIGS[config]
    e = config.embedding_size
    sam = Sam(
        image_encoder=build_image_encoder(config),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(e, e),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=config.prompt_embed_dim,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                num_heads=config.decoder_heads,
                mlp_dim=config.decoder_mlp_dim,
            ),
            num_multimask_outputs=config.num_multimask_outputs,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        config=config,
    )
    return sam.eval()


def with_encoder_options(config: SamConfig, **options) -> SamConfig:
    """A copy of ``config`` with some encoder options changed."""
    return replace(config, encoder_options={**config.encoder_options, **options})
