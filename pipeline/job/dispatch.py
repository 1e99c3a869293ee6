"""Tasks over a pool of Ray actors: dispatch, readiness probes, retries.

The driver hands ``Dispatcher.run`` the tasks to do and the actors; it returns
one ``TaskResult`` per task (committed, or failed with the reason).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque

from pipeline.job.plan import Task
from pipeline.job.worker import TaskResult

log = logging.getLogger("nibt-audit")


class Dispatcher:
    """A queue of tasks over a pool of Ray actors, with retries on failure or death.

    Each actor runs up to ``slots`` tasks at once (a threaded actor): while one
    task's batch is on the device, the next task reads and decodes, so the device
    does not wait between tasks. Ray restarts a dead actor (``max_restarts``);
    until a readiness probe on the restarted actor answers, it gets no tasks. The
    tasks that were running on it go back to the front of the queue, up to
    ``max_retries`` times each.
    """

    PROBE_SECONDS = 300.0  # give up on an actor that does not come back within this

    def __init__(self, actors: list, max_retries: int, progress, slots: int = 1) -> None:
        self.actors = actors
        self.max_retries = max_retries
        self.progress = progress
        self.slots = max(1, slots)
        self.retries = 0
        self.retried_tasks: Counter = Counter()

    def _failed(self, task: Task, error: str) -> TaskResult:
        return TaskResult(task.task_id, task.uri, task.row_start, task.row_end, ok=False,
                          error=error, retryable=True)

    def run(self, tasks: list[Task]) -> list[TaskResult]:
        import ray
        from ray.exceptions import RayActorError

        free = deque(a for _ in range(self.slots) for a in self.actors)  # one entry per slot
        pending = deque(tasks)
        inflight: dict = {}  # ref -> (task or None for a probe, actor, probe deadline)
        down: dict[int, int] = {}  # id(actor) -> its slots lost while a probe is out
        results: list[TaskResult] = []
        live = len(self.actors)

        def running() -> bool:
            return any(t is not None for t, _, _ in inflight.values())

        while running() or (pending and (free or inflight)):
            while free and pending:
                actor, task = free.popleft(), pending.popleft()
                inflight[actor.run.remote(task)] = (task, actor, None)
            done, _ = ray.wait(list(inflight), num_returns=1)
            for ref in done:
                task, actor, deadline = inflight.pop(ref)
                if task is None:  # a readiness probe on a restarting actor
                    try:
                        ray.get(ref)
                        free.extend([actor] * down.pop(id(actor), 1))
                    except RayActorError:
                        if time.time() < deadline:
                            time.sleep(0.5)
                            inflight[actor.ready.remote()] = (None, actor, deadline)
                        else:
                            down.pop(id(actor), None)
                            live -= 1
                            log.error("a worker did not come back within %ds; %d left",
                                      self.PROBE_SECONDS, live)
                    continue
                try:
                    res: TaskResult = ray.get(ref)
                    free.append(actor)
                except RayActorError as e:
                    res = self._failed(task, f"worker died: {type(e).__name__}")
                    if id(actor) in down:  # its probe is already out
                        down[id(actor)] += 1
                    else:
                        down[id(actor)] = 1
                        inflight[actor.ready.remote()] = (None, actor,
                                                          time.time() + self.PROBE_SECONDS)
                except Exception as e:
                    res = self._failed(task, f"{type(e).__name__}: {e}")
                    free.append(actor)
                self._record(task, res, pending, results)
        for task in pending:  # only when every worker is gone
            results.append(self._failed(task, "no worker left to run it"))
        return results

    def _record(self, task: Task, res: TaskResult, pending: deque, results: list) -> None:
        if res.ok:
            results.append(res)
            self.progress.update(res.rows_out)
            log.info("task %s ok: %s rows %d-%d, %d rows in %.1fs %s", task.task_id, task.uri,
                     task.row_start, task.row_end, res.rows_out, res.seconds, res.status_counts)
        elif res.retryable and self.retried_tasks[task.task_id] < self.max_retries:
            self.retried_tasks[task.task_id] += 1
            self.retries += 1
            log.warning("task %s failed (%s); retry %d of %d", task.task_id, res.error,
                        self.retried_tasks[task.task_id], self.max_retries)
            pending.appendleft(task)
        else:
            results.append(res)
            log.error("task %s FAILED: %s", task.task_id, res.error)
