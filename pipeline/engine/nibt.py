"""NIBT (Narrowing Information Bottleneck, arXiv 2502.14889): the attribution engine.

For a bottleneck state ``h`` (the hidden state entering block ``L`` of a tower)
and the tower's suffix ``S`` (blocks ``L..D-1``, pooling, norm, projection):

    A = h * sum_i w_i * grad cos(S(lambda_i * h), e_other)

summed over the width per token. ``e_other`` is the paired embedding of the
other tower, held constant. With ``schedule="uniform"`` (the paper's right
Riemann sum) ``lambda_i = i/n`` and ``w_i = 1/n``. See docs/engine.md.

Fast by construction: the prefix runs once per pair; all ``pairs x steps``
scaled copies run through the suffix as one batch, cut into chunks of whole
pairs that fit a memory budget; gradients are taken with respect to the scaled
states only; captions run in groups of similar length, each at its own length;
the last block computes only the pooled row (see ``towers.py``). Pure torch: no
Ray, no storage.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pipeline.engine.layers import resolve_layer
from pipeline.engine.model import Clip
from pipeline.engine.towers import length_buckets, scatter_rows

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


def chunk_plan(pairs: int, steps: int, rows: int) -> list[tuple[int, int, int, int]]:
    """Chunks ``(pair0, pair1, step0, step1)`` of the ``pairs x steps`` suffix rows, at
    most ``rows`` rows each: whole pairs, as many as fit and spread evenly over as few
    chunks as possible; when one pair's steps do not fit, each pair's steps in even
    runs."""
    if rows >= steps:
        per = rows // steps
        per = -(-pairs // -(-pairs // per))  # the same chunk count, sizes as even as it goes
        return [(p, min(p + per, pairs), 0, steps) for p in range(0, pairs, per)]
    run = -(-steps // -(-steps // rows))
    return [(p, p + 1, s, min(s + run, steps)) for p in range(pairs) for s in range(0, steps, run)]


#: Bytes kept for backward per token and unit of width in one suffix row, by
#: precision: (each full block, the last block, which computes one row). Counted
#: with torch's saved-tensor hooks on ViT-B-32 (``tests/unit/test_engine_cost.py``
#: holds the model to that count): bf16 autocast keeps nearly as much as fp32,
#: since the residual stream and the LayerNorms stay in fp32. No tokens x tokens
#: term: SDPA's fused kernels keep no attention matrix.
SAVED_BYTES = {"fp32": (40, 13), "bf16": (36, 11)}


def suffix_row_bytes(tokens: int, width: int, blocks: int, precision: str = "fp32") -> int:
    """Activation bytes kept for backward per suffix row (one pair, one step) of
    ``blocks`` blocks above the bottleneck."""
    full, last = SAVED_BYTES[precision]
    return tokens * width * (full * (blocks - 1) + last)


def default_budget_mb(device: torch.device) -> float:
    """Chunk memory budget when none is set: small on CPU (cache-friendly chunks of
    ~50 rows), half of what is free on a GPU (big chunks keep it busy)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return max(256.0, free / 2**20 / 2)
    return 200.0


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
        memory_budget_mb: activation memory one chunk may use (None: 200 MB on
            CPU, where 40-80 rows per chunk ran fastest; half the free memory on a GPU).
        compile: run each chunk's forward (suffix and cosine; its backward follows)
            through ``torch.compile`` with static shapes: caption lengths come in
            multiples of ``LENGTH_STEP`` and chunks in at most two sizes per length,
            so a batch size compiles a handful of graphs, once.
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
        compile: bool = False,
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
        self._image_step: Callable[..., torch.Tensor] = self._image_cos
        self._text_step: Callable[..., torch.Tensor] = self._text_cos
        if compile:
            import torch._dynamo

            # one graph per (caption length, chunk size) shape: more than the default 8
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            self._image_step = torch.compile(self._image_cos, dynamic=False)
            self._text_step = torch.compile(self._text_cos, dynamic=False)

    # ------------------------------------------------------------------ helpers
    def _rows_per_chunk(self, tokens: int, width: int, blocks: int) -> int:
        if self.chunk_rows is not None:
            return self.chunk_rows
        per_row = suffix_row_bytes(tokens, width, blocks, self.clip.precision)
        return max(1, int(self.memory_budget_mb * 2**20 // per_row))

    def _image_rows(self, tokens: int | None = None) -> int:
        v = self.clip.image
        gh, gw = v.grid
        return self._rows_per_chunk(tokens or gh * gw + 1, v.width, v.depth - self.image_layer)

    def _text_rows(self, tokens: int) -> int:
        tt = self.clip.text
        return self._rows_per_chunk(tokens, tt.width, tt.depth - self.text_layer)

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
        cos_fn: Callable[..., torch.Tensor],
        rows_per_chunk: int,
        eot: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``sum_i w_i * grad_x cos(S(lambda_i h), target) * h``, summed over the width:
        [B, N].

        Chunks are whole pairs (or, when one pair's steps do not fit, even runs of one
        pair's steps): the scaled copies are a broadcast of ``h`` and the weighted sum
        of their gradients a reshape and a sum, in a fixed order (deterministic on
        every device)."""
        dev, shape = h.device, h.shape[1:]
        lam = self.lambdas.to(dev, torch.float32)
        w = self.weights.to(dev, torch.float32)
        h32 = h.float()
        acc = torch.zeros_like(h32)
        for p0, p1, s0, s1 in chunk_plan(h.shape[0], self.steps, rows_per_chunk):
            k, s = p1 - p0, s1 - s0
            x = (lam[s0:s1].view(1, s, *[1] * len(shape)) * h32[p0:p1, None])
            x = x.reshape(k * s, *shape).requires_grad_(True)
            extra = () if eot is None else (eot[p0:p1].repeat_interleave(s),)
            cos = cos_fn(x, target[p0:p1].repeat_interleave(s, 0), *extra)
            (g,) = torch.autograd.grad(cos.sum(), x)
            acc[p0:p1] += (g.float().view(k, s, *shape) * w[s0:s1].view(1, s, *[1] * len(shape))).sum(1)
        return (h32 * acc).sum(-1)

    def _image_cos(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """cos(S_I(x), target) per row: one chunk's forward (compiled when asked)."""
        with self.clip.autocast():
            emb = self.clip.image.suffix(x, self.image_layer)
        return (F.normalize(emb.float(), dim=-1) * target).sum(-1)

    def _text_cos(self, x: torch.Tensor, target: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """cos(S_T(x), target) per row, pooled at ``eot``."""
        with self.clip.autocast():
            emb = self.clip.text.suffix(x, eot, self.text_layer)
        return (F.normalize(emb.float(), dim=-1) * target).sum(-1)

    # ---------------------------------------------------------------- the method
    def attribute(self, images: torch.Tensor, tokens: torch.Tensor) -> Attribution:
        """Attribute each pair ``(images[i], tokens[i])``.

        ``images`` [B, 3, H, W] preprocessed floats; ``tokens`` [B, context] ids.
        The image side is scored against each pair's own caption, the text side
        against its own image. Captions run in groups of similar length, each at its
        own length (``length_buckets``).
        """
        clip, v, tt = self.clip, self.clip.image, self.clip.text
        if images.shape[0] != tokens.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {tokens.shape[0]} captions")
        images = images.to(clip.device)
        tokens = tokens.to(clip.device)
        b, ctx = tokens.shape
        eot = tt.eot_index(tokens)
        buckets = length_buckets(eot, ctx)
        # The embeddings come from their own suffix pass over the whole batch (the image)
        # or each length group (the text), as the metrics re-encode: a map that masks
        # nothing then scores exactly what the pair scored. Read off the lambda = 1 node
        # they would be the same up to round-off, which flips the metrics' increase.
        with torch.no_grad(), clip.autocast():
            h_img = v.prefix(images, self.image_layer)
            e_img = F.normalize(v.suffix(h_img, self.image_layer).float(), dim=-1)
            h_txt = [tt.prefix(tokens[idx, :t], self.text_layer) for t, idx in buckets]
            e_txt = F.normalize(scatter_rows(b, [
                (idx, tt.suffix(h, eot[idx], self.text_layer).float())
                for h, (_, idx) in zip(h_txt, buckets)]), dim=-1)

        a_img = self._integrate(h_img, e_txt, self._image_step, self._image_rows(h_img.shape[1]))
        text = torch.zeros(b, ctx, dtype=torch.float32, device=clip.device)
        for h, (t, idx) in zip(h_txt, buckets):
            text[idx, :t] = self._integrate(h, e_img[idx], self._text_step, self._text_rows(t),
                                            eot[idx])
        text[torch.arange(ctx, device=text.device)[None, :] > eot[:, None]] = 0.0

        gh, gw = v.grid
        return Attribution(
            image=a_img[:, 1:].reshape(b, gh, gw),
            image_cls=a_img[:, 0],
            text=text,
            score=(e_img * e_txt).sum(-1),
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
