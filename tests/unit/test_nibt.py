"""The batched engine against independent oracles (a plain loop, captum)."""

from __future__ import annotations

import pytest
import torch

from pipeline.engine.nibt import NIBT, schedule_nodes
from tests.conftest import CAPTIONS, random_images
from tests.oracles import (
    captum_nibt,
    image_prefix,
    image_suffix,
    naive_nibt,
    text_prefix,
    text_suffix,
)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("model", ["vitb32", "vitb16"])
def test_engine_equals_plain_loop(model, request):
    clip = request.getfixturevalue(model)
    images = random_images(clip, 2)
    tokens = clip.tokenize(CAPTIONS[:2])
    attr = NIBT(clip, layer=9, steps=3).attribute(images, tokens)
    img, txt, score = naive_nibt(clip.model, images, tokens, layer=9, steps=3)
    gh, gw = clip.image.grid
    assert attr.image.shape == (2, gh, gw)
    assert (gh, gw) == ((7, 7) if model == "vitb32" else (14, 14))
    assert rel_err(attr.image.flatten(1), img[:, 1:]) < 1e-5
    assert rel_err(attr.image_cls, img[:, 0]) < 1e-5
    assert rel_err(attr.text, txt) < 1e-5
    assert rel_err(attr.score, score) < 1e-5


def test_engine_equals_captum_integrated_gradients(vitb32):
    images = random_images(vitb32, 2, seed=1)
    tokens = vitb32.tokenize(CAPTIONS[1:3])
    attr = NIBT(vitb32, layer=8, steps=4).attribute(images, tokens)
    img, txt = captum_nibt(vitb32.model, images, tokens, layer=8, steps=4)
    assert rel_err(attr.image.flatten(1), img[:, 1:]) < 1e-5
    assert rel_err(attr.text, txt) < 1e-5


def test_negative_layer_counts_from_top(vitb32):
    assert NIBT(vitb32, layer=-3).image_layer == 9
    assert NIBT(vitb32, layer=-3).text_layer == 9
    assert NIBT(vitb32).image_layer == 9  # default: 0.75 of the depth
    with pytest.raises(ValueError, match="out of range"):
        NIBT(vitb32, layer=12)


def test_chunking_does_not_change_results(tiny):
    images = random_images(tiny, 3)
    tokens = tiny.tokenize(CAPTIONS[:3])
    whole = NIBT(tiny, layer=2, steps=5, chunk_rows=1000).attribute(images, tokens)
    chunked = NIBT(tiny, layer=2, steps=5, chunk_rows=4).attribute(images, tokens)
    assert rel_err(chunked.image, whole.image) < 1e-5
    assert rel_err(chunked.text, whole.text) < 1e-5


def test_text_is_invariant_to_padding_and_batch_company(tiny):
    images = random_images(tiny, 2)
    short = tiny.tokenize([CAPTIONS[1]])
    engine = NIBT(tiny, layer=1, steps=4)
    alone = engine.attribute(images[:1], short)
    # in a batch whose longest caption is much longer (text is cut at its end-of-text)
    batch = engine.attribute(images, tiny.tokenize([CAPTIONS[1], CAPTIONS[2]]))
    assert rel_err(batch.text[0], alone.text[0]) < 1e-5
    assert rel_err(batch.image[0], alone.image[0]) < 1e-5
    # garbage after end-of-text cannot matter under a causal mask
    dirty = short.clone()
    eot = int(alone.eot[0])
    dirty[0, eot + 1 :] = torch.randint(1, 40000, (short.shape[1] - eot - 1,))
    again = engine.attribute(images[:1], dirty)
    assert rel_err(again.text[0], alone.text[0]) < 1e-5
    assert torch.all(alone.text[0, eot + 1 :] == 0)
    assert torch.all(alone.text[0, : eot + 1] != 0)


def test_permuting_the_batch_permutes_the_results(tiny):
    images = random_images(tiny, 4)
    tokens = tiny.tokenize(CAPTIONS)
    engine = NIBT(tiny, layer=2, steps=3)
    base = engine.attribute(images, tokens)
    perm = torch.tensor([2, 0, 3, 1])
    shuffled = engine.attribute(images[perm], tokens[perm])
    for name in ("image", "text", "score"):
        assert rel_err(getattr(shuffled, name), getattr(base, name)[perm]) < 1e-5
    # pairing is right: a pair's text map depends on its own image, not the batch's
    swapped = engine.attribute(images[[1, 0, 2, 3]], tokens)
    assert rel_err(swapped.text[0], base.text[0]) > 1e-3


def test_repeated_runs_are_bit_identical(tiny):
    images = random_images(tiny, 3)
    tokens = tiny.tokenize(CAPTIONS[:3])
    engine = NIBT(tiny, layer=2, steps=4, chunk_rows=5)
    a, b = engine.attribute(images, tokens), engine.attribute(images, tokens)
    for name in ("image", "image_cls", "text", "score"):
        assert torch.equal(getattr(a, name), getattr(b, name))


def test_uniform_schedule_is_the_right_riemann_sum():
    lam, w = schedule_nodes("uniform", 4)
    assert lam.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert w.tolist() == [0.25] * 4


def test_log_schedule_is_complete(vitb32):
    """Attributions add up to cos(S(h)) - cos(S(0)) (within 2%) on the log schedule."""
    images = random_images(vitb32, 1, seed=3)
    tokens = vitb32.tokenize(CAPTIONS[:1])
    attr = NIBT(vitb32, layer=9, steps=200, schedule="log").attribute(images, tokens)
    m = vitb32.model
    with torch.no_grad():
        e_i, e_t = m.encode_image(images), m.encode_text(tokens)
        h_i, h_t = image_prefix(m, images, 9), text_prefix(m, tokens, 9)
        cos = torch.nn.functional.cosine_similarity
        img_gap = cos(e_i, e_t) - cos(image_suffix(m, torch.zeros_like(h_i), 9), e_t)
        txt_gap = cos(e_t, e_i) - cos(text_suffix(m, torch.zeros_like(h_t), tokens, 9), e_i)
    img_sum = attr.image.sum() + attr.image_cls.sum()
    assert abs(float(img_sum - img_gap) / float(img_gap)) < 0.02
    assert abs(float(attr.text.sum() - txt_gap) / float(txt_gap)) < 0.02


def test_mismatched_batch_is_refused(tiny):
    with pytest.raises(ValueError, match="2 images but 1 captions"):
        NIBT(tiny).attribute(random_images(tiny, 2), tiny.tokenize(["a"]))


def test_pairs_per_chunk_and_auto_batch_follow_the_memory_model(vitb32):
    """Hand arithmetic of the documented per-row memory (per token and unit of width:
    40 bytes per full block and 13 for the last, fp32; 36 and 11, bf16) for ViT-B-32 at
    layer 9 (3 blocks above): image rows 50*768*(2*40 + 13) = 3,571,200 B, text rows
    (full context) 77*512*93 = 3,666,432 B: the text tower binds."""
    from pipeline.engine.model import load_clip
    from pipeline.job.attribute import auto_batch_size

    small = NIBT(vitb32, layer=9, steps=10, memory_budget_mb=512)
    assert small.pairs_per_chunk() == (512 * 2**20 // 3_666_432) // 10 == 14
    assert auto_batch_size(NIBT(vitb32, layer=9, steps=10, memory_budget_mb=200)) == 8  # >= 8
    big = NIBT(vitb32, layer=9, steps=10, memory_budget_mb=30_000)
    assert big.pairs_per_chunk() == auto_batch_size(big) == 857
    assert auto_batch_size(NIBT(vitb32, layer=9, steps=10, memory_budget_mb=10**6)) == 1024
    bf16 = NIBT(load_clip("ViT-B-32", None, precision="bf16"), layer=9, steps=10,
                memory_budget_mb=30_000)
    assert bf16.pairs_per_chunk() == (30_000 * 2**20 // (77 * 512 * (2 * 36 + 11))) // 10 == 961
