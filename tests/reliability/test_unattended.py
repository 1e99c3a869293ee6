"""Unattended runs: no row lost to a passing fault, no hang, a clean stop.

Faults inside workers go through the test hook ``NIBT_TEST_FAULTS``
(``pipeline.job.faults``), set for this module's Ray before it starts; each test
writes what fires. Timeouts are set small through settings, so each test takes
seconds to a minute, and records its figures for the reliability table.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.config import StorageSettings
from pipeline.io.manifest import read_manifest
from pipeline.io.results import read_results
from pipeline.job import faults
from pipeline.job.driver import EXIT_CONFIG, EXIT_OK, EXIT_PARTIAL, run_job
from tests.data import pairs_table, write_shards, write_table
from tests.jobutil import settings
from tests.procs import running, wait_for
from tests.silent import SilentEndpoint

#: Two 1-CPU actors, so that a retry can go to the other one.
TWO_ACTORS = {"num_actors": 2, "cpus_per_actor": 1, "actor_start_timeout_s": 180}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("unattended-in")
    tables = write_shards(root, 4, 16, seed=120)
    return root, tables


def ids(out) -> list[str]:
    return read_results(str(out), columns=["id"]).column("id").to_pylist()


def all_ids(tables) -> list[str]:
    return sorted(i for t in tables for i in t.column("id").to_pylist())


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != faults.ENV}
    env["NIBT_LOG_DIR"] = str(tmp_path / "logs")
    return env


#: Seconds each task attempt of a paced run stalls before its read. Unpaced, a task of the
#: tiny model takes a fraction of a second, and on a fast machine a run could end between
#: two polls of the test (or before its signal was handled). One actor (``cluster.num_actors=1``)
#: runs the tasks one after another, so each gap between two commits is at least this long.
PACE_S = 1.0


def paced_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """``cli_env`` with every task attempt stalled ``PACE_S`` (the test hook, inert until
    its file says so); the file, which a test empties to run the rest at full speed."""
    spec = tmp_path / "pace.json"
    spec.write_text(json.dumps({"stall": {"times": 999, "seconds": PACE_S}}))
    env = cli_env(tmp_path)
    env[faults.ENV] = str(spec)
    return env, spec


TINY_CLI = ["model=demo", "model.pretrained=null", "model.image_layer=1", "model.text_layer=1",
            "data.id_column=id", "run.progress=false"]


# silent endpoint ------------------------------------------------------------------------
def test_silent_endpoint(tmp_path, figure):
    """An S3 endpoint that accepts connections and never answers: exit 2, the endpoint
    named, within the bound the settings give (here 2 attempts x 2 s)."""
    endpoint = SilentEndpoint()
    storage = dict(max_attempts=2, read_timeout_s=2.0, connect_timeout_s=2.0)
    bound = StorageSettings(**storage).worst_case_s()
    with endpoint as url:
        t0 = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-m", "pipeline", "input=s3://lake/in/", "output=s3://lake/out",
             "storage=s3", f"storage.endpoint_url={url}", *TINY_CLI,
             *[f"storage.{k}={v}" for k, v in storage.items()]],
            capture_output=True, text=True, env=cli_env(tmp_path), timeout=600)
        seconds = time.monotonic() - t0
        requests = endpoint.connections
    figure(settings="2 attempts x 2 s3fs tries, read timeout 2 s", exit_code=r.returncode,
           seconds=round(seconds, 1), requests=requests, bound_s=round(bound, 1),
           bound_with_defaults_s=round(StorageSettings().worst_case_s(), 1))
    assert r.returncode == EXIT_CONFIG, r.stderr[-2000:]
    assert f"storage endpoint {url} did not answer" in r.stderr
    assert requests == 4
    assert seconds < bound + 60  # the command's own start (Python, torch, Hydra) included


# stalled actor --------------------------------------------------------------------------
def test_stalled_actor(ray_faults, inject, shards, tmp_path, figure):
    """One task stalls on every try: its actor is killed after run.task_timeout_s, the
    task retried on the other actor, stalls again and is recorded as failed; the
    other tasks commit; exit 3."""
    root, tables = shards
    inject({"stall": {"source": "shard-1", "row_start": 8, "times": 99, "seconds": 3600}})
    t0 = time.monotonic()
    code, s = run_job(settings(str(root), str(tmp_path / "out"), cluster=TWO_ACTORS,
                               run={"rows_per_task": 8, "task_timeout_s": 20,
                                    "max_task_retries": 1}))
    seconds = time.monotonic() - t0
    got = ids(tmp_path / "out")
    stalled = {f"p121-{i}" for i in range(8, 16)}
    figure(task_timeout_s=20, max_task_retries=1, exit_code=code,
           tasks_committed=s["tasks_total"] - s["tasks_failed"], tasks_failed=s["tasks_failed"],
           rows_out=len(got), seconds=round(seconds, 1),
           failure=s["failures"][0]["error"][:60] if s["failures"] else None)
    assert code == EXIT_PARTIAL
    assert [(f["source"].rsplit("/", 1)[1], f["row_start"]) for f in s["failures"]] == [
        ("shard-1.parquet", 8)]
    assert "no answer within 20 s" in s["failures"][0]["error"]
    assert s["tasks_retried"] == 1
    assert sorted(got) == sorted(set(all_ids(tables)) - stalled)
    # two tries of 20 s, a restart each, and the 7 other tasks on the other actor
    assert seconds < 240


# passing engine fault -------------------------------------------------------------------
def test_passing_engine_fault(ray_faults, inject, shards, tmp_path, figure):
    """The engine fails once (a CUDA error on every pair of one task attempt): the
    task is retried, nothing is committed as error, exit 0."""
    root, tables = shards
    inject({"engine_error": {"times": 1}})
    t0 = time.monotonic()
    code, s = run_job(settings(str(root), str(tmp_path / "out"), cluster=TWO_ACTORS,
                               run={"rows_per_task": 8}))
    got = read_results(str(tmp_path / "out"), columns=["id", "status"])
    figure(injected="engine error on every pair of the first task attempt", exit_code=code,
           tasks_retried=s["tasks_retried"], status_counts=s["status_counts"],
           rows_out=got.num_rows, seconds=round(time.monotonic() - t0, 1))
    assert len(faults.fired_in(os.environ[faults.ENV], "engine_error")) == 1  # it fired
    assert code == EXIT_OK
    assert s["tasks_retried"] == 1
    assert s["status_counts"] == {"ok": 64}
    assert sorted(got.column("id").to_pylist()) == all_ids(tables)
    assert set(got.column("status").to_pylist()) == {"ok"}


def test_a_lost_device_ends_the_actor_and_the_task_runs_again(ray_faults, inject, shards,
                                                             tmp_path, figure):
    """A fatal device error (an illegal memory access on a GPU, injected as the
    DeviceLost it becomes) ends the worker process instead of failing its rows one by
    one on a broken context: Ray restarts the actor and the task is retried; exit 0."""
    root, tables = shards
    inject({"device_lost": {"source": "shard-1", "row_start": 0, "times": 1}})
    t0 = time.monotonic()
    code, s = run_job(settings(str(root), str(tmp_path / "out"), cluster=TWO_ACTORS,
                               run={"rows_per_task": 8}))
    got = read_results(str(tmp_path / "out"), columns=["id", "status"])
    (pid,) = faults.fired_in(os.environ[faults.ENV], "device_lost")
    figure(injected="DeviceLost in the first attempt of one task", exit_code=code,
           tasks_retried=s["tasks_retried"], status_counts=s["status_counts"],
           rows_out=got.num_rows, seconds=round(time.monotonic() - t0, 1))
    assert not running(pid)  # the worker it fired in ended
    assert code == EXIT_OK and s["tasks_retried"] == 1
    assert s["status_counts"] == {"ok": 64}
    assert sorted(got.column("id").to_pylist()) == all_ids(tables)


def test_lasting_engine_fault_is_committed_then_recomputed(ray_faults, inject, shards, tmp_path,
                                                           figure):
    """The engine fails on every try of one task: its rows are committed as error after
    the last try, exit 3; the next run (no overwrite) recomputes that task alone."""
    root, tables = shards
    out = tmp_path / "out"
    inject({"engine_error": {"source": "shard-2", "row_start": 0, "times": 99}})
    code, s = run_job(settings(str(root), str(out), cluster=TWO_ACTORS,
                               run={"rows_per_task": 8, "max_task_retries": 1}))
    first = read_results(str(out), columns=["id", "status", "error"])
    errors = {i: e for i, st, e in zip(*(first.column(c).to_pylist()
                                         for c in ("id", "status", "error"))) if st == "error"}
    assert code == EXIT_PARTIAL and s["status"] == "partial"
    assert s["status_counts"] == {"error": 8, "ok": 56} and s["tasks_with_error_rows"] == 1
    assert sorted(errors) == sorted(f"p122-{i}" for i in range(8))
    assert all("CUDA error" in e for e in errors.values())
    assert s["tasks_retried"] == 1 and not (out / "_SUCCESS").exists()
    inject({})
    t0 = time.monotonic()
    code2, s2 = run_job(settings(str(root), str(out), cluster=TWO_ACTORS,
                                 run={"rows_per_task": 8}))
    again = read_results(str(out), columns=["id", "status"])
    figure(first_run=f"exit {code}, {s['status_counts']}", rerun_tasks_run=s2["tasks_run"],
           rerun_tasks_skipped=s2["tasks_skipped"], rerun_exit_code=code2,
           rerun_status_counts=s2["status_counts"], rerun_seconds=round(time.monotonic() - t0, 1))
    assert code2 == EXIT_OK and (s2["tasks_run"], s2["tasks_skipped"]) == (1, 7)
    assert sorted(again.column("id").to_pylist()) == all_ids(tables)
    assert set(again.column("status").to_pylist()) == {"ok"}


# stop signal ----------------------------------------------------------------------------
def _ray_processes(temp_dir: str) -> list[int]:
    """Processes with ``temp_dir`` in their command line or open files (Ray's, for a
    driver started with cluster.temp_dir=temp_dir)."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fds = [os.readlink(p / "fd" / fd) for fd in os.listdir(p / "fd")]
        except OSError:
            continue
        if (temp_dir in cmd or any(f.startswith(temp_dir) for f in fds)) and running(int(p.name)):
            found.append(int(p.name))
    return found


def _signals_live(args: list[str]) -> list[str]:
    """``args`` (``python -m pipeline ...``) run with SIGINT and SIGTERM at their defaults.

    A job started in the background by a non-interactive shell (``make test &``, ``nohup``)
    inherits SIGINT ignored, and the run keeps a signal ignored that it was started with
    (``job.stop``), as ``nohup`` asks. The test is of a run that a Ctrl-C reaches, so it
    restores the defaults before the run starts (``exec`` keeps them)."""
    live = ("import os, signal, sys\n"
            "for s in (signal.SIGINT, signal.SIGTERM): signal.signal(s, signal.SIG_DFL)\n"
            "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])")
    return [args[0], "-c", live, *args[1:]]


def _signal_mid_run(args, env, out: Path, sig: int, parts_before: int):
    """Start the audit, send ``sig`` once a new part is committed; (exit code, stderr,
    seconds from the signal to the exit)."""
    proc = subprocess.Popen(_signals_live(args), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((out / "parts").glob("*.parquet"))) > parts_before:
            break
        time.sleep(0.1)
    t_sig = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err, time.monotonic() - t_sig


def test_stop_signal(shards, tmp_path, figure):
    """SIGTERM mid-run: exit 143, manifest and summary say stopped, Ray gone, one log
    line; the next run resumes, SIGINT stops it with 130; the third completes."""
    root, tables = shards
    out = tmp_path / "out"
    ray_tmp = f"/tmp/nibt-stop-{os.getpid()}"
    args = [sys.executable, "-m", "pipeline", f"input={root}", f"output={out}", *TINY_CLI,
            "model.steps=6", "run.rows_per_task=8", "cluster.num_actors=1",
            f"cluster.temp_dir={ray_tmp}"]
    env, pace = paced_env(tmp_path)
    code, err, seconds = _signal_mid_run(args, env, out, signal.SIGTERM, 0)
    # Ray's last processes end a moment after the driver: waited for, within a bound
    wait_for(lambda: not _ray_processes(ray_tmp), 15)
    left = _ray_processes(ray_tmp)
    summary = json.loads((out / "_summary.json").read_text())
    listed = {p["path"] for p in read_manifest(str(out))["parts"]}
    on_disk = {f"parts/{p.name}" for p in (out / "parts").iterdir()}
    stop_lines = [ln for ln in err.splitlines() if "stopped by SIGTERM" in ln]
    success_after_stop = (out / "_SUCCESS").exists()
    code_int, err_int, seconds_int = _signal_mid_run(args, env, out, signal.SIGINT,
                                                     len(on_disk))
    summary_int = json.loads((out / "_summary.json").read_text())
    pace.write_text("{}")  # the last run at full speed
    final = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    last = json.loads(final.stdout)
    got = ids(out)
    figure(sigterm_exit_code=code, sigterm_to_exit_s=round(seconds, 1),
           parts_committed_before_stop=len(listed), ray_processes_left=len(left),
           sigint_exit_code=code_int, sigint_to_exit_s=round(seconds_int, 1),
           last_run_tasks_skipped=last["tasks_skipped"], last_run_tasks_run=last["tasks_run"],
           rows_out=len(got), duplicates=len(got) - len(set(got)))
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert code == 143, err[-3000:]
    assert summary["status"] == "stopped" and summary["stopped_by"] == "SIGTERM"
    assert summary["exit_code"] == 143 and summary["tasks_not_run"] >= 1
    assert not success_after_stop
    assert listed and listed <= on_disk  # a part committed as the stop came is found next run
    assert left == [], left
    assert len(stop_lines) == 1, err[-3000:]
    assert "Traceback" not in err and "*** " not in err, err[-3000:]
    assert seconds < 60
    assert code_int == 130 and summary_int["status"] == "stopped", err_int[-3000:]
    assert summary_int["stopped_by"] == "SIGINT" and summary_int["tasks_skipped"] >= len(on_disk)
    assert final.returncode == EXIT_OK, final.stderr[-3000:]
    assert last["tasks_skipped"] >= 2 and last["tasks_run"] == 8 - last["tasks_skipped"]
    assert sorted(got) == all_ids(tables)


# driver killed ----------------------------------------------------------------------------
def _ledger_state(fs, out: str) -> tuple[set[str], list[str]]:
    """What the ledger on storage records (read here with pyarrow, not the job's code): the
    task ids, and the frontier of its newest file."""
    import pyarrow.parquet as pq

    files = sorted(fs.find(f"{out}/_ledger"), key=lambda p: p.rsplit("-", 1)[-1])
    files = [f for f in files if f.rsplit("/", 1)[-1].startswith("L")]
    ids: set[str] = set()
    for f in files:
        ids |= set(pq.read_table(fs.open(f)).column("task_id").to_pylist())
    if not files:
        return ids, []
    with fs.open(files[-1]) as f:  # the frontier is in the file's footer, not Arrow's schema
        newest = pq.ParquetFile(f).metadata.metadata or {}
    return ids, json.loads(newest.get(b"nibt.frontier", b"[]"))


def test_driver_killed_after_a_checkpoint(s3_endpoint, tmp_path, figure):
    """SIGKILL the driver once parts were committed after its last checkpoint: the rerun
    reads the ledger, finds those parts from one footer read each (the frontier's), runs
    only the rest, and the output holds every row once."""
    import s3fs

    from pipeline.devtools.s3local import StoreControl

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("killed")
    tables = write_s3_shards(fs, "killed/in", 4, 16, seed=140)  # 4-row groups: 16 tasks
    ray_tmp = f"/tmp/nibt-killed-{os.getpid()}"
    args = [sys.executable, "-m", "pipeline", "input=s3://killed/in/", "output=s3://killed/out",
            "storage=s3", f"storage.endpoint_url={s3_endpoint}", *TINY_CLI, "model.steps=12",
            "run.rows_per_task=4", "run.checkpoint_every_tasks=2", "run.checkpoint_every_s=600",
            "cluster.num_actors=1", f"cluster.temp_dir={ray_tmp}"]
    env, pace = paced_env(tmp_path)  # at least PACE_S between a checkpoint and the next part
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)
    deadline, ledger, frontier, parts = time.monotonic() + 300, set(), [], set()
    while time.monotonic() < deadline and proc.poll() is None:
        fs.invalidate_cache()
        parts = {p.rsplit("/", 1)[1][:-8] for p in fs.find("killed/out/parts")
                 if p.endswith(".parquet") and "/." not in p}
        ledger, frontier = _ledger_state(fs, "killed/out")
        if ledger and parts - ledger:  # a checkpoint written, and a part committed after it
            break
        time.sleep(0.1)
    proc.kill()
    proc.communicate(timeout=60)
    for pid in _ray_processes(ray_tmp):  # a killed driver leaves Ray's helpers behind
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    fs.invalidate_cache()
    parts = {p.rsplit("/", 1)[1][:-8] for p in fs.find("killed/out/parts")
             if p.endswith(".parquet") and "/." not in p}
    ledger, frontier = _ledger_state(fs, "killed/out")
    late = parts - ledger
    assert ledger and late, "the driver was not caught between a checkpoint and the next"
    assert late <= set(frontier)  # every part committed after the checkpoint is in it

    store = StoreControl(s3_endpoint)
    store.reset()
    pace.write_text("{}")  # the rerun at full speed
    rerun = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    code, s = rerun.returncode, json.loads(rerun.stdout.strip().splitlines()[-1])
    reads = {k: n for (op, k), n in store.requests().items() if k.startswith("killed/out/parts/")
             and op in ("GET", "HEAD", "LIST")}
    shutil.rmtree(ray_tmp, ignore_errors=True)
    storage = settings("x", "y", endpoint=s3_endpoint).storage
    got = read_results("s3://killed/out", storage, columns=["id"]).column("id").to_pylist()
    figure(tasks=s["tasks_total"], committed_in_ledger=len(ledger), committed_after_checkpoint=len(late),
           frontier=len(frontier), rerun_part_reads=sum(reads.values()),
           rerun_tasks_skipped=s["tasks_skipped"], rerun_tasks_recovered=s["tasks_recovered"],
           rerun_tasks_run=s["tasks_run"], rows_out=len(got),
           duplicates=len(got) - len(set(got)))
    assert code == EXIT_OK, rerun.stderr[-3000:]
    assert s["tasks_recovered"] == len(late)
    assert s["tasks_skipped"] == len(ledger | late)
    assert s["tasks_run"] == s["tasks_total"] - len(ledger | late)
    # one footer read for each frontier task the ledger did not hold, and nothing else
    assert reads == {f"killed/out/parts/{t}.parquet": 1 for t in set(frontier) - ledger}
    assert sorted(got) == all_ids(tables)


def write_s3_shards(fs, prefix: str, shards: int, rows: int, seed: int):
    from tests.data import pairs_table, write_table

    tables = [pairs_table(rows, seed=seed + s) for s in range(shards)]
    for s, t in enumerate(tables):
        write_table(t, f"{prefix}/shard-{s}.parquet", fs=fs, row_group_size=4)
    return tables


# a batch too big for the device -----------------------------------------------------------
def test_batch_that_does_not_fit_is_split(ray_faults, inject, tmp_path, figure):
    """CUDA's out-of-memory error above 40 pairs (injected): the 128-pair batch is split in
    halves until it fits, and every row is computed."""
    root = tmp_path / "in"
    root.mkdir()
    write_table(pairs_table(128, seed=90), str(root / "a.parquet"), row_group_size=128)
    inject({"oom_above": {"pairs": 40, "times": 99}})
    t0 = time.time()
    code, s = run_job(settings(str(root), str(tmp_path / "out"),
                               model={"batch_size": 128}, run={"rows_per_task": 128}))
    figure(batch_size=128, fits_up_to=40, batch_splits=s["batch_splits"],
           status_counts=s["status_counts"], seconds=round(time.time() - t0, 1))
    assert code == EXIT_OK
    assert s["batch_splits"] == 2  # 128 -> 64 -> 32: the later batches start at the limit
    assert s["status_counts"] == {"ok": 128}


# worker killed ---------------------------------------------------------------------------
def test_actor_killed_inside_a_task(ray_faults, inject, fault_file, shards, tmp_path, figure):
    """SIGKILL to the actor while it is inside a task (its first attempt stalls, so the kill
    cannot fall between two tasks): Ray restarts it, the task is retried, every row once."""
    root, tables = shards
    inject({"stall": {"times": 1, "seconds": 3600}})
    result: dict = {}
    t0 = time.time()
    job = threading.Thread(target=lambda: result.update(zip(("code", "summary"), run_job(
        settings(str(root), str(tmp_path / "out"), run={"rows_per_task": 8})))))
    job.start()
    stalled = wait_for(lambda: faults.fired_in(fault_file, "stall"), 120)
    assert stalled, "no task attempt stalled"
    pid = next(iter(stalled))
    os.kill(pid, signal.SIGKILL)
    job.join(timeout=600)
    got = ids(tmp_path / "out")
    s = result["summary"]
    figure(rows_in=s["rows_in"], rows_out=len(got), duplicates=len(got) - len(set(got)),
           retries=s["tasks_retried"], seconds=round(time.time() - t0, 1))
    assert result["code"] == EXIT_OK
    assert s["tasks_retried"] >= 1
    assert sorted(got) == all_ids(tables)
