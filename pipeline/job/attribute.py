"""Decoded pairs -> result values: the engine's attributions plus the paper's metrics.

Runs a batch through ``NIBT.attribute`` and ``metrics.confidence`` and turns
tensors into per-row values. A batch that does not fit in the device's memory
(CUDA's typed out-of-memory error) is split in halves (and later batches start at
the size that fitted, growing back after batches that fit); a row that fails on its own gets status ``error`` with the
message, and the others go on. A fatal device error is not retried here: it
raises ``DeviceLost`` (see ``device_health``), which ends the actor.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.engine import device_health
from pipeline.engine.metrics import confidence
from pipeline.engine.model import Clip
from pipeline.engine.nibt import NIBT

log = logging.getLogger(__name__)


@dataclass
class PairResult:
    """Result values of one attributed pair (see the README's output schema)."""

    score: float
    image_attr: np.ndarray
    image_cls_attr: float
    image_cls_share: float
    tokens: list[str]
    text_attr: np.ndarray
    text_eot_share: float
    img_conf_drop: float
    img_conf_incr: float
    txt_conf_drop: float
    txt_conf_incr: float


def is_out_of_memory(e: BaseException) -> bool:
    """A batch too big for the device: CUDA's typed error, the one a split answers. On
    CPU, memory is declared to Ray and an actor that overruns it is ended and its task
    retried: nothing to recognise here."""
    return isinstance(e, torch.OutOfMemoryError)


def release_memory() -> None:
    """Hand freed memory back before a smaller retry: CUDA's cached blocks."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


#: The paper's four metrics, as ``Confidence`` names them.
METRICS = ("img_conf_drop", "img_conf_incr", "txt_conf_drop", "txt_conf_incr")
#: Token ids up to this travel back to the host as float32 exactly.
EXACT_IDS = 2**24

#: Bounds of the automatic batch size (pairs).
MIN_AUTO_BATCH, MAX_AUTO_BATCH = 8, 1024
#: Batches that must fit at the learnt limit before it doubles; each split doubles
#: this count (up to the cap), so a limit that keeps failing is tried less often.
GROW_AFTER, MAX_GROW_AFTER = 8, 1024


def auto_batch_size(engine: NIBT) -> int:
    """Pairs per batch when none is set: one chunk's worth of the engine's memory
    budget, within 8 (small batches waste little on CPU) and 1,024 (beyond it the
    H200 gained nothing worth the host memory and latency)."""
    return int(min(MAX_AUTO_BATCH, max(MIN_AUTO_BATCH, engine.pairs_per_chunk())))


@dataclass
class HostBatch:
    """A batch's results copied to the host, before they become ``PairResult``s
    (that per-pair Python runs outside the worker's compute lock)."""

    score: np.ndarray
    image: np.ndarray  # [k, grid_h * grid_w]
    cls: np.ndarray
    text: np.ndarray  # [k, context]
    eot: np.ndarray
    conf: dict[str, np.ndarray]
    tokens: np.ndarray  # [k, context] token ids


class Attributor:
    """Attribute and score batches of preprocessed pairs with one engine.

    ``compute`` is the device's part (the engine, the metrics, the copies to the
    host); ``results`` turns its output into ``PairResult``s; calling the
    attributor does both.
    """

    def __init__(self, clip: Clip, engine: NIBT) -> None:
        self.clip = clip
        self.engine = engine
        self.device = clip.device  # where a fatal error would leave the context broken
        vocab = clip.model.token_embedding.num_embeddings
        if vocab > EXACT_IDS:
            raise ValueError(f"{clip.name}: {vocab} token ids; ids above {EXACT_IDS} would "
                             "not survive the float32 copy back to the host")
        self.max_pairs: int | None = None  # learnt from out-of-memory splits
        self.splits = 0
        self.largest = 0  # the largest batch asked for: the limit is dropped on reaching it
        self.grow_after = GROW_AFTER
        self.fits = 0  # batches that fitted at the limit since it last changed
        self.grown = False  # the limit was last changed by growing it

    def _batch(self, pixels: torch.Tensor, tokens: torch.Tensor) -> list[HostBatch]:
        attr = self.engine.attribute(pixels, tokens)
        conf = confidence(self.clip, pixels, tokens, attr)
        # one copy back to the host for the whole batch (each .cpu() would wait on its own);
        # token ids and end-of-text positions travel as float32, exact below 2**24
        cols = [attr.score[:, None], attr.image_cls[:, None], attr.image.flatten(1), attr.text,
                attr.eot[:, None], *(getattr(conf, k)[:, None] for k in METRICS), tokens]
        host = torch.cat([c.float() for c in cols], 1).cpu().numpy()
        parts = np.split(host, np.cumsum([c.shape[1] for c in cols])[:-1], axis=1)
        score, cls, image, text, eot, *conf_cols, ids = parts
        return [HostBatch(
            score=score[:, 0], image=image, cls=cls[:, 0], text=text,
            eot=eot[:, 0].astype(np.int64),
            conf={k: v[:, 0] for k, v in zip(METRICS, conf_cols)},
            tokens=ids.astype(np.int64),
        )]

    def _fit(self, pixels: torch.Tensor, tokens: torch.Tensor) -> list[HostBatch]:
        n = pixels.shape[0]
        if self.max_pairs is not None and n > self.max_pairs:
            k = self.max_pairs
            return self._fit(pixels[:k], tokens[:k]) + self._fit(pixels[k:], tokens[k:])
        try:
            out = self._batch(pixels, tokens)
        except Exception as e:
            if not is_out_of_memory(e) or n == 1:
                raise
        else:
            self._fitted(n)
            return out
        # Retry outside the except block: its traceback would keep the failed
        # attempt's tensors alive during the retry.
        release_memory()
        if self.grown:  # a limit grown back failed: grow it less often
            self.grow_after = min(MAX_GROW_AFTER, self.grow_after * 2)
        self.max_pairs, self.fits, self.grown = max(1, n // 2), 0, False
        self.splits += 1
        log.warning("batch of %d pairs did not fit in memory; retrying in halves", n)
        return self._fit(pixels, tokens)

    def _fitted(self, n: int) -> None:
        """A batch of ``n`` pairs fitted: after ``grow_after`` of them at the limit, double
        it (memory pressure passes: another task's batch, a fragmented allocator); drop
        it once it reaches the largest batch asked for."""
        if self.max_pairs is None or n < self.max_pairs:
            return
        self.fits += 1
        if self.fits >= self.grow_after:
            self.fits, self.grown = 0, True
            self.max_pairs *= 2
            if self.max_pairs >= self.largest:
                self.max_pairs = None
            log.info("batches fitted again; batch limit now %s", self.max_pairs or "none")

    def compute(self, pixels: torch.Tensor, tokens: torch.Tensor) -> list[HostBatch | Exception]:
        """The device's part, in pair order; a pair that fails on its own yields its
        exception (a batch that fails is retried pair by pair). Raises ``DeviceLost``
        on a fatal device error: no retry on a broken context."""
        if pixels.shape[0] == 0:
            return []
        self.largest = max(self.largest, int(pixels.shape[0]))
        try:
            return list(self._fit(pixels, tokens))
        except Exception as e:
            device_health.check(e, self.device)
            if pixels.shape[0] == 1:
                return [e]
            log.warning("batch failed (%s: %s); retrying pair by pair", type(e).__name__, e)
        release_memory()
        out: list[HostBatch | Exception] = []
        for i in range(pixels.shape[0]):
            out.extend(self.compute(pixels[i : i + 1], tokens[i : i + 1]))
        return out

    def results(self, computed: list[HostBatch | Exception]) -> list[PairResult | Exception]:
        """One result per pair, from ``compute``'s output (host only, no device work)."""
        out: list[PairResult | Exception] = []
        for h in computed:
            if isinstance(h, Exception):
                out.append(h)
                continue
            for i in range(len(h.score)):
                n = int(h.eot[i]) + 1
                t = h.text[i, :n]
                img, cls = h.image[i], float(h.cls[i])
                mass_img = float(np.abs(img).sum() + abs(cls))
                mass_txt = float(np.abs(t).sum())
                out.append(PairResult(
                    score=float(h.score[i]),
                    image_attr=img,
                    image_cls_attr=cls,
                    image_cls_share=abs(cls) / mass_img if mass_img > 0 else 0.0,
                    tokens=self.clip.pieces(h.tokens[i, :n].tolist()),
                    text_attr=t.copy(),
                    text_eot_share=abs(float(t[-1])) / mass_txt if mass_txt > 0 else 0.0,
                    **{k: float(v[i]) for k, v in h.conf.items()},
                ))
        return out

    def __call__(
        self, pixels: torch.Tensor, tokens: torch.Tensor
    ) -> list[PairResult | Exception]:
        """One result per pair; a pair that fails on its own yields its exception."""
        return self.results(self.compute(pixels, tokens))


@dataclass
class Staged:
    """A batch's pixels and token ids on their way to the device."""

    pixels: torch.Tensor
    tokens: torch.Tensor
    ready: Any = None  # the copy's CUDA event (None: already there)


class Stager:
    """Host-to-device copies of whole batches, made ahead of the compute: on a GPU from
    pinned memory (pixels and token ids alike) on a stream of their own, so that the
    next batch's copy overlaps this batch's compute; on a CPU the tensors as they are."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def stage(self, pixels: torch.Tensor, tokens: torch.Tensor) -> Staged:
        """Start copying (from the reading thread)."""
        if self.stream is None:
            return Staged(pixels.to(self.device), tokens.to(self.device))
        pixels, tokens = (t if t.is_cuda or t.is_pinned() else t.pin_memory()
                          for t in (pixels, tokens))
        with torch.cuda.stream(self.stream):
            out = Staged(pixels.to(self.device, non_blocking=True),
                         tokens.to(self.device, non_blocking=True), torch.cuda.Event())
            out.ready.record(self.stream)
        return out

    def take(self, staged: Staged) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch on the device, for the compute's stream (which waits for the copy)."""
        if staged.ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(staged.ready)
            for t in (staged.pixels, staged.tokens):
                t.record_stream(current)  # allocated on the copy stream, used on this one
        return staged.pixels, staged.tokens
