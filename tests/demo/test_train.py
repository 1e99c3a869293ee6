"""Training is reproducible: the same seed gives byte-identical weights."""

from __future__ import annotations

import json

from pipeline.demo.train import lr_at, train


def test_a_few_steps_twice_give_identical_weights(tmp_path):
    kw = dict(seed=3, steps=3, batch=16, twins_per_batch=2, eval_every=100, n_heldout=32,
              n_heldout_twins=8)
    a = train(tmp_path / "a", **kw)
    b = train(tmp_path / "b", **kw)
    wa = (tmp_path / "a" / "nibt-demo.safetensors").read_bytes()
    assert wa == (tmp_path / "b" / "nibt-demo.safetensors").read_bytes()
    assert a["weights_sha256"] == b["weights_sha256"]
    c = train(tmp_path / "c", **{**kw, "seed": 4})
    assert c["weights_sha256"] != a["weights_sha256"]
    facts = json.loads((tmp_path / "a" / "nibt-demo.json").read_text())
    assert facts["steps"] == 3 and facts["seed"] == 3


def test_schedule_warms_up_then_decays():
    lrs = [lr_at(s, 100, 1.0, 0.05) for s in range(100)]
    assert lrs[0] == 0.2 and lrs[4] == 1.0
    assert all(x >= y for x, y in zip(lrs[4:], lrs[5:])) and lrs[-1] < 0.01
