"""The demo's bias half and a second night, end to end at a reduced size: the report shows
the planted caption-group gap with its interval, and comparing the night without the
shortcut's watermark with the first puts that change first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_group_finding_and_second_night(tmp_path):
    # 400 pairs: ~60 "vintage" pairs, so the suspect threshold is lowered for the size
    args = [sys.executable, "-m", "pipeline.demo.run", "--pairs", "400", "--shards", "2",
            "--compare", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
            "--override", "report.shortcut_min_excess=0.05"]
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=1200,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = tmp_path / "out"
    night1 = json.loads((out / "audit" / "report" / "report.json").read_text())
    fam = next(f for f in night1["groups"] if f["name"] == "colour_words")
    e = next(e for e in fam["effects"] if (e["a"], e["b"], e["metric"]) == ("basic", "fancy",
                                                                             "score"))
    assert e["gap"] and e["ci_low"] > 0.3 and e["n_b"] >= 30
    text = next(f["text"] for f in night1["findings"] if f["kind"] == "group_gap")
    assert text.startswith("colour_words: CLIP score differs") and \
        f"[{e['ci_low']:.3g}, {e['ci_high']:.3g}]" in text
    assert night1["space"]["suspects"][0]["word"] == "vintage"
    compare = json.loads((out / "compare" / "report.json").read_text())
    first = compare["comparison"]["findings"][0]
    assert (first["kind"], first["change"]) == ("shortcut", "vanished")
    assert "\u201cvintage\u201d vanished" in first["text"]
    assert compare["comparison"]["settings"]["same"]
    assert compare["comparison"]["settings"]["input"]["same"] is False  # night 2's own files
    assert (out / "compare.html").is_file() and (out / "report.html").is_file()
    assert "[demo] change: Shortcut suspect \u201cvintage\u201d vanished" in r.stdout
