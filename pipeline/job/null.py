"""An actor that runs no engine and touches no storage: the control plane alone.

``NullRunner`` takes the place of ``TaskRunner`` (``run_job(s, runner=NullRunner)``)
and answers each task at once with a well-formed result: every row ``ok``, a
part of the size its rows would take. Planning, dispatch, the ledger, the
manifest and the summary then run as in an audit, so their cost per task can be
measured without a model (``python -m benchmarks controlplane``). It imports no
torch. The parts it reports are not written: an output it made is for
measuring, not for reading.
"""

from __future__ import annotations

import os
from typing import Any

from pipeline.job.plan import Task
from pipeline.job.results import TaskResult

#: Bytes a result row takes in a part, for the sizes it reports (a 7x7 grid's row).
ROW_BYTES = 600


class NullRunner:
    """``TaskRunner``'s interface, without an engine."""

    def __init__(self, model: Any, data: Any, storage: Any, output: str,
                 metadata: dict[str, Any], **_: Any) -> None:
        self.output = output
        self.batch_size = model.batch_size or 8

    def ready(self) -> int:
        return os.getpid()

    def run(self, task: Task, final: bool = True) -> TaskResult:
        if task.error:
            return TaskResult(task.task_id, task.uri, task.row_start, task.row_end, ok=False,
                              error=task.error)
        return TaskResult(task.task_id, task.uri, task.row_start, task.row_end, ok=True,
                          rows_out=task.rows, status_counts={"ok": task.rows},
                          part=f"{self.output}/parts/{task.task_id}.parquet",
                          part_bytes=task.rows * ROW_BYTES, pid=os.getpid(),
                          batch_size=self.batch_size)

    def close(self) -> None:
        return None
