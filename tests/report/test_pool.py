"""The report's worker processes: results in task order, a dead or stuck worker replaced and
its task sent again, a task's own error raised as it was, every wait bounded."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from pipeline.io.results import PartUnreadable
from pipeline.job.procstats import status_kb
from pipeline.report.pool import InProcess, LocalPool, WorkerLost


def slow_square(x: int) -> int:
    time.sleep(0.05 * (x % 3))  # finish out of order
    return x * x


def die_once(args: tuple[str, int]) -> int:
    """Kill this worker the first time task ``x == 3`` runs (a marker file remembers)."""
    marker, x = args
    if x == 3:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            os.kill(os.getpid(), signal.SIGKILL)
        except FileExistsError:
            pass
    return x * 10


def always_die(x: int) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return x


def hang(x: int) -> int:
    if x == 1:
        time.sleep(3600)
    return x


def unreadable(x: int) -> int:
    if x == 2:
        raise PartUnreadable(f"/r/parts/task{x:04d}.parquet", "truncated")
    return x


def test_results_come_in_task_order_whatever_order_workers_finish_in():
    with LocalPool(2) as pool:
        assert list(pool.map(slow_square, list(range(12)))) == [x * x for x in range(12)]
        assert list(pool.map(slow_square, [5, 4])) == [25, 16]  # the pool serves map after map
        assert len(pool.peak_rss_mb()) == 2 and all(v > 0 for v in pool.peak_rss_mb().values())
    assert list(InProcess().map(slow_square, [3, 2])) == [9, 4]


def test_a_worker_that_dies_is_replaced_and_its_task_sent_again(tmp_path):
    marker = str(tmp_path / "died")
    with LocalPool(2) as pool:
        got = list(pool.map(die_once, [(marker, x) for x in range(8)]))
        assert got == [x * 10 for x in range(8)]
        assert pool.replaced == 1 and os.path.exists(marker)
    with LocalPool(2, retries=1) as pool, pytest.raises(WorkerLost, match="died"):
        list(pool.map(always_die, [1]))


def test_a_stuck_task_times_out_and_a_tasks_error_is_raised_as_it_was():
    t = time.monotonic()
    with LocalPool(2, task_timeout_s=1.0, retries=1) as pool, \
            pytest.raises(WorkerLost, match="ran past 1 s"):
        list(pool.map(hang, [0, 1, 2]))
    assert time.monotonic() - t < 30
    with LocalPool(2) as pool, pytest.raises(PartUnreadable, match="task0002.parquet") as e:
        list(pool.map(unreadable, list(range(5))))
    assert e.value.path == "/r/parts/task0002.parquet" and e.value.reason == "truncated"


def _log(path: str, *fields: object) -> None:
    with open(path, "a") as f:  # one short line per write: appends do not interleave
        f.write(" ".join(map(str, fields)) + "\n")


def noted_ahead(args: tuple[str, int]) -> None:
    _log(args[0], "ahead", args[1], os.getpid(), time.monotonic())


def noted_run(args: tuple[str, int]) -> int:
    log, x = args
    _log(log, "start", x, os.getpid(), time.monotonic())
    time.sleep(0.2)
    _log(log, "end", x, os.getpid(), time.monotonic())
    return x


def _overlaps(log: str, tasks: int) -> dict[str, object]:
    """From the log: the tasks whose ``ahead`` ran in the process that ran them, before
    they started and before the task that process ran before them had ended."""
    seen: dict[tuple[str, int], tuple[int, float]] = {}
    for line in Path(log).read_text().splitlines():
        what, x, pid, t = line.split()
        seen[what, int(x)] = int(pid), float(t)
    early, by_pid = [], {}
    for x in sorted(range(tasks), key=lambda x: seen["start", x][1]):
        pid, started = seen["start", x]
        before = by_pid.get(pid)
        if before is not None and ("ahead", x) in seen:
            a_pid, a_t = seen["ahead", x]
            if a_pid == pid and a_t < seen["end", before][1] and a_t < started:
                early.append(x)
        by_pid[pid] = x
    return {"early": early, "pids": len({p for p, _ in seen.values()}),
            "aheads": sum(1 for k in seen if k[0] == "ahead")}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_task_is_announced_to_its_worker_while_the_task_before_runs(tmp_path, workers):
    """``ahead(task)`` runs in the process that then runs the task, before the task it runs
    first has ended (the next task's reads overlap the current one's work): every task but
    each worker's first, and with several workers the last ``workers - 1`` (sent only to a
    worker that is free, so as not to wait behind another); results unchanged, in order."""
    log = str(tmp_path / "log")
    tasks = [(log, x) for x in range(8)]
    with (LocalPool(workers) if workers > 1 else InProcess()) as pool:
        assert list(pool.map(noted_run, tasks, noted_ahead)) == list(range(8))
    got = _overlaps(log, 8)
    assert got["pids"] == workers
    assert len(got["early"]) == 8 - workers - (workers - 1), got


def timed_run(args: tuple[str, int, float]) -> int:
    log, x, seconds = args
    _log(log, "start", x, os.getpid(), time.monotonic())
    time.sleep(seconds)
    _log(log, "end", x, os.getpid(), time.monotonic())
    return x


def _ran(log: str) -> dict[int, tuple[int, float, float]]:
    """Each task's process, start and end, from the log."""
    seen: dict[tuple[str, int], tuple[int, float]] = {}
    for line in Path(log).read_text().splitlines():
        what, x, pid, t = line.split()
        seen[what, int(x)] = int(pid), float(t)
    return {x: (pid, t, seen["end", x][1]) for (what, x), (pid, t) in seen.items()
            if what == "start"}


def test_every_worker_gets_a_task_before_any_gets_two_and_none_waits_at_the_end(tmp_path):
    """Two tasks on two workers run side by side, in two processes. Of three, with the first
    long: the other two run on the second worker, not one of them behind the long one."""
    log = str(tmp_path / "two")
    with LocalPool(2) as pool:
        assert list(pool.map(timed_run, [(log, 0, 0.5), (log, 1, 0.5)])) == [0, 1]
        ran = _ran(log)
        assert ran[0][0] != ran[1][0], ran
        assert ran[1][1] < ran[0][2] and ran[0][1] < ran[1][2], ran  # side by side
        log = str(tmp_path / "three")
        assert list(pool.map(timed_run, [(log, 0, 2.0), (log, 1, 0.1), (log, 2, 0.1)])) == [
            0, 1, 2]
    ran = _ran(log)
    assert ran[1][0] == ran[2][0] != ran[0][0], ran
    assert ran[2][2] < ran[0][2], ran  # the short ones ended while the long one ran


def failing_ahead(x: int) -> None:
    raise OSError(f"no early start for {x}")


@pytest.mark.parametrize("workers", [1, 2])
def test_an_early_start_that_fails_is_left_to_its_task(workers):
    """``ahead`` raising ends nothing: the tasks run (and would meet the error themselves)."""
    with (LocalPool(workers) if workers > 1 else InProcess()) as pool:
        assert list(pool.map(slow_square, list(range(6)), failing_ahead)) == [
            x * x for x in range(6)]


def churn(n: int) -> float:
    """Allocate and free ``n`` Arrow arrays of 256 KB and as many Python lists (about 400 MB
    at n=1600), as a pass's task does with its chunks."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    arrays = [pa.array(np.random.default_rng(i).random(32_768)) for i in range(n)]
    total = sum(pc.sum(a).as_py() for a in arrays)
    lists = [list(range(1000)) for _ in range(n)]
    del arrays, lists
    return total


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_an_idle_worker_gives_back_what_its_task_freed():
    """Arrow's pool and glibc's heap keep what a task freed; a worker with no task waiting
    gives it back, so idle workers do not hold a pass's peak while the report goes on
    (without it this worker stays at about 500 MB)."""
    with LocalPool(1) as pool:
        assert len(list(pool.map(churn, [1600]))) == 1
        [w] = pool._pool
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the release runs after the result is sent
            rss, peak = status_kb("VmRSS", w.proc.pid), status_kb("VmHWM", w.proc.pid)
            if rss < peak / 2:
                break
            time.sleep(0.05)
        assert peak > 400_000 and rss < peak / 2, (rss, peak)
