"""Input files -> tasks of about ``rows_per_task`` rows along row-group boundaries.

A task's id is a hash of the file's URI, size and modification tag, the row
range and the results fingerprint, so the same input under the same settings
always maps to the same id (and the same committed part), and any change to
the data or to what determines the results maps to a new one.

The footers read here also give each file's schema: a file whose columns cannot
feed the audit is refused before any worker starts (``ConfigError``, exit 2).
Footers come from ``pipeline.io.footers``: one ranged read per file, many in
flight, none for a file the saved plan already holds unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import pyarrow as pa

from pipeline.config import ConfigError, StorageSettings
from pipeline.io.footers import Footer, FooterCache, footers_of
from pipeline.io.storage import InputFile

#: ``check(schema)``: why a file with this schema cannot be audited, or None.
SchemaCheck = Callable[[pa.Schema], "str | None"]


@dataclass(frozen=True, slots=True)
class Task:
    """A slice of one input file: whole row groups ``row_groups``, rows [row_start, row_end)."""

    task_id: str
    uri: str
    size: int
    tag: str
    row_groups: tuple[int, ...]
    row_start: int
    row_end: int
    error: str | None = None  # set when the file could not even be planned

    @property
    def rows(self) -> int:
        return self.row_end - self.row_start

    @property
    def input_fingerprint(self) -> str:
        return f"{self.uri}|{self.size}|{self.tag}|{self.row_start}:{self.row_end}"

    def to_dict(self) -> dict:
        return asdict(self)


def task_id(f: InputFile, row_start: int, row_end: int, fp: str) -> str:
    blob = json.dumps([f.uri, f.size, f.tag, row_start, row_end, fp]).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def split_row_groups(sizes: Sequence[int], rows_per_task: int) -> list[tuple[list[int], int, int]]:
    """Group consecutive row groups into tasks of at least ``rows_per_task`` rows
    (the last one may be shorter), never splitting a row group.

    Returns (row group indices, row_start, row_end) per task; no task for a file
    without rows.
    """
    out: list[tuple[list[int], int, int]] = []
    groups: list[int] = []
    start = pos = 0
    for i, n in enumerate(sizes):
        groups.append(i)
        pos += n
        if pos - start >= rows_per_task:
            out.append((groups, start, pos))
            groups, start = [], pos
    if pos > start:
        out.append((groups, start, pos))
    return out


def plan_file(
    f: InputFile, footer: Footer | BaseException, rows_per_task: int, fp: str,
    check: SchemaCheck | None = None,
) -> tuple[list[Task], str | None]:
    """Tasks for one file from its footer, and what is wrong with its schema (``check``),
    if anything.

    A file whose footer could not be read becomes one failed task; a file without
    rows has none.
    """
    if isinstance(footer, BaseException):
        msg = f"cannot read Parquet footer of {f.uri}: {type(footer).__name__}: {footer}"
        return [Task(task_id(f, 0, 0, fp), f.uri, f.size, f.tag, (), 0, 0, error=msg)], None
    tasks = [
        Task(task_id(f, s, e, fp), f.uri, f.size, f.tag, tuple(g), s, e)
        for g, s, e in split_row_groups(footer.row_groups, rows_per_task)
    ]
    return tasks, check(footer.schema) if check is not None else None


def plan(
    files: Sequence[InputFile],
    storage: StorageSettings,
    rows_per_task: int,
    fp: str,
    in_flight: int = 64,
    check: SchemaCheck | None = None,
    cache: FooterCache | None = None,
) -> list[Task]:
    """All tasks for ``files`` in file order.

    Footers come from ``cache`` for unchanged files, else one ranged read each
    (``in_flight`` at a time). Raises ``ConfigError`` naming the files (up to five)
    whose schema ``check`` refuses.
    """
    footers = footers_of(files, storage, cache, in_flight)
    planned = [plan_file(f, footer, rows_per_task, fp, check) for f, footer in zip(files, footers)]
    bad = [(f.uri, problem) for f, (_, problem) in zip(files, planned) if problem]
    if bad:
        more = f" (and {len(bad) - 5} more files)" if len(bad) > 5 else ""
        raise ConfigError("input: " + "; ".join(f"{uri}: {p}" for uri, p in bad[:5]) + more)
    return [t for tasks, _ in planned for t in tasks]
