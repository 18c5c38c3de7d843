"""The official ``segment-anything`` package as a test oracle.

It imports a few torchvision functions at import time; the CPU torch used here
has no working torchvision, so :func:`official` installs a minimal stand-in
for exactly those functions in ``sys.modules`` (only when torchvision is
missing or broken) before importing the package.
"""

from __future__ import annotations

import functools
import importlib
import sys
import types
from functools import partial

import numpy as np
import torch


def _to_pil_image(image):
    from PIL import Image

    return Image.fromarray(np.asarray(image))


def _resize(image, size):
    """torchvision's resize of a PIL image to ``(h, w)``: PIL bilinear (antialiased)."""
    from PIL import Image

    h, w = size
    return image.resize((w, h), Image.BILINEAR)


def _box_area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    order = torch.argsort(scores, descending=True)
    keep = []
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    area = _box_area(boxes)
    for idx in order.tolist():
        if suppressed[idx]:
            continue
        keep.append(idx)
        x0 = torch.maximum(boxes[idx, 0], boxes[:, 0])
        y0 = torch.maximum(boxes[idx, 1], boxes[:, 1])
        x1 = torch.minimum(boxes[idx, 2], boxes[:, 2])
        y1 = torch.minimum(boxes[idx, 3], boxes[:, 3])
        inter = (x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)
        iou = inter / (area[idx] + area - inter)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long)


def _batched_nms(boxes, scores, idxs, iou_threshold):
    offset = idxs.to(boxes) * (boxes.max() + 1)
    return _nms(boxes + offset[:, None], scores, iou_threshold)


def install_standin(modules: dict[str, dict[str, object]]) -> None:
    """Put stand-in modules in ``sys.modules`` unless the real ones import.

    ``modules`` maps dotted module names (parents before children, the first
    being the package) to the attributes each stand-in gets; each child module
    is also set as an attribute of its parent. A broken real package is purged
    first.
    """
    root = next(iter(modules))
    try:
        for name in modules:
            importlib.import_module(name)
        return
    except Exception:
        for name in [m for m in sys.modules if m == root or m.startswith(root + ".")]:
            del sys.modules[name]
    made: dict[str, types.ModuleType] = {}
    for name, attrs in modules.items():
        module = made[name] = types.ModuleType(name)
        for key, value in attrs.items():
            setattr(module, key, value)
        parent, _, child = name.rpartition(".")
        if parent in made:
            setattr(made[parent], child, module)
    sys.modules.update(made)


def _install_torchvision_standin() -> None:
    install_standin(
        {
            "torchvision": {},
            "torchvision.transforms": {},
            "torchvision.transforms.functional": {
                "resize": _resize,
                "to_pil_image": _to_pil_image,
            },
            "torchvision.ops": {},
            "torchvision.ops.boxes": {"batched_nms": _batched_nms, "box_area": _box_area},
        }
    )


def official():
    """The imported ``segment_anything`` package."""
    _install_torchvision_standin()
    return importlib.import_module("segment_anything")


def build_official(config):
    """An official ``Sam`` with the architecture of our :class:`SamConfig`."""
    official()
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    opts = config.encoder_options
    e = config.embedding_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=opts["depth"],
            embed_dim=opts["embed_dim"],
            img_size=config.img_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=opts["num_heads"],
            patch_size=config.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=list(opts["global_attn_indexes"]),
            window_size=opts["window_size"],
            out_chans=config.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=config.prompt_embed_dim,
            image_embedding_size=(e, e),
            input_image_size=(config.img_size, config.img_size),
            mask_in_chans=config.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=config.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=config.decoder_depth,
                embedding_dim=config.prompt_embed_dim,
                mlp_dim=config.decoder_mlp_dim,
                num_heads=config.decoder_heads,
            ),
            transformer_dim=config.prompt_embed_dim,
            iou_head_depth=config.iou_head_depth,
            iou_head_hidden_dim=config.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter and buffer non-trivial random values (in place).

    Default initialisation leaves many tensors at 0 or 1 (norms, rel-pos tables,
    positional embeddings), which would hide errors in the code that uses them.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen)
            if name.endswith("norm1.weight") or (".weight" in name and "norm" in name):
                tensor.copy_(1.0 + 0.1 * noise)
            else:
                fan = tensor[0].numel() if tensor.ndim > 1 else 1
                tensor.copy_(noise / max(1.0, fan) ** 0.5)
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 error of ``a`` against ``b``."""
    return float((a - b).norm() / b.norm())


@functools.cache
def make_pair(name: str, seed: int):
    """(ours, official) SAM models of architecture ``name`` with identical random weights."""
    from napari_sam.model.sam import CONFIGS, build_sam

    ours = randomize_(build_sam(name), seed=seed)
    theirs = build_official(CONFIGS[name])
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs
