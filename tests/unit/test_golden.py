"""Golden engine output: a tiny fixed model's attributions and metrics, stored.

The results fingerprint holds ``pipeline.engine.RESULTS_VERSION``, not the
source: committed parts are reused until that version changes. This test fails
when the engine's output changes while the version stays the same. If a change
is meant to alter results, bump ``RESULTS_VERSION``, then rewrite the fixture:

    PYTHONPATH=. python -m tests.unit.test_golden

(which refuses to overwrite a fixture of the current version with other values).

The model is fixed independently of open_clip's and torch's initialisation: its
config is in the fixture and every parameter is drawn from NumPy's legacy
``RandomState`` (a stream that never changes); the inputs are drawn the same way.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from pipeline.engine import RESULTS_VERSION
from pipeline.engine.metrics import confidence
from pipeline.engine.model import load_clip
from pipeline.engine.nibt import NIBT

FIXTURE = Path(__file__).with_name("golden_engine.json")
NAME = "nibt-golden"
CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 12, "vocab_size": 64, "width": 32, "heads": 2, "layers": 3},
}
SOT, EOT = 62, 63  # end-of-text is the largest id: the tower pools at its argmax
TOKENS = [[SOT, 5, 17, 9, EOT], [SOT, 40, EOT], [SOT, 1, 2, 3, 4, 5, 6, 7, 8, EOT],
          [SOT, 33, 33, 12, 59, EOT]]
CASES = {
    "uniform": {"steps": 10, "schedule": "uniform"},  # the paper's; layers: 0.75 of the depth
    "log": {"steps": 8, "schedule": "log", "image_layer": 0, "text_layer": 1},
}
FIELDS = ("image", "image_cls", "text", "score")
METRICS = ("img_conf_drop", "img_conf_incr", "txt_conf_drop", "txt_conf_incr")


def fixed_model(config: dict):
    """The tiny CLIP with every parameter drawn from ``RandomState(0)`` in name order."""
    import open_clip

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / f"{NAME}.json").write_text(json.dumps(config))
        open_clip.add_model_config(tmp)
        clip = load_clip(NAME, None)
    rng = np.random.RandomState(0)
    with torch.no_grad():
        for name, p in sorted(clip.model.named_parameters()):
            draw = rng.standard_normal(tuple(p.shape)).astype(np.float32)
            if p.ndim == 1 and name.endswith("weight"):  # LayerNorm gains
                value = 1.0 + 0.1 * draw
            elif p.ndim == 1 or p.ndim == 0:
                value = 0.1 * draw
            else:
                value = draw / np.sqrt(p[0].numel())
            p.copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)))
    return clip


def inputs(config: dict) -> tuple[torch.Tensor, torch.Tensor]:
    size = config["vision_cfg"]["image_size"]
    pixels = np.random.RandomState(1).standard_normal((len(TOKENS), 3, size, size))
    tokens = np.zeros((len(TOKENS), config["text_cfg"]["context_length"]), dtype=np.int64)
    for i, row in enumerate(TOKENS):
        tokens[i, : len(row)] = row
    return torch.from_numpy(pixels.astype(np.float32)), torch.from_numpy(tokens)


def compute(config: dict) -> dict:
    """Each case's outputs, as nested lists of floats."""
    clip = fixed_model(config)
    pixels, tokens = inputs(config)
    out = {}
    for case, kw in CASES.items():
        engine = NIBT(clip, **kw)
        attr = engine.attribute(pixels, tokens)
        conf = confidence(clip, pixels, tokens, attr)
        out[case] = {"layers": [engine.image_layer, engine.text_layer],
                     **{f: getattr(attr, f).tolist() for f in FIELDS},
                     **{m: getattr(conf, m).tolist() for m in METRICS}}
    return out


#: Float noise. The kernels torch picks for the CPU (AVX2 or AVX-512, say) round differently,
#: by about 1e-7 of the computation's scale: the CLIP score, not each array (the uniform
#: case's image attributions are a thousandth of it). The metrics are percentage points of
#: the score, and the image metrics scale the image by the min-max-normalised attributions,
#: so they carry the attributions' noise over their own range (0.002 points seen).
SCALE_TOL, METRIC_TOL = 5e-6, 0.02


def differences(got: dict, want: dict) -> list[str]:
    """What differs beyond float noise: 1e-4 relative, and ``SCALE_TOL`` of the case's
    largest score for the attributions and scores, ``METRIC_TOL`` points for the metrics."""
    bad = []
    for case in want:
        if got[case]["layers"] != want[case]["layers"]:
            bad.append(f"{case}: layers {got[case]['layers']} != {want[case]['layers']}")
        scale = float(np.abs(np.asarray(want[case]["score"])).max())
        for key in (*FIELDS, *METRICS):
            g, w = np.asarray(got[case][key]), np.asarray(want[case][key])
            tol = METRIC_TOL if key in METRICS else SCALE_TOL * max(
                scale, float(np.abs(w).max()), 1e-12)
            if g.shape != w.shape or not np.allclose(g, w, rtol=1e-4, atol=tol):
                err = float(np.abs(g - w).max()) if g.shape == w.shape else "shape"
                bad.append(f"{case}.{key}: max difference {err}")
    return bad


def test_engine_output_matches_the_golden_fixture_of_this_results_version():
    fixture = json.loads(FIXTURE.read_text())
    assert fixture["results_version"] == RESULTS_VERSION, (
        f"RESULTS_VERSION is {RESULTS_VERSION} but the fixture is of version "
        f"{fixture['results_version']}: rewrite it (python -m tests.unit.test_golden)")
    bad = differences(compute(fixture["config"]), fixture["cases"])
    assert not bad, ("the engine's output changed but pipeline.engine.RESULTS_VERSION did not: "
                     "bump it (committed parts must be recomputed), then rewrite the fixture "
                     "(python -m tests.unit.test_golden). " + "; ".join(bad))


def test_the_fixture_is_not_degenerate():
    """Attributions and metrics that vary: a fixture of zeros would hide changes."""
    cases = json.loads(FIXTURE.read_text())["cases"].values()
    for key in (*FIELDS, *METRICS):
        values = np.concatenate([np.ravel(case[key]) for case in cases])
        assert np.ptp(values) > 1e-6, key


def main() -> int:
    """Rewrite the fixture; refuse if this version already has other values."""
    cases = compute(CONFIG)
    if FIXTURE.exists():
        old = json.loads(FIXTURE.read_text())
        if old["results_version"] == RESULTS_VERSION and differences(cases, old["cases"]):
            print(f"{FIXTURE}: results differ from version {RESULTS_VERSION}'s; bump "
                  "pipeline.engine.RESULTS_VERSION first", file=sys.stderr)
            return 1
    FIXTURE.write_text(json.dumps({"results_version": RESULTS_VERSION, "config": CONFIG,
                                   "cases": cases}, indent=1) + "\n")
    print(f"wrote {FIXTURE} (results version {RESULTS_VERSION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
