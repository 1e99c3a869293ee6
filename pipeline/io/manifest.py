"""Commit a run: the manifest of committed parts and the run summary.

``<output>/_manifest.json`` lists every committed part of the current settings
(readers use it, never a glob: ``parts/`` may also hold parts of earlier
settings). ``<output>/_summary.json`` is written after every run;
``<output>/_SUCCESS`` (same content) only when every task committed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import fsspec

from pipeline.config import StorageSettings
from pipeline.io.storage import filesystem, join, put_atomic, read_bytes

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
    batch_size: int | None = None  # pairs per batch the worker used for this part


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
