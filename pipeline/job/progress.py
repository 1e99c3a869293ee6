"""What the run's tasks did, summed as they finish, and logged every so often.

Nothing is kept per task but the failures (listed in the summary, up to
``MAX_LISTED_FAILURES``; every one is logged as it happens): the driver's memory
does not grow with the tasks that went well.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pipeline.job.plan import Task
from pipeline.job.results import TaskResult

log = logging.getLogger("nibt-audit")

#: Failed tasks listed in the summary (the count is always exact).
MAX_LISTED_FAILURES = 1000


class Tally:
    """Sums over this run's finished tasks; ``tick`` logs one line every ``every_s``."""

    def __init__(self, tasks: int, rows: int, every_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tasks_total, self.rows_total = tasks, rows
        self.every_s, self.clock = every_s, clock
        self.ok = self.failed = 0
        self.rows_run = self.batch_splits = self.batch_size = self.device_fallbacks = 0
        self.compute_seconds = 0.0
        self.worker_peak_rss_mb = 0.0
        self.failures: list[dict[str, Any]] = []
        self._last = clock()
        self._rows_at_last = 0

    def add(self, task: Task, res: TaskResult) -> None:
        if res.ok:
            self.ok += 1
            self.rows_run += res.rows_out
            self.compute_seconds += res.compute_seconds
            self.batch_splits += res.batch_splits
            self.device_fallbacks += res.device_fallbacks
            self.batch_size = max(self.batch_size, res.batch_size)
            self.worker_peak_rss_mb = max(self.worker_peak_rss_mb, res.peak_rss_mb)
            return
        self.failed += 1
        if len(self.failures) < MAX_LISTED_FAILURES:
            self.failures.append(failure(task, task.error or res.error or "not run"))

    def tick(self, retries: int = 0, final: bool = False) -> None:
        """Log the progress line if ``every_s`` passed since the last, or ``final``."""
        now = self.clock()
        if now - self._last < self.every_s and not final:
            return
        rate = (self.rows_run - self._rows_at_last) / max(now - self._last, 1e-9)
        done = self.ok + self.failed
        log.info("progress: %d of %d tasks (%.1f%%), %d rows; %d failed, %d retried; "
                 "%.1f rows/s over the last %.0f s", done, self.tasks_total,
                 100.0 * done / max(self.tasks_total, 1), self.rows_run, self.failed, retries,
                 rate, now - self._last)
        self._last, self._rows_at_last = now, self.rows_run


def failure(task: Task, error: str) -> dict[str, Any]:
    """A failed task as the summary lists it."""
    return {"task_id": task.task_id, "source": task.uri, "row_start": task.row_start,
            "row_end": task.row_end, "error": error}
