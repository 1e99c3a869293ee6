"""Result rows -> one Parquet part per task, committed atomically.

A part becomes visible at ``<output>/parts/<task_id>.parquet`` only once it is
complete (see ``storage.put_atomic``), so a reader or a rerun never sees half a
part, and a task written twice (a retry after a worker died just before it
reported) writes the same bytes to the same key.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.schema import RESULT_FIELDS, read_metadata, result_schema
from pipeline.io.storage import join, put_atomic

PARTS_DIR = "parts"


def part_rel(task_id: str) -> str:
    """A part's path relative to the output root (as the manifest lists it)."""
    return f"{PARTS_DIR}/{task_id}.parquet"


def part_path(output: str, task_id: str) -> str:
    """A part's full location under ``output``."""
    return join(output, part_rel(task_id))


@dataclass
class PartBuilder:
    """Accumulates one task's result rows (in input order) and carried columns."""

    columns: dict[str, list] = field(default_factory=lambda: {f.name: [] for f in RESULT_FIELDS})
    carried: list[pa.RecordBatch] = field(default_factory=list)

    def add(self, row: dict[str, Any]) -> None:
        for name, values in self.columns.items():
            values.append(row.get(name))

    def add_carried(self, batch: pa.RecordBatch) -> None:
        self.carried.append(batch)

    @property
    def rows(self) -> int:
        return len(self.columns["id"])

    def table(self, metadata: dict[str, Any], carried_schema: pa.Schema | None) -> pa.Table:
        schema = result_schema(carried_schema, metadata)
        arrays = [pa.array(self.columns[f.name], type=f.type) for f in RESULT_FIELDS]
        if carried_schema is not None and len(carried_schema):
            carried = pa.Table.from_batches(self.carried, schema=carried_schema)
            arrays += [carried.column(i).combine_chunks() for i in range(carried.num_columns)]
        return pa.Table.from_arrays(arrays, schema=schema)


def normalise_carried(schema: pa.Schema, names: Sequence[str]) -> pa.Schema:
    """Carried columns keep their type, except large string/binary, stored as regular."""
    fields = []
    for name in names:
        f = schema.field(name)
        t = f.type
        if pa.types.is_large_string(t):
            t = pa.string()
        elif pa.types.is_large_binary(t):
            t = pa.binary()
        fields.append(pa.field(name, t))
    return pa.schema(fields)


def encode_part(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=4096)
    return sink.getvalue().to_pybytes()


def commit_part(fs: fsspec.AbstractFileSystem, output_path: str, task_id: str, table: pa.Table) -> str:
    """Write ``table`` as the task's part; returns its path on ``fs``."""
    path = part_path(output_path, task_id)
    put_atomic(fs, path, encode_part(table))
    return path


def read_part_footer(fs: fsspec.AbstractFileSystem, path: str) -> tuple[int, dict[str, Any]]:
    """Row count and ``nibt.*`` metadata of a committed part (footer only)."""
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        return pf.metadata.num_rows, read_metadata(pf.schema_arrow)


def footers(
    fs: fsspec.AbstractFileSystem, paths: Sequence[str], threads: int = 16
) -> list[tuple[int, dict[str, Any]]]:
    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(paths) or 1))) as pool:
        return list(pool.map(lambda p: read_part_footer(fs, p), paths))


def error_counts(fs: fsspec.AbstractFileSystem, path: str) -> Counter:
    """How often each message occurs in the ``error`` column of a committed part."""
    with fs.open(path, "rb") as f:
        column = pq.read_table(f, columns=["error"]).column("error")
    return Counter(v for v in column.to_pylist() if v is not None)
