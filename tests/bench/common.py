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


def make_pairs(n: int, seed: int, size: int) -> pa.Table:
    """``n`` rows of id, a ``size`` x ``size`` JPEG (smooth noise) and a 4-9 word caption."""
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for _ in range(n):
        base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((size, size), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        images.append(buf.getvalue())
        captions.append("a " + " ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))))
    return pa.table({"id": [f"{seed}-{i}" for i in range(n)], "image": images, "caption": captions})


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
