"""The paper's confidence drop / increase metrics, image and text, batched.

Image: ``m`` = the patch map min-max normalised to [0, 1] and upsampled
bilinearly to the input resolution; ``s0 = cos(f_I(x), t)``,
``s1 = cos(f_I(x * m), t)``. Text: ``w`` = the token map min-max normalised over
the word pieces (start/end-of-text excluded); each word piece's input token
embedding is scaled by its ``w`` (start/end-of-text unscaled, kept in place);
``u0``/``u1`` as above against the paired image embedding.

drop = 100 * max(0, before - after) (lower is better);
increase = 100 * [after > before] (its dataset mean is the % of pairs whose
alignment rose; higher is better). A constant map carries no ranking, so it
masks nothing (``m = 1``): drop 0, increase 0. A caption with no word pieces
likewise scores 0 and 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.engine.model import Clip
from pipeline.engine.nibt import Attribution


@dataclass
class Confidence:
    """Per-pair metrics, [B] float32 each."""

    img_conf_drop: torch.Tensor
    img_conf_incr: torch.Tensor
    txt_conf_drop: torch.Tensor
    txt_conf_incr: torch.Tensor


def minmax(values: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Min-max normalise each row of ``values`` [B, ...] to [0, 1] over ``mask``.

    Rows whose (masked) values are constant become all ones. Outside the mask the
    result is 1 (unscaled).
    """
    flat = values.reshape(values.shape[0], -1).float()
    m = torch.ones_like(flat, dtype=torch.bool) if mask is None else mask.reshape(flat.shape)
    inf = torch.tensor(float("inf"), device=flat.device)
    lo = torch.where(m, flat, inf).amin(1, keepdim=True)
    hi = torch.where(m, flat, -inf).amax(1, keepdim=True)
    span = hi - lo
    ok = torch.isfinite(span) & (span > 0)
    out = torch.where(ok, (flat - lo) / torch.where(ok, span, torch.ones_like(span)), 1.0)
    out = torch.where(m, out, torch.ones_like(out))
    return out.reshape(values.shape)


def _cos(a: torch.Tensor, b_unit: torch.Tensor) -> torch.Tensor:
    return (F.normalize(a.float(), dim=-1) * b_unit).sum(-1)


def _drop_incr(before: torch.Tensor, after: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return 100.0 * (before - after).clamp(min=0), 100.0 * (after > before).float()


@torch.no_grad()
def image_confidence(
    clip: Clip, images: torch.Tensor, attr: Attribution
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image confidence drop and increase [B] for the pairs in ``attr``."""
    images = images.to(clip.device)
    m = minmax(attr.image).unsqueeze(1)
    m = F.interpolate(m, size=images.shape[-2:], mode="bilinear", align_corners=False)
    with clip.autocast():
        after = _cos(clip.image.encode(images * m.to(images.dtype)), attr.text_embeds)
    return _drop_incr(attr.score, after)


@torch.no_grad()
def text_confidence(
    clip: Clip, tokens: torch.Tensor, attr: Attribution
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text confidence drop and increase [B] for the pairs in ``attr``."""
    tokens = tokens.to(clip.device)
    pos = torch.arange(tokens.shape[1], device=tokens.device)[None, :]
    pieces = (pos > 0) & (pos < attr.eot[:, None])
    scale = minmax(attr.text, pieces)
    with clip.autocast():
        after = _cos(clip.text.encode(tokens, token_scale=scale), attr.image_embeds)
    drop, incr = _drop_incr(attr.score, after)
    has = pieces.any(1)
    return torch.where(has, drop, 0.0), torch.where(has, incr, 0.0)


def confidence(clip: Clip, images: torch.Tensor, tokens: torch.Tensor, attr: Attribution) -> Confidence:
    """All four metrics for a batch of attributed pairs."""
    idrop, iincr = image_confidence(clip, images, attr)
    tdrop, tincr = text_confidence(clip, tokens, attr)
    return Confidence(idrop, iincr, tdrop, tincr)
