"""Int8 image encoder: the linear layers with dynamically quantized int8 weights.

:func:`quantize_image_encoder` returns a copy of an image encoder whose
``nn.Linear`` layers run as int8 matrix products (weights quantized once,
per tensor; activations quantized per call), through PyTorch's fbgemm/oneDNN
kernels, which use AVX512-VNNI where the CPU has it. Attention, layer norms,
convolutions and everything else stay in float32.

This is an approximation: on random-weight SAM models the embeddings differ
from float32 ones by about 1% (relative L2) and the masks agree with float32
masks at IoU >= 0.98 (``tests/test_encoder_speedpath.py``); see
``docs/benchmarks.md`` for what it gains. CPU only.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn


def quantize_image_encoder(encoder: nn.Module) -> nn.Module:
    """An int8 copy of ``encoder`` (its ``nn.Linear`` layers dynamically quantized).

    Parameters
    ----------
    encoder : an image encoder on the CPU (left unchanged)

    Returns
    -------
    A new module, in eval mode, computing the same function approximately.

    Raises
    ------
    ValueError
        If ``encoder`` is not on the CPU (the quantized kernels are CPU only).
    """
    from torch.ao.quantization import quantize_dynamic

    devices = {p.device.type for p in encoder.parameters()}
    if devices - {"cpu"}:
        raise ValueError(f"int8 quantization needs a CPU model, got parameters on {devices}")
    if "x86" in torch.backends.quantized.supported_engines:
        torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        # quantize_dynamic is deprecated in favour of torchao, which is not a dependency
        warnings.simplefilter("ignore")
        quantized = quantize_dynamic(copy.deepcopy(encoder), {nn.Linear}, dtype=torch.qint8)
    return quantized.eval()
