"""NIBT (Narrowing Information Bottleneck, arXiv 2502.14889): the attribution engine.

For a bottleneck state ``h`` (the hidden state entering block ``L`` of a tower)
and the tower's suffix ``S`` (blocks ``L..D-1``, pooling, norm, projection):

    A = h * sum_i w_i * grad cos(S(lambda_i * h), e_other)

summed over the width per token. ``e_other`` is the paired embedding of the
other tower, held constant. With ``schedule="uniform"`` (the paper's right
Riemann sum) ``lambda_i = i/n`` and ``w_i = 1/n``. See docs/engine.md.

Fast by construction: the prefix runs once per pair; all ``pairs x steps``
scaled copies run through the suffix as one batch, cut into chunks that fit a
memory budget; gradients are taken with respect to the scaled states only;
text is cut after the batch's longest end-of-text; the last block computes only
the pooled row (see ``towers.py``). Pure torch: no Ray, no storage.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.engine.layers import resolve_layer
from pipeline.engine.model import Clip

SCHEDULES = ("uniform", "log")
#: Smallest nonzero node of the "log" schedule. CLIP's suffix is flat in lambda
#: except very near zero (pre-norm blocks and a final LayerNorm), so the nodes
#: crowd towards zero, where the integrand lives.
LOG_SCHEDULE_MIN = 1e-7


def schedule_nodes(kind: str, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integration nodes ``lambda`` and weights ``w`` (float64) for ``steps`` evaluations.

    ``uniform``: ``lambda_i = i/n``, ``w_i = 1/n`` (right Riemann sum, the paper).
    ``log``: ``0`` and ``steps - 1`` nodes log-spaced from ``LOG_SCHEDULE_MIN``
    to 1, with trapezoid weights, so that the attributions add up to
    ``cos(S(h)) - cos(S(0))`` (completeness) at a few hundred steps.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if kind == "uniform":
        lam = torch.arange(1, steps + 1, dtype=torch.float64) / steps
        return lam, torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    if kind == "log":
        if steps < 3:
            raise ValueError("the log schedule needs steps >= 3")
        lam = torch.cat(
            [
                torch.zeros(1, dtype=torch.float64),
                torch.logspace(math.log10(LOG_SCHEDULE_MIN), 0.0, steps - 1, dtype=torch.float64),
            ]
        )
        gaps = lam[1:] - lam[:-1]
        w = torch.zeros_like(lam)
        w[:-1] += gaps / 2
        w[1:] += gaps / 2
        return lam, w
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")


@dataclass
class Attribution:
    """NIBT attributions for a batch of image-text pairs (all float32, on CPU or device).

    image: [B, grid_h, grid_w] signed patch attributions (class token excluded)
    image_cls: [B] attribution on the class token (left out of the patch map)
    text: [B, context] signed token attributions; zero after end-of-text
    score: [B] cosine similarity of each pair
    image_embeds / text_embeds: [B, E] unit-norm embeddings of each pair
    eot: [B] position of each caption's end-of-text token
    """

    image: torch.Tensor
    image_cls: torch.Tensor
    text: torch.Tensor
    score: torch.Tensor
    image_embeds: torch.Tensor
    text_embeds: torch.Tensor
    eot: torch.Tensor


def suffix_row_bytes(tokens: int, width: int, heads: int, blocks: int, elem: int = 4) -> int:
    """Rough activation bytes kept for backward per suffix row (one pair, one step)."""
    per_block = 18 * tokens * width + 2 * heads * tokens * tokens
    return elem * (blocks * per_block + 2 * tokens * width)


def default_budget_mb(device: torch.device) -> float:
    """Chunk memory budget when none is set: small on CPU (cache-friendly chunks),
    half of what is free on a GPU (big chunks keep it busy)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(256.0, free / 2**20 / 2)
    return 512.0


class NIBT:
    """Narrowing Information Bottleneck attributions for an open_clip CLIP model.

    Args:
        clip: a model from :func:`pipeline.engine.model.load_clip`.
        layer: bottleneck block for both towers (negative counts from the top;
            None: 0.75 of each tower's depth, i.e. 9 of 12).
        steps: number of scaled copies (integration nodes).
        schedule: ``"uniform"`` (the paper) or ``"log"`` (see ``schedule_nodes``).
        image_layer / text_layer: per-tower override of ``layer``.
        chunk_rows: suffix rows (pairs x steps) per forward/backward pass; None
            derives it from ``memory_budget_mb``.
        memory_budget_mb: activation memory one chunk may use (None: 512 MB on
            CPU, where 40-80 rows per chunk ran fastest; half the free memory on a GPU).
    """

    def __init__(
        self,
        clip: Clip,
        layer: int | None = None,
        steps: int = 10,
        schedule: str = "uniform",
        *,
        image_layer: int | None = None,
        text_layer: int | None = None,
        chunk_rows: int | None = None,
        memory_budget_mb: float | None = None,
    ) -> None:
        self.clip = clip
        self.steps = int(steps)
        self.schedule = schedule
        self.lambdas, self.weights = schedule_nodes(schedule, self.steps)
        self.image_layer = resolve_layer(
            image_layer if image_layer is not None else layer, clip.image.depth, "image"
        )
        self.text_layer = resolve_layer(
            text_layer if text_layer is not None else layer, clip.text.depth, "text"
        )
        if chunk_rows is not None and chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.chunk_rows = chunk_rows
        self.memory_budget_mb = float(memory_budget_mb or default_budget_mb(clip.device))

    # ------------------------------------------------------------------ helpers
    def _rows_per_chunk(self, tokens: int, width: int, heads: int, blocks: int) -> int:
        if self.chunk_rows is not None:
            return self.chunk_rows
        elem = 2 if self.clip.precision in ("bf16", "fp16") else 4  # autocast activations
        per_row = suffix_row_bytes(tokens, width, heads, blocks, elem)
        return max(1, int(self.memory_budget_mb * 2**20 // per_row))

    def _image_rows(self, tokens: int | None = None) -> int:
        v = self.clip.image
        gh, gw = v.grid
        return self._rows_per_chunk(
            tokens or gh * gw + 1, v.width, v.heads,
            v.depth - self.image_layer,
        )

    def _text_rows(self, tokens: int) -> int:
        tt = self.clip.text
        return self._rows_per_chunk(
            tokens, tt.width, tt.heads,
            tt.depth - self.text_layer,
        )

    def pairs_per_chunk(self) -> int:
        """Pairs whose ``steps`` copies fit one chunk of the memory budget in both
        towers (text at full context): the batch size that keeps the device busy
        without a second chunk."""
        rows = min(self._image_rows(), self._text_rows(self.clip.text.context_length))
        return max(1, rows // self.steps)

    def _integrate(
        self,
        h: torch.Tensor,
        target: torch.Tensor,
        suffix: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        rows_per_chunk: int,
    ) -> torch.Tensor:
        """sum_i w_i * grad_x cos(suffix(lambda_i h), target) * h, summed over width: [B, N]."""
        b, n = h.shape[0], self.steps
        dev = h.device
        lam = self.lambdas.to(dev, torch.float32)
        w = self.weights.to(dev, torch.float32)
        pair = torch.arange(b, device=dev).repeat_interleave(n)
        step = torch.arange(n, device=dev).repeat(b)
        acc = torch.zeros(h.shape, dtype=torch.float32, device=dev)
        h32 = h.float()
        for r0 in range(0, b * n, rows_per_chunk):
            p = pair[r0 : r0 + rows_per_chunk]
            s = step[r0 : r0 + rows_per_chunk]
            x = (lam[s].view(-1, 1, 1) * h32[p]).requires_grad_(True)
            with self.clip.autocast():
                emb = suffix(x, p)
            cos = (F.normalize(emb.float(), dim=-1) * target[p]).sum(-1)
            (g,) = torch.autograd.grad(cos.sum(), x)
            acc.index_add_(0, p, g.float() * w[s].view(-1, 1, 1))
        return (h32 * acc).sum(-1)

    # ---------------------------------------------------------------- the method
    def embed(
        self, images: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bottleneck states and unit embeddings: (h_img, h_txt, e_img, e_txt, eot)."""
        clip = self.clip
        eot = clip.text.eot_index(tokens)
        t = int(eot.max()) + 1
        with torch.no_grad(), clip.autocast():
            h_img = clip.image.prefix(images, self.image_layer)
            h_txt = clip.text.prefix(tokens[:, :t], self.text_layer)
            e_img = clip.image.suffix(h_img, self.image_layer)
            e_txt = clip.text.suffix(h_txt, eot, self.text_layer)
        return (
            h_img.float(),
            h_txt.float(),
            F.normalize(e_img.float(), dim=-1),
            F.normalize(e_txt.float(), dim=-1),
            eot,
        )

    def attribute(self, images: torch.Tensor, tokens: torch.Tensor) -> Attribution:
        """Attribute each pair ``(images[i], tokens[i])``.

        ``images`` [B, 3, H, W] preprocessed floats; ``tokens`` [B, context] ids.
        The image side is scored against each pair's own caption, the text side
        against its own image.
        """
        clip = self.clip
        if images.shape[0] != tokens.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {tokens.shape[0]} captions")
        images = images.to(clip.device)
        tokens = tokens.to(clip.device)
        b, ctx = tokens.shape
        h_img, h_txt, e_img, e_txt, eot = self.embed(images, tokens)
        score = (e_img * e_txt).sum(-1)

        v = clip.image
        a_img = self._integrate(
            h_img, e_txt, lambda x, p: v.suffix(x, self.image_layer), self._image_rows(h_img.shape[1])
        )

        tt = clip.text
        a_txt = self._integrate(
            h_txt, e_img, lambda x, p: tt.suffix(x, eot[p], self.text_layer),
            self._text_rows(h_txt.shape[1]),
        )
        text = torch.zeros(b, ctx, dtype=torch.float32, device=a_txt.device)
        text[:, : a_txt.shape[1]] = a_txt
        text[torch.arange(ctx, device=text.device)[None, :] > eot[:, None]] = 0.0

        gh, gw = v.grid
        return Attribution(
            image=a_img[:, 1:].reshape(b, gh, gw),
            image_cls=a_img[:, 0],
            text=text,
            score=score,
            image_embeds=e_img,
            text_embeds=e_txt,
            eot=eot,
        )

    def config(self) -> dict:
        """What determines this engine's results (for fingerprints and file metadata)."""
        return {
            "model": self.clip.name,
            "weights": self.clip.weights,
            "image_layer": self.image_layer,
            "text_layer": self.text_layer,
            "steps": self.steps,
            "schedule": self.schedule,
            "precision": self.clip.precision,
        }
