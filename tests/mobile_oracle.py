"""MobileSAM (PyPI ``mobilesam-mirror==1.0.0``, import name ``mobile_sam``) as a test oracle.

The package declares no dependencies but imports ``timm`` (four small helpers in
``tiny_vit_sam.py``) and ``torchvision`` (resize and NMS). Neither is installed
here, so :func:`mobile_sam` installs minimal stand-ins in ``sys.modules`` (only
when the real module is missing or broken) before importing the package:
``tests/oracle.py``'s torchvision stand-in and, for timm, ``DropPath`` (only
built for a drop-path rate > 0, which SAM's vit_t does not use),
``to_2tuple``, ``trunc_normal_`` and ``register_model``.
"""

from __future__ import annotations

import importlib
import importlib.util

import torch
from torch import nn

from oracle import _install_torchvision_standin, install_standin


class _DropPath(nn.Module):
    """Stochastic depth (identity in eval mode), as timm's ``DropPath``."""

    def __init__(self, drop_prob: float | None = None) -> None:
        super().__init__()
        self.drop_prob = drop_prob or 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def _to_2tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


def _trunc_normal_(tensor: torch.Tensor, mean=0.0, std=1.0, a=-2.0, b=2.0) -> torch.Tensor:
    return nn.init.trunc_normal_(tensor, mean, std, a, b)


def _register_model(fn):
    return fn


def _install_timm_standin() -> None:
    install_standin(
        {
            "timm": {},
            "timm.models": {},
            "timm.models.layers": {
                "DropPath": _DropPath,
                "to_2tuple": _to_2tuple,
                "trunc_normal_": _trunc_normal_,
            },
            "timm.models.registry": {"register_model": _register_model},
        }
    )


def available() -> bool:
    """Whether ``mobile_sam`` (``pip install mobilesam-mirror==1.0.0``) is installed."""
    return importlib.util.find_spec("mobile_sam") is not None


def mobile_sam():
    """The imported ``mobile_sam`` package (ImportError if it is not installed)."""
    _install_torchvision_standin()
    _install_timm_standin()
    return importlib.import_module("mobile_sam")


def build_mobile_sam_vit_t():
    """MobileSAM's own ``vit_t`` SAM, randomly initialised, in eval mode."""
    return mobile_sam().build_sam_vit_t(checkpoint=None).eval()


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every float parameter and buffer non-trivial random values (in place).

    Default initialisation leaves many tensors at 0 or 1 (norms, BatchNorm
    statistics, attention biases), which would hide errors in the code that
    uses them. BatchNorm running variances stay positive; norm weights near 1.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.randn(tensor.shape, generator=gen)
            parts = name.split(".")
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=gen))
            elif name.endswith("running_mean"):
                tensor.copy_(0.1 * noise)
            elif tensor.ndim == 1 and ("norm" in name or "bn" in parts or "neck" in parts):
                tensor.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
            else:
                fan = tensor[0].numel() if tensor.ndim > 1 else 1
                tensor.copy_(noise / max(1.0, fan) ** 0.5)
    return model
