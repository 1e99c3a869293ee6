"""How far each integration schedule's attributions are from adding up to the score change.

NIBT's attributions at a bottleneck ``h`` approximate ``cos(S(h)) - cos(S(0))`` (image:
patches plus the class token; text: every token). This section measures, on a randomly
initialised ViT-B-32 (layer 9, image + text, 4 pairs), the ratio of the attributions' sum
to that gap for the uniform schedule (the paper's) and the log schedule, at 10 and
200 steps. A ratio of 1 is complete. Not a speed figure: it backs the claim in
docs/engine.md that the uniform schedule is not complete at any practical step count.
"""

from __future__ import annotations

import torch

from pipeline.engine.model import load_clip
from pipeline.engine.nibt import NIBT
from tests.oracles import image_prefix, image_suffix, text_prefix, text_suffix

LAYER = 9
CAPTIONS = ["a red circle above a small blue square", "a photo of a dog",
            "two cats sleeping on a sofa next to a window", "vintage"]


def _gaps(clip, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair: cos(S(h)) - cos(S(0)) for the image and the text bottleneck."""
    m = clip.model
    cos = torch.nn.functional.cosine_similarity
    with torch.no_grad():
        e_i, e_t = m.encode_image(images), m.encode_text(tokens)
        h_i, h_t = image_prefix(m, images, LAYER), text_prefix(m, tokens, LAYER)
        img = cos(e_i, e_t) - cos(image_suffix(m, torch.zeros_like(h_i), LAYER), e_t)
        txt = cos(e_t, e_i) - cos(text_suffix(m, torch.zeros_like(h_t), tokens, LAYER), e_i)
    return img, txt


def run() -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    clip = load_clip("ViT-B-32")
    h, w = clip.image.image_size
    images = torch.randn(4, 3, h, w, generator=torch.Generator().manual_seed(3))
    tokens = clip.tokenize(CAPTIONS[:4])
    img_gap, txt_gap = _gaps(clip, images, tokens)
    out: dict = {"model": "ViT-B-32 (random weights)", "layer": LAYER, "pairs": 4,
                 "ratio": "sum of attributions / (cos(S(h)) - cos(S(0))), per pair"}
    for schedule in ("uniform", "log"):
        for steps in (10, 200):
            a = NIBT(clip, layer=LAYER, steps=steps, schedule=schedule).attribute(images, tokens)
            img = (a.image.flatten(1).sum(1) + a.image_cls) / img_gap
            txt = a.text.sum(1) / txt_gap
            out[f"{schedule}_{steps}"] = {
                "image_ratio": [round(float(r), 4) for r in img],
                "text_ratio": [round(float(r), 4) for r in txt],
            }
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
