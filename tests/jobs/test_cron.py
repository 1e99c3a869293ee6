"""The crontab wrapper run as cron runs it: dated outputs, the lock, exit codes, no leaks."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from tests.jobs.conftest import BIN, JOBS, ROWS, TINY, clean_env, report_available

WRAPPER = JOBS / "cron" / "nibt-audit-daily.sh"
SECRET = "cr0n-s3cr3t-value-that-must-never-be-written"
DATE = "2026-11-29"


def wrapper_env(tmp_path: Path, inp: Path, **extra: str) -> dict[str, str]:
    """Settings as a crontab would give them, with credentials in an environment file."""
    secret_dir = tmp_path / "secret"
    secret_dir.mkdir(exist_ok=True)
    env_file = secret_dir / "nibt.env"
    env_file.write_text(f"AWS_ACCESS_KEY_ID=AKIA{SECRET}\nAWS_SECRET_ACCESS_KEY='{SECRET}'\n"
                        f"NIBT_MODEL=demo\n")
    env_file.chmod(0o600)
    return clean_env(
        NIBT_INPUT=str(inp), NIBT_OUTPUT_ROOT=str(tmp_path / "out"), NIBT_AUDIT_ARGS=TINY,
        NIBT_ENV_FILE=str(env_file), NIBT_CRON_LOG_DIR=str(tmp_path / "logs"),
        NIBT_AUDIT_BIN=str(BIN / "nibt-audit"), NIBT_REPORT_BIN=str(BIN / "nibt-report"),
        # nibt-report is written separately: until pipeline.cli.report exists, skip its step
        **({} if report_available() else {"NIBT_REPORT": "0"}),
        **extra,
    )


def start(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(WRAPPER), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def run(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(WRAPPER), *args], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def scan_for_secret(root: Path, *texts: str) -> None:
    for text in texts:
        assert SECRET not in text
    for path in root.rglob("*"):
        if path.is_file() and "secret" not in path.parts:
            assert SECRET.encode() not in path.read_bytes(), path


def test_a_dated_run_succeeds_while_a_second_start_is_turned_away(tmp_path, tiny_input):
    env = wrapper_env(tmp_path, tiny_input)
    first = start(env, DATE)
    try:
        day_logs = tmp_path / "logs" / f"dt={DATE}"
        deadline = time.time() + 60
        while not list(day_logs.glob("*.log")):  # written only once the lock is held
            assert first.poll() is None, first.communicate()
            assert time.time() < deadline
            time.sleep(0.05)
        t0 = time.monotonic()
        second = run(env, DATE, timeout=30)
        took = time.monotonic() - t0
        assert second.returncode == 75, second.stderr
        assert took < 1.0, took
        assert "another run holds" in second.stderr
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    log = next(day_logs.glob("*.log")).read_text()
    assert first.returncode == 0, log[-3000:]
    assert out == "" and err == ""  # nothing for cron to mail on success
    output = tmp_path / "out" / f"dt={DATE}"
    summary = json.loads((output / "_SUCCESS").read_text())
    assert summary["rows_out"] == ROWS and summary["status"] == "succeeded"
    assert "audit succeeded" in log and '"rows_out": 6' in log  # the summary JSON
    assert list((tmp_path / "logs" / "nibt-audit").glob("*/nibt-audit.log"))  # the audit's own
    if report_available():
        assert (output / "_report").is_dir() and "report written" in log
    scan_for_secret(tmp_path, out, err, second.stdout, second.stderr)

    # a rerun of the date resumes its output: every task is already committed
    again = run({**env, "NIBT_REPORT": "0"}, DATE)
    assert again.returncode == 0, again.stderr
    summary = json.loads((output / "_summary.json").read_text())
    assert summary["tasks_skipped"] == summary["tasks_total"] == 1 and summary["tasks_run"] == 0
    assert len(list(day_logs.glob("*.log"))) == 2
    # a failing report after a complete audit has its own code, distinct from the audit's
    broken = run({**env, "NIBT_REPORT": "1", "NIBT_REPORT_BIN": "false"}, DATE)
    assert broken.returncode == 4, broken.stderr
    assert f"dt={DATE} exit 4" in broken.stderr
    scan_for_secret(tmp_path, again.stdout, again.stderr, broken.stdout, broken.stderr)


def test_a_held_lock_turns_a_start_away_at_once(tmp_path, tiny_input):
    env = wrapper_env(tmp_path, tiny_input, NIBT_LOCK_FILE=str(tmp_path / "held.lock"))
    holder = subprocess.Popen(["flock", str(tmp_path / "held.lock"), "sleep", "60"])
    try:
        deadline = time.time() + 10
        while subprocess.run(["flock", "-n", str(tmp_path / "held.lock"), "true"]).returncode == 0:
            assert time.time() < deadline  # flock(1) has not taken it yet
            time.sleep(0.05)
        t0 = time.monotonic()
        r = run(env, DATE, timeout=30)
        assert time.monotonic() - t0 < 1.0
        t0 = time.monotonic()
        waited = run({**env, "NIBT_LOCK_WAIT": "1"}, DATE, timeout=30)  # a backfill loop's way
        assert waited.returncode == 75 and 0.9 < time.monotonic() - t0 < 5
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 75, r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "logs" / f"dt={DATE}").exists()


def test_a_partial_run_exits_3(tmp_path, partial_input):
    env = wrapper_env(tmp_path, partial_input)
    r = run(env, DATE)
    log = next((tmp_path / "logs" / f"dt={DATE}").glob("*.log")).read_text()
    assert r.returncode == 3, log[-3000:]
    assert f"dt={DATE} exit 3" in r.stderr  # the one line cron mails
    output = tmp_path / "out" / f"dt={DATE}"
    summary = json.loads((output / "_summary.json").read_text())
    assert summary["status"] == "partial" and summary["tasks_failed"] == 1
    assert summary["rows_out"] == ROWS
    assert not (output / "_SUCCESS").exists() and not (output / "_report").exists()
    assert "PARTIAL" in log and "shard-1.parquet" in log
    scan_for_secret(tmp_path, r.stdout, r.stderr)


def test_bad_settings_exit_2_before_anything_runs(tmp_path, tiny_input):
    env = wrapper_env(tmp_path, tiny_input)
    assert run(env, "2026-02-30").returncode == 2
    assert run(env, "yesterday").returncode == 2
    no_input = {k: v for k, v in env.items() if k != "NIBT_INPUT"}
    r = run(no_input, DATE)
    assert r.returncode == 2 and "NIBT_INPUT" in r.stderr
    r = run({**env, "NIBT_AUDIT_BIN": str(tmp_path / "nope")}, DATE)
    assert r.returncode == 2
    r = run({**env, "NIBT_ENV_FILE": str(tmp_path / "missing.env")}, DATE)
    assert r.returncode == 2
    # no model: no default to fall back on; the options are listed (the files of conf/model/)
    bare = tmp_path / "secret" / "bare.env"
    bare.write_text("AWS_ACCESS_KEY_ID=unused\n")
    bare.chmod(0o600)
    r = run({**env, "NIBT_ENV_FILE": str(bare)}, DATE)
    options = sorted(p.stem for p in (JOBS.parent / "conf" / "model").glob("*.yaml"))
    assert r.returncode == 2 and "NIBT_MODEL" in r.stderr, r.stderr
    assert " ".join(options) in r.stderr and "demo" in options
    assert not (tmp_path / "out").exists()


def test_each_date_is_compared_with_the_latest_earlier_success(tmp_path, tiny_input):
    """The report of a date compares it with the latest earlier date that has _SUCCESS
    (a partial date in between is passed over); NIBT_COMPARE=0 turns it off."""
    if not report_available():
        return
    env = wrapper_env(tmp_path, tiny_input)
    first, partial, later = "2026-11-26", "2026-11-27", "2026-11-28"
    out = tmp_path / "out"
    r = run(env, first)
    assert r.returncode == 0, r.stderr
    assert "comparison" not in json.loads((out / f"dt={first}" / "_report" / "report.json")
                                          .read_text())  # nothing before it
    # what a partial run leaves: results and a summary, no _SUCCESS
    (out / f"dt={partial}").mkdir()
    for name in ("_manifest.json", "_summary.json"):
        (out / f"dt={partial}" / name).write_bytes((out / f"dt={first}" / name).read_bytes())
    r = run(env, later)
    log = sorted((tmp_path / "logs" / f"dt={later}").glob("*.log"))[-1].read_text()
    assert r.returncode == 0, log[-3000:]
    report = json.loads((out / f"dt={later}" / "_report" / "report.json").read_text())
    assert report["baseline"] == f"{out}/dt={first}"
    c = report["comparison"]
    assert c["settings"]["same"] and c["settings"]["input"]["same"]
    assert c["findings"] == []  # the same input under the same settings: nothing changed
    assert "baseline=previous" in log
    off = run({**env, "NIBT_COMPARE": "0"}, later)
    assert off.returncode == 0, off.stderr
    report = json.loads((out / f"dt={later}" / "_report" / "report.json").read_text())
    assert "comparison" not in report and "baseline" not in report
    scan_for_secret(tmp_path, r.stdout, r.stderr, off.stdout, off.stderr)
