"""`make bench-gpu` checked on a CPU: the smoke run end to end, and what fails a run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from benchmarks.gpu import FALLBACK_BOUND, parse_job


def done(stdout: str, code: int = 0, stderr: str = "") -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess([], code, stdout, stderr)


def summary(**kw) -> str:
    s = {"status": "succeeded", "status_counts": {"ok": 100}, "pairs_per_second": 10.0,
         "device_fallbacks": 0, "failures": []}
    return "progress line\n" + json.dumps({**s, **kw}) + "\n"


def test_a_job_summary_is_read_from_its_last_line():
    s, errors = parse_job(done(summary()), "device", 100)
    assert s["pairs_per_second"] == 10.0 and errors == []


def test_what_fails_a_job():
    cases = {
        "exit 3": done(summary(status="partial"), code=3),
        "retried": done(summary(tasks_retried=1)),
        "rows in status error": done(summary(status_counts={"ok": 99, "error": 1})),
        "fell back to the CPU": done(summary(device_fallbacks=int(FALLBACK_BOUND * 100) + 1)),
        "reports no device_fallbacks": done(summary().replace('"device_fallbacks": 0, ', "")),
        "illegal memory access": done(summary(), stderr="RuntimeError: CUDA error: an illegal "
                                                        "memory access was encountered"),
        "no summary": done("", code=1, stderr="Traceback ..."),
    }
    for sign, r in cases.items():
        _, errors = parse_job(r, "device", 100)
        assert any(sign in e for e in errors), (sign, errors)
    _, errors = parse_job(done(summary(device_fallbacks=1)), "device", 100)  # within the bound
    assert errors == []


@pytest.mark.slow
def test_the_smoke_run_goes_through_every_section(tmp_path):
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--smoke", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    res = json.loads(out.read_text())
    assert res["errors"] == [], res["errors"]
    assert r.returncode == 0, r.stderr[-2000:]
    assert set(res["sections"]) == {"engine", "decode", "job"}
    engine = res["sections"]["engine"]["engine"]
    assert set(engine["ms_per_batch_by_phase"]) >= {"copy_to_device", "image_integral",
                                                    "text_integral", "metrics", "total"}
    assert engine["caption_tokens"]["max"] > engine["caption_tokens"]["min"]
    decode = res["sections"]["decode"]["decode"]
    assert decode["attribution_pearson_min_vs_fast"] >= 0.99 and decode["device_fallbacks"] == 0
    (job,) = res["sections"]["job"]["job"]
    assert job["decode"] == "device" and job["pairs"] == 16
