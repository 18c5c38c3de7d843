"""Decoding many single-point prompts against one embedding, cheaply and exactly.

SAM's mask decoder copies the ``(h*w, C)`` image tokens for every prompt and
projects them through full-width linear layers, although attention against a
handful of prompt tokens has rank at most ``heads * tokens``. For the
"everything" grid (thousands of single-point prompts, no mask prompt) this
module evaluates the *same* function restructured:

* the first block's image-side projections (keys and values of the
  token->image attention, queries of the image->token attention) do not depend
  on the prompt and are computed once per embedding;
* later projections of the image tokens are re-associated: ``(q W_k) K^T``
  instead of ``q (K W_k)^T`` and ``(P K) W_v`` instead of ``P (K W_v)``, and the
  image->token output projection is folded into the values, so each costs one
  ``(h*w) x (heads * tokens) x C`` product instead of ``(h*w) x C x C/2``;
* the decoder runs in two stages: the transformer and the IoU head for all
  prompts, then the mask upscaling only for prompts with a candidate whose
  predicted IoU passes the threshold (the upscaling is about half the cost).

The result equals :meth:`napari_sam.predictor.Predictor.predict_batch` up to
float rounding (verified in ``tests/test_everything.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def supports_fast_decoder(predictor: Any) -> bool:
    """True for predictors wrapping this package's :class:`~napari_sam.model.sam.Sam`."""
    model = getattr(predictor, "model", None)
    if model is None or not hasattr(predictor, "upscale"):
        return False
    dec = getattr(model, "mask_decoder", None)
    tr = getattr(dec, "transformer", None)
    needed = ("iou_token", "mask_tokens", "output_upscaling", "output_hypernetworks_mlps")
    return (
        tr is not None
        and all(hasattr(dec, a) for a in needed)
        and hasattr(tr, "layers")
        and hasattr(tr, "final_attn_token_to_image")
        and hasattr(model, "prompt_encoder")
        and getattr(dec, "num_multimask_outputs", 0) == 3
    )


def _heads(x, num_heads: int):
    """``(..., n, Ci)`` -> ``(..., H, n, d)``."""
    *lead, n, c = x.shape
    return x.reshape(*lead, n, num_heads, c // num_heads).transpose(-2, -3)


def _merge(x):
    """``(..., H, n, d)`` -> ``(..., n, H*d)``."""
    *lead, h, n, d = x.shape
    return x.transpose(-2, -3).reshape(*lead, n, h * d)


def _fold(proj, token_heads):
    """Fold projected prompt tokens through the projection ``proj`` of the image tokens.

    For prompt-token heads ``t`` ``(B, H, n, d)`` and image tokens ``x``, the
    attention logits ``t_h . (W_h x + b_h)`` equal ``folded . x + offset``.
    Returns ``folded`` ``(B, H*n, C)`` and ``offset`` ``(B, H*n)``.
    """
    import torch

    b, heads, n, d = token_heads.shape
    w = proj.weight.reshape(heads, d, -1)  # (H, d, C)
    folded = torch.einsum("bhnd,hdc->bhnc", token_heads, w).reshape(b, heads * n, -1)
    offset = torch.einsum("bhnd,hd->bhn", token_heads, proj.bias.reshape(heads, d))
    return folded, offset.reshape(b, heads * n)


class _ImageToToken:
    """Token side of an image->token attention, folded for chunked evaluation.

    The image tokens ``x`` (+ pos) attend to ``n`` prompt tokens per head; the
    update is ``probs^T (B, S, H*n) @ values (B, H*n, C)`` with the output
    projection and its bias folded into ``values`` (each head's weights sum to 1).
    Logits are kept as ``(B, H*n, S)`` so that the softmax over a head's ``n``
    tokens runs along contiguous rows of image tokens.
    """

    def __init__(self, attn, queries, qpe) -> None:
        import torch

        self.attn = attn
        self.heads = attn.num_heads
        b, n, _ = queries.shape
        self.b, self.n = b, n
        self.k = _heads(attn.k_proj(queries + qpe), self.heads)  # (B, H, n, d)
        self.d = self.k.shape[-1]
        self.scale = 1.0 / math.sqrt(self.d)
        v = _heads(attn.v_proj(queries), self.heads)
        wo = attn.out_proj.weight.reshape(-1, self.heads, self.d)  # (C, H, d)
        values = torch.einsum("bhnd,chd->bhnc", v, wo).reshape(b, self.heads * n, -1)
        self.values = values + attn.out_proj.bias / self.heads
        self.full = None
        self.folded = None
        self.bias = None

    def _per_head(self, shared):
        """``(H, T, d)`` shared image queries x prompt keys -> ``(B, H*n, T)``."""
        kk = self.k.transpose(0, 1).reshape(self.heads, self.b * self.n, self.d)
        out = (kk @ shared.transpose(1, 2)).view(self.heads, self.b, self.n, -1)
        return out.transpose(0, 1).reshape(self.b, self.heads * self.n, -1)

    def set_shared_queries(self, q0) -> None:
        """First block: the image queries ``q0`` ``(H, T, d)`` are the same for all prompts."""
        self.full = self._per_head(q0).mul_(self.scale)

    def set_keys_folding(self, pos_q) -> None:
        """Later blocks: per-prompt image tokens, projected through folded weights."""
        folded, offset = _fold(self.attn.q_proj, self.k)  # (B, H*n, C), (B, H*n)
        self.folded = folded * self.scale
        self.bias = (self._per_head(pos_q) + offset[..., None]).mul_(self.scale)

    def probs(self, sl: slice, keys_chunk):
        """``(B, H*n, S)`` softmax over each head's prompt tokens, for image tokens ``sl``."""
        import torch

        if keys_chunk is None:
            logits = self.full[:, :, sl].clone()
        else:
            logits = torch.baddbmm(self.bias[:, :, sl], self.folded, keys_chunk.transpose(1, 2))
        x = logits.view(self.b, self.heads, self.n, -1)
        x.sub_(x.amax(dim=2, keepdim=True)).exp_()
        x.div_(x.sum(dim=2, keepdim=True))
        return logits


class _TokenToImage:
    """Prompt tokens attend to per-prompt image tokens seen chunk by chunk (online softmax)."""

    def __init__(self, attn, queries_with_pe, pos_k) -> None:
        heads = attn.num_heads
        b, n, _ = queries_with_pe.shape
        q = _heads(attn.q_proj(queries_with_pe), heads)  # (B, H, n, d)
        d = q.shape[-1]
        scale = 1.0 / math.sqrt(d)
        folded, offset = _fold(attn.k_proj, q)
        self.attn, self.heads, self.b, self.n, self.d = attn, heads, b, n, d
        self.folded = folded * scale  # (B, H*n, C)
        pos_term = q.transpose(0, 1).reshape(heads, b * n, d) @ pos_k.transpose(1, 2)
        pos_term = pos_term.view(heads, b, n, -1).transpose(0, 1).reshape(b, heads * n, -1)
        self.bias = (pos_term + offset[..., None]).mul_(scale)  # (B, H*n, T)
        self.max = None
        self.sum = None
        self.acc = None

    def update(self, sl: slice, keys_chunk) -> None:
        """Add the image tokens ``sl`` (``keys_chunk`` ``(B, S, C)``) to the attention."""
        import torch

        logits = torch.baddbmm(self.bias[:, :, sl], self.folded, keys_chunk.transpose(1, 2))
        chunk_max = logits.amax(dim=-1, keepdim=True)
        if self.max is None:
            new_max = chunk_max
        else:
            new_max = torch.maximum(self.max, chunk_max)
            correction = (self.max - new_max).exp_()
            self.sum.mul_(correction)
            self.acc.mul_(correction)
        p = logits.sub_(new_max).exp_()
        if self.acc is None:
            self.sum = p.sum(dim=-1, keepdim=True)
            self.acc = torch.bmm(p, keys_chunk)
        else:
            self.sum += p.sum(dim=-1, keepdim=True)
            self.acc.baddbmm_(p, keys_chunk)
        self.max = new_max

    def output(self):
        """The attention output ``(B, n, C)`` (after ``out_proj``)."""
        import torch

        pv = (self.acc / self.sum).reshape(self.b, self.heads, self.n, -1)
        wv = self.attn.v_proj.weight.reshape(self.heads, self.d, -1)
        out = torch.einsum("bhnc,hdc->bhnd", pv, wv)
        out = out + self.attn.v_proj.bias.reshape(self.heads, 1, self.d)
        return self.attn.out_proj(_merge(out))


@dataclass
class Stage1:
    """Transformer output for a batch of prompts (input to :meth:`PointDecoder.masks`)."""

    iou: Any  # (B, 3) torch
    mask_tokens: Any  # (B, 3, C) torch, multimask tokens only
    image_tokens: Any  # (B, T, C) torch


class PointDecoder:
    """Single-point prompts -> SAM's 3 multimask candidates, for one embedding.

    Parameters
    ----------
    model : :class:`napari_sam.model.sam.Sam`
    features : ``(1, C, e, e)`` image embedding (``Embedding.features``)
    """

    def __init__(self, model, features) -> None:
        import torch

        self.model = model
        self.decoder = model.mask_decoder
        tr = self.decoder.transformer
        with torch.inference_mode():
            pe = model.prompt_encoder.get_dense_pe()
            _, dense = model.prompt_encoder(None, None, None)
            if tuple(features.shape[-3:]) != tuple(pe.shape[-3:]) or features.shape[0] != 1:
                raise ValueError(
                    f"embedding features have shape {tuple(features.shape)}; this model "
                    f"expects (1, {', '.join(map(str, pe.shape[-3:]))})"
                )
            features = features.to(device=pe.device, dtype=pe.dtype)
            self.grid = tuple(features.shape[-2:])
            self.src = (features + dense[:1]).flatten(2).transpose(1, 2)[0].contiguous()
            self.pos = pe.flatten(2).transpose(1, 2)[0].contiguous()
            first = tr.layers[0]
            src_pe = self.src + self.pos
            t2i = first.cross_attn_token_to_image
            i2t = first.cross_attn_image_to_token
            self.k0 = _heads(t2i.k_proj(src_pe), t2i.num_heads)  # (H, T, d)
            self.v0 = _heads(t2i.v_proj(self.src), t2i.num_heads)
            self.q0 = _heads(i2t.q_proj(src_pe), i2t.num_heads)  # (H, T, d)
            # shared projections of the positional encoding (no bias) for later layers
            self.pos_k = {}
            self.pos_q = {}
            for i, layer in enumerate(tr.layers[1:], start=1):
                t2i = layer.cross_attn_token_to_image
                i2t = layer.cross_attn_image_to_token
                self.pos_k[i] = _heads(self.pos @ t2i.k_proj.weight.T, t2i.num_heads)
                self.pos_q[i] = _heads(self.pos @ i2t.q_proj.weight.T, i2t.num_heads)
            fin = tr.final_attn_token_to_image
            self.pos_k["final"] = _heads(self.pos @ fin.k_proj.weight.T, fin.num_heads)
            self._prepare_upscaling()

    def _prepare_upscaling(self) -> None:
        """ConvTranspose2d(k=2, s=2) layers as channel-last matrices."""
        seq = self.decoder.output_upscaling
        conv1, norm, act1, conv2, act2 = seq[0], seq[1], seq[2], seq[3], seq[4]
        for conv in (conv1, conv2):
            if tuple(conv.kernel_size) != (2, 2) or tuple(conv.stride) != (2, 2):
                raise ValueError("the fast decoder needs 2x2, stride-2 upscaling convolutions")
        c1 = conv1.weight.shape[1]
        c2 = conv2.weight.shape[1]
        # (Cin, Cout, a, b) -> (Cin, a, b, Cout) so the output is (..., a, b, Cout)
        self.w1 = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.weight.shape[0], 4 * c1)
        self.b1 = conv1.bias.repeat(4)
        self.w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
        self.b2 = conv2.bias.repeat(4)
        self.c1, self.c2 = c1, c2
        self.norm, self.act1, self.act2 = norm, act1, act2

    def transformer(self, coords, labels, tokens_per_chunk: int = 1024) -> Stage1:
        """Run the prompt encoder, the two-way transformer and the IoU head.

        The image tokens of each prompt are visited once per transformer layer,
        ``tokens_per_chunk`` at a time: a chunk's image->token update, layer norm
        and the next token->image attention (an online softmax, as in flash
        attention) are done while the chunk is in the CPU cache.

        Parameters
        ----------
        coords : ``(B, N, 2)`` torch float, SAM ``(x, y)`` input-frame pixels
        labels : ``(B, N)`` torch int64, 1 positive / 0 negative
        tokens_per_chunk : image tokens per step of the passes over the image
        """
        import torch

        dec = self.decoder
        tr = dec.transformer
        layers = list(tr.layers)
        with torch.inference_mode():
            sparse, _ = self.model.prompt_encoder((coords, labels), None, None)
            b = sparse.shape[0]
            out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
            tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
            qpe = tokens
            queries = self._first_token_side(layers[0], tokens, qpe)
            keys = torch.empty((b, *self.src.shape), dtype=self.src.dtype, device=self.src.device)
            for i, layer in enumerate(layers):
                i2t = _ImageToToken(layer.cross_attn_image_to_token, queries, qpe)
                if i == 0:
                    i2t.set_shared_queries(self.q0)
                else:
                    i2t.set_keys_folding(self.pos_q[i])
                if i + 1 < len(layers):
                    nxt = layers[i + 1]
                    q = queries + qpe
                    nq = nxt.norm1(queries + nxt.self_attn(q, q, queries))
                    t2i = _TokenToImage(nxt.cross_attn_token_to_image, nq + qpe, self.pos_k[i + 1])
                else:
                    nq = queries
                    t2i = _TokenToImage(tr.final_attn_token_to_image, nq + qpe, self.pos_k["final"])
                self._image_pass(i, keys, i2t, layer.norm4, t2i, tokens_per_chunk)
                attn_out = t2i.output()
                if i + 1 < len(layers):
                    queries = nxt.norm2(nq + attn_out)
                    queries = nxt.norm3(queries + nxt.mlp(queries))
                else:
                    queries = tr.norm_final_attn(nq + attn_out)
            iou = dec.iou_prediction_head(queries[:, 0])
            mask_tokens = queries[:, 1 : 1 + dec.num_mask_tokens]
        return Stage1(iou=iou[:, 1:], mask_tokens=mask_tokens[:, 1:], image_tokens=keys)

    def _first_token_side(self, layer, tokens, qpe):
        """Prompt tokens through the first block up to its image->token attention."""
        import torch

        b, n, _ = tokens.shape
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(tokens, tokens, tokens)
        else:
            q = tokens + qpe
            queries = tokens + layer.self_attn(q, q, tokens)
        queries = layer.norm1(queries)
        t2i = layer.cross_attn_token_to_image
        heads = t2i.num_heads
        qh = _heads(t2i.q_proj(queries + qpe), heads)  # (B, H, n, d)
        d = qh.shape[-1]
        qh = qh.transpose(0, 1).reshape(heads, b * n, d)
        att = torch.softmax((qh @ self.k0.transpose(-1, -2)) / math.sqrt(d), -1)
        out = (att @ self.v0).view(heads, b, n, d).permute(1, 2, 0, 3)
        queries = layer.norm2(queries + t2i.out_proj(out.reshape(b, n, heads * d)))
        return layer.norm3(queries + layer.mlp(queries))

    def _image_pass(self, i, keys, i2t, norm, t2i, tokens_per_chunk: int) -> None:
        """One pass over the image tokens: update them (layer ``i``) and attend to them.

        Layer 0 reads the shared ``src``; later layers read and overwrite ``keys``.
        """
        import torch

        total = self.src.shape[0]
        step = max(1, int(tokens_per_chunk))
        for t0 in range(0, total, step):
            sl = slice(t0, min(total, t0 + step))
            residual = self.src[sl] if i == 0 else keys[:, sl]
            probs = i2t.probs(sl, None if i == 0 else keys[:, sl])
            new = norm(torch.baddbmm(residual, probs.transpose(1, 2), i2t.values))
            keys[:, sl] = new
            t2i.update(sl, new)

    def raw_masks(self, stage: Stage1, index=None, rows_per_chunk: int = 8):
        """Low-res multimask logits in *raw* pixel order, ``(B', 3, 16 * e * e)``.

        The prompts are ``index`` (default all). Raw order is the order the
        upscaling produces: grid cell ``(i, j)``, then the 2x2 offsets of the
        first and of the second transposed convolution. Order-free statistics
        (areas, stability) can be computed on it directly; :meth:`to_spatial`
        rearranges the masks that are kept. The upscaling runs on
        ``rows_per_chunk`` rows of the embedding grid at a time so that its
        intermediates stay in the CPU cache.
        """
        import torch
        import torch.nn.functional as F

        dec = self.decoder
        with torch.inference_mode():
            tokens = stage.image_tokens if index is None else stage.image_tokens[index]
            mtok = stage.mask_tokens if index is None else stage.mask_tokens[index]
            b = tokens.shape[0]
            h, w = self.grid
            c1, c2 = self.c1, self.c2
            hyper = torch.stack(
                [dec.output_hypernetworks_mlps[k + 1](mtok[:, k]) for k in range(3)], dim=1
            )  # (B, 3, C2)
            out = torch.empty((b, 3, 16 * h * w), dtype=tokens.dtype, device=tokens.device)
            step = max(1, int(rows_per_chunk)) * w
            for bi in range(b):
                for t0 in range(0, h * w, step):
                    t1 = min(h * w, t0 + step)
                    up = torch.addmm(self.b1, tokens[bi, t0:t1], self.w1)
                    up = F.layer_norm(
                        up.view(-1, c1), (c1,), self.norm.weight, self.norm.bias, self.norm.eps
                    )
                    up = self.act2(torch.addmm(self.b2, self.act1(up), self.w2))
                    out[bi, :, 16 * t0 : 16 * t1] = hyper[bi] @ up.view(-1, c2).T
            return out

    def to_spatial(self, raw):
        """Raw-order logits ``(..., 16 * e * e)`` -> ``(..., 4e, 4e)`` image layout."""
        h, w = self.grid
        lead = raw.shape[:-1]
        x = raw.reshape(-1, h, w, 2, 2, 2, 2)  # (n, i, j, a, c, a2, c2)
        x = x.permute(0, 1, 3, 5, 2, 4, 6)  # (n, i, a, a2, j, c, c2)
        return x.reshape(*lead, 4 * h, 4 * w)

    def to_raw(self, spatial):
        """Inverse of :meth:`to_spatial`: ``(..., 4e, 4e)`` -> ``(..., 16 * e * e)``."""
        h, w = self.grid
        lead = spatial.shape[:-2]
        x = spatial.reshape(-1, h, 2, 2, w, 2, 2)  # (n, i, a, a2, j, c, c2)
        x = x.permute(0, 1, 4, 2, 5, 3, 6)  # (n, i, j, a, c, a2, c2)
        return x.reshape(*lead, 16 * h * w)

    def masks(self, stage: Stage1, index=None):
        """Low-res multimask logits ``(B', 3, 4e, 4e)`` in image layout."""
        return self.to_spatial(self.raw_masks(stage, index))
