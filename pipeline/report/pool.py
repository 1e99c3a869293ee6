"""Where the report's per-part work runs: in this process, or in worker processes.

An executor maps a picklable function over tasks and yields the results in task
order, whatever order the workers finish in, so the merge of partial aggregates
(and with it the report) does not depend on how many workers there are. Given
``ahead``, an executor calls ``ahead(task)`` in the process that will run the
task as soon as that process holds it, while it may still be running the task
before: the task's first reads start early (``io.results.read_ahead``).

``LocalPool`` starts its worker processes from a fork server (never a fork of a
process holding threads and a storage client) and keeps ``in_flight`` tasks with
each, so a worker finds its next task waiting (one task to every worker first, and
none waiting behind another at the end of a pass while a worker idles). A worker that dies (killed, out
of memory) is replaced and its tasks are sent again, to whichever worker is
free; a task that runs past ``task_timeout_s`` has its worker killed and is sent
again the same way; after ``retries`` such attempts the task fails the report.
An exception a task raises is not retried (the same parts would raise it
again): it ends the report. Every wait is bounded (a worker's start counts
towards its first task's time). One ``map`` at a time, consumed to its end or
followed by ``close``. ``pipeline.cli.report_ray`` has the same interface over a
Ray cluster.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import multiprocessing
import multiprocessing.connection as mpc
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

#: Seconds a task may run before its worker is killed and the task sent again.
TASK_TIMEOUT_S = 900.0
#: Attempts after the first for a task whose worker died or timed out.
TASK_RETRIES = 2


class WorkerLost(RuntimeError):
    """A task's workers died or timed out on every attempt."""


#: Called with a task in the process that will run it, before it runs (``Executor.map``).
Ahead = Callable[[Any], None]


class Executor(Protocol):
    """Runs ``fn`` over tasks; results in task order."""

    workers: int

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any],
            ahead: Ahead | None = None) -> Iterator[Any]: ...

    def close(self) -> None: ...

    def peak_rss_mb(self) -> dict[str, float]: ...


#: Maps a picklable function over jobs, results in job order (``Executor.map``, or ``map``).
MapFn = Callable[[Callable[[Any], Any], Sequence[Any]], Iterable[Any]]


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB (VmHWM; 0 where /proc has none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def release_memory() -> None:
    """Give the memory this process has freed back to the system: Arrow's pool and glibc's
    heap keep what was freed for later use by themselves, each apart, so a process that
    has finished a pass (a worker going idle, the report before its next step) would hold
    its pass's peak for the rest of the report. A few milliseconds; a no-op where there
    is no glibc."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class InProcess:
    """The tasks one after the other in this process (``report.workers=1``)."""

    workers = 1

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any],
            ahead: Ahead | None = None) -> Iterator[Any]:
        for i, task in enumerate(tasks):
            if ahead is not None and i + 1 < len(tasks):
                _announce(ahead, tasks[i + 1])
            yield fn(task)

    def close(self) -> None:
        pass

    def peak_rss_mb(self) -> dict[str, float]:
        return {}

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _announce(ahead: Ahead, task: Any) -> None:
    """``ahead(task)``; what it raises is left to the task, which meets it when it runs
    (an early start only)."""
    with contextlib.suppress(Exception):
        ahead(task)


def _receive(conn: mpc.Connection, inbox: queue.SimpleQueue) -> None:
    """A worker's tasks as they come (a thread): each one's ``ahead`` called at once, while
    the task before may still run; then it goes to ``inbox`` (None at the end)."""
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            msg = None
        if msg is not None and msg[3] is not None:
            _announce(msg[3], msg[2])
        inbox.put(msg)
        if msg is None:
            return


def _serve(conn: mpc.Connection) -> None:
    """A worker's loop: receive ``(id, fn, task, ahead)``, send ``(id, ok, result or error,
    peak)``."""
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_receive, args=(conn, inbox), daemon=True,
                     name="nibt-receive").start()
    while True:
        msg = inbox.get()
        if msg is None:
            return
        tid, fn, task, _ = msg
        try:
            out: tuple = (tid, True, fn(task), peak_rss_mb())
        except BaseException as e:  # noqa: BLE001 - sent to the driver, which raises it
            out = (tid, False, _portable(e), peak_rss_mb())
        try:
            conn.send(out)
        except Exception as e:  # a result that does not pickle
            conn.send((tid, False, RuntimeError(f"task result not sent: {e}"), peak_rss_mb()))
        del out
        if inbox.empty():  # idle: what the task freed goes back while others work
            release_memory()


def _portable(e: BaseException) -> BaseException:
    """``e`` if it survives pickling, else a RuntimeError with its text."""
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:
        return RuntimeError(f"{type(e).__name__}: {e}")


def _context() -> multiprocessing.context.BaseContext:
    """Workers forked from a fork server (a clean process that has imported the report's
    modules once: a new worker starts in milliseconds, and never from a process holding
    threads or a storage client); spawned where there is no fork server."""
    try:
        ctx = multiprocessing.get_context("forkserver")
    except ValueError:
        return multiprocessing.get_context("spawn")
    ctx.set_forkserver_preload(["pipeline.report.passes", "pipeline.report.render"])
    return ctx


def start_fork_server() -> None:
    """Start the fork server now, where there is one: it imports the workers' modules in a
    process of its own, so a ``LocalPool`` started later forks its workers at once."""
    ctx = _context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


@dataclass
class _Worker:
    proc: Any
    conn: mpc.Connection
    tasks: deque = field(default_factory=deque)  # ids sent, oldest first
    busy_since: float = 0.0  # when the oldest task started (its predecessor's end)


class LocalPool:
    """``workers`` spawned worker processes on this machine."""

    def __init__(self, workers: int, task_timeout_s: float = TASK_TIMEOUT_S,
                 retries: int = TASK_RETRIES, in_flight: int = 2) -> None:
        self.workers = max(1, int(workers))
        self.task_timeout_s, self.retries, self.in_flight = task_timeout_s, retries, in_flight
        self._ctx = _context()
        self._pool: list[_Worker] = [self._start() for _ in range(self.workers)]
        self._peaks: dict[str, float] = {}
        self.replaced = self._idle_deaths = 0

    def _start(self) -> _Worker:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_serve, args=(child,), daemon=True,
                                 name="nibt-report-worker")
        proc.start()
        child.close()
        return _Worker(proc, parent)

    def _stop(self, w: _Worker) -> None:
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join(10)
        w.conn.close()

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any],
            ahead: Ahead | None = None) -> Iterator[Any]:
        """``fn(task)`` for each task in worker processes, yielded in task order; a worker
        calls ``ahead(task)`` as it receives the task (``in_flight`` are sent to it)."""
        todo = deque(range(len(tasks)))
        attempts = [0] * len(tasks)
        done: dict[int, Any] = {}
        window = self.workers * self.in_flight * 2  # results held before they are yielded
        nxt = 0
        while nxt < len(tasks):
            self._send((fn, ahead), tasks, todo, nxt + window, attempts)
            self._collect(done, todo, attempts)
            while nxt in done:
                yield done.pop(nxt)
                nxt += 1

    def _send(self, fns: tuple[Callable, Ahead | None], tasks: Sequence[Any], todo: deque,
              limit: int, attempts: list[int]) -> None:
        """Give each worker a task before any gets another (two tasks on two workers run
        side by side); a worker that is busy gets its next task only while at least as
        many wait as there are workers (at the end of a pass no task waits behind another
        while a worker idles)."""
        for depth in range(1, self.in_flight + 1):
            for i, w in enumerate(list(self._pool)):
                while (len(w.tasks) < depth and todo and todo[0] < limit
                       and (not w.tasks or len(todo) >= self.workers)):
                    tid = todo.popleft()
                    if not w.tasks:
                        w.busy_since = time.monotonic()
                    w.tasks.append(tid)
                    try:
                        w.conn.send((tid, fns[0], tasks[tid], fns[1]))
                    except OSError:  # it died since it was last heard from: its tasks go back
                        self._replace(i, w, todo, attempts, "died")
                        break

    def _collect(self, done: dict[int, Any], todo: deque, attempts: list[int]) -> None:
        """Wait (bounded) for results, deaths and timeouts; requeue what was lost."""
        now = time.monotonic()
        deadlines = [w.busy_since + self.task_timeout_s for w in self._pool if w.tasks]
        wait = max(0.0, min(deadlines, default=now + 1.0) - now)
        ready = set(mpc.wait([w.conn for w in self._pool] + [w.proc.sentinel for w in self._pool],
                             timeout=min(wait, 5.0)))
        for i, w in enumerate(list(self._pool)):
            if w.conn in ready:
                try:
                    tid, ok, value, peak = w.conn.recv()
                except (EOFError, OSError):
                    self._replace(i, w, todo, attempts, "died")
                    continue
                self._peaks[str(w.proc.pid)] = peak
                w.tasks.remove(tid)
                w.busy_since = time.monotonic()
                if not ok:
                    raise value
                done[tid] = value
            elif w.proc.sentinel in ready and not w.proc.is_alive():
                self._replace(i, w, todo, attempts, f"died (exit code {w.proc.exitcode})")
            elif w.tasks and time.monotonic() > w.busy_since + self.task_timeout_s:
                self._replace(i, w, todo, attempts, f"ran past {self.task_timeout_s:g} s")

    def _replace(self, i: int, w: _Worker, todo: deque, attempts: list[int], why: str) -> None:
        """Stop worker ``w``, put its tasks back first in line, start another in its place."""
        self._stop(w)
        self._idle_deaths = 0 if w.tasks else self._idle_deaths + 1
        if self._idle_deaths > self.workers * (self.retries + 1):
            raise WorkerLost(f"report workers keep dying before any task ({why})")
        if w.tasks:
            head = w.tasks[0]
            attempts[head] += 1
            if attempts[head] > self.retries:
                raise WorkerLost(f"report task {head}: its worker {why} on "
                                 f"{attempts[head]} attempts")
            todo.extendleft(sorted(w.tasks, reverse=True))
        self._pool[i] = self._start()
        self.replaced += 1

    def peak_rss_mb(self) -> dict[str, float]:
        """Each worker process's peak resident memory (MiB) as it last reported it."""
        return dict(self._peaks)

    def close(self) -> None:
        for w in self._pool:
            with contextlib.suppress(OSError, ValueError):
                w.conn.send(None)
        deadline = time.monotonic() + 10
        for w in self._pool:
            w.proc.join(max(0.0, deadline - time.monotonic()))
            self._stop(w)

    def __enter__(self) -> LocalPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
