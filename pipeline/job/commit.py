"""Commit a run: the manifest's parts table from the ledger, its totals, unusable files.

Everything here works on Arrow tables of ledger entries (a hundred bytes or so
a part), never on a Python object per part: a run of millions of tasks commits
in seconds and in memory proportional to its parts' entries.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

import fsspec
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


def manifest_table(entries: pa.Table, tasks: Sequence[Task]) -> pa.Table:
    """The manifest's parts table: the ledger ``entries`` of ``tasks``, in plan order."""
    ids = pa.array([t.task_id for t in tasks if not t.error], pa.string())
    entries = entries.select(ENTRY_SCHEMA.names)
    order = pc.index_in(entries.column("task_id"), value_set=ids)
    entries = entries.append_column("plan_order", order).filter(pc.is_valid(order))
    entries = entries.sort_by("plan_order")
    text = pa.string()
    task_id = entries.column("task_id")
    rows = pc.binary_join_element_wise(pc.cast(entries.column("row_start"), text), ":",
                                       pc.cast(entries.column("row_end"), text), "")
    return pa.table({
        "task_id": task_id,
        "path": pc.binary_join_element_wise(f"{PARTS_DIR}/", task_id, ".parquet", ""),
        "rows": entries.column("rows"),
        "source": entries.column("source"),
        "row_start": entries.column("row_start"),
        "row_end": entries.column("row_end"),
        "input_fingerprint": pc.binary_join_element_wise(
            entries.column("source"), pc.cast(entries.column("size"), text),
            entries.column("tag"), rows, "|"),
        "status_counts": entries.column("status_counts"),
        "batch_size": entries.column("batch_size"),
        "bytes": entries.column("bytes"),
    }, schema=PARTS_SCHEMA)


def _counts(table: pa.Table) -> dict[str, pa.ChunkedArray]:
    return {s: pc.struct_field(table.column("status_counts"), s) for s in STATUSES}


def totals(table: pa.Table) -> dict[str, Any]:
    """Rows, rows per status, parts with error rows and the largest batch of a parts table."""
    counts = _counts(table)
    by_status = {s: int(pc.sum(c).as_py() or 0) for s, c in counts.items()}
    return {
        "rows_out": int(pc.sum(table.column("rows")).as_py() or 0),
        "status_counts": {s: n for s, n in sorted(by_status.items()) if n},
        "tasks_with_error_rows": int(pc.sum(pc.greater(counts[ERROR], 0)).as_py() or 0),
        "batch_size": int(pc.max(table.column("batch_size")).as_py() or 0)
        if table.num_rows else 0,
    }


def unusable_files(fs: fsspec.AbstractFileSystem, out_path: str,
                   table: pa.Table) -> list[dict[str, Any]]:
    """Input files none of whose committed rows could be used, each with the status all
    its rows got and (for the first ``ERRORS_READ_FOR``) the commonest error, read from
    its parts; logged as warnings. The run goes on: these rows have their status."""
    if not table.num_rows:
        return []
    flat = pa.table({"source": table.column("source"), "rows": table.column("rows"),
                     **_counts(table)})
    sums = flat.group_by("source", use_threads=False).aggregate(
        [("rows", "sum"), *((s, "sum") for s in FILE_WIDE)])
    out = []
    for row in sums.to_pylist():
        status = next((st for st in FILE_WIDE if row["rows_sum"] and
                       row[f"{st}_sum"] == row["rows_sum"]), None)
        if status is None:
            continue
        error, n = None, 0
        if len(out) < ERRORS_READ_FOR:
            errors: Counter = Counter()
            paths = table.filter(pc.equal(table.column("source"), row["source"])).column("path")
            try:
                for p in paths.to_pylist():
                    errors.update(error_counts(fs, join(out_path, p)))
            except Exception as err:  # the warning stands without its example
                log.warning("cannot read the errors of %s's parts: %s: %s", row["source"],
                            type(err).__name__, err)
            error, n = errors.most_common(1)[0] if errors else (None, 0)
        log.warning("%s: all %d rows are %s; commonest error (%d rows): %s",
                    row["source"], row["rows_sum"], status, n, error)
        out.append({"source": row["source"], "rows": row["rows_sum"], "status": status,
                    "commonest_error": error, "commonest_error_rows": n})
    return out
