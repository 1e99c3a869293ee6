"""Confidence drop / increase against a hand computation with open_clip's own forward."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from pipeline.engine.metrics import confidence, minmax
from pipeline.engine.nibt import NIBT
from tests.conftest import CAPTIONS, random_images


def hand_image_metrics(model, image, grid, text_emb):
    flat = grid.flatten().tolist()
    lo, hi = min(flat), max(flat)
    m = (grid - lo) / (hi - lo)
    up = F.interpolate(m[None, None], size=image.shape[-2:], mode="bilinear", align_corners=False)
    with torch.no_grad():
        s0 = F.cosine_similarity(model.encode_image(image[None]), text_emb[None])[0]
        s1 = F.cosine_similarity(model.encode_image(image[None] * up[0]), text_emb[None])[0]
    return 100 * max(0.0, float(s0 - s1)), 100.0 * float(s1 > s0)


def hand_text_metrics(model, tokens, text_attr, image_emb):
    eot = int(tokens.argmax())
    vals = text_attr[1:eot].tolist()
    lo, hi = min(vals), max(vals)
    emb = model.token_embedding(tokens[None]).clone()
    for j in range(1, eot):
        emb[0, j] *= (text_attr[j] - lo) / (hi - lo)

    def encode(e):
        x = e + model.positional_embedding
        x = model.transformer(x, attn_mask=model.attn_mask)
        return model.ln_final(x)[0, eot] @ model.text_projection

    with torch.no_grad():
        u0 = F.cosine_similarity(encode(model.token_embedding(tokens[None])), image_emb, dim=0)
        u1 = F.cosine_similarity(encode(emb), image_emb, dim=0)
    return 100 * max(0.0, float(u0 - u1)), 100.0 * float(u1 > u0)


def test_metrics_match_hand_computation(tiny):
    images = random_images(tiny, 4, seed=5)
    tokens = tiny.tokenize(CAPTIONS)
    attr = NIBT(tiny, layer=1, steps=4).attribute(images, tokens)
    conf = confidence(tiny, images, tokens, attr)
    m = tiny.model
    with torch.no_grad():
        e_i, e_t = m.encode_image(images), m.encode_text(tokens)
    for b in range(4):
        drop, incr = hand_image_metrics(m, images[b], attr.image[b], e_t[b])
        assert abs(float(conf.img_conf_drop[b]) - drop) < 1e-3
        assert float(conf.img_conf_incr[b]) == incr
        drop, incr = hand_text_metrics(m, tokens[b], attr.text[b], e_i[b])
        assert abs(float(conf.txt_conf_drop[b]) - drop) < 1e-3
        assert float(conf.txt_conf_incr[b]) == incr


def test_constant_map_and_empty_caption_score_zero(tiny):
    images = random_images(tiny, 2)
    tokens = tiny.tokenize(["", "a photo of a dog"])
    attr = NIBT(tiny, layer=1, steps=2).attribute(images, tokens)
    flat = dataclasses.replace(attr, image=torch.full_like(attr.image, 0.3))
    conf = confidence(tiny, images, tokens, flat)
    assert conf.img_conf_drop.tolist() == [0.0, 0.0]
    assert conf.img_conf_incr.tolist() == [0.0, 0.0]
    assert conf.txt_conf_drop[0] == 0 and conf.txt_conf_incr[0] == 0


def test_minmax_with_mask():
    v = torch.tensor([[5.0, 1.0, 3.0, 9.0], [2.0, 2.0, 2.0, 2.0]])
    mask = torch.tensor([[False, True, True, False], [True, True, True, True]])
    assert minmax(v, mask).tolist() == [[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
