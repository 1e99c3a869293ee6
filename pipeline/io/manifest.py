"""Commit a run: the manifest of committed parts and the run summary.

``<output>/_manifest.json`` says what produced the results (fingerprint,
metadata, settings) and names the table of every committed part of the current
settings, ``<output>/_manifest/parts-<time>-<random>.parquet``: one row per part,
in input order (readers use it, never a glob: ``parts/`` may also hold parts of
earlier settings). The table is written first, streaming, then the header that
names it; the table the previous header named is kept until the next commit, so
a reader that read the previous header can still read its parts.
``<output>/_summary.json`` is written after every run; ``<output>/_SUCCESS``
(same content) only when every task committed.

Manifests of earlier releases held the parts inline (``"parts": [...]``):
``read_manifest`` reads both.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import StorageSettings
from pipeline.io.images import STATUSES
from pipeline.io.storage import (
    atomic_writer,
    filesystem,
    join,
    list_names,
    put_atomic,
    read_bytes,
)

MANIFEST = "_manifest.json"
MANIFEST_TABLES = "_manifest"
SUMMARY = "_summary.json"
SUCCESS = "_SUCCESS"
STATUS_COUNTS = pa.struct([(s, pa.int64()) for s in STATUSES])
PARTS_SCHEMA = pa.schema([
    ("task_id", pa.string()),
    ("path", pa.string()),  # relative to the output root: parts/<task_id>.parquet
    ("rows", pa.int64()),
    ("source", pa.string()),
    ("row_start", pa.int64()),
    ("row_end", pa.int64()),
    ("input_fingerprint", pa.string()),
    ("status_counts", STATUS_COUNTS),
    ("batch_size", pa.int64()),
    ("bytes", pa.int64()),  # the part object's size
])
#: Rows per row group of the parts table (written one row group at a time).
TABLE_ROW_GROUP = 65_536


@dataclass
class PartEntry:
    """One committed part, as the manifest lists it."""

    task_id: str
    path: str  # relative to the output root: parts/<task_id>.parquet
    rows: int
    source: str
    row_start: int
    row_end: int
    input_fingerprint: str
    status_counts: dict[str, int] = field(default_factory=dict)
    batch_size: int | None = None  # pairs per batch the worker used for this part
    bytes: int | None = None  # the part object's size


def parts_table(parts: Sequence[PartEntry]) -> pa.Table:
    """The parts table of ``parts``."""
    cols: dict[str, list] = {n: [] for n in PARTS_SCHEMA.names}
    for p in parts:
        for name in PARTS_SCHEMA.names:
            value = getattr(p, name)
            if name == "status_counts":
                value = {s: int(value.get(s, 0)) for s in STATUSES}
            cols[name].append(value)
    return pa.table(cols, schema=PARTS_SCHEMA)


def _put_json(fs: fsspec.AbstractFileSystem, path: str, obj: Any) -> None:
    put_atomic(fs, path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _write_streaming(fs: fsspec.AbstractFileSystem, path: str,
                     batches: Iterable[pa.RecordBatch]) -> tuple[int, int]:
    """``batches`` to ``path`` as they come, visible only once complete
    (``atomic_writer``); returns the parts and rows written."""
    n = rows = 0

    def write(sink: Any) -> None:
        nonlocal n, rows
        with pq.ParquetWriter(sink, PARTS_SCHEMA, compression="zstd") as w:
            for batch in batches:
                w.write_batch(batch.select(PARTS_SCHEMA.names).cast(PARTS_SCHEMA),
                              row_group_size=TABLE_ROW_GROUP)
                n += batch.num_rows
                rows += int(pc.sum(batch.column("rows")).as_py() or 0)

    with atomic_writer(fs, path) as f:
        write(f)
    return n, rows


def write_manifest(
    fs: fsspec.AbstractFileSystem, out_path: str, header: dict[str, Any],
    parts: Sequence[PartEntry] | pa.Table | Iterable[pa.RecordBatch],
) -> None:
    """The parts table (written as ``parts`` yields its batches), then the header naming
    it; older tables but the previous one go."""
    if isinstance(parts, pa.Table):
        batches: Iterable[pa.RecordBatch] = parts.to_batches(max_chunksize=TABLE_ROW_GROUP)
    elif isinstance(parts, Sequence):
        batches = parts_table(parts).to_batches(max_chunksize=TABLE_ROW_GROUP)
    else:
        batches = parts
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = f"{MANIFEST_TABLES}/parts-{stamp}-{uuid.uuid4().hex[:8]}.parquet"
    previous = None
    with contextlib.suppress(Exception):  # none, or not readable: nothing to keep for readers
        previous = json.loads(read_bytes(fs, join(out_path, MANIFEST))).get("parts_file")
    count, rows = _write_streaming(fs, join(out_path, name), batches)
    _put_json(fs, join(out_path, MANIFEST), {**header, "parts_file": name,
                                             "parts_count": count, "rows": rows})
    keep = {posixpath.basename(n) for n in (name, previous) if n}
    for old in list_names(fs, join(out_path, MANIFEST_TABLES)):
        if old not in keep and old.endswith(".parquet"):
            with contextlib.suppress(FileNotFoundError):
                fs.rm(join(out_path, MANIFEST_TABLES, old))


def write_summary(
    fs: fsspec.AbstractFileSystem, out_path: str, summary: dict[str, Any], success: bool
) -> None:
    _put_json(fs, join(out_path, SUMMARY), summary)
    success_path = join(out_path, SUCCESS)
    if success:
        _put_json(fs, success_path, summary)
    elif fs.exists(success_path):
        fs.rm(success_path)  # a previous run's success no longer describes the output


def _entries(table: pa.Table) -> list[dict[str, Any]]:
    """Parts table rows as the manifest's entries (status counts without zeros)."""
    out = table.to_pylist()
    for e in out:
        e["status_counts"] = {s: n for s, n in (e["status_counts"] or {}).items() if n}
    return out


def read_parts_table(output: str, header: dict[str, Any],
                     storage: StorageSettings | None = None) -> pa.Table:
    """The parts table a manifest header names (or its inline parts, earlier releases)."""
    if "parts_file" not in header:
        return parts_table([PartEntry(**p) for p in header.get("parts", [])])
    fs, path = filesystem(output, storage or StorageSettings())
    return pq.read_table(pa.BufferReader(read_bytes(fs, join(path, header["parts_file"]))))


def read_manifest(output: str, storage: StorageSettings | None = None,
                  parts: bool = True) -> dict[str, Any]:
    """The manifest of an audit output (local path or URI); ``parts``: with its list of
    parts as dicts (``parts`` key), else the header only (``read_parts_table`` then
    gives the parts as a table, for outputs of millions of parts)."""
    fs, path = filesystem(output, storage or StorageSettings())
    header = json.loads(read_bytes(fs, join(path, MANIFEST)))
    if parts and isinstance(header, dict) and "parts_file" in header:
        header["parts"] = _entries(read_parts_table(output, header, storage))
    return header
