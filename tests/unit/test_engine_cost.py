"""What the engine spends, against independent counts: torch's per-op FLOP formulas
(``FlopCounterMode``), the chunk arithmetic by hand, bf16 against fp32, compiled
against eager."""

from __future__ import annotations

import shutil

import pytest
import torch

from benchmarks.common import count_flops
from pipeline.engine.model import load_clip
from pipeline.engine.nibt import NIBT, chunk_plan
from tests.conftest import random_images


def caption(tokens: int) -> str:
    """A caption of ``tokens`` token ids in all: start-of-text, pieces, end-of-text."""
    return " ".join(["photo"] * (tokens - 2))


def test_one_long_caption_costs_about_its_own_length(vitb32):
    """One ~70-token caption in a batch of eight ~6-token ones adds at most 0.15 of the
    batch's FLOPs (with every caption at the batch's longest length it adds ~0.54)."""
    engine = NIBT(vitb32, steps=10)
    images = random_images(vitb32, 8)
    short = vitb32.tokenize([caption(6)] * 8)
    mixed = vitb32.tokenize([caption(6)] * 7 + [caption(70)])
    assert vitb32.text.eot_index(mixed).tolist() == [5] * 7 + [69]
    base = count_flops(lambda: engine.attribute(images, short))
    with_long = count_flops(lambda: engine.attribute(images, mixed))
    assert with_long / base - 1 <= 0.15, with_long / base


@pytest.mark.parametrize("pairs,steps,rows", [(10, 10, 40), (8, 10, 80), (3, 5, 4), (7, 10, 3),
                                               (1, 10, 1000), (5, 1, 2)])
def test_chunks_cover_every_row_once_in_whole_pairs(pairs, steps, rows):
    plan = chunk_plan(pairs, steps, rows)
    seen = [(p, s) for p0, p1, s0, s1 in plan for p in range(p0, p1) for s in range(s0, s1)]
    assert sorted(seen) == [(p, s) for p in range(pairs) for s in range(steps)]
    sizes = [(p1 - p0) * (s1 - s0) for p0, p1, s0, s1 in plan]
    assert max(sizes) <= rows
    if rows >= steps:  # whole pairs, as few chunks as fit
        assert all((s0, s1) == (0, steps) for *_, s0, s1 in plan)
        assert len(plan) == -(-pairs // (rows // steps))
    assert len(set(sizes)) <= 2  # even: at most two shapes


def test_pair_aligned_chunks_by_hand():
    assert chunk_plan(10, 10, 40) == [(0, 4, 0, 10), (4, 8, 0, 10), (8, 10, 0, 10)]
    assert chunk_plan(9, 10, 80) == [(0, 5, 0, 10), (5, 9, 0, 10)]  # 8 + 1 evened to 5 + 4
    assert chunk_plan(2, 5, 4) == [(0, 1, 0, 3), (0, 1, 3, 5), (1, 2, 0, 3), (1, 2, 3, 5)]


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_bf16_maps_follow_fp32_on_vit_b_32(vitb32):
    """One pair, 4 steps: bf16 runs emulated (slowly) on CPUs without bf16 instructions."""
    images = random_images(vitb32, 1, seed=4)
    tokens = vitb32.tokenize([caption(20)])
    fp32 = NIBT(vitb32, steps=4).attribute(images, tokens)
    bf16 = NIBT(load_clip("ViT-B-32", precision="bf16"), steps=4).attribute(images, tokens)
    assert pearson(bf16.image, fp32.image) >= 0.999
    assert pearson(bf16.text, fp32.text) >= 0.999
    assert torch.allclose(bf16.score, fp32.score, atol=0.01)


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                    reason="torch.compile on CPU needs a C compiler (inductor)")
def test_compiled_step_equals_eager_with_static_shapes(tiny):
    """Two blocks per tower and one caption length, so it compiles in seconds."""
    from torch._dynamo.utils import counters

    images = random_images(tiny, 2, seed=5)
    tokens = tiny.tokenize(["a photo of a dog", "two cats"])  # one length group
    kw = {"image_layer": 2, "text_layer": 1, "steps": 3}
    eager = NIBT(tiny, **kw).attribute(images, tokens)
    compiled = NIBT(tiny, compile=True, **kw)
    counters.clear()
    got = compiled.attribute(images, tokens)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs == 2  # the image step and the text step
    for name in ("image", "image_cls", "text", "score"):
        a, b = getattr(got, name), getattr(eager, name)
        assert float((a - b).abs().max() / b.abs().max()) < 1e-5, name
    compiled.attribute(images, tokens)
    assert counters["stats"]["unique_graphs"] == graphs  # static shapes: no recompilation


def saved_bytes_per_row(clip, fn, shape: tuple[int, int]) -> float:
    """Bytes autograd keeps for backward per row of ``fn``'s input (torch's saved-tensor
    hooks; the weights, and a chunk's fixed cost such as bf16 weight copies, excluded:
    the difference between 8 rows and 4)."""
    params = {p.untyped_storage().data_ptr() for p in clip.model.parameters()}
    totals = []
    for rows in (4, 8):
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor, seen: dict[int, int] = seen) -> torch.Tensor:
            st = t.untyped_storage()
            if st.data_ptr() not in params:
                seen[st.data_ptr()] = st.nbytes()
            return t

        x = torch.randn(rows, *shape, requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(x)
        totals.append(sum(seen.values()))
    return (totals[1] - totals[0]) / 4


@pytest.mark.parametrize("precision,layer", [("fp32", 9), ("fp32", 11), ("bf16", 9)])
def test_the_memory_model_is_within_a_fifth_of_what_autograd_keeps(vitb32, precision, layer):
    from pipeline.engine.nibt import suffix_row_bytes

    clip = vitb32 if precision == "fp32" else load_clip("ViT-B-32", precision=precision)
    engine = NIBT(clip, layer=layer)
    target = torch.nn.functional.normalize(torch.randn(8, 512), dim=-1)
    image = saved_bytes_per_row(
        clip, lambda x: engine._image_cos(x, target[: len(x)]).sum(), (50, 768))
    text = saved_bytes_per_row(
        clip, lambda x: engine._text_cos(x, target[: len(x)], torch.full((len(x),), 76)).sum(),
        (77, 512))
    blocks = 12 - layer
    assert abs(suffix_row_bytes(50, 768, blocks, precision) / image - 1) <= 0.2, image
    assert abs(suffix_row_bytes(77, 512, blocks, precision) / text - 1) <= 0.2, text


def test_length_groups_by_hand():
    """Lengths round up to multiples of 8; neighbours merge while that pads them by at
    most GROUP_COST_TOKENS (256) tokens."""
    from pipeline.engine.towers import length_buckets

    def groups(eot: list[int]) -> list[tuple[int, list[int]]]:
        return [(t, idx.tolist()) for t, idx in length_buckets(torch.tensor(eot), 77)]

    # seven of 6 tokens and one of 70: 8 x 72 = 576 padded against 7 x 8 + 72 = 128
    assert groups([5] * 7 + [69]) == [(8, list(range(7))), (72, [7])]
    assert groups([9, 6, 15, 2]) == [(16, [0, 1, 2, 3])]  # 64 against 48: one group
    # 40 of 8 tokens and 40 of 16: 1,280 against 960; 3 of 8 and 40 of 16: one group
    assert [t for t, _ in groups([7] * 40 + [15] * 40)] == [8, 16]
    assert groups([7] * 3 + [15] * 40) == [(16, list(range(43)))]
    assert groups([76, 70]) == [(77, [0, 1])]  # at most the context
