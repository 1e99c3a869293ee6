"""Commit a run: the manifest of committed parts and the run summary.

``<output>/_manifest.json`` lists every committed part of the current settings
(readers use it, never a glob: ``parts/`` may also hold parts of earlier
settings). ``<output>/_summary.json`` is written after every run;
``<output>/_SUCCESS`` (same content) only when every task committed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec
import pyarrow.parquet as pq

from pipeline.config import StorageSettings
from pipeline.schema import read_metadata
from pipeline.storage import filesystem, join, put_atomic, read_bytes
from pipeline.write import PARTS_DIR

MANIFEST = "_manifest.json"
SUMMARY = "_summary.json"
SUCCESS = "_SUCCESS"


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


def part_rel(task_id: str) -> str:
    return f"{PARTS_DIR}/{task_id}.parquet"


def _put_json(fs: fsspec.AbstractFileSystem, path: str, obj: Any) -> None:
    put_atomic(fs, path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_manifest(
    fs: fsspec.AbstractFileSystem, out_path: str, header: dict[str, Any], parts: Sequence[PartEntry]
) -> None:
    _put_json(fs, join(out_path, MANIFEST), {**header, "parts": [asdict(p) for p in parts]})


def write_summary(
    fs: fsspec.AbstractFileSystem, out_path: str, summary: dict[str, Any], success: bool
) -> None:
    _put_json(fs, join(out_path, SUMMARY), summary)
    success_path = join(out_path, SUCCESS)
    if success:
        _put_json(fs, success_path, summary)
    elif fs.exists(success_path):
        fs.rm(success_path)  # a previous run's success no longer describes the output


def read_manifest(output: str, storage: StorageSettings | None = None) -> dict[str, Any]:
    """The manifest of an audit output (local path or URI)."""
    fs, path = filesystem(output, storage or StorageSettings())
    return json.loads(read_bytes(fs, join(path, MANIFEST)))


def part_paths(output: str, manifest: dict[str, Any]) -> list[str]:
    """Full locations of the manifest's parts, in manifest order."""
    return [join(output, p["path"]) for p in manifest["parts"]]
