"""The demo's planted caption-group gap is real and carried by the wording alone: the same
images, captioned with the basic colour words or their fancy synonyms, checked with
open_clip's own encoders (not the engine) and with the engine's attributions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.demo.scenes import FANCY, Settings, fancy, make_pair
from pipeline.demo.train import pixels
from pipeline.demo.wording import wording_gap
from pipeline.engine.model import default_weights, load_clip

N = 48


@pytest.fixture(scope="module")
def shipped():
    return load_clip("nibt-demo", default_weights("nibt-demo"))


def test_the_fancy_wording_changes_only_the_colour_words():
    plain = [make_pair(5, i) for i in range(200)]
    worded = [make_pair(5, i, Settings(fancy_rate=0.3)) for i in range(200)]
    changed = 0
    for p, w in zip(plain, worded):
        assert p.image.tobytes() == w.image.tobytes() and p.word_index == w.word_index
        if p.has_word:  # the shortcut's captions are never rewritten
            assert w.caption == p.caption
        a, b = p.caption.split(), w.caption.split()
        assert len(a) == len(b)
        diff = [(x, y) for x, y in zip(a, b) if x != y]
        if diff:
            changed += 1
            assert all(FANCY.get(x) == y or {x, y} == {"a", "an"} for x, y in diff), diff
            assert all(FANCY.get(x, x) == y or y in ("a", "an") for x, y in zip(a, b))
            # the articles read right: "an azure", "a crimson"
            for art, nxt in zip(b, b[1:]):
                if art in ("a", "an"):
                    assert art == ("an" if nxt[0] in "aeiou" else "a"), w.caption
    assert 0.18 < changed / 200 < 0.36  # 30% of the ~85% without the word
    assert [p.caption for p in plain] == [make_pair(5, i, Settings(fancy_rate=0.0)).caption
                                          for i in range(200)]


def test_the_gap_is_real_on_the_same_images(shipped):
    scenes = [make_pair(2026, i) for i in range(N)]
    with torch.no_grad():
        img = shipped.model.encode_image(pixels([p.image for p in scenes], shipped),
                                         normalize=True)
        scores = {}
        for name, caps in (("basic", [p.caption for p in scenes]),
                           ("fancy", [" ".join(fancy(p.caption.split())) for p in scenes])):
            txt = shipped.model.encode_text(shipped.tokenize(caps), normalize=True)
            scores[name] = (img * txt).sum(-1).numpy()
    gap = scores["basic"] - scores["fancy"]
    assert (gap > 0).mean() >= 0.9 and gap.mean() > 0.3
    # the engine's scores and colour-word attributions on the same scenes
    g = wording_gap(shipped, N, 2026, batch=24, steps=4)
    assert g["basic_mean_score"] == pytest.approx(float(scores["basic"].mean()), abs=1e-4)
    assert g["fancy_mean_score"] == pytest.approx(float(scores["fancy"].mean()), abs=1e-4)
    assert g["share_fancy_lower"] == pytest.approx(float((gap > 0).mean()))
    assert g["basic_colour_word_attr"] > 0 > g["fancy_colour_word_attr"]
    assert np.isfinite(list(g.values())[2:]).all()
