"""Engine speed: this engine vs a naive per-step loop vs captum LayerIntegratedGradients.

Randomly initialised ViT-B-32, image + text, layer 9, 10 steps, batch 8,
2 threads, all measured in this one run, beside the machine's fp32 matmul rate.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.common import best_seconds, count_flops, matmul_gflops, run_child
from pipeline.engine.model import load_clip
from pipeline.engine.nibt import NIBT
from tests.oracles import naive_nibt

CAPTIONS = [
    "a red circle above a small blue square",
    "a photo of a dog on the beach",
    "two cats sleeping on a sofa",
    "a vintage photo of a green triangle",
] * 8


def captum_layer_ig(clip, images: torch.Tensor, tokens: torch.Tensor, layer: int, steps: int):
    """What a researcher reaches for: captum LayerIntegratedGradients at block ``layer``."""
    from captum.attr import LayerIntegratedGradients

    m = clip.model
    with torch.no_grad():
        e_i = F.normalize(m.encode_image(images), dim=-1)
        e_t = F.normalize(m.encode_text(tokens), dim=-1)

    def f_img(x):
        return (F.normalize(m.encode_image(x), dim=-1) * e_t.repeat(x.shape[0] // len(e_t), 1)).sum(-1)

    def f_txt(t):
        return (F.normalize(m.encode_text(t), dim=-1) * e_i.repeat(t.shape[0] // len(e_i), 1)).sum(-1)

    a_img = LayerIntegratedGradients(f_img, m.visual.transformer.resblocks[layer]).attribute(
        images, n_steps=steps, method="riemann_right", attribute_to_layer_input=True
    )
    a_txt = LayerIntegratedGradients(f_txt, m.transformer.resblocks[layer]).attribute(
        tokens, n_steps=steps, method="riemann_right", attribute_to_layer_input=True
    )
    return a_img, a_txt


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


RSS_CHILD = """
import json, torch
torch.set_num_threads(2)
from pipeline.engine.model import load_clip
from pipeline.engine.nibt import NIBT
clip = load_clip("ViT-B-32", precision="{precision}")
images = torch.randn({batch}, 3, 224, 224)
tokens = clip.tokenize(["a red circle above a small blue square"] * {batch})
NIBT(clip, layer=9, steps=10).attribute(images, tokens)
from pipeline.job.procstats import peak_rss_mb
print(json.dumps({{"peak_rss_mb": round(peak_rss_mb())}}))
"""


def run(batch: int = 8, steps: int = 10, layer: int = 9) -> dict:
    torch.set_num_threads(2)
    peak = matmul_gflops()
    clip = load_clip("ViT-B-32")
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, 224, 224, generator=g)
    tokens = clip.tokenize(CAPTIONS[:batch])
    engine = NIBT(clip, layer=layer, steps=steps)
    secs = best_seconds(lambda: engine.attribute(images, tokens))
    flops = count_flops(lambda: engine.attribute(images, tokens))
    fp32 = engine.attribute(images, tokens)

    naive_secs = best_seconds(
        lambda: naive_nibt(clip.model, images, tokens, layer, steps), repeats=1, warmup=0
    )
    captum_secs = best_seconds(
        lambda: captum_layer_ig(clip, images, tokens, layer, steps), repeats=2, warmup=1
    )

    bf = load_clip("ViT-B-32", precision="bf16")
    bf_engine = NIBT(bf, layer=layer, steps=steps)
    bf_secs = best_seconds(lambda: bf_engine.attribute(images, tokens))
    bf_attr = bf_engine.attribute(images, tokens)

    rate = batch / secs
    captum_rate = batch / captum_secs
    rss = {
        f"batch{b}_{p}": run_child(RSS_CHILD.format(batch=b, precision=p))["peak_rss_mb"]
        for b, p in ((8, "fp32"), (32, "fp32"), (32, "bf16"))
    }
    return {
        "setup": {
            "model": "ViT-B-32 (random weights)", "layer": layer, "steps": steps,
            "batch": batch, "threads": torch.get_num_threads(), "sides": "image+text",
            "torch": torch.__version__,
        },
        "matmul_fp32_gflops": round(peak, 1),
        "engine_fp32_pairs_per_s": round(rate, 3),
        "engine_fp32_gflop_per_pair": round(flops / batch / 1e9, 2),
        "engine_fp32_achieved_gflops": round(flops / secs / 1e9, 1),
        "engine_fp32_fraction_of_matmul_peak": round(flops / secs / 1e9 / peak, 3),
        "naive_loop_pairs_per_s": round(batch / naive_secs, 3),
        "captum_layer_ig_pairs_per_s": round(captum_rate, 3),
        "engine_fp32_vs_captum": round(rate / captum_rate, 2),
        "engine_fp32_vs_naive": round(rate * naive_secs / batch, 2),
        "engine_bf16_pairs_per_s": round(batch / bf_secs, 3),
        "engine_bf16_vs_captum": round(batch / bf_secs / captum_rate, 2),
        "bf16_pearson_vs_fp32_image": round(_pearson(bf_attr.image, fp32.image), 5),
        "bf16_pearson_vs_fp32_text": round(_pearson(bf_attr.text, fp32.text), 5),
        "peak_rss_mb": rss,
    }
