"""`nibt-report ... cluster=existing`: the report's passes over a Ray cluster.

The executor interface of ``pipeline.report.pool`` (results in task order, so
the report is the same bytes as in one process), with one Ray task per report
task: one CPU each, ``2 x`` the cluster's CPUs in flight. A task whose worker
dies is retried by Ray on another worker (``max_retries``); one that runs past
``TASK_TIMEOUT_S`` is cancelled and sent again, up to ``TASK_RETRIES`` times;
an exception a task raises ends the report (the same parts would raise it
again). ``cluster=local`` runs the same on an embedded Ray on this machine. The
report itself imports no Ray: this module is the one place it is used for it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from pipeline.config import ClusterSettings
from pipeline.job.cluster import ray_session
from pipeline.report.pool import TASK_RETRIES, TASK_TIMEOUT_S, Ahead, WorkerLost, peak_rss_mb


def _call(fn: Callable[[Any], Any], task: Any) -> tuple[Any, float, str]:
    """``fn(task)`` on a Ray worker, with that worker's peak memory and its name."""
    return fn(task), peak_rss_mb(), f"{os.uname().nodename}:{os.getpid()}"


class RayPool:
    """The report's tasks as Ray tasks on the cluster ``cluster`` names."""

    def __init__(self, cluster: ClusterSettings, task_timeout_s: float = TASK_TIMEOUT_S,
                 retries: int = TASK_RETRIES, in_flight: int = 2) -> None:
        self._session = ray_session(cluster)
        self._session.__enter__()
        import ray

        self.workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.task_timeout_s, self.retries, self.in_flight = task_timeout_s, retries, in_flight
        self._remote = ray.remote(num_cpus=1, max_retries=retries)(_call)
        self._peaks: dict[str, float] = {}

    def map(self, fn: Callable[[Any], Any], tasks: Sequence[Any],
            ahead: Ahead | None = None) -> Iterator[Any]:
        """``fn(task)`` for each task on the cluster, yielded in task order. ``ahead`` is
        not called: a Ray task does not know which worker runs the next one."""
        import ray
        from ray.exceptions import GetTimeoutError, RayTaskError

        refs: dict[int, Any] = {}
        attempts = [0] * len(tasks)
        sent, since = 0, time.monotonic()
        for i in range(len(tasks)):
            while sent < len(tasks) and sent < i + self.workers * self.in_flight:
                refs[sent] = self._remote.remote(fn, tasks[sent])
                sent += 1
            while True:
                left = since + self.task_timeout_s - time.monotonic()
                try:
                    value, peak, worker = ray.get(refs[i], timeout=max(left, 0.001))
                    break
                except GetTimeoutError:
                    ray.cancel(refs[i], force=True)
                    attempts[i] += 1
                    if attempts[i] > self.retries:
                        raise WorkerLost(f"report task {i} ran past {self.task_timeout_s:g} s "
                                         f"on {attempts[i]} attempts") from None
                    refs[i], since = self._remote.remote(fn, tasks[i]), time.monotonic()
                except RayTaskError as e:
                    raise e.cause from None
                except ray.exceptions.RayError as e:  # the worker died on every attempt
                    raise WorkerLost(f"report task {i}: {type(e).__name__}: {e}") from None
            del refs[i]
            self._peaks[worker] = peak
            since = time.monotonic()
            yield value

    def peak_rss_mb(self) -> dict[str, float]:
        """Each Ray worker's peak resident memory (MiB) as it last reported it."""
        return dict(self._peaks)

    def close(self) -> None:
        self._session.__exit__(None, None, None)

    def __enter__(self) -> RayPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
