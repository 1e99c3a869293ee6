"""The job's Ray side: start the actor pool, dispatch the tasks over it, tear it down.

``run_on_actors`` sizes the pool from the cluster's nodes, starts the actors
(``TaskRunner`` in Ray actors that Ray restarts when they die), hands the tasks to
a ``Dispatcher`` through ``RayActorPool`` and kills every actor at the end, stopped
or not, before Ray is shut down (embedded) or left (joined).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from pipeline.job.cluster import plan_actors, ray_session
from pipeline.job.dispatch import ActorLost, Dispatcher, Outcome
from pipeline.job.plan import Task
from pipeline.job.results import TaskResult

log = logging.getLogger("nibt-audit")

#: Seconds the actors get to stop their decode workers after a run that was not stopped.
CLOSE_TIMEOUT_S = 60


class RayActorPool:
    """``dispatch.ActorPool`` over Ray actor handles."""

    def __init__(self) -> None:
        import ray
        from ray.exceptions import RayActorError

        self.ray, self.actor_error = ray, RayActorError
        self._got: dict[Hashable, Any] = {}  # answers fetched with others, by ref

    def probe(self, actor: Any) -> Hashable:
        return actor.ready.remote()

    def submit(self, actor: Any, task: Task, final: bool) -> Hashable:
        return actor.run.remote(task, final)

    def wait(self, refs: list[Hashable], timeout: float) -> list[Hashable]:
        """Those of ``refs`` that answered: all that have, at once when any has (one call
        while answers keep coming), else the first within ``timeout``; their answers are
        fetched together."""
        if not refs:
            time.sleep(timeout)
            return []
        done, _ = self.ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        if not done:
            done, _ = self.ray.wait(refs, num_returns=1, timeout=timeout, fetch_local=False)
        if len(done) > 1:  # one failed: each is fetched on its own by ``result``
            with contextlib.suppress(Exception):
                self._got.update(zip(done, self.ray.get(done)))
        return done

    def result(self, ref: Hashable) -> Any:
        if ref in self._got:
            return self._got.pop(ref)
        try:
            return self.ray.get(ref)
        except self.actor_error as e:
            raise ActorLost(str(e), init_failed=bool(getattr(e, "actor_init_failed", False))) \
                from None

    def kill(self, actor: Any, restart: bool) -> None:
        with contextlib.suppress(Exception):
            self.ray.kill(actor, no_restart=not restart)


@dataclass
class PoolRun:
    """What the actor pool did, for the summary."""

    outcome: Outcome = field(default_factory=Outcome)
    actors: int = 0
    decode_processes: int = 0  # per actor; 0: decoded in threads
    run_seconds: float = 0.0  # from the first actor ready to the last result


def run_on_actors(s: Any, todo: list[Task], metadata: dict[str, Any],
                  stop: threading.Event, progress: Any,
                  on_result: Callable[[Task, TaskResult], None] | None = None,
                  on_tick: Callable[[Dispatcher], None] | None = None,
                  runner: type | None = None) -> PoolRun:
    """Run ``todo`` on a pool of actors sized for the cluster (``s``: ``JobSettings``).

    Each finished task goes to ``on_result``; ``on_tick`` gets the dispatcher at least
    every second; ``runner`` is the actor class (``TaskRunner``, the engine; or one that
    runs none, to measure the control plane).
    """
    if runner is None:
        from pipeline.job.worker import TaskRunner as runner
    with ray_session(s.cluster, num_cpus=None):
        import ray

        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        ap = plan_actors(s.cluster, ray.cluster_resources(), len(todo), nodes=nodes)
        memory = {"memory": int(ap.memory_mb * 2**20)} if ap.memory_mb else {}
        actor_cls = ray.remote(runner).options(
            num_cpus=ap.num_cpus, num_gpus=ap.num_gpus, max_restarts=-1, max_task_retries=0,
            max_concurrency=ap.slots, **memory,
        )
        log.info("starting %d actor(s): %s CPU, %s GPU, %s MB, %d task(s) in flight each, "
                 "decoding in %s", ap.num_actors, ap.num_cpus, ap.num_gpus,
                 f"{ap.memory_mb:,.0f}" if ap.memory_mb else "no declared", ap.slots,
                 f"{ap.decode_processes} process(es)" if ap.decode_processes else "threads")
        actors = [
            actor_cls.remote(s.model, s.data, s.storage, s.output, metadata,
                             threads=ap.threads, decode_threads=s.cluster.decode_threads,
                             decode_processes=ap.decode_processes,
                             memory_mb=ap.memory_mb,
                             gpu_share=ap.num_gpus or 1.0)
            for _ in range(ap.num_actors)
        ]
        dispatcher = Dispatcher(
            actors, RayActorPool(), s.run.max_task_retries, slots=ap.slots,
            start_timeout_s=s.cluster.actor_start_timeout_s,
            timeout_for=lambda task, slowest: s.run.task_timeout(task.rows, slowest),
            progress=progress, stop=stop, on_result=on_result, on_tick=on_tick,
        )
        outcome = dispatcher.run(todo)
        # not Ray's shutdown, which takes ~1.5 s here
        seconds = time.monotonic() - outcome.first_ready if outcome.first_ready else 0.0
        # a clean stop first (decode processes and their semaphores), for the actors that
        # answer: one still starting, or restarting after its node was lost, would hold
        # this wait to its bound
        up = [actors[i] for i in outcome.up]
        if up and not outcome.stopped:  # all of them (one failing does not cut the wait)
            with contextlib.suppress(Exception):
                refs = [a.close.remote() for a in up]
                ray.wait(refs, num_returns=len(refs), timeout=CLOSE_TIMEOUT_S)
        for a in actors:  # stopped: abandoned at once (decode processes exit with their actor)
            with contextlib.suppress(Exception):
                ray.kill(a)
        return PoolRun(outcome, len(actors), ap.decode_processes, seconds)
