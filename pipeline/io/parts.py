"""Result rows -> one Parquet part per task, committed atomically.

A part becomes visible at ``<output>/parts/<task_id>.parquet`` only once it is
complete (see ``storage.put_atomic``), so a reader or a rerun never sees half a
part, and a task written twice (a retry after a worker died just before it
reported) writes the same bytes to the same key.

Float lists are stored without dictionary encoding and with byte-stream-split
(attributions are close to noise to a dictionary; split bytes compress better),
text with dictionaries (sources, statuses and word pieces repeat).
"""

from __future__ import annotations

import posixpath
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import StorageSettings
from pipeline.io.footers import read_footers
from pipeline.io.schema import RESULT_FIELDS, decode_metadata, result_schema
from pipeline.io.storage import join, put_atomic, read_bytes

PARTS_DIR = "parts"



def part_rel(task_id: str) -> str:
    """A part's path relative to the output root (as the manifest lists it)."""
    return f"{PARTS_DIR}/{task_id}.parquet"


def part_path(output: str, task_id: str) -> str:
    """A part's full location under ``output``."""
    return join(output, part_rel(task_id))


@dataclass
class PartBuilder:
    """One task's result rows, in input order, and its carried columns.

    Rows are added one at a time; ``seal`` turns those added so far into one Arrow
    batch (a few hundred bytes a row where Python lists take kilobytes), so a task
    of tens of thousands of rows holds its results compactly until it is written.
    """

    source: str
    columns: dict[str, list] = field(default_factory=lambda: {f.name: [] for f in RESULT_FIELDS})
    batches: list[pa.RecordBatch] = field(default_factory=list)
    carried: list[pa.RecordBatch] = field(default_factory=list)
    first_error: str | None = None  # the first row error of status ``error``

    def add(self, row: dict[str, Any]) -> None:
        row = dict(row, source=self.source)
        for name, values in self.columns.items():
            values.append(row.get(name))

    def add_carried(self, batch: pa.RecordBatch) -> None:
        self.carried.append(batch)

    def seal(self, error_status: str) -> None:
        """The rows added since the last seal become one batch."""
        cols = self.columns
        if not cols["id"]:
            return
        if self.first_error is None:
            self.first_error = next((e for e, st in zip(cols["error"], cols["status"])
                                     if st == error_status), None)
        self.batches.append(pa.record_batch(
            [pa.array(cols[f.name], type=f.type) for f in RESULT_FIELDS],
            schema=pa.schema(RESULT_FIELDS)))
        self.columns = {f.name: [] for f in RESULT_FIELDS}

    @property
    def rows(self) -> int:
        return sum(b.num_rows for b in self.batches) + len(self.columns["id"])

    def table(self, metadata: dict[str, Any], carried_schema: pa.Schema | None) -> pa.Table:
        self.seal(error_status="")
        schema = result_schema(carried_schema, metadata)
        results = pa.Table.from_batches(self.batches, schema=pa.schema(RESULT_FIELDS))
        arrays = [results.column(i).combine_chunks() for i in range(results.num_columns)]
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


def _leaf(f: pa.Field) -> tuple[str, pa.DataType]:
    """The Parquet column path of a (list of) scalar field, and the scalar type."""
    path, t = f.name, f.type
    while pa.types.is_list(t) or pa.types.is_large_list(t):
        path, t = f"{path}.list.element", t.value_type
    return path, t


def encoding_options(schema: pa.Schema) -> dict[str, Any]:
    """Parquet options for a part: dictionaries for text, byte-stream-split for floats,
    plain encoding for the rest."""
    leaves = [_leaf(f) for f in schema]
    return {"use_dictionary": [p for p, t in leaves
                               if pa.types.is_string(t) or pa.types.is_large_string(t)],
            "use_byte_stream_split": [p for p, t in leaves if pa.types.is_floating(t)]}


def encode_part(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=4096,
                   **encoding_options(table.schema))
    return sink.getvalue().to_pybytes()


def commit_part(fs: fsspec.AbstractFileSystem, output_path: str, task_id: str,
                table: pa.Table) -> tuple[str, int]:
    """Write ``table`` as the task's part; returns its path on ``fs`` and its size."""
    path = part_path(output_path, task_id)
    data = encode_part(table)
    put_atomic(fs, path, data)
    return path, len(data)


def part_footer(tail: bytes) -> tuple[int, dict[str, Any]]:
    """Row count and ``nibt.*`` metadata from bytes ending with a part's footer."""
    meta = pq.read_metadata(pa.BufferReader(tail))
    return meta.num_rows, decode_metadata(meta.metadata)


def read_part_footers(
    parts: Sequence[tuple[str, int | None]], storage: StorageSettings, in_flight: int = 64,
) -> list[tuple[int, dict[str, Any]] | BaseException]:
    """Row count and metadata of each (uri, size) part (size None when not known): one
    ranged read each; ``FileNotFoundError`` in the place of a part that is not there."""
    return list(read_footers(parts, storage, in_flight, parse=part_footer))


def list_parts(fs: fsspec.AbstractFileSystem, output_path: str) -> set[str]:
    """Task ids of the parts under ``<output>/parts/`` (one request a 1,000 on S3)."""
    root = join(output_path, PARTS_DIR)
    try:
        found = fs.find(root)
    except FileNotFoundError:
        return set()
    return {posixpath.basename(p)[:-len(".parquet")] for p in found
            if p.endswith(".parquet") and not posixpath.basename(p).startswith((".", "_"))}


def error_counts(fs: fsspec.AbstractFileSystem, path: str) -> Counter:
    """How often each message occurs in the ``error`` column of a committed part."""
    column = pq.read_table(pa.BufferReader(read_bytes(fs, path)), columns=["error"])
    return Counter(v for v in column.column("error").to_pylist() if v is not None)
