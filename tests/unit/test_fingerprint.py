"""The results fingerprint follows what changes results: the resolved model and method,
the versions of the libraries that compute them and the engine's results version;
not the bytes of the source (a comment edit reuses every committed part)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import open_clip
import PIL
import torch
import torchvision

from pipeline.config import DataSettings, ModelSettings, StorageSettings
from pipeline.job import provenance
from pipeline.job.provenance import library_versions, resolve_model, results_fingerprint

ROOT = Path(__file__).resolve().parents[2]
PRINT_FP = (
    "import pipeline\n"
    "from pipeline.config import DataSettings, ModelSettings, StorageSettings\n"
    "from pipeline.job.provenance import resolve_model, results_fingerprint\n"
    "m = ModelSettings(name='nibt-demo', pretrained=None, steps=3)\n"
    "print(results_fingerprint(m, DataSettings(), resolve_model(m, StorageSettings()))[0])\n"
    "print(pipeline.__file__)\n"
)


def fp(**model) -> str:
    m = ModelSettings(**{"name": "nibt-demo", "pretrained": None, "steps": 3, **model})
    return results_fingerprint(m, DataSettings(), resolve_model(m, StorageSettings()))[0]


def test_the_recorded_versions_are_the_libraries_own():
    assert library_versions() == {"torch": torch.__version__, "torchvision": torchvision.__version__,
                                  "open_clip": open_clip.__version__, "pillow": PIL.__version__}


def test_a_library_upgrade_or_a_results_version_bump_changes_the_fingerprint(monkeypatch):
    before = fp()
    assert fp() == before
    real = library_versions()
    monkeypatch.setattr(provenance, "library_versions", lambda: {**real, "open_clip": "99.0"})
    upgraded = fp()
    assert upgraded != before
    monkeypatch.setattr(provenance, "library_versions", lambda: {**real, "torch": "99.0+cu999"})
    assert fp() not in (before, upgraded)
    monkeypatch.setattr(provenance, "library_versions", lambda: real)
    assert fp() == before
    monkeypatch.setattr(provenance, "RESULTS_VERSION", provenance.RESULTS_VERSION + 1)
    assert fp() != before


def test_layers_count_as_resolved_not_as_written():
    """null layers on nibt-demo with random weights are (3, 2): the same results as
    writing them out, unlike another layer."""
    assert fp() == fp(image_layer=3, text_layer=2) == fp(image_layer=-1, text_layer=-1)
    assert fp() != fp(image_layer=2)
    assert fp() != fp(steps=4)


def test_a_comment_in_the_engine_source_keeps_the_fingerprint(tmp_path):
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "pipeline", copy / "pipeline", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "weights"))
    # the copy shares the shipped weights (and their facts file) with the checkout
    (copy / "pipeline" / "engine" / "weights").symlink_to(ROOT / "pipeline" / "engine" / "weights")
    for name in ("nibt.py", "towers.py", "metrics.py"):
        with open(copy / "pipeline" / "engine" / name, "a") as f:
            f.write("\n# a comment changes no result\n")
    r = subprocess.run([sys.executable, "-c", PRINT_FP], capture_output=True, text=True,
                       cwd=copy, env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"},
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    printed, where = r.stdout.split()
    assert where.startswith(str(copy))  # the edited copy ran, not the checkout
    assert printed == fp()
