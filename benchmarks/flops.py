"""Engine FLOPs per pair by caption length (torch's ``FlopCounterMode``), beside a peer.

ViT-B-32 (random weights), layer 9, 10 steps, image and text: batches of 8 pairs whose
captions all have 8, 32 or 77 tokens (start- and end-of-text included), and one
70-token caption among seven of 6 tokens against eight of 6. The peer is the engine
at commit ``PEER`` (every caption at its batch's longest length, a second suffix pass
for the image embedding), taken from this repository's history with ``git archive``
and counted the same way in a process of its own. FLOP counts do not depend on the
machine's speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEER = "94c7b89"
LENGTHS = (8, 32, 77)

COUNT = """
import json, torch
from torch.utils.flop_counter import FlopCounterMode
torch.set_num_threads(2)
from pipeline.engine.model import load_clip
from pipeline.engine.nibt import NIBT

class NoModules:  # FlopCounterMode's module tracker trips over autograd.grad on leaves
    parents = {{"Global"}}
    def __enter__(self): return self
    def __exit__(self, *a): return None

def flops(fn):
    c = FlopCounterMode(display=False)
    c.mod_tracker = NoModules()
    with c:
        fn()
    return c.get_total_flops()

clip = load_clip("ViT-B-32")
engine = NIBT(clip, layer=9, steps=10)
images = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
def caption(n): return " ".join(["photo"] * (n - 2))
def per_pair(caps): return flops(lambda: engine.attribute(images, clip.tokenize(caps))) / 8
out = {{f"tokens_{{n}}": per_pair([caption(n)] * 8) for n in {lengths}}}
out["short_8"] = per_pair([caption(6)] * 8)
out["one_long_among_8"] = per_pair([caption(6)] * 7 + [caption(70)])
print(json.dumps(out))
"""


def count(pythonpath: str | None = None) -> dict:
    """GFLOP per pair for each batch, counted in a fresh process (``pythonpath``: where
    its ``pipeline`` comes from; None: this tree)."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    r = subprocess.run([sys.executable, "-c", COUNT.format(lengths=LENGTHS)], cwd=pythonpath or ROOT,
                       env=env, capture_output=True, text=True, timeout=1800, check=True)
    flops = json.loads(r.stdout.strip().splitlines()[-1])
    out = {k: round(v / 1e9, 2) for k, v in flops.items()}
    out["one_long_adds"] = round(flops["one_long_among_8"] / flops["short_8"] - 1, 3)
    return out


def peer() -> dict | None:
    """The same counts for the engine at ``PEER`` (None outside a git checkout)."""
    with tempfile.TemporaryDirectory(prefix="nibt-peer-") as tmp:
        archive = subprocess.run(["git", "archive", PEER, "pipeline"], cwd=ROOT,
                                 capture_output=True)
        if archive.returncode != 0:
            return None
        subprocess.run(["tar", "-x", "-C", tmp], input=archive.stdout, check=True)
        return count(tmp)


def run() -> dict:
    return {"setup": {"model": "ViT-B-32 (random weights)", "layer": 9, "steps": 10, "batch": 8,
                      "sides": "image+text", "peer_commit": PEER},
            "this_engine": count(), "peer": peer()}
