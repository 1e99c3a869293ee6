"""`ray job submit` through jobs/ray/submit.sh against a real Ray head on 127.0.0.1."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.jobs.conftest import BIN, JOBS, ROWS, TINY, clean_env, report_available
from tests.jobs.rayhead import RayHead, ray_head

SUBMIT = JOBS / "ray" / "submit.sh"
DATE = "2026-11-30"
sys.path.insert(0, str(JOBS / "ray"))
import jobstate  # noqa: E402


@pytest.fixture(scope="module")
def head():
    """One private head for the module (~10 s to start), 2 CPUs, auth off on loopback."""
    with ray_head(num_cpus=2) as h:
        yield h


def submit_env(head: RayHead, tmp_path: Path, inp: Path, **extra: str) -> dict[str, str]:
    return clean_env(
        NIBT_RAY_ADDRESS=head.address, RAY_AUTH_MODE="disabled",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", NIBT_RAY_BIN=str(BIN / "ray"),
        NIBT_INPUT=str(inp), NIBT_OUTPUT_ROOT=str(tmp_path / "out"), NIBT_AUDIT_ARGS=TINY,
        NIBT_MODEL="demo", **extra,
    )


def start(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(SUBMIT), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def jobs_for(head: RayHead, date: str) -> list[dict]:
    """The head's jobs for ``date``, from the job REST API (Ray is not imported here)."""
    with urllib.request.urlopen(f"{head.address}/api/jobs/", timeout=10) as r:
        jobs = json.load(r)
    return [j for j in jobs if (j.get("metadata") or {}).get("nibt_date") == date]


def test_a_submitted_run_commits_and_a_second_submit_never_doubles_it(head, tmp_path,
                                                                       tiny_input):
    env = submit_env(head, tmp_path, tiny_input)
    first = start(env, "audit", DATE)
    try:
        deadline = time.time() + 120
        while not jobs_for(head, DATE):
            assert first.poll() is None, first.communicate()
            assert time.time() < deadline
            time.sleep(0.2)
        # the same date again: skipped (75) on request, else it follows the running job
        t0 = time.monotonic()
        skip = subprocess.run(["bash", str(SUBMIT), "audit", DATE], capture_output=True,
                              text=True, timeout=60, env={**env, "NIBT_RAY_IF_RUNNING": "skip"})
        assert skip.returncode == 75, skip.stderr
        assert time.monotonic() - t0 < 10
        follow = start(env, "audit", DATE)
        out, err = first.communicate(timeout=300)
        f_out, f_err = follow.communicate(timeout=120)
    finally:
        for p in (first, locals().get("follow")):
            if p is not None and p.poll() is None:
                p.kill()
    assert first.returncode == 0, (out + err)[-4000:]
    assert "driver exit code 0 -> exit 0" in err
    assert follow.returncode == 0, (f_out + f_err)[-4000:]
    assert "already running" in f_err and "following it" in f_err
    assert len(jobs_for(head, DATE)) == 1
    output = tmp_path / "out" / f"dt={DATE}"
    summary = json.loads((output / "_SUCCESS").read_text())
    assert summary["rows_out"] == ROWS and summary["status"] == "succeeded"
    assert summary["settings"]["cluster"]["address"] == "auto"  # it joined the cluster
    assert '"rows_out": 6' in out  # the summary is in the job's log

    if report_available():
        r = subprocess.run(["bash", str(SUBMIT), "report", DATE], capture_output=True,
                           text=True, timeout=300, env=env)
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        assert (output / "_report" / "report.html").is_file()


def test_a_partial_job_exits_3_not_1(head, tmp_path, partial_input):
    env = submit_env(head, tmp_path, partial_input)
    r = subprocess.run(["bash", str(SUBMIT), "audit", DATE], capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 3, (r.stdout + r.stderr)[-4000:]
    assert "FAILED, driver exit code 3 -> exit 3" in r.stderr
    summary = json.loads((tmp_path / "out" / f"dt={DATE}" / "_summary.json").read_text())
    assert summary["status"] == "partial" and summary["rows_out"] == ROWS


def test_bad_settings_exit_2_without_a_cluster(tmp_path, tiny_input):
    env = clean_env(NIBT_INPUT=str(tiny_input), NIBT_OUTPUT_ROOT=str(tmp_path),
                    NIBT_RAY_BIN=str(BIN / "ray"))
    r = subprocess.run(["bash", str(SUBMIT), "audit", DATE], capture_output=True, text=True,
                       env=env, timeout=30)
    assert r.returncode == 2 and "NIBT_RAY_ADDRESS" in r.stderr
    r = subprocess.run(["bash", str(SUBMIT), "audit", "2026-13-01"], capture_output=True,
                       text=True, env={**env, "NIBT_RAY_ADDRESS": "http://127.0.0.1:9"}, timeout=30)
    assert r.returncode == 2 and "bad run date" in r.stderr
    # no model: no default to fall back on; the options are listed (the files of conf/model/)
    r = subprocess.run(["bash", str(SUBMIT), "audit", DATE], capture_output=True, text=True,
                       env={**env, "NIBT_RAY_ADDRESS": "http://127.0.0.1:9"}, timeout=30)
    options = sorted(p.stem for p in (JOBS.parent / "conf" / "model").glob("*.yaml"))
    assert r.returncode == 2 and "NIBT_MODEL" in r.stderr, r.stderr
    assert " ".join(options) in r.stderr and "demo" in options


@pytest.mark.parametrize("status, driver, code", [
    ("SUCCEEDED", 0, 0), ("SUCCEEDED", None, 0), ("FAILED", 3, 3), ("FAILED", 2, 2),
    ("FAILED", 1, 1), ("FAILED", 4, 4), ("FAILED", None, 1), ("FAILED", 137, 1), ("STOPPED", None, 1),
    ("STOPPED", -15, 1),
])
def test_job_states_map_to_the_audit_exit_codes(status, driver, code):
    assert jobstate.exit_code(status, driver) == code


def test_the_cluster_recipes_hold_no_secrets_and_ask_for_gpus():
    def secretish(name: str) -> bool:
        return bool(set(name.upper().split("_")) & {"SECRET", "TOKEN", "PASSWORD", "KEY",
                                                     "CREDENTIAL", "CREDENTIALS"})

    for name in ("runtime_env.yaml", "runtime_env.pip.yaml"):
        env = yaml.safe_load((JOBS / "ray" / name).read_text())
        assert env["working_dir"] == "."
        assert env["env_vars"] and not [k for k in env["env_vars"] if secretish(k)]
    job = yaml.safe_load((JOBS / "ray" / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert "cluster=existing" in spec["entrypoint"]
    # actors per GPU left to the default: the GPU pods' CPUs give two decoding actors each
    assert "gpus_per_actor" not in spec["entrypoint"]
    runtime = yaml.safe_load(spec["runtimeEnvYAML"])
    assert not [k for k in runtime.get("env_vars", {}) if secretish(k)]
    assert secretish("AWS_SECRET_ACCESS_KEY") and not secretish("TOKENIZERS_PARALLELISM")
    worker = spec["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    from pipeline.config import ClusterSettings
    from pipeline.job.cluster import plan_actors

    pod = {"CPU": float(worker["resources"]["limits"]["cpu"]), "GPU": 1.0}
    plan = plan_actors(ClusterSettings(), pod, tasks=100)
    assert (plan.num_actors, plan.num_gpus, plan.slots) == (2, 0.5, 2)  # 8 CPUs: 2 actors
    assert worker["envFrom"][0]["secretRef"]["name"]  # credentials from a Secret, by name
