"""Commit a run: the manifest's parts from the plan and the ledger, totals, unusable files.

The ledger says what became of each task (rows, statuses, the part's size); the
plan says what each task is (its file and rows). The manifest's table is made
from both a slice of the plan at a time and written as it is made, so a run of
millions of tasks commits in memory of the ledger's entries (~100 bytes each) and
one slice, never a Python object per part.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.io.images import BAD_CAPTION, BAD_IMAGE, ERROR, STATUSES
from pipeline.io.ledger import ENTRY_SCHEMA
from pipeline.io.manifest import PARTS_SCHEMA
from pipeline.io.parts import PARTS_DIR, error_counts
from pipeline.io.storage import join
from pipeline.job.plan import Task

log = logging.getLogger("nibt-audit")

#: Statuses that, on every row of a file, point at the file or the settings
#: (a wrong column, a different encoding) rather than at a few bad rows.
FILE_WIDE = (BAD_IMAGE, BAD_CAPTION)
#: Unusable files whose parts are read for their commonest error (the rest are listed
#: without it: at scale, a wrong setting can make every file unusable).
ERRORS_READ_FOR = 50
#: Tasks turned into manifest rows at a time.
SLICE = 65_536


@dataclass
class Committed:
    """The committed parts of the plan: ``entries[i]`` is the ledger entry of
    ``tasks[order[i]]``, in plan order."""

    tasks: Sequence[Task]
    entries: pa.Table
    order: np.ndarray

    @classmethod
    def of(cls, tables: Sequence[pa.Table], tasks: Sequence[Task]) -> Committed:
        """The entries of ``tasks`` in ``tables``, in plan order; of a task's entries, the
        last one (``tables`` in the order they were recorded). One copy of the entries is
        made, so the peak memory of a commit stays near the entries' own size."""
        entries = pa.concat_tables([t.select(ENTRY_SCHEMA.names) for t in tables])
        ids = pa.array([t.task_id for t in tasks], pa.string())
        where = np.asarray(pc.fill_null(pc.index_in(entries.column("task_id"), value_set=ids),
                                        -1), dtype=np.int64)
        del ids
        picked = np.flatnonzero(where >= 0)
        picked = picked[np.argsort(where[picked], kind="stable")]
        order = where[picked]
        last = np.ones(len(order), dtype=bool)  # the last of each task's entries
        last[:-1] = order[1:] != order[:-1]
        picked, order = picked[last], order[last]
        return cls(tasks, entries.take(pa.array(picked)), order)

    def counts(self, status: str) -> np.ndarray:
        return np.asarray(pc.struct_field(self.entries.column("status_counts"), status),
                          dtype=np.int64)

    def batches(self) -> Iterator[pa.RecordBatch]:
        """The manifest's parts table, ``SLICE`` parts at a time."""
        for lo in range(0, self.entries.num_rows, SLICE):
            e = self.entries.slice(lo, SLICE)
            ts = [self.tasks[int(i)] for i in self.order[lo:lo + SLICE]]
            yield pa.record_batch([
                e.column("task_id").combine_chunks(),
                pa.array([f"{PARTS_DIR}/{t.task_id}.parquet" for t in ts], pa.string()),
                e.column("rows").combine_chunks(),
                pa.array([t.uri for t in ts], pa.string()),
                pa.array([t.row_start for t in ts], pa.int64()),
                pa.array([t.row_end for t in ts], pa.int64()),
                pa.array([t.input_fingerprint for t in ts], pa.string()),
                e.column("status_counts").combine_chunks(),
                e.column("batch_size").combine_chunks(),
                e.column("bytes").combine_chunks(),
            ], schema=PARTS_SCHEMA)

    def totals(self) -> dict[str, Any]:
        """Rows, rows per status, parts with error rows, the largest batch."""
        by_status = {s: int(self.counts(s).sum()) for s in STATUSES}
        rows = self.entries.column("rows")
        return {
            "rows_out": int(pc.sum(rows).as_py() or 0),
            "status_counts": {s: n for s, n in sorted(by_status.items()) if n},
            "tasks_with_error_rows": int((self.counts(ERROR) > 0).sum()),
            "batch_size": int(pc.max(self.entries.column("batch_size")).as_py() or 0)
            if self.entries.num_rows else 0,
        }

    def unusable_files(self, fs: fsspec.AbstractFileSystem,
                       out_path: str) -> list[dict[str, Any]]:
        """Input files none of whose committed rows could be used, each with the status all
        its rows got and (for the first ``ERRORS_READ_FOR``) the commonest error, read from
        its parts; logged as warnings. The run goes on: these rows have their status."""
        if not self.entries.num_rows:
            return []
        files: dict[str, int] = {}
        source = np.array([files.setdefault(self.tasks[int(i)].uri, len(files))
                           for i in self.order], dtype=np.int64)
        rows = np.bincount(source, np.asarray(self.entries.column("rows")), len(files))
        by_status = {st: np.bincount(source, self.counts(st), len(files)) for st in FILE_WIDE}
        out = []
        for uri, f in files.items():
            status = next((st for st in FILE_WIDE if rows[f] and by_status[st][f] == rows[f]),
                          None)
            if status is None:
                continue
            error, n = (self._commonest_error(fs, out_path, np.flatnonzero(source == f))
                        if len(out) < ERRORS_READ_FOR else (None, 0))
            log.warning("%s: all %d rows are %s; commonest error (%d rows): %s",
                        uri, int(rows[f]), status, n, error)
            out.append({"source": uri, "rows": int(rows[f]), "status": status,
                        "commonest_error": error, "commonest_error_rows": n})
        return out

    def _commonest_error(self, fs: fsspec.AbstractFileSystem, out_path: str,
                         which: np.ndarray) -> tuple[str | None, int]:
        errors: Counter = Counter()
        try:
            for i in which:
                tid = self.entries.column("task_id")[int(i)].as_py()
                errors.update(error_counts(fs, join(out_path, PARTS_DIR, f"{tid}.parquet")))
        except Exception as err:  # the warning stands without its example
            log.warning("cannot read the errors of a file's parts: %s: %s",
                        type(err).__name__, err)
        return errors.most_common(1)[0] if errors else (None, 0)
