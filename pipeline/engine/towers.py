"""The one place that knows open_clip internals.

Each tower is cut at a bottleneck layer ``L`` into

* ``prefix(input) -> h``: embeddings and residual blocks ``0..L-1``; ``h`` is the
  hidden state that enters block ``L`` ([B, N, W], batch first);
* ``suffix(x, ...) -> embedding``: blocks ``L..D-1``, pooling, final norm and
  projection ([B, E], not normalised).

The suffix computes the last block only for the row that the pooling reads (the
class token of a ViT, the end-of-text token of a causal text tower): every other
row of the last block's output is thrown away by the pooling, so computing it
would be wasted work. Everything here is plain torch, no Ray, no storage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn


class UnsupportedModelError(ValueError):
    """The model's towers are of a kind the engine has no adapter for."""


def _check_blocks(model_name: str, tower: str, blocks: nn.ModuleList, batch_first: bool) -> None:
    for i, blk in enumerate(blocks):
        if type(blk) is not ResidualAttentionBlock:
            raise UnsupportedModelError(
                f"{model_name}: the {tower} tower's block {i} is {type(blk).__name__}; "
                "only open_clip's standard ResidualAttentionBlock is supported"
            )
        if hasattr(blk, "ln_1_kv"):
            raise UnsupportedModelError(f"{model_name}: {tower} block {i} is a cross-attention block")
    if not batch_first:
        raise UnsupportedModelError(f"{model_name}: the {tower} transformer is not batch-first")


def _qkv(blk: ResidualAttentionBlock, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Query, key, value [R, heads, N, head_dim] of normed states ``y`` [R, N, W]."""
    attn: nn.MultiheadAttention = blk.attn
    r, n, w = y.shape
    heads = attn.num_heads
    qkv = F.linear(y, attn.in_proj_weight, attn.in_proj_bias)
    return qkv.view(r, n, 3, heads, w // heads).permute(2, 0, 3, 1, 4).unbind(0)


def run_block(blk: ResidualAttentionBlock, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """``blk(x)`` for batch-first ``x`` [R, N, W], written out; ``causal``: under a
    causal mask (as ``blk(x, attn_mask=<causal mask>)``).

    The same arithmetic as open_clip's block, without ``nn.MultiheadAttention``'s
    sequence-first transposes and copies (they cost ~20% of the suffix on CPU). The
    causal mask is SDPA's ``is_causal`` rather than a float mask, so that SDPA can
    pick its flash kernels.
    """
    r, n, w = x.shape
    q, k, v = _qkv(blk, blk.ln_1(x))
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    o = blk.attn.out_proj(o.transpose(1, 2).reshape(r, n, w))
    x = x + blk.ls_1(o)
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


def _attend_rows(
    blk: ResidualAttentionBlock,
    x: torch.Tensor,
    q_index: torch.Tensor,
    key_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Run residual block ``blk`` for one query row per sequence.

    ``x`` [R, N, W]; ``q_index`` [R] the row to compute; ``key_mask`` [R, N] True
    where a key may be attended (None: all). Returns the block's output at that
    row, [R, W]: exactly the corresponding row of ``blk(x, attn_mask=...)``.
    """
    attn: nn.MultiheadAttention = blk.attn
    rows = torch.arange(x.shape[0], device=x.device)
    r, n, w = x.shape
    heads = attn.num_heads
    y = blk.ln_1(x)
    w_q, w_kv = attn.in_proj_weight.split([w, 2 * w])
    b_q, b_kv = (
        attn.in_proj_bias.split([w, 2 * w]) if attn.in_proj_bias is not None else (None, None)
    )
    q = F.linear(y[rows, q_index], w_q, b_q).view(r, heads, 1, w // heads)
    kv = F.linear(y, w_kv, b_kv).view(r, n, 2, heads, w // heads).permute(2, 0, 3, 1, 4)
    mask = key_mask[:, None, None, :] if key_mask is not None else None
    o = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=mask)  # [R, H, 1, hd]
    out = x[rows, q_index] + blk.ls_1(attn.out_proj(o.reshape(r, w)))
    return out + blk.ls_2(blk.mlp(blk.ln_2(out)))


#: Caption lengths are rounded up to a multiple of this (at most the context): the
#: text side runs each group of similar lengths at its own length, with few shapes.
LENGTH_STEP = 8
#: What a length group of its own costs beyond its tokens (passes, launches), in
#: padded tokens: neighbouring groups run as one while that pads them by at most this
#: many tokens (small batches end up in one or two groups, large ones keep theirs).
GROUP_COST_TOKENS = 256


def length_buckets(
    eot: torch.Tensor, context: int, step: int = LENGTH_STEP
) -> list[tuple[int, torch.Tensor]]:
    """Sequences grouped by length: ``(T, indices)`` per group, ``T`` the length up to
    and including end-of-text rounded up to a multiple of ``step`` (at most
    ``context``), shortest first; neighbouring groups merged while that pads them by
    at most ``GROUP_COST_TOKENS`` tokens. Under a causal mask a sequence cut at ``T`` gives
    the same result as at full length, so each group costs what its captions need,
    not what the batch's longest needs."""
    lengths = ((eot + step) // step * step).clamp(max=context).tolist()  # one sync
    groups: dict[int, list[int]] = {}
    for i, t in enumerate(lengths):
        groups.setdefault(int(t), []).append(i)
    merged: list[tuple[int, list[int], int]] = []  # (length, rows, their own tokens)
    for t, idx in sorted(groups.items()):
        if merged and (len(merged[-1][1]) + len(idx)) * t <= merged[-1][2] + len(idx) * t \
                + GROUP_COST_TOKENS:
            _, rows, own = merged.pop()
            merged.append((t, rows + idx, own + len(idx) * t))
        else:
            merged.append((t, idx, len(idx) * t))
    return [(t, torch.tensor(sorted(idx), device=eot.device)) for t, idx, _ in merged]


def scatter_rows(n: int, groups: list[tuple[torch.Tensor | slice, torch.Tensor]]) -> torch.Tensor:
    """One [n, ...] tensor from ``(rows, values)`` groups that together cover rows 0..n-1."""
    first = groups[0][1]
    out = first.new_empty((n, *first.shape[1:]))
    for rows, values in groups:
        out[rows] = values
    return out


class ImageTower(nn.Module):
    """A class-token ViT image tower of an open_clip ``CLIP`` cut at a bottleneck."""

    def __init__(self, model: nn.Module, model_name: str = "model") -> None:
        super().__init__()
        from open_clip.transformer import VisionTransformer

        v = getattr(model, "visual", None)
        if not isinstance(v, VisionTransformer):
            kind = type(v).__name__ if v is not None else "missing"
            raise UnsupportedModelError(
                f"{model_name}: image tower is {kind}; only open_clip VisionTransformer "
                "(class-token ViT) towers are supported, not convolutional or timm towers"
            )
        if v.attn_pool is not None:
            raise UnsupportedModelError(f"{model_name}: attentional pooling in the image tower")
        if v.pool_type != "tok":
            raise UnsupportedModelError(
                f"{model_name}: image pooling is {v.pool_type!r}; only class-token pooling "
                "('tok') is supported"
            )
        _check_blocks(model_name, "image", v.transformer.resblocks, v.transformer.batch_first)
        self.v = v
        self.depth = len(v.transformer.resblocks)
        self.width = v.transformer.width
        self.heads = int(v.transformer.resblocks[0].attn.num_heads)
        self.grid = tuple(int(g) for g in v.grid_size)
        self.image_size = tuple(int(s) for s in v.image_size)
        self.pool = "cls"

    def prefix(self, images: torch.Tensor, layer: int) -> torch.Tensor:
        """Hidden state entering block ``layer``: [B, 1 + gh*gw, W]."""
        x = self.v._embeds(images)
        for blk in self.v.transformer.resblocks[:layer]:
            x = run_block(blk, x)
        return x

    def suffix(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        """Image embedding [R, E] from the state entering block ``layer``."""
        blocks = self.v.transformer.resblocks
        for blk in blocks[layer:-1]:
            x = run_block(blk, x)
        zero = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        pooled = self.v.ln_post(_attend_rows(blocks[-1], x, zero, None))
        if self.v.proj is not None:
            pooled = pooled @ self.v.proj
        return pooled

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Full image embedding, as ``suffix(prefix(images, 0), 0)``."""
        return self.suffix(self.prefix(images, 0), 0)


class TextTower(nn.Module):
    """A causal, end-of-text-pooled text tower of an open_clip ``CLIP``.

    Sequences may be cut to their first ``T`` positions (``T`` past their
    end-of-text, see ``length_buckets``): under a causal mask later positions cannot
    change any position up to the end-of-text token, so the result is the same as
    running all ``context_length`` positions.
    """

    def __init__(self, model: nn.Module, model_name: str, eot_id: int) -> None:
        super().__init__()
        from open_clip.model import CLIP

        if not isinstance(model, CLIP):
            raise UnsupportedModelError(
                f"{model_name}: {type(model).__name__} has a custom (e.g. Hugging Face) text "
                "tower; only the built-in causal CLIP text transformer is supported"
            )
        pool = getattr(model, "text_pool_type", "argmax")
        if pool not in ("argmax", "eos"):
            raise UnsupportedModelError(
                f"{model_name}: text pooling is {pool!r}; only end-of-text pooling "
                "('argmax' or 'eos') is supported"
            )
        if getattr(model, "attn_mask", None) is None:
            raise UnsupportedModelError(
                f"{model_name}: the text tower has no causal mask (bidirectional text)"
            )
        _check_blocks(model_name, "text", model.transformer.resblocks, model.transformer.batch_first)
        self.m = model
        self.depth = len(model.transformer.resblocks)
        self.width = model.transformer.width
        self.heads = int(model.transformer.resblocks[0].attn.num_heads)
        self.context_length = int(model.context_length)
        self.pool = pool
        self.eot_id = int(eot_id)

    def eot_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Position of the pooled (end-of-text) token of each sequence, [B]."""
        if self.pool == "argmax":
            return tokens.argmax(dim=-1)
        return (tokens == self.eot_id).int().argmax(dim=-1)

    def embed(self, tokens: torch.Tensor, token_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Token + positional embeddings of ``tokens`` [B, T] (T <= context)."""
        x = self.m.token_embedding(tokens)
        if token_scale is not None:
            x = x * token_scale.unsqueeze(-1).to(x.dtype)
        return x + self.m.positional_embedding[: tokens.shape[1]].to(x.dtype)

    def prefix(
        self, tokens: torch.Tensor, layer: int, token_scale: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Hidden state entering block ``layer``: [B, T, W] for ``tokens`` [B, T]."""
        x = self.embed(tokens, token_scale)
        for blk in self.m.transformer.resblocks[:layer]:
            x = run_block(blk, x, causal=True)
        return x

    def suffix(self, x: torch.Tensor, eot: torch.Tensor, layer: int) -> torch.Tensor:
        """Text embedding [R, E] from the state entering block ``layer``; ``eot`` [R]."""
        blocks = self.m.transformer.resblocks
        for blk in blocks[layer:-1]:
            x = run_block(blk, x, causal=True)
        keys = torch.arange(x.shape[1], device=x.device)[None, :] <= eot[:, None]
        pooled = self.m.ln_final(_attend_rows(blocks[-1], x, eot, keys))
        proj = self.m.text_projection
        if proj is not None:
            pooled = proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj
        return pooled

    def encode(self, tokens: torch.Tensor, token_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Full text embedding of ``tokens`` [B, T]; optional per-token embedding scale.
        Each group of similar lengths runs at its own length (``length_buckets``)."""
        eot = self.eot_index(tokens)
        groups = []
        for t, idx in length_buckets(eot, tokens.shape[1]):
            scale = token_scale[idx, :t] if token_scale is not None else None
            groups.append((idx, self.suffix(self.prefix(tokens[idx, :t], 0, scale), eot[idx], 0)))
        return scatter_rows(tokens.shape[0], groups)
