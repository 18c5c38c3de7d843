"""SAM's mask decoder restructured for one image embedding and many prompts.

SAM's mask decoder copies the ``(h*w, C)`` image tokens for every prompt and
projects them through full-width linear layers, although attention against a
handful of prompt tokens has rank at most ``heads * tokens``.
:class:`PreparedDecoder` evaluates the *same* function restructured:

* everything that depends only on the image embedding is computed once per
  embedding: the image tokens plus the no-mask dense embedding, and the first
  block's image-side projections (keys and values of the token->image
  attention, queries of the image->token attention); the projections of the
  positional encoding used by the later blocks are computed along with them;
* later projections of the image tokens are re-associated: ``(q W_k) K^T``
  instead of ``q (K W_k)^T`` and ``(P K) W_v`` instead of ``P (K W_v)``, and the
  image->token output projection is folded into the values, so each costs one
  ``(h*w) x (heads * tokens) x C`` product instead of ``(h*w) x C x C/2``;
* the decoder runs in two stages: the transformer and the IoU head for all
  prompts (:meth:`PreparedDecoder.transformer`), then the mask upscaling and
  hypernetwork heads only for the prompts and outputs asked for
  (:meth:`PreparedDecoder.raw_masks`), with the transposed convolutions as
  channel-last matrix products.

It handles any sparse prompt (points, boxes) without a mask prompt (a mask
prompt changes the image tokens of each prompt: use
:class:`~napari_sam.model.mask_decoder.MaskDecoder` then). The result equals
:class:`~napari_sam.model.mask_decoder.MaskDecoder` up to float rounding
(``tests/test_decoder_speedpath.py`` checks it against the official
``segment-anything`` package). :class:`napari_sam.predictor.Predictor` keeps
one per embedding for ``predict``; everything mode
(:mod:`napari_sam.everything._decoder`) builds on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


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
class DecoderOutput:
    """Transformer output for a batch of prompts (input to :meth:`PreparedDecoder.raw_masks`).

    Attributes
    ----------
    iou : ``(B, K)`` predicted IoU of the outputs ``outputs``
    mask_tokens : ``(B, K, C)`` the mask tokens of those outputs
    image_tokens : ``(B, T, C)`` the image tokens after the transformer
    outputs : the decoder output indices (0: single mask, 1-3: multimask) of the K columns
    """

    iou: Any
    mask_tokens: Any
    image_tokens: Any
    outputs: tuple[int, ...] = (1, 2, 3)


def supports_prepared_decoder(decoder: Any) -> bool:
    """True when ``decoder`` is structured like SAM's mask decoder (2x2 stride-2 upscaling)."""
    tr = getattr(decoder, "transformer", None)
    needed = ("iou_token", "mask_tokens", "output_upscaling", "output_hypernetworks_mlps")
    if tr is None or not all(hasattr(decoder, a) for a in needed):
        return False
    if not (hasattr(tr, "layers") and hasattr(tr, "final_attn_token_to_image")):
        return False
    seq = decoder.output_upscaling
    if len(seq) != 5:
        return False
    return all(
        tuple(getattr(seq[i], "kernel_size", ())) == (2, 2)
        and tuple(getattr(seq[i], "stride", ())) == (2, 2)
        for i in (0, 3)
    )


class PreparedDecoder:
    """SAM's mask decoder with the prompt-independent work done once for one embedding.

    Parameters
    ----------
    decoder : :class:`~napari_sam.model.mask_decoder.MaskDecoder`
    features : ``(1, C, e, e)`` image embedding
    image_pe : ``(1, C, e, e)`` positional encoding of the embedding grid
    no_mask_dense : ``(C,)``, ``(1, C, 1, 1)`` or ``(1, C, e, e)`` dense prompt
        embedding used when there is no mask prompt
    positional : another :class:`PreparedDecoder` of the same decoder and
        ``image_pe`` whose projections of the positional encoding (model
        constants) are reused instead of recomputed
    """

    def __init__(self, decoder, features, image_pe, no_mask_dense, positional=None) -> None:
        import torch

        if not supports_prepared_decoder(decoder):
            raise ValueError("the prepared decoder needs SAM's mask decoder structure")
        self.decoder = decoder
        tr = decoder.transformer
        pe = image_pe
        with torch.inference_mode():
            if tuple(features.shape[-3:]) != tuple(pe.shape[-3:]) or features.shape[0] != 1:
                raise ValueError(
                    f"embedding features have shape {tuple(features.shape)}; this model "
                    f"expects (1, {', '.join(map(str, pe.shape[-3:]))})"
                )
            features = features.to(device=pe.device, dtype=pe.dtype)
            c = features.shape[1]
            dense = no_mask_dense
            dense = dense.reshape(1, c, 1, 1) if dense.dim() == 1 else dense[:1]
            self.grid = tuple(features.shape[-2:])
            self.src = (features + dense).flatten(2).transpose(1, 2)[0].contiguous()
            self.pos = pe.flatten(2).transpose(1, 2)[0].contiguous()
            first = tr.layers[0]
            src_pe = self.src + self.pos
            t2i = first.cross_attn_token_to_image
            i2t = first.cross_attn_image_to_token
            self.k0 = _heads(t2i.k_proj(src_pe), t2i.num_heads)  # (H, T, d)
            self.v0 = _heads(t2i.v_proj(self.src), t2i.num_heads)
            self.q0 = _heads(i2t.q_proj(src_pe), i2t.num_heads)  # (H, T, d)
            if (
                positional is not None
                and positional.decoder is decoder
                and positional.image_pe is image_pe
            ):
                self.pos_k, self.pos_q = positional.pos_k, positional.pos_q
            else:
                self._project_positions(tr)
            self.image_pe = image_pe
            self._prepare_upscaling()

    def _project_positions(self, tr) -> None:
        """Projections of the positional encoding (no bias) for the later layers."""
        self.pos_k = {}
        self.pos_q = {}
        for i, layer in enumerate(tr.layers[1:], start=1):
            t2i = layer.cross_attn_token_to_image
            i2t = layer.cross_attn_image_to_token
            self.pos_k[i] = _heads(self.pos @ t2i.k_proj.weight.T, t2i.num_heads)
            self.pos_q[i] = _heads(self.pos @ i2t.q_proj.weight.T, i2t.num_heads)
        fin = tr.final_attn_token_to_image
        self.pos_k["final"] = _heads(self.pos @ fin.k_proj.weight.T, fin.num_heads)

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

    def transformer(
        self, sparse, outputs=(1, 2, 3), tokens_per_chunk: int = 2048
    ) -> DecoderOutput:
        """Run the two-way transformer and the IoU head for a batch of prompts.

        The image tokens of each prompt are visited once per transformer layer,
        ``tokens_per_chunk`` at a time: a chunk's image->token update, layer norm
        and the next token->image attention (an online softmax, as in flash
        attention) are done while the chunk is in the CPU cache.

        Parameters
        ----------
        sparse : ``(B, N, C)`` sparse prompt embeddings (from the prompt encoder)
        outputs : decoder outputs to keep: ``(1, 2, 3)`` the multimask candidates,
            ``(0,)`` the single-mask output
        tokens_per_chunk : image tokens per step of the passes over the image
        """
        import torch

        dec = self.decoder
        tr = dec.transformer
        layers = list(tr.layers)
        outputs = tuple(int(o) for o in outputs)
        with torch.inference_mode():
            b = sparse.shape[0]
            out_tokens = torch.cat([dec.iou_token.weight, dec.mask_tokens.weight], dim=0)
            tokens = torch.cat([out_tokens.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
            qpe = tokens
            queries = self._first_token_side(layers[0], tokens, qpe)
            keys: list = []  # the image tokens, chunk by chunk
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
                    # the final attention is per token: only the IoU token and the
                    # mask tokens of the outputs asked for are used after it
                    keep = [0] + [1 + o for o in outputs]
                    nq = queries[:, keep]
                    final = tr.final_attn_token_to_image
                    t2i = _TokenToImage(final, nq + qpe[:, keep], self.pos_k["final"])
                self._image_pass(i, keys, i2t, layer.norm4, t2i, tokens_per_chunk)
                attn_out = t2i.output()
                if i + 1 < len(layers):
                    queries = nxt.norm2(nq + attn_out)
                    queries = nxt.norm3(queries + nxt.mlp(queries))
                else:
                    queries = tr.norm_final_attn(nq + attn_out)
            iou = dec.iou_prediction_head(queries[:, 0])
        return DecoderOutput(
            iou=iou[:, list(outputs)],
            mask_tokens=queries[:, 1:],  # those of ``outputs``, in that order
            image_tokens=keys[0] if len(keys) == 1 else torch.cat(keys, dim=1),
            outputs=outputs,
        )

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

        Layer 0 reads the shared ``src`` and fills ``keys`` (a list of ``(B, S, C)``
        chunks); later layers update the chunks in place and replace them.
        """
        import torch

        total = self.src.shape[0]
        step = max(1, int(tokens_per_chunk))
        for c, t0 in enumerate(range(0, total, step)):
            sl = slice(t0, min(total, t0 + step))
            if i == 0:
                probs = i2t.probs(sl, None)
                b = probs.shape[0]
                residual = self.src[sl].expand(b, -1, -1)
                new = norm(torch.baddbmm(residual, probs.transpose(1, 2), i2t.values))
                keys.append(new)
            else:
                chunk = keys[c]
                probs = i2t.probs(sl, chunk)
                new = norm(chunk.baddbmm_(probs.transpose(1, 2), i2t.values))
                keys[c] = new
            t2i.update(sl, new)

    def raw_masks(self, stage: DecoderOutput, index=None, elements_per_chunk: int = 1 << 17):
        """Low-res logits of ``stage.outputs`` in *raw* pixel order, ``(B', K, 16 * e * e)``.

        The prompts are ``index`` (default all). Raw order is the order the
        upscaling produces: grid cell ``(i, j)``, then the 2x2 offsets of the
        first and of the second transposed convolution. Order-free statistics
        (areas, stability) can be computed on it directly; :meth:`to_spatial`
        rearranges the masks that are kept. The upscaling runs on about
        ``elements_per_chunk`` image-token values at a time, so that its
        intermediates stay in the CPU cache: whole rows of the embedding grid
        of one prompt (8 rows of SAM's 64 x 64 x 256 grid), or several prompts
        at once when one prompt's grid is smaller than that (the bundled
        model's 32 x 32 x 64 grid: 2 prompts), which saves per-call overhead.
        """
        import torch
        import torch.nn.functional as F

        dec = self.decoder
        with torch.inference_mode():
            tokens = stage.image_tokens if index is None else stage.image_tokens[index]
            mtok = stage.mask_tokens if index is None else stage.mask_tokens[index]
            b, t, c = tokens.shape
            h, w = self.grid
            c1, c2 = self.c1, self.c2
            mlps = dec.output_hypernetworks_mlps
            hyper = torch.stack(
                [mlps[o](mtok[:, k]) for k, o in enumerate(stage.outputs)], dim=1
            )  # (B, K, C2)
            k_out = hyper.shape[1]
            out = torch.empty((b, k_out, 16 * h * w), dtype=tokens.dtype, device=tokens.device)
            budget = max(1, int(elements_per_chunk))
            group = max(1, budget // (t * c))  # prompts per chunk
            rows = max(1, budget // (w * c)) if group == 1 else h  # grid rows per chunk
            for b0 in range(0, b, group):
                b1 = min(b, b0 + group)
                for t0 in range(0, t, rows * w):
                    t1 = min(t, t0 + rows * w)
                    x = tokens[b0:b1, t0:t1].reshape(-1, c)
                    up = torch.addmm(self.b1, x, self.w1)
                    up = F.layer_norm(
                        up.view(-1, c1), (c1,), self.norm.weight, self.norm.bias, self.norm.eps
                    )
                    up = self.act2(torch.addmm(self.b2, self.act1(up), self.w2))
                    up = up.view(b1 - b0, -1, c2).transpose(1, 2)  # (g, C2, 16 * S)
                    out[b0:b1, :, 16 * t0 : 16 * t1] = torch.bmm(hyper[b0:b1], up)
            return out

    def _order(self, inverse: bool = False):
        """Index mapping raw order to image layout (or back), computed once per grid."""
        import torch

        if getattr(self, "_spatial_index", None) is None:
            h, w = self.grid
            x = torch.arange(16 * h * w).reshape(h, w, 2, 2, 2, 2)  # (i, j, a, c, a2, c2)
            order = x.permute(0, 2, 4, 1, 3, 5).reshape(-1)  # (i, a, a2, j, c, c2)
            self._spatial_index = order.to(self.src.device)
            self._raw_index = torch.argsort(order).to(self.src.device)
        return self._raw_index if inverse else self._spatial_index

    def to_spatial(self, raw):
        """Raw-order logits ``(..., 16 * e * e)`` -> ``(..., 4e, 4e)`` image layout."""
        h, w = self.grid
        lead = raw.shape[:-1]
        flat = raw.reshape(-1, 16 * h * w).index_select(1, self._order())
        return flat.reshape(*lead, 4 * h, 4 * w)

    def to_raw(self, spatial):
        """Inverse of :meth:`to_spatial`: ``(..., 4e, 4e)`` -> ``(..., 16 * e * e)``."""
        h, w = self.grid
        lead = spatial.shape[:-2]
        flat = spatial.reshape(-1, 16 * h * w).index_select(1, self._order(inverse=True))
        return flat.reshape(*lead, 16 * h * w)

    def masks(self, stage: DecoderOutput, index=None):
        """Low-res logits of ``stage.outputs`` ``(B', K, 4e, 4e)`` in image layout."""
        return self.to_spatial(self.raw_masks(stage, index))
