"""Initializations that make training from scratch feasible on a CPU.

A multi-scale random Fourier position encoding (:func:`init_positional_encoding`)
and the decoder's cross-attention started as position matching
(:func:`init_decoder_attention`). Used only when a run starts from scratch
(not for a fine-tuning stage).
"""

from __future__ import annotations

import numpy as np

__all__ = ["init_decoder_attention", "init_positional_encoding"]


def init_positional_encoding(model, scales: tuple[float, float], gen) -> None:
    """Redraw the prompt encoder's random Fourier basis with multi-scale frequencies.

    SAM draws the ``(2, C/2)`` basis from N(0, 1), i.e. at most a few periods per
    image side, too coarse to tell apart objects a few percent of the image wide.
    Each column is scaled here by a factor log-uniform in ``scales``. The basis
    is a buffer of the state dict, so inference uses exactly the trained one.
    """
    import torch

    buf = model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    lo, hi = (float(v) for v in scales)
    if not 0 < lo <= hi:
        raise ValueError(f"pe_scales must satisfy 0 < low <= high, got {scales}")
    g = torch.randn(buf.shape, generator=gen)
    u = torch.rand(buf.shape[1], generator=gen)
    factor = torch.exp(torch.log(torch.tensor(lo)) + u * (np.log(hi) - np.log(lo)))
    with torch.no_grad():
        buf.copy_((g * factor).to(buf.device))


def init_decoder_attention(model, beta: float = 2.0) -> None:
    """Start the decoder's image/token cross-attention as position matching.

    Each head's query and key projections of the token->image and image->token
    attentions are set to ``beta`` times a selection of sin/cos pairs of the
    random Fourier position encoding (a few frequencies per head, spread from
    low to high). The attention logit between an image location ``x`` and a
    prompt at ``p`` then starts as ``beta**2 * sum_j cos(w_j . (x - p))`` (plus
    content terms): a kernel peaked at the prompt. Trained from random
    projections, SAM's decoder needs hundreds of steps on a plateau to discover
    this; starting from it shortens the plateau (the weights stay free to change).
    """
    import torch

    pe = model.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix  # (2, F)
    dim = model.prompt_encoder.embed_dim
    n_freq = pe.shape[1]
    order = torch.argsort(pe.norm(dim=0))  # low to high frequency
    tr = model.mask_decoder.transformer
    modules = [tr.final_attn_token_to_image]
    for layer in tr.layers:
        modules += [layer.cross_attn_token_to_image, layer.cross_attn_image_to_token]
    for att in modules:
        inner, heads = att.internal_dim, att.num_heads
        head_dim = inner // heads
        sel = torch.zeros(inner, dim)
        for h in range(heads):
            for i, j in enumerate(order[h::heads][: head_dim // 2].tolist()):
                sel[h * head_dim + 2 * i, j] = 1.0
                sel[h * head_dim + 2 * i + 1, n_freq + j] = 1.0
        with torch.no_grad():
            for proj in (att.q_proj, att.k_proj):
                proj.weight.copy_(beta * sel)
                proj.bias.zero_()
