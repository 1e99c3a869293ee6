"""Shared inputs for the scheduling tests: tiny Parquet shards, the tiny random model."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from tests.data import pairs_table, write_table

ROOT = Path(__file__).resolve().parents[2]
JOBS = ROOT / "jobs"
BIN = Path(sys.executable).parent
#: The demo architecture with random weights, 2 steps: a run takes ~20 s on 2 cores.
TINY = "model.pretrained=null model.steps=2 model.image_layer=1 model.text_layer=1"
ROWS = 6


def report_available() -> bool:
    """``nibt-report``'s module exists yet (it is written separately)."""
    try:
        return importlib.util.find_spec("pipeline.cli.report") is not None
    except ModuleNotFoundError:
        return False


@pytest.fixture(scope="session")
def tiny_input(tmp_path_factory) -> Path:
    """A folder with one shard of ``ROWS`` pairs."""
    root = tmp_path_factory.mktemp("in-good")
    write_table(pairs_table(ROWS, seed=3), str(root / "shard-0.parquet"))
    return root


@pytest.fixture(scope="session")
def partial_input(tmp_path_factory) -> Path:
    """One good shard and one file named *.parquet that is not Parquet: the audit exits 3."""
    root = tmp_path_factory.mktemp("in-partial")
    write_table(pairs_table(ROWS, seed=4), str(root / "shard-0.parquet"))
    (root / "shard-1.parquet").write_bytes(b"PAR1 this is not parquet at all")
    return root


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without settings that would leak into the jobs."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NIBT_", "RAY_", "AWS_"))}
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env.update(extra)
    return env
