"""The dispatcher's rules with fake actors on a fake clock (no Ray, no waiting).

Each fake actor follows a script: how long it takes to start, and per task attempt
whether it answers, fails, dies or stalls. The expectations are worked out by hand
from the rules in ``pipeline.job.dispatch``.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field

from pipeline.job.dispatch import ActorLost, Dispatcher
from pipeline.job.plan import Task
from pipeline.job.results import TaskResult

NEVER = float("inf")


def task(i: int, rows: int = 10) -> Task:
    return Task(f"t{i}", f"s3://in/{i}.parquet", 1, "tag", (0,), 0, rows)


def ok(t: Task, error_rows: int = 0) -> TaskResult:
    return TaskResult(t.task_id, t.uri, t.row_start, t.row_end, ok=True, rows_out=t.rows,
                      error_rows=error_rows)


def failed(t: Task, retryable: bool = True) -> TaskResult:
    return TaskResult(t.task_id, t.uri, t.row_start, t.row_end, ok=False, error="read failed",
                      retryable=retryable)


@dataclass
class FakeActor:
    """``script(task, final, attempt_on_this_actor)`` -> (seconds, what): what is a
    TaskResult, "die" (the actor dies then) or "stall" (never answers)."""

    name: str
    script: object = None
    start_s: float = 1.0  # to start
    restart_s: float | None = None  # to restart after a death or a kill (None: start_s)
    init_error: bool = False  # its constructor raises: never ready
    alive_at: float = 0.0
    runs: list = field(default_factory=list)  # (task id, final, clock) per attempt
    kills: list = field(default_factory=list)  # restart flags of the kills it got
    deaths: int = 0

    def __post_init__(self) -> None:
        self.alive_at = self.start_s  # started with the pool


class FakePool:
    """``ActorPool`` over fake actors; ``now`` moves only in ``wait``."""

    def __init__(self, stop_at: float | None = None, stop: threading.Event | None = None):
        self.now = 0.0
        self.ids = itertools.count()
        self.calls: dict[int, list] = {}  # ref -> [finish time, actor, outcome]
        self.stop_at, self.stop = stop_at, stop

    def clock(self) -> float:
        return self.now

    def probe(self, actor: FakeActor) -> int:
        ref = next(self.ids)
        if actor.init_error:
            self.calls[ref] = [self.now + actor.start_s, actor,
                               ActorLost("ValueError in __init__", init_failed=True)]
        else:
            self.calls[ref] = [max(self.now, actor.alive_at), actor, "ready"]
        return ref

    def submit(self, actor: FakeActor, t: Task, final: bool) -> int:
        ref = next(self.ids)
        mine = sum(1 for r in actor.runs if r[0] == t.task_id)
        actor.runs.append((t.task_id, final, self.now))
        seconds, what = actor.script(t, final, mine) if actor.script else (1.0, ok(t))
        start = max(self.now, actor.alive_at)
        self.calls[ref] = [NEVER if what == "stall" else start + seconds, actor, what]
        return ref

    def _die(self, actor: FakeActor, at: float) -> None:
        actor.deaths += 1
        actor.alive_at = at + (actor.restart_s if actor.restart_s is not None else actor.start_s)
        for call in self.calls.values():
            if call[1] is actor and call[2] != "ready" and not isinstance(call[2], ActorLost):
                call[0], call[2] = at, ActorLost("The actor died unexpectedly")

    def wait(self, refs: list[int], timeout: float) -> list[int]:
        for ref in refs:  # deaths happen at their time, taking the actor's other calls along
            finish, actor, what = self.calls[ref]
            if what == "die" and finish <= self.now + timeout:
                self._die(actor, finish)
        first = min((self.calls[r][0] for r in refs), default=NEVER)
        if self.stop_at is not None and self.stop_at <= min(first, self.now + timeout):
            self.now = max(self.now, self.stop_at)
            self.stop.set()
            return []
        if first > self.now + timeout:
            self.now += timeout
            return []
        self.now = max(self.now, first)
        return [r for r in refs if self.calls[r][0] <= self.now]

    def result(self, ref: int):
        _, actor, what = self.calls.pop(ref)
        if isinstance(what, BaseException):
            raise what
        return what

    def kill(self, actor: FakeActor, restart: bool) -> None:
        actor.kills.append(restart)
        self._die(actor, self.now)
        if not restart:
            actor.alive_at = NEVER


def dispatch(actors, tasks, *, retries=2, slots=1, start_timeout=100.0, timeout=50.0,
             stop_at=None):
    stop = threading.Event()
    pool = FakePool(stop_at, stop)
    d = Dispatcher(actors, pool, retries, slots=slots, start_timeout_s=start_timeout,
                   timeout_for=lambda t, slowest: timeout, stop=stop, clock=pool.clock)
    return d.run(tasks), pool


def by_id(outcome):
    return {r.task_id: r for r in outcome.results}


def test_every_task_once_over_two_actors_with_two_slots():
    a, b = FakeActor("a"), FakeActor("b")
    tasks = [task(i) for i in range(7)]
    out, pool = dispatch([a, b], tasks, slots=2)
    assert sorted(by_id(out)) == sorted(t.task_id for t in tasks)
    assert all(r.ok for r in out.results) and out.retries == 0
    assert len(a.runs) + len(b.runs) == 7
    # 2 actors x 2 slots: 7 one-second tasks after a one-second start end at t = 1 + 2
    assert pool.now == 3.0
    assert not any(final for _, final, _ in a.runs + b.runs)  # first of 3 possible attempts


def test_a_failed_task_is_retried_on_another_actor_and_its_last_try_is_final():
    tasks = [task(0), task(1)]

    tries = {"t0": 0, "t1": 0}

    def flaky(t, final, mine):  # t0 fails on whichever actor runs it first
        tries[t.task_id] += 1
        return (1.0, failed(t)) if t.task_id == "t0" and tries["t0"] == 1 else (1.0, ok(t))

    a, b = FakeActor("a", flaky), FakeActor("b", flaky)
    out, _ = dispatch([a, b], tasks)
    assert by_id(out)["t0"].ok and out.retries == 1
    runs = [(x.name, r) for x in (a, b) for r in x.runs if r[0] == "t0"]
    assert len(runs) == 2 and runs[0][0] != runs[1][0]  # the retry went to the other actor
    # max_task_retries=2: the attempts are not final until the third
    assert [r[1] for _, r in sorted(runs, key=lambda x: x[1][2])] == [False, False]


def test_last_attempt_is_final_and_a_task_that_keeps_failing_is_reported():
    def always(t, final, mine):
        return 1.0, failed(t)

    a = FakeActor("a", always)
    out, _ = dispatch([a], [task(0)], retries=2)
    assert [final for _, final, _ in a.runs] == [False, False, True]
    (res,) = out.results
    assert not res.ok and res.error == "read failed" and out.retries == 2


def test_a_non_retryable_failure_is_not_retried():
    a = FakeActor("a", lambda t, final, mine: (1.0, failed(t, retryable=False)))
    out, _ = dispatch([a], [task(0)])
    assert len(a.runs) == 1 and not out.results[0].ok and out.retries == 0


def test_with_one_actor_the_retry_goes_back_to_it():
    a = FakeActor("a", lambda t, final, mine: (1.0, failed(t) if mine == 0 else ok(t)))
    out, _ = dispatch([a], [task(0)])
    assert out.results[0].ok and len(a.runs) == 2


def test_a_dead_actor_takes_its_tasks_along_and_comes_back_with_its_slots():
    """a dies 1 s into its first task (t = 2), with 2 tasks in flight; both are
    retried; a is back after its 5 s restart (t = 7) with both slots."""
    def dies_once(t, final, mine):
        return (1.0, "die") if a.deaths == 0 and not a.runs[:-1] else (1.0, ok(t))

    a = FakeActor("a", dies_once, start_s=1.0, restart_s=5.0)
    b = FakeActor("b", start_s=1.0)
    tasks = [task(i) for i in range(20)]
    out, _ = dispatch([a, b], tasks, slots=2)
    assert a.deaths == 1 and out.retries == 2
    assert sorted(by_id(out)) == sorted(t.task_id for t in tasks)
    assert all(r.ok for r in out.results)
    assert [r[2] for r in a.runs][:4] == [1.0, 1.0, 7.0, 7.0]  # back with both slots


def test_a_stalled_task_kills_its_actor_and_is_retried_elsewhere():
    def stalls(t, final, mine):
        return (1.0, "stall") if t.task_id == "t0" and mine == 0 else (1.0, ok(t))

    a, b = FakeActor("a", stalls), FakeActor("b")
    tasks = [task(i) for i in range(4)]
    out, pool = dispatch([a, b], tasks, timeout=30.0)
    assert all(r.ok for r in out.results) and len(out.results) == 4
    t0_runs = [(x.name, r[2]) for x in (a, b) for r in x.runs if r[0] == "t0"]
    stalled_on = t0_runs[0][0]
    stalled = a if stalled_on == "a" else b
    assert stalled.kills == [True]  # killed, with a restart
    assert len(t0_runs) == 2 and t0_runs[1][0] != stalled_on
    assert t0_runs[1][1] == 1.0 + 30.0  # retried the moment its 30 s ran out
    assert out.retries == 1


def test_a_task_that_stalls_every_time_is_failed_within_the_bound():
    a = FakeActor("a", lambda t, f, m: (1.0, "stall") if t.task_id == "t1" else (1.0, ok(t)),
                  start_s=2.0)
    out, pool = dispatch([a], [task(0), task(1), task(2)], retries=1, timeout=30.0)
    res = by_id(out)
    assert res["t0"].ok and res["t2"].ok
    assert not res["t1"].ok and "no answer within 30 s" in res["t1"].error
    assert a.kills == [True, True] and out.retries == 1
    # start 2 + t0 1 + t1 30 + restart 2 + t1 again 30 + restart 2 + t2 1
    assert pool.now == 2 + 1 + 30 + 2 + 30 + 2 + 1


def test_an_actor_that_never_starts_is_given_up_and_the_others_do_the_work():
    a, b = FakeActor("a"), FakeActor("b", start_s=NEVER)
    tasks = [task(i) for i in range(3)]
    out, pool = dispatch([a, b], tasks, start_timeout=60.0)
    assert all(r.ok for r in out.results) and len(out.results) == 3
    assert b.runs == [] and len(a.runs) == 3
    assert pool.now == 4.0  # done without waiting for b's start bound


def test_when_no_actor_starts_every_task_fails_after_the_start_bound():
    a, b = FakeActor("a", start_s=NEVER), FakeActor("b", start_s=NEVER)
    out, pool = dispatch([a, b], [task(0), task(1)], start_timeout=60.0)
    assert [r.error for r in out.results] == ["no actor left to run it"] * 2
    assert a.kills == [False] and b.kills == [False]
    assert pool.now == 60.0 and out.actors_ready == 0


def test_an_actor_whose_constructor_fails_is_given_up_at_once():
    a, b = FakeActor("a", init_error=True), FakeActor("b", start_s=3.0)
    out, pool = dispatch([a, b], [task(0)], start_timeout=600.0)
    assert out.results[0].ok and a.kills == [False] and a.runs == []
    assert pool.now == 4.0  # not the 600 s start bound


def test_an_actor_that_does_not_come_back_after_a_death_is_given_up():
    def dies(t, final, mine):
        return (1.0, "die") if a.deaths == 0 else (1.0, ok(t))

    a = FakeActor("a", dies, start_s=1.0)
    b = FakeActor("b")
    real_die = FakePool._die

    def never_back(self, actor, at):  # a's restart never completes
        real_die(self, actor, at)
        if actor is a:
            actor.alive_at = NEVER

    FakePool._die = never_back
    try:
        out, pool = dispatch([a, b], [task(i) for i in range(30)], start_timeout=20.0)
    finally:
        FakePool._die = real_die
    assert all(r.ok for r in out.results) and len(out.results) == 30
    # a died at t = 2; its probe ran out at 22, b still busy until 30
    assert len(a.runs) == 1 and len(b.runs) == 30 and a.kills == [False]


def test_only_actors_that_answer_at_the_end_are_reported_up():
    """a dies in its first task and is still restarting (100 s) when b has done the
    rest; c never starts: only b is up, so only b is asked to close."""
    a = FakeActor("a", lambda t, f, m: (1.0, "die") if a.deaths == 0 else (1.0, ok(t)),
                  restart_s=100.0)
    b, c = FakeActor("b"), FakeActor("c", start_s=NEVER)
    out, pool = dispatch([a, b, c], [task(i) for i in range(4)], start_timeout=500.0)
    assert all(r.ok for r in out.results) and len(out.results) == 4
    assert out.up == [1] and out.actors_ready == 2
    assert pool.now < 100.0  # the restart was not waited for


def test_a_stop_hands_out_nothing_more_and_reports_what_was_left():
    a = FakeActor("a", lambda t, f, m: (10.0, ok(t)))
    tasks = [task(i) for i in range(5)]
    out, pool = dispatch([a], tasks, slots=2, stop_at=15.0)
    # start 1, t0 and t1 done at 11, t2 and t3 running when the stop comes at 15
    assert out.stopped and sorted(by_id(out)) == ["t0", "t1"]
    assert sorted(t.task_id for t in out.not_run) == ["t2", "t3", "t4"]
    assert len(a.runs) == 4 and pool.now == 15.0


def test_slowest_rate_feeds_the_timeout():
    seen = []
    a = FakeActor("a", lambda t, f, m: (t.rows * 0.5, ok(t)))
    stop = threading.Event()
    pool = FakePool()
    d = Dispatcher([a], pool, 0, timeout_for=lambda t, slowest: seen.append(slowest) or 99.0,
                   stop=stop, clock=pool.clock)
    d.run([task(0, rows=10), task(1, rows=4)])
    assert seen == [0.0, 0.5]  # the second task knows the first ran 0.5 s per row
