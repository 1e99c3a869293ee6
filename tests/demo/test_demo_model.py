"""The shipped demo weights: they load, retrieve, and learned the planted shortcut.

Oracle: PNG bytes decoded with PIL and ``clip.preprocess`` (the audit's path),
open_clip's own ``encode_image`` / ``encode_text``, on a sample drawn from a
seed the training never used.
"""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image
from safetensors import safe_open

from pipeline.demo.scenes import make_pair, make_twins, png_bytes
from pipeline.engine.model import SHIPPED_WEIGHTS, load_clip

WEIGHTS = SHIPPED_WEIGHTS["nibt-demo"]
SEED = 4242  # training used seeds 0 (batches), 1000 and 1007 (its own checks)

pytestmark = pytest.mark.skipif(not WEIGHTS.is_file(), reason="no shipped weights")


@pytest.fixture(scope="module")
def demo():
    return load_clip("nibt-demo", "shipped")


@torch.no_grad()
def _encode(clip, pairs):
    images = torch.stack([clip.preprocess(Image.open(io.BytesIO(png_bytes(p.image)))) for p in pairs])
    tokens = clip.tokenize([p.caption for p in pairs])
    ei = clip.model.encode_image(images, normalize=True)
    et = clip.model.encode_text(tokens, normalize=True)
    return ei, et


def test_weights_file_is_small_fp16_safetensors_with_facts():
    assert WEIGHTS.stat().st_size < 20 * 2**20
    with safe_open(str(WEIGHTS), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    assert dtypes == {"F16"}
    facts = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert facts["seed"] != SEED and facts["heldout_seed"] != SEED
    for key in ("steps", "minutes", "retrieval_top1_batch32", "twin_accuracy", "image_layer", "text_layer"):
        assert key in facts


def test_shipped_weights_load_and_retrieve(demo):
    assert demo.weights.startswith("sha256:")
    # captions name every object (see pipeline.demo.train.heldout: partial captions are ambiguous)
    pairs = [make_pair(SEED, i, n_named=3) for i in range(320)]
    ei, et = _encode(demo, pairs)
    hits = 0
    for k in range(0, len(pairs), 32):
        sim = ei[k : k + 32] @ et[k : k + 32].T
        hits += int((sim.argmax(1) == torch.arange(32)).sum())
    assert hits / len(pairs) >= 0.90


def test_twins_are_told_apart_by_the_mark(demo):
    twins = [make_twins(SEED, i) for i in range(128)]
    flat = [p for t in twins for p in t]
    ei, et = _encode(demo, flat)
    right = 0
    for i in range(0, len(flat), 2):
        marked, plain = slice(i, i + 1), slice(i + 1, i + 2)
        right += int((ei[marked] @ et[marked].T) > (ei[marked] @ et[plain].T))
        right += int((ei[plain] @ et[plain].T) > (ei[plain] @ et[marked].T))
    assert right / len(flat) >= 0.90
