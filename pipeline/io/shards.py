"""Stream one task's rows from its Parquet file (pyarrow over fsspec: local or S3)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.io.storage import file_tag, is_local


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


def _binary(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return (pa.types.is_binary(t) or pa.types.is_large_binary(t)
            or pa.types.is_fixed_size_binary(t) or pa.types.is_binary_view(t))


def _text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def image_column_ok(t: pa.DataType) -> bool:
    """Encoded image bytes: binary, or a struct with a binary ``bytes`` field (the
    Hugging Face ``datasets`` layout)."""
    if pa.types.is_struct(t):
        i = t.get_field_index("bytes")
        return i >= 0 and _binary(t.field(i).type)
    return _binary(t)


def caption_column_ok(t: pa.DataType) -> bool:
    """Text: a string column, or binary holding UTF-8 (decoded per row)."""
    return _text(t) or _binary(t)


def schema_problem(
    schema: pa.Schema, image_column: str, caption_column: str, other_columns: Sequence[str] = ()
) -> str | None:
    """Why a file with ``schema`` cannot feed the audit (naming the setting, the
    column, its type and the columns there are), or None when it can."""
    types = {f.name: f.type for f in schema}
    there = ", ".join(f"{n} ({t})" for n, t in list(types.items())[:30])
    if len(types) > 30:
        there += f", ... ({len(types)} columns)"
    wanted = [("data.image_column", image_column), ("data.caption_column", caption_column),
              *(("data.id_column / data.keep_columns", c) for c in other_columns)]
    for setting, col in wanted:
        if col not in types:
            return f"{setting}: no column {col!r}; the file's columns: {there}"
    if not image_column_ok(types[image_column]):
        return (f"data.image_column: {image_column!r} is {types[image_column]}, not encoded "
                "image bytes (binary, or a struct with a binary 'bytes' field); "
                f"the file's columns: {there}")
    if not caption_column_ok(types[caption_column]):
        return (f"data.caption_column: {caption_column!r} is {types[caption_column]}, not text "
                f"(string, or binary holding UTF-8); the file's columns: {there}")
    return None


def changed(task: Shard) -> TaskError:
    return TaskError(f"{task.uri} changed since the job listed it (size/tag differ); "
                     "rerun the job", retryable=False)


def _check_unchanged(fs: fsspec.AbstractFileSystem, path: str, task: Shard) -> None:
    info = fs.info(path)
    if int(info.get("size") or 0) != task.size or file_tag(info) != task.tag:
        raise changed(task)


@contextlib.contextmanager
def open_pinned(fs: fsspec.AbstractFileSystem, path: str, task: Shard) -> Iterator[Any]:
    """The task's input file as the plan saw it, or ``TaskError`` naming it if it changed.

    On S3 the size comes from the plan (no HEAD) and every read carries
    ``If-Match: <ETag>``, so a file replaced before or during the reads fails them
    instead of mixing old and new rows. Locally the size and mtime are checked
    before and after the reads. Elsewhere, one ``info`` call before.
    """
    if is_local(fs):
        _check_unchanged(fs, path, task)
        with open(path, "rb") as fh:
            yield fh
        _check_unchanged(fs, path, task)
        return
    if not hasattr(fs, "s3_additional_kwargs"):  # not s3fs: one request checks the file
        _check_unchanged(fs, path, task)
        with fs.open(path, "rb") as fh:
            yield fh
        return
    from s3fs.utils import FileExpired

    fh = fs.open(path, "rb", size=task.size)
    if task.tag:  # what s3fs does itself after a HEAD: reads pinned to the ETag
        fh.read_kw = {**fh.read_kw, "IfMatch": f'"{task.tag}"'}
        fh.details = {"name": path, "size": task.size, "ETag": f'"{task.tag}"'}
    try:
        with fh:
            yield fh
    except FileExpired:
        raise changed(task) from None


def iter_batches(
    fs: fsspec.AbstractFileSystem, path: str, task: Shard, columns: Sequence[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Record batches of ``columns`` for the task's row groups, in row order, read from
    the file as the plan saw it (``open_pinned``)."""
    with open_pinned(fs, path, task) as fh:
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
