"""Decoded pairs -> result values: the engine's attributions plus the paper's metrics.

Runs a batch through ``NIBT.attribute`` and ``metrics.confidence`` and turns
tensors into per-row values. A batch that does not fit in memory is split in
halves (and later batches start at the size that fitted); a row that fails on
its own gets status ``error`` with the message, and the others go on.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.metrics import confidence
from pipeline.model import Clip
from pipeline.nibt import NIBT

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
    if isinstance(e, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(e).lower()
    # CPU allocator, CUDA caching allocator, and oneDNN when its scratch allocation fails
    signs = ("out of memory", "can't allocate", "could not create a primitive")
    return isinstance(e, RuntimeError) and any(s in text for s in signs)


def release_memory() -> None:
    """Hand freed memory back before a retry: CUDA's cache, and glibc's free lists
    (without ``malloc_trim`` the failed attempt's memory stays counted against a
    data limit and the smaller retry fails too)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):  # not glibc
        ctypes.CDLL("libc.so.6").malloc_trim(0)


#: Bounds of the automatic batch size (pairs).
MIN_AUTO_BATCH, MAX_AUTO_BATCH = 8, 1024


def auto_batch_size(engine: NIBT) -> int:
    """Pairs per batch when none is set: one chunk's worth of the engine's memory
    budget, within 8 (small batches waste little on CPU) and 1,024 (beyond it the
    H200 gained nothing worth the host memory and latency)."""
    return int(min(MAX_AUTO_BATCH, max(MIN_AUTO_BATCH, engine.pairs_per_chunk())))


class Attributor:
    """Attribute and score batches of preprocessed pairs with one engine."""

    def __init__(self, clip: Clip, engine: NIBT) -> None:
        self.clip = clip
        self.engine = engine
        self.max_pairs: int | None = None  # learnt from out-of-memory splits
        self.splits = 0

    def _batch(self, pixels: torch.Tensor, tokens: torch.Tensor) -> list[PairResult]:
        attr = self.engine.attribute(pixels, tokens)
        conf = confidence(self.clip, pixels, tokens, attr)
        img = attr.image.flatten(1).cpu().numpy().astype(np.float32)
        cls = attr.image_cls.cpu().numpy()
        txt = attr.text.cpu().numpy().astype(np.float32)
        eot = attr.eot.cpu().numpy()
        cols = {k: getattr(conf, k).cpu().numpy() for k in
                ("img_conf_drop", "img_conf_incr", "txt_conf_drop", "txt_conf_incr")}
        score = attr.score.cpu().numpy()
        out = []
        for i in range(len(score)):
            n = int(eot[i]) + 1
            t = txt[i, :n]
            mass_img = float(np.abs(img[i]).sum() + abs(cls[i]))
            mass_txt = float(np.abs(t).sum())
            out.append(PairResult(
                score=float(score[i]),
                image_attr=img[i],
                image_cls_attr=float(cls[i]),
                image_cls_share=abs(float(cls[i])) / mass_img if mass_img > 0 else 0.0,
                tokens=self.clip.pieces(tokens[i, :n].tolist()),
                text_attr=t.copy(),
                text_eot_share=abs(float(t[-1])) / mass_txt if mass_txt > 0 else 0.0,
                **{k: float(v[i]) for k, v in cols.items()},
            ))
        return out

    def _fit(self, pixels: torch.Tensor, tokens: torch.Tensor) -> list[PairResult]:
        n = pixels.shape[0]
        if self.max_pairs is not None and n > self.max_pairs:
            k = self.max_pairs
            return self._fit(pixels[:k], tokens[:k]) + self._fit(pixels[k:], tokens[k:])
        try:
            return self._batch(pixels, tokens)
        except Exception as e:
            if not is_out_of_memory(e) or n == 1:
                raise
        # Retry outside the except block: its traceback would keep the failed
        # attempt's tensors alive during the retry.
        release_memory()
        self.max_pairs = max(1, n // 2)
        self.splits += 1
        log.warning("batch of %d pairs did not fit in memory; retrying in halves", n)
        return self._fit(pixels, tokens)

    def __call__(
        self, pixels: torch.Tensor, tokens: torch.Tensor
    ) -> list[PairResult | Exception]:
        """One result per pair; a pair that fails on its own yields its exception."""
        if pixels.shape[0] == 0:
            return []
        try:
            return list(self._fit(pixels, tokens))
        except Exception as e:
            if pixels.shape[0] == 1:
                return [e]
            log.warning("batch failed (%s: %s); retrying pair by pair", type(e).__name__, e)
        release_memory()
        out: list[PairResult | Exception] = []
        for i in range(pixels.shape[0]):
            out.extend(self(pixels[i : i + 1], tokens[i : i + 1]))
        return out
