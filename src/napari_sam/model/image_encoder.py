"""SAM's ViT image encoder: windowed and global attention with decomposed
relative positions, then a convolutional neck to a 256-channel embedding.

Parameter names follow the official checkpoints (``patch_embed.proj``,
``pos_embed``, ``blocks.N.attn.rel_pos_h`` ...), so they load with ``strict=True``.

Attention with the decomposed relative-position bias
``B[i, j] = Rh[i, h(j)] + Rw[i, w(j)]`` runs in chunks of query rows
(:func:`~napari_sam.model.vit_attention.decomposed_attention`): each chunk's
bias, scores and softmax live in one reused cache-sized buffer, so the full
``N x N`` score matrix of the global-attention blocks is never materialized and
nothing is copied per chunk.
Windowed blocks run their per-token layers (``qkv``, ``proj``) on the real tokens
only, not on the windows' zero padding.

In inference (no autograd, no autocast, plain ``nn.Linear`` layers) the blocks
update the token grid in place (:meth:`Block.forward_inference`): the residual
sums are accumulated by the ``proj`` and ``lin2`` matrix products themselves,
GELU runs in place, and the layer-norm, ``qkv`` and MLP outputs go to buffers
that every block reuses (:class:`Workspace`). The same arithmetic, but without
allocating ~1.8 GB of fresh, page-faulting memory per 1024 x 1024 embedding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from napari_sam.model.common import LayerNorm2d, MLPBlock
from napari_sam.model.encoder_buffers import Workspace, add_linear, linear, pack_linear_weight
from napari_sam.model.vit_attention import (
    augmented_attention,
    augmented_head_dim,
    decomposed_attention,
    from_windows,
    init_augmented_keys,
    relative_position_table,
    to_windows,
)
from napari_sam.model.vit_attention import window_partition as window_partition
from napari_sam.model.vit_attention import window_unpartition as window_unpartition

if TYPE_CHECKING:  # pragma: no cover
    from napari_sam.model.sam import SamConfig

class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: ``(B, 3, H, W)`` -> ``(B, H/p, W/p, C)``."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


class Attention(nn.Module):
    """Multi-head self-attention over a ``(B, H, W, C)`` token grid."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("input_size is required when use_rel_pos=True")
            self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
            self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        out = self.attend(qkv, h, w)  # (B, heads, h * w, head_dim)
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))

    def attend(self, qkv: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Attention of ``qkv`` ``(3, B, heads, h * w, head_dim)`` (any strides).

        Returns the heads' outputs, ``(B, heads, h * w, head_dim)``, before ``proj``.
        """
        _, b, heads, n, c = qkv.shape
        q, k, v = qkv.reshape(3, b * heads, n, c).unbind(0)  # one copy, then contiguous
        if not self.use_rel_pos:
            # 4D: the fused kernels need a heads axis (3D inputs take the slow path)
            qkv4 = (t.view(b, heads, n, c) for t in (q, k, v))
            return F.scaled_dot_product_attention(*qkv4, scale=self.scale)
        table_h = relative_position_table(h, h, self.rel_pos_h).to(q.dtype)  # (h, h, c)
        table_w = relative_position_table(w, w, self.rel_pos_w).to(q.dtype)  # (w, w, c)
        q_grid = q.view(b * heads, h, w, c)
        # bias_h[., i_h, i_w, j_h] = q[i] . Rh[i_h - j_h]; likewise bias_w over j_w.
        bias_h = torch.einsum("bhwc,hkc->bhwk", q_grid, table_h)
        bias_w = torch.einsum("bhwc,wkc->bhwk", q_grid, table_w)
        with torch.autocast(q.device.type, enabled=False):
            out = decomposed_attention(q, k, v, bias_h.to(q.dtype), bias_w.to(q.dtype), self.scale)
        return out.view(b, heads, n, c)


class Block(nn.Module):
    """Pre-norm transformer block; windowed attention when ``window_size > 0``.

    Windowed blocks compute the same thing as SAM's reference (zero-padded
    windows), but only for the real tokens where the operation is per token:
    ``qkv`` runs on the unpadded grid and the padding gets ``qkv``'s value for a
    zero token (its bias), and ``proj`` runs after the padding is cropped away.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        use_rel_pos: bool = False,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        attn_size = (window_size, window_size) if window_size > 0 else input_size
        self.attn = Attention(
            dim, num_heads=num_heads, qkv_bias=qkv_bias, use_rel_pos=use_rel_pos,
            input_size=attn_size,
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio))
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.window_size > 0:
            x = x + self.attn.proj(self._windowed_attention(self.norm1(x)))
        else:
            x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def has_plain_layers(self) -> bool:
        """True when the block's layers are the plain PyTorch ones the fused paths assume."""
        layers = (self.attn.qkv, self.attn.proj, self.mlp.lin1, self.mlp.lin2)
        if not all(type(m) is nn.Linear and m.bias is not None for m in layers):
            return False  # e.g. quantized layers (precision="int8")
        return (
            type(self.mlp.act) is nn.GELU
            and type(self.norm1) is nn.LayerNorm
            and type(self.norm2) is nn.LayerNorm
        )

    def supports_inference_path(self) -> bool:
        """True when :meth:`forward_inference` computes :meth:`forward` here and now."""
        return (
            self.has_plain_layers()
            and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled(self.attn.qkv.weight.device.type)
        )

    def forward_inference(self, x: torch.Tensor, workspace: Workspace) -> torch.Tensor:
        """:meth:`forward` updating ``x`` ``(B, H, W, C)`` (contiguous, owned) in place.

        Only valid when :meth:`supports_inference_path` is true; returns ``x``.
        """
        attn, mlp = self.attn, self.mlp
        b, h, w, c = x.shape
        flat = x.view(-1, c)
        normed = workspace.layer_norm("norm", flat, self.norm1)
        qkv = torch.addmm(
            attn.qkv.bias, normed, attn.qkv.weight.t(),
            out=workspace.get("qkv", (flat.shape[0], attn.qkv.weight.shape[0])),
        ).view(b, h, w, -1)
        if self.window_size > 0:
            heads_out = self._windowed_attention(None, qkv=qkv)  # (B, H, W, C), strided
        else:
            qkv5 = qkv.view(b, h * w, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
            heads_out = attn.attend(qkv5, h, w).transpose(1, 2)  # (B, H*W, heads, c)
        flat.addmm_(heads_out.reshape(-1, c), attn.proj.weight.t()).add_(attn.proj.bias)
        normed = workspace.layer_norm("norm", flat, self.norm2)
        hidden = torch.addmm(
            mlp.lin1.bias, normed, mlp.lin1.weight.t(),
            out=workspace.get("hidden", (flat.shape[0], mlp.lin1.weight.shape[0])),
        )
        torch.ops.aten.gelu_(hidden, approximate=mlp.act.approximate)
        flat.addmm_(hidden, mlp.lin2.weight.t()).add_(mlp.lin2.bias)
        return x

    def forward_low_precision(
        self, x: torch.Tensor, workspace: Workspace, weights: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """:meth:`forward` with everything in ``weights``' dtype (bfloat16).

        ``x`` ``(B, H, W, C)`` (contiguous, owned) is the residual stream, in that
        dtype like the products' outputs it is the sum of; the layer norms
        read it and write that dtype (statistics in float32). ``weights`` are
        this block's entries of :meth:`ImageEncoderViT.low_precision_weights`
        (the queries' rows of ``qkv`` already scaled, the relative-position
        tables divided by the scale); attention is one fused kernel call per
        block (:func:`augmented_attention`). Returns the new residual stream
        (``x`` itself, or a new tensor where oneDNN adds the residual).
        """
        attn, mlp = self.attn, self.mlp
        dtype = weights["qkv.bias"].dtype
        b, h, w, c = x.shape
        heads = attn.num_heads
        hc = c // heads
        flat = x.view(-1, c)
        n = flat.shape[0]
        normed = F.layer_norm(flat, (c,), self.norm1.weight, self.norm1.bias, self.norm1.eps)
        qkv_bias = weights["qkv.bias"]
        qkv = linear(normed, weights["qkv.weight"], qkv_bias).view(b, h, w, 3 * c)
        del normed
        ah, aw = (self.window_size,) * 2 if self.window_size > 0 else (h, w)
        rel = attn.use_rel_pos
        d = augmented_head_dim(hc, ah, aw) if rel else augmented_head_dim(hc, 0, 0)
        tables: tuple = (None, None)
        if rel:
            key = f"tables.{ah}.{aw}"
            if key + ".h" not in weights:  # kept; the queries are scaled: divide the tables
                for axis, size, rel_pos in (("h", ah, attn.rel_pos_h), ("w", aw, attn.rel_pos_w)):
                    table = relative_position_table(size, size, rel_pos) / attn.scale
                    weights[f"{key}.{axis}"] = table.to(dtype)
            tables = (weights[key + ".h"], weights[key + ".w"])

        def init(buffer):
            if rel:
                init_augmented_keys(buffer, hc, ah, aw)

        heads_out = workspace.get("heads", (n, c), dtype)
        if self.window_size > 0:
            ws = self.window_size
            nh, nw = -(-h // ws), -(-w // ws)
            buffer = workspace.prepared(
                "attn.windows", (3, b * nh * nw, heads, ws * ws, d), dtype, init
            )
            to_windows(qkv, ws, heads, lambda: qkv_bias, out=buffer)
            del qkv
            out = augmented_attention(buffer, hc, (ws, ws), *tables, 1.0)
            from_windows(out, h, w, heads_out.view(b, h, w, heads, hc))
        else:
            buffer = workspace.prepared("attn.global", (3, b, heads, h * w, d), dtype, init)
            buffer[..., :hc].copy_(qkv.view(b, h * w, 3, heads, hc).permute(2, 0, 3, 1, 4))
            del qkv
            out = augmented_attention(buffer, hc, (h, w), *tables, 1.0)
            heads_out.view(b, h * w, heads, hc).copy_(out.transpose(1, 2))
        del out
        flat = add_linear(flat, heads_out, weights["proj.weight"], weights["proj.bias"])
        normed = F.layer_norm(flat, (c,), self.norm2.weight, self.norm2.bias, self.norm2.eps)
        hidden = linear(normed, weights["lin1.weight"], weights["lin1.bias"])
        del normed
        torch.ops.aten.gelu_(hidden, approximate=mlp.act.approximate)
        flat = add_linear(flat, hidden, weights["lin2.weight"], weights["lin2.bias"])
        return flat.view(b, h, w, c)

    def _windowed_attention(self, x: torch.Tensor | None, qkv=None) -> torch.Tensor:
        """Windowed attention of ``x`` ``(B, h, w, C)``, before ``proj``: ``(B, h, w, C)``.

        ``qkv`` (``(B, h, w, 3C)``) may be given instead of ``x``.
        """
        attn, ws = self.attn, self.window_size
        if qkv is None:
            qkv = attn.qkv(x)  # (B, h, w, 3C)
        b, h, w, c3 = qkv.shape
        nh, nw = -(-h // ws), -(-w // ws)

        def padding():  # qkv of a zero token, only computed when windows are padded
            return attn.qkv(qkv.new_zeros(1, c3 // 3))[0]

        windows = to_windows(qkv, ws, attn.num_heads, padding)
        out = attn.attend(windows, ws, ws)  # (B * nh * nw, heads, ws * ws, c)
        out = out.view(b, nh, nw, attn.num_heads, ws, ws, -1).permute(0, 1, 4, 2, 5, 3, 6)
        return out.reshape(b, nh * ws, nw * ws, -1)[:, :h, :w]


def _cpu_autocast_dtype() -> torch.dtype | None:
    """The dtype of CPU autocast if it is on, else None (any torch >= 2.1)."""
    if hasattr(torch, "get_autocast_dtype"):  # torch >= 2.4
        return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
    return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None


class _DerivedCache:
    """Values derived from a module's parameters, kept on the module but never copied.

    ``copy.deepcopy`` and pickling of the module give an empty cache (oneDNN's
    packed weights have no storage to copy; they are made again on first use).
    """

    def __init__(self) -> None:
        self.key: object = None
        self.value: object = None

    def __deepcopy__(self, memo) -> _DerivedCache:
        return _DerivedCache()

    def __reduce__(self):
        return (_DerivedCache, ())


class ImageEncoderViT(nn.Module):
    """ViT backbone: ``(B, 3, S, S)`` normalized image -> ``(B, out_chans, S/16, S/16)``."""

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                use_rel_pos=use_rel_pos,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def low_precision_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        """The dtype :meth:`forward` runs :meth:`forward_low_precision` in, or None.

        bfloat16 when ``x`` is on the CPU, autograd is off and bfloat16 autocast
        is on (``Predictor(precision="bfloat16")`` or ``"auto"`` on CPUs with
        bfloat16 units), and the blocks have plain layers.
        """
        if (
            x.device.type != "cpu"
            or torch.is_grad_enabled()
            or _cpu_autocast_dtype() != torch.bfloat16
            or not self.blocks
            or not all(block.has_plain_layers() for block in self.blocks)
        ):
            return None
        return torch.bfloat16

    def low_precision_weights(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The weights :meth:`forward_low_precision` uses, in ``dtype``, made once and kept.

        Keys are parameter names (linear and convolution weights and biases);
        the linear layers' weights are in oneDNN's blocked layout where
        available (:func:`pack_linear_weight`), the patch embedding's as a
        ``(C, 3 * p * p)`` linear layer, and the queries' rows of each ``qkv``
        (weight and bias) are multiplied by the attention scale. The copy is
        made again when any parameter changed (new storage or an in-place
        update, e.g. ``load_state_dict``).
        """
        return self._low_precision_state(dtype)[0]

    def _low_precision_state(self, dtype: torch.dtype):
        """``(weights, per-block weights)`` of :meth:`low_precision_weights`."""
        key = (dtype, tuple((p.data_ptr(), p._version) for p in self.parameters()))
        cache = self.__dict__.setdefault("_low_precision_cache", _DerivedCache())
        if cache.key == key:
            return cache.value
        tokens = (self.img_size // self.patch_embed.proj.stride[0]) ** 2
        weights: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, p in self.named_parameters():
                if not name.endswith((".weight", ".bias")) or ".norm" in name:
                    continue
                if name.startswith(("neck.1", "neck.3")):
                    continue
                t = p.detach().float()
                if name.endswith("qkv.weight") or name.endswith("qkv.bias"):
                    block = self.blocks[int(name.split(".")[1])]
                    t = t.clone()
                    t[: t.shape[0] // 3] *= block.attn.scale
                if name == "patch_embed.proj.weight" or name == "neck.0.weight":
                    t = t.reshape(t.shape[0], -1)
                t = t.to(dtype).contiguous()
                if t.dim() == 2 and name != "neck.2.weight":
                    t = pack_linear_weight(t, tokens)
                weights[name] = t
        blocks = []
        for i in range(len(self.blocks)):
            prefix = f"blocks.{i}."
            block_weights = {
                name[len(prefix) :].removeprefix("attn.").removeprefix("mlp."): t
                for name, t in weights.items()
                if name.startswith(prefix)
            }
            blocks.append(block_weights)
        cache.key, cache.value = key, (weights, blocks)
        return weights, blocks

    def forward_low_precision(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """:meth:`forward` in ``dtype`` (bfloat16): products, attention, residual stream.

        Layer-norm statistics, softmax and the last norm of the neck are float32;
        see :meth:`Block.forward_low_precision`. Returns a float32
        ``(B, out_chans, S/16, S/16)`` embedding.
        """
        weights, block_weights = self._low_precision_state(dtype)
        with torch.autocast(x.device.type, enabled=False):
            tokens = self._patch_embed_low_precision(x, weights, dtype)
            workspace = Workspace(dtype, x.device)
            for block, bw in zip(self.blocks, block_weights):
                tokens = block.forward_low_precision(tokens, workspace, bw)
            return self._neck_low_precision(tokens, weights, dtype)

    def _patch_embed_low_precision(self, x, weights, dtype) -> torch.Tensor:
        """Patch embedding plus position embedding: ``(B, h, w, C)`` tokens in ``dtype``.

        The non-overlapping patches are copied (and rounded to ``dtype``) into
        rows of ``3 * p * p`` values, then one linear layer.
        """
        p = self.patch_embed.proj.stride[0]
        b, cin, s_h, s_w = x.shape
        h, w = s_h // p, s_w // p
        rows = torch.empty(b, h, w, cin, p, p, dtype=dtype, device=x.device)
        rows.copy_(x[:, :, : h * p, : w * p].reshape(b, cin, h, p, w, p).permute(0, 2, 4, 1, 3, 5))
        patches = linear(
            rows.view(b * h * w, -1), weights["patch_embed.proj.weight"],
            weights["patch_embed.proj.bias"],
        ).view(b, h, w, -1)
        if self.pos_embed is not None:
            patches.add_(self.pos_embed)  # the sum in float32, rounded once
        return patches

    def _neck_low_precision(self, tokens, weights, dtype) -> torch.Tensor:
        """The neck on ``(B, h, w, C)`` tokens, in ``dtype`` up to its float32 last norm.

        Channels last: the 1x1 convolution is a linear layer, the first
        LayerNorm2d a layer norm over the last axis.
        """
        b, h, w, c = tokens.shape
        _, norm1, conv2, norm2 = self.neck
        y = linear(tokens.reshape(-1, c).to(dtype), weights["neck.0.weight"], None)
        y = F.layer_norm(y, (y.shape[-1],), norm1.weight, norm1.bias, norm1.eps)
        y = y.view(b, h, w, -1).permute(0, 3, 1, 2)  # channels-last (B, C, h, w)
        y = F.conv2d(y, weights["neck.2.weight"], padding=conv2.padding)
        y = y.permute(0, 2, 3, 1).float()
        y = F.layer_norm(y, (y.shape[-1],), norm2.weight, norm2.bias, norm2.eps)
        return y.permute(0, 3, 1, 2).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = self.low_precision_dtype(x)
        if dtype is not None:
            return self.forward_low_precision(x, dtype)
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        if self.blocks and all(b.supports_inference_path() for b in self.blocks):
            workspace = Workspace(x.dtype, x.device)
            x = x.contiguous()  # owned: the blocks update it in place
            for block in self.blocks:
                x = block.forward_inference(x, workspace)
        else:
            for block in self.blocks:
                x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


def infer_config(state) -> SamConfig | None:
    """The config of a SAM ViT checkpoint's state dict, or None if it is not one."""
    from napari_sam.model.checkpoint import count_indices, decoder_fields
    from napari_sam.model.sam import SamConfig

    if "image_encoder.blocks.0.attn.rel_pos_h" not in state:
        return None
    patch = state["image_encoder.patch_embed.proj.weight"]
    embed_dim, patch_size = patch.shape[0], patch.shape[-1]
    grid = state["image_encoder.pos_embed"].shape[1]
    depth = count_indices(state, r"image_encoder\.blocks\.(\d+)\.")
    head_dim = state["image_encoder.blocks.0.attn.rel_pos_h"].shape[1]
    global_idx, window = [], 14
    for i in range(depth):
        n = state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0]
        if n == 2 * grid - 1:
            global_idx.append(i)
        else:
            window = (n + 1) // 2
    options = {
        "embed_dim": embed_dim,
        "depth": depth,
        "num_heads": embed_dim // head_dim,
        "global_attn_indexes": tuple(global_idx),
        "window_size": window,
    }
    return SamConfig(
        encoder="vit",
        encoder_options=options,
        img_size=grid * patch_size,
        patch_size=patch_size,
        **decoder_fields(state),
    )
