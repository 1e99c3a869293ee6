"""Engine pairs/s for larger towers, fp32 vs bf16 (random weights, 10 steps, 2 threads).

ViT-B-16 (14x14 grid) and ViT-L-14 (16x16 grid, 24 image blocks): the same
engine, default bottleneck (0.75 of each tower's depth), image + text.
"""

from __future__ import annotations

import torch

from benchmarks.common import best_seconds, count_flops, matmul_gflops
from pipeline.engine.model import load_clip
from pipeline.engine.nibt import NIBT

CAPTION = "a photo of a small red circle above a blue square on the beach"


def run() -> dict:
    torch.set_num_threads(2)
    peak = matmul_gflops()
    out: dict = {"matmul_fp32_gflops": round(peak, 1)}
    for name, batch in (("ViT-B-16", 4), ("ViT-L-14", 2)):
        g = torch.Generator().manual_seed(0)
        row: dict = {"batch": batch}
        for precision in ("fp32", "bf16"):
            clip = load_clip(name, None, precision=precision)
            h, w = clip.image.image_size
            images = torch.randn(batch, 3, h, w, generator=g)
            tokens = clip.tokenize([CAPTION] * batch)
            engine = NIBT(clip, steps=10)
            secs = best_seconds(lambda e=engine, x=images, t=tokens: e.attribute(x, t), repeats=2)
            row[f"{precision}_pairs_per_s"] = round(batch / secs, 3)
            if precision == "fp32":
                flops = count_flops(lambda e=engine, x=images, t=tokens: e.attribute(x, t))
                row["gflop_per_pair"] = round(flops / batch / 1e9, 1)
                row["fp32_fraction_of_matmul_peak"] = round(flops / secs / 1e9 / peak, 3)
            row["layers"] = [engine.image_layer, engine.text_layer]
            del clip, engine
        row["bf16_speedup"] = round(row["bf16_pairs_per_s"] / row["fp32_pairs_per_s"], 2)
        out[name] = row
    return out
