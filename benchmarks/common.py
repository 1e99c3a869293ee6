"""Timing, FLOP counting, memory and input helpers shared by the benchmarks."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

WORDS = ["red", "blue", "green", "circle", "square", "photo", "small", "dog", "beach", "vintage"]


def jpeg_pairs(
    n: int, seed: int, size: tuple[int, int], base: tuple[int, int] = (8, 8),
    resample: int = Image.BILINEAR, prefix: str = "a ", words: tuple[int, int] = (3, 9),
) -> tuple[list[bytes], list[str]]:
    """``n`` JPEGs of ``size`` (w, h) upsampled from a random ``base`` (h, w) grid of
    colours (smooth noise), and captions of ``prefix`` plus ``words`` (low, high
    exclusive) random words."""
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for _ in range(n):
        grid = rng.integers(0, 255, (*base, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(grid).resize(size, resample).save(buf, format="JPEG", quality=90)
        images.append(buf.getvalue())
        captions.append(prefix + " ".join(rng.choice(WORDS, size=int(rng.integers(*words)))))
    return images, captions


def make_pairs(n: int, seed: int, size: int) -> pa.Table:
    """``n`` rows of id, a ``size`` x ``size`` JPEG (smooth noise) and a 4-9 word caption."""
    images, captions = jpeg_pairs(n, seed, (size, size))
    return pa.table({"id": [f"{seed}-{i}" for i in range(n)], "image": images, "caption": captions})


def decode_rate(decoder, images: list, captions: list, batch: int) -> float:
    """Images/s of ``decoder`` over ``images`` in batches of ``batch``, after one
    untimed batch of 64; closes the decoder."""
    try:
        decoder.decode(images[:64], captions[:64])
        t = time.perf_counter()
        for s in range(0, len(images), batch):
            decoder.decode(images[s : s + batch], captions[s : s + batch])
        return len(images) / (time.perf_counter() - t)
    finally:
        decoder.close()


def best_seconds(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Fastest of ``repeats`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def matmul_gflops(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """This machine's dense matmul rate (GFLOP/s) at the current thread count."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    secs = best_seconds(lambda: a @ b, repeats=repeats, warmup=2)
    return 2 * n**3 / secs / 1e9


class _NoModules:
    """FlopCounterMode's module tracker trips over autograd.grad on leaves; count globally."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *args):
        return None


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations (matmuls, convolutions, attention) of one call."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModules()
    with counter:
        fn()
    return counter.get_total_flops()


def run_child(code: str, timeout: float = 900) -> dict:
    """Run ``code`` in a fresh Python (so peak RSS is its own); it prints one JSON line."""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
