"""Tasks over a pool of actors: start probes, dispatch, deadlines, retries, a stop.

The driver hands ``Dispatcher.run`` the tasks to do; each task it finishes
(committed, or failed with the reason) goes to ``on_result`` as it comes (kept in
``Outcome.results`` when there is no ``on_result``), and the outcome says which
tasks were left when a stop was asked for. Failures and retries are logged one
by one; tasks that went well are not (the driver logs aggregate progress). The actors are reached through an
``ActorPool`` (``pipeline.job.actors.RayActorPool`` in a run, fakes in the unit
tests), so every rule here is tested without Ray.

Every wait has a bound: an actor has ``start_timeout_s`` to start or to come
back after a restart (then it is given up), a task has ``timeout_for(task)``
seconds (then its actor is killed, Ray restarts it, and the task is retried), and
the loop wakes at least every ``tick_s`` to look at the clock and the stop flag.

Ray restarts dead actors (``max_restarts``); the retries stay here because Ray's
own (``max_task_retries``) would retry on the same actor only, and would not see
a task that stalled or returned rows that failed in the engine.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.job.plan import Task
from pipeline.job.results import TaskResult

log = logging.getLogger("nibt-audit")


class ActorLost(Exception):
    """The actor died (or is restarting) before it answered; ``init_failed``: its
    constructor raised, so it will not come back."""

    def __init__(self, message: str, init_failed: bool = False) -> None:
        super().__init__(message)
        self.init_failed = init_failed


class ActorPool(Protocol):
    """What the dispatcher needs from a pool of actors."""

    def probe(self, actor: Any) -> Hashable:
        """A call that answers once ``actor`` can take tasks (after a start or restart)."""

    def submit(self, actor: Any, task: Task, final: bool) -> Hashable:
        """Start ``task`` on ``actor``; ``final``: its last attempt."""

    def wait(self, refs: list[Hashable], timeout: float) -> list[Hashable]:
        """Those of ``refs`` that answered, waiting up to ``timeout`` s for the first."""

    def result(self, ref: Hashable) -> Any:
        """The answer of ``ref``; raises ``ActorLost`` if its actor died first."""

    def kill(self, actor: Any, restart: bool) -> None:
        """Kill ``actor`` (its calls in flight fail); ``restart``: let it start again."""


@dataclass
class _Actor:
    """One actor's state: free slots, slots lost while it restarts, its probe."""

    index: int
    handle: Any
    free: int = 0
    lost: int = 0  # slots to give back when its probe answers
    deadline: float = 0.0  # for the probe out (start or restart)
    probing: bool = False
    reprobe_at: float | None = None
    gone: bool = False


@dataclass
class _Call:
    """One call in flight: a task (or a probe when ``task`` is None) on an actor."""

    actor: _Actor
    task: Task | None = None
    deadline: float = 0.0
    started: float = 0.0


@dataclass
class Outcome:
    """What ``Dispatcher.run`` did: results, retries, and what a stop left undone."""

    results: list[TaskResult] = field(default_factory=list)  # without ``on_result`` only
    retries: int = 0
    not_run: list[Task] = field(default_factory=list)  # left when stopped
    stopped: bool = False
    first_ready: float | None = None  # clock time the first actor could take tasks
    actors_ready: int = 0  # actors that ever started
    up: list[int] = field(default_factory=list)  # actors answering at the end (not restarting)


class Dispatcher:
    """A queue of tasks over actors, each running up to ``slots`` tasks at once.

    While an actor starts or restarts, a probe is out on it and it gets no tasks.
    A task that failed in a way another try may fix (its actor died or stalled, a
    read failed, rows failed in the engine) goes back to the front of the queue, up
    to ``max_retries`` times, preferring an actor it has not failed on; its last
    attempt is marked ``final`` (the worker then commits rows that failed again,
    with status ``error``).
    """

    def __init__(self, actors: list, pool: ActorPool, max_retries: int, *, slots: int = 1,
                 start_timeout_s: float = 600.0,
                 timeout_for: Callable[[Task, float], float] = lambda task, slowest: 3600.0,
                 progress: Any = None, stop: threading.Event | None = None,
                 clock: Callable[[], float] = time.monotonic, tick_s: float = 1.0,
                 reprobe_s: float = 0.5,
                 on_result: Callable[[Task, TaskResult], None] | None = None,
                 on_tick: Callable[[Dispatcher], None] | None = None) -> None:
        self.actors = [_Actor(i, a) for i, a in enumerate(actors)]
        self.pool = pool
        self.max_retries = max_retries
        self.slots = max(1, slots)
        self.start_timeout_s = start_timeout_s
        self.timeout_for = timeout_for  # (task, slowest seconds per row so far) -> seconds
        self.progress = progress
        self.stop = stop or threading.Event()
        self.clock = clock
        self.tick_s, self.reprobe_s = tick_s, reprobe_s
        self.on_result, self.on_tick = on_result, on_tick
        self.attempts: Counter = Counter()  # task id -> retries so far
        self.failed_on: dict[str, set[int]] = {}  # task id -> actors it failed on
        self.slowest_s_per_row = 0.0
        self.ready: set[int] = set()  # actors that ever answered their probe
        self._pending: deque[Task] = deque()
        self._calls: dict[Hashable, _Call] = {}

    # ------------------------------------------------------------------ helpers
    def _emit(self, task: Task, res: TaskResult, out: Outcome) -> None:
        if self.on_result is None:
            out.results.append(res)
        else:
            self.on_result(task, res)

    def _failed(self, task: Task, error: str) -> TaskResult:
        return TaskResult(task.task_id, task.uri, task.row_start, task.row_end, ok=False,
                          error=error, retryable=True)

    def _up(self) -> list[_Actor]:
        return [a for a in self.actors if not a.gone and not a.probing]

    def _probe(self, actor: _Actor, calls: dict, deadline: float | None = None) -> None:
        if not actor.probing:
            actor.probing = True
            actor.deadline = deadline if deadline is not None else (
                self.clock() + self.start_timeout_s)
        actor.reprobe_at = None
        calls[self.pool.probe(actor.handle)] = _Call(actor)

    def _down(self, actor: _Actor, calls: dict) -> None:
        """One of ``actor``'s slots was lost with it: a probe brings it back."""
        actor.lost += 1
        if not actor.probing:
            self._probe(actor, calls)

    def _give_up(self, actor: _Actor, why: str) -> None:
        actor.gone, actor.probing, actor.reprobe_at = True, False, None
        actor.free = actor.lost = 0
        self.pool.kill(actor.handle, restart=False)
        left = sum(not a.gone for a in self.actors)
        log.error("actor %d given up: %s; %d left", actor.index, why, left)

    def _next_for(self, actor: _Actor, pending: deque) -> Task | None:
        """The first pending task ``actor`` should take: one that has not failed on it,
        or, when no actor that is up is new to the task, any."""
        up = {a.index for a in self._up()}
        for task in pending:
            tried = self.failed_on.get(task.task_id, set())
            if actor.index not in tried or up <= tried:
                pending.remove(task)
                return task
        return None

    def _assign(self, pending: deque, calls: dict) -> None:
        while pending:
            progress = False
            for actor in sorted(self._up(), key=lambda a: -a.free):  # spread over actors
                if actor.free <= 0:
                    continue
                task = self._next_for(actor, pending)
                if task is None:
                    continue
                final = self.attempts[task.task_id] >= self.max_retries
                now = self.clock()
                calls[self.pool.submit(actor.handle, task, final)] = _Call(
                    actor, task, now + self.timeout_for(task, self.slowest_s_per_row), now)
                actor.free -= 1
                progress = True
            if not progress:
                return

    # --------------------------------------------------------------------- run
    def frontier(self, n: int) -> list[str]:
        """The tasks in flight and the next ``n`` to start, by id: while no more than
        ``n`` tasks finish, none other can be committed."""
        running = [c.task.task_id for c in self._calls.values() if c.task is not None]
        return running + [t.task_id for t in itertools.islice(self._pending, n)]

    @property
    def retries(self) -> int:
        return sum(self.attempts.values())

    def run(self, tasks: list[Task]) -> Outcome:
        out = Outcome()
        pending: deque[Task] = deque(tasks)
        calls: dict[Hashable, _Call] = {}
        self._pending, self._calls = pending, calls
        for actor in self.actors:
            actor.lost = self.slots  # every slot comes with the first probe's answer
            self._probe(actor, calls, self.clock() + self.start_timeout_s)

        def running() -> bool:
            return any(c.task is not None for c in calls.values())

        def can_start() -> bool:
            return any(not a.gone for a in self.actors)

        while not self.stop.is_set():
            self._assign(pending, calls)
            if not running() and not (pending and can_start()):
                break
            now = self.clock()
            wake = [c.deadline for c in calls.values() if c.task is not None]
            wake += [a.deadline for a in self.actors if a.probing]
            wake += [a.reprobe_at for a in self.actors if a.reprobe_at is not None]
            timeout = max(0.0, min([now + self.tick_s, *wake]) - now)
            for ref in self.pool.wait(list(calls), timeout):
                self._answered(ref, calls.pop(ref), pending, calls, out)
            self._expire(pending, calls, out)
            if self.on_tick is not None:
                self.on_tick(self)
        if self.stop.is_set():
            out.stopped = True
            out.not_run = [c.task for c in calls.values() if c.task is not None] + list(pending)
        else:
            for task in pending:  # only when every actor is gone
                res = self._failed(task, "no actor left to run it")
                log.error("task %s FAILED: %s", task.task_id, res.error)
                self._emit(task, res, out)
        out.retries = self.retries
        out.actors_ready = len(self.ready)
        out.up = [a.index for a in self._up()]
        return out

    def _answered(self, ref: Hashable, call: _Call, pending: deque, calls: dict,
                  out: Outcome) -> None:
        actor = call.actor
        if call.task is None:  # a probe
            try:
                self.pool.result(ref)
            except ActorLost as e:
                if actor.gone:
                    return
                if e.init_failed:
                    self._give_up(actor, f"it failed to start: {e}")
                else:  # restarting: ask again shortly, until its deadline
                    actor.reprobe_at = self.clock() + self.reprobe_s
                return
            if actor.gone:
                return
            if out.first_ready is None:
                out.first_ready = self.clock()
            self.ready.add(actor.index)
            actor.probing = False
            actor.free += actor.lost
            actor.lost = 0
            return
        task = call.task
        try:
            res: TaskResult = self.pool.result(ref)
            actor.free += 1
        except ActorLost as e:
            res = self._failed(task, f"actor died: {str(e).splitlines()[0][:200]}")
            if not actor.gone:
                self._down(actor, calls)
        except Exception as e:
            res = self._failed(task, f"{type(e).__name__}: {e}")
            actor.free += 1
        if res.ok and task.rows:
            spent = self.clock() - call.started
            self.slowest_s_per_row = max(self.slowest_s_per_row, spent / task.rows)
        self._record(task, actor, res, pending, out)

    def _expire(self, pending: deque, calls: dict, out: Outcome) -> None:
        """Tasks past their deadline: kill their actor (Ray restarts it) and retry them;
        actors whose probe is past its deadline: give them up."""
        now = self.clock()
        for ref, call in list(calls.items()):
            if call.task is None or now < call.deadline:
                continue
            del calls[ref]
            actor = call.actor
            limit = call.deadline - call.started
            log.error("task %s gave no answer within %.0f s; killing its actor %d",
                      call.task.task_id, limit, actor.index)
            if not actor.gone:
                self.pool.kill(actor.handle, restart=True)
                self._down(actor, calls)
            self._record(call.task, actor, self._failed(
                call.task, f"no answer within {limit:.0f} s (run.task_timeout_s): "
                           "actor killed"), pending, out)
        for actor in self.actors:
            if actor.probing and not actor.gone and now >= actor.deadline:
                for ref, call in list(calls.items()):
                    if call.actor is actor and call.task is None:
                        del calls[ref]
                self._give_up(actor, f"not ready within {self.start_timeout_s:.0f} s "
                                     "(cluster.actor_start_timeout_s)")
            elif actor.reprobe_at is not None and now >= actor.reprobe_at and not actor.gone:
                self._probe(actor, calls)

    def _record(self, task: Task, actor: _Actor, res: TaskResult, pending: deque,
                out: Outcome) -> None:
        if res.ok:
            self._emit(task, res, out)
            if self.progress is not None:
                self.progress.update(res.rows_out)
            if res.error_rows:
                log.error("task %s committed with %d row(s) in status error after %d tries",
                          task.task_id, res.error_rows, self.attempts[task.task_id] + 1)
        elif res.retryable and self.attempts[task.task_id] < self.max_retries:
            self.attempts[task.task_id] += 1
            self.failed_on.setdefault(task.task_id, set()).add(actor.index)
            log.warning("task %s failed (%s); retry %d of %d", task.task_id, res.error,
                        self.attempts[task.task_id], self.max_retries)
            pending.appendleft(task)
        else:
            self._emit(task, res, out)
            log.error("task %s FAILED: %s", task.task_id, res.error)
