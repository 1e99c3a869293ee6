"""`nibt-audit` as a scheduler sees it: exit codes, logs, and no secrets written anywhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.data import pairs_table, write_table

SECRET = "s3cr3t-value-that-must-never-be-written"


def audit(*args: str, env: dict | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True,
        env={**os.environ, **(env or {})}, cwd=cwd, timeout=600,
    )


def test_missing_input_is_exit_2(tmp_path):
    r = audit("output=/tmp/x", env={"NIBT_LOG_DIR": str(tmp_path)})
    assert r.returncode == 2
    assert "input and output are required" in r.stderr


def test_bad_override_is_exit_2(tmp_path):
    r = audit("input=/a", "output=/b", "model.colour=red", env={"NIBT_LOG_DIR": str(tmp_path)})
    assert r.returncode == 2
    r = audit("input=/a", "output=/b", "model=no_such_model", env={"NIBT_LOG_DIR": str(tmp_path)})
    assert r.returncode == 2


def test_unlistable_input_is_exit_2(tmp_path):
    r = audit(f"input={tmp_path}/missing", f"output={tmp_path}/out", "model=demo",
              "model.pretrained=null",
              env={"NIBT_LOG_DIR": str(tmp_path)})
    assert r.returncode == 2
    assert "does not exist" in r.stderr


def test_a_run_logs_summarises_and_leaks_no_secret(tmp_path):
    """Credentials in the environment reach no log, summary, manifest, part or report."""
    write_table(pairs_table(12, seed=9), str(tmp_path / "in.parquet"))
    logs = tmp_path / "logs"
    r = audit(f"input={tmp_path}/in.parquet", f"output={tmp_path}/out", "model=demo",
              "model.pretrained=null",
              "model.steps=2", "model.image_layer=1", "model.text_layer=1", "run.progress=false",
              "report.enabled=true",
              env={"NIBT_LOG_DIR": str(logs), "AWS_SECRET_ACCESS_KEY": SECRET,
                   "AWS_ACCESS_KEY_ID": "AKIA" + SECRET},
              cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["rows_out"] == 12 and summary["status"] == "succeeded"
    on_disk = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    assert on_disk["rows_out"] == 12
    assert (tmp_path / "out" / "report" / "report.html").exists()
    assert summary["report"]["path"].endswith("report")
    log_files = list(logs.rglob("*.log"))
    assert log_files and "progress: 1 of 1 tasks (100.0%), 12 rows" in log_files[0].read_text()
    for path in [*tmp_path.rglob("*")]:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in r.stdout + r.stderr
