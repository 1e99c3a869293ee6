"""Independent oracles for the engine, written from the method as docs/engine.md states it.

They use open_clip's own modules and forward passes (full context length, full
last block, ``nn.MultiheadAttention``), one suffix pass per step and pair: none
of ``pipeline.engine.towers``' shortcuts. Tests compare the engine against these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool


def image_prefix(model, images: torch.Tensor, layer: int) -> torch.Tensor:
    """State entering block ``layer`` of the image tower, via open_clip's modules."""
    v = model.visual
    x = v._embeds(images)
    for blk in v.transformer.resblocks[:layer]:
        x = blk(x)
    return x


def image_suffix(model, x: torch.Tensor, layer: int) -> torch.Tensor:
    """Image embedding from the state entering block ``layer``, via open_clip's modules."""
    v = model.visual
    for blk in v.transformer.resblocks[layer:]:
        x = blk(x)
    pooled, _ = v._pool(x)
    return pooled @ v.proj


def text_prefix(model, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    x = model.token_embedding(tokens) + model.positional_embedding
    for blk in model.transformer.resblocks[:layer]:
        x = blk(x, attn_mask=model.attn_mask)
    return x


def text_suffix(model, x: torch.Tensor, tokens: torch.Tensor, layer: int) -> torch.Tensor:
    for blk in model.transformer.resblocks[layer:]:
        x = blk(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type)
    return x @ model.text_projection


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(a, b, dim=-1)


def naive_nibt(model, images, tokens, layer: int, steps: int):
    """Plain loop: per pair, per step, one suffix pass and one gradient.

    Returns (image [B, N] incl. class token, text [B, context], score [B]).
    """
    img_out, txt_out, scores = [], [], []
    for b in range(images.shape[0]):
        im, tk = images[b : b + 1], tokens[b : b + 1]
        with torch.no_grad():
            e_i = model.encode_image(im)
            e_t = model.encode_text(tk)
            h_i = image_prefix(model, im, layer)
            h_t = text_prefix(model, tk, layer)
        scores.append(_cos(e_i, e_t)[0])
        for h, out, suffix, target in (
            (h_i, img_out, lambda x: image_suffix(model, x, layer), e_t),
            (h_t, txt_out, lambda x, tk=tk: text_suffix(model, x, tk, layer), e_i),
        ):
            g_sum = torch.zeros_like(h)
            for i in range(1, steps + 1):
                x = (i / steps * h).detach().requires_grad_(True)
                (g,) = torch.autograd.grad(_cos(suffix(x), target).sum(), x)
                g_sum += g
            out.append((h * g_sum / steps).sum(-1)[0])
    return torch.stack(img_out), torch.stack(txt_out), torch.stack(scores)


def captum_nibt(model, images, tokens, layer: int, steps: int):
    """captum IntegratedGradients on the suffix, zero baseline, riemann_right."""
    from captum.attr import IntegratedGradients

    with torch.no_grad():
        e_i = model.encode_image(images)
        e_t = model.encode_text(tokens)
        h_i = image_prefix(model, images, layer)
        h_t = text_prefix(model, tokens, layer)
    img, txt = [], []
    for b in range(images.shape[0]):

        def f_img(x, b=b):
            return _cos(image_suffix(model, x, layer), e_t[b : b + 1])

        def f_txt(x, b=b):
            tk = tokens[b : b + 1].expand(x.shape[0], -1)
            return _cos(text_suffix(model, x, tk, layer), e_i[b : b + 1])

        for f, h, out in ((f_img, h_i, img), (f_txt, h_t, txt)):
            ig = IntegratedGradients(f)
            a = ig.attribute(
                h[b : b + 1], baselines=torch.zeros_like(h[b : b + 1]),
                n_steps=steps, method="riemann_right",
            )
            out.append(a.sum(-1)[0])
    return torch.stack(img), torch.stack(txt)
