"""Stream one task's rows from its Parquet file (pyarrow over fsspec: local or S3)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq


class Shard(Protocol):
    """The slice of one input file a task reads (``pipeline.job.plan.Task`` is one)."""

    uri: str
    size: int
    tag: str
    row_groups: tuple[int, ...]

    @property
    def rows(self) -> int: ...


class TaskError(RuntimeError):
    """A task that cannot be processed; ``retryable`` if another try may succeed."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


def check_unchanged(fs: fsspec.AbstractFileSystem, path: str, task: Shard, tag_of) -> None:
    """Refuse to read a file that changed since the task was planned."""
    info = fs.info(path)
    if int(info.get("size") or 0) != task.size or tag_of(info) != task.tag:
        raise TaskError(
            f"{task.uri} changed since the job listed it (size/tag differ); rerun the job",
            retryable=False,
        )


def iter_batches(
    fs: fsspec.AbstractFileSystem, path: str, task: Shard, columns: Sequence[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Record batches of ``columns`` for the task's row groups, in row order."""
    with fs.open(path, "rb") as fh:
        pf = pq.ParquetFile(fh)
        names = pf.schema_arrow.names
        missing = [c for c in columns if c not in names]
        if missing:
            raise TaskError(
                f"{task.uri}: column(s) {missing} not found (the file has {names})", retryable=False
            )
        n = 0
        for batch in pf.iter_batches(
            batch_size=batch_rows, row_groups=list(task.row_groups), columns=list(columns),
            use_threads=False,
        ):
            n += batch.num_rows
            yield batch
        if n != task.rows:
            raise TaskError(f"{task.uri}: read {n} rows, expected {task.rows}")
