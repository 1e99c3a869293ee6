"""A smoke run of `make demo` at a reduced size: dataset, moto S3, nibt-audit, report."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_make_demo_small(tmp_path):
    args = f"--pairs 48 --shards 2 --data {tmp_path}/data --out {tmp_path}/out"
    r = subprocess.run(["make", "-s", "demo", f"DEMO_ARGS={args}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "audit" / "_SUCCESS").read_text())
    assert summary["rows_out"] == 48 and summary["status_counts"] == {"ok": 48}
    assert summary["settings"]["model"]["pretrained"] == "shipped"
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<html" in html.lower() and "http://" not in html.split("</head>")[0]
    assert "[demo] rows 48 of 48" in r.stdout
    # twice: everything committed is reused
    r = subprocess.run(["make", "-s", "demo", f"DEMO_ARGS={args}"], cwd=ROOT, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0
    assert "tasks run 0 / skipped 2" in r.stdout
