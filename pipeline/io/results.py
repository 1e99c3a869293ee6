"""Read audit results through their manifest (never a glob of ``parts/``).

A part is read in one request: on object storage its whole object in one GET
(no HEAD first), locally only the columns asked for. ``prefetched`` reads the
next parts in threads while the caller works on the current one, so a store
that is far away costs its latency once per window of parts, not once per
part. A part that cannot be read (gone, truncated, not Parquet, a storage error
after the client's retries, fewer or more rows than the manifest lists) raises
``PartUnreadable`` naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import StorageSettings
from pipeline.io.bulk import object_getter
from pipeline.io.manifest import read_manifest
from pipeline.io.storage import filesystem, is_local, join, to_uri

#: Parts read ahead of the one being worked on.
PREFETCH = 16
#: The caption's word pieces read as Parquet stores them, dictionary-encoded (they repeat):
#: no string per piece is built, and readers group pieces by their dictionary index.
TOKEN_DICTIONARY = ("tokens.list.element", "tokens.list.item")


class PartUnreadable(Exception):
    """A part the manifest lists that cannot be read; ``path`` names it."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot read part {path}: {reason}")
        self.path, self.reason = path, reason

    def __reduce__(self) -> tuple[Any, ...]:  # crosses process boundaries intact
        return (PartUnreadable, (self.path, self.reason))


def read_part(fs: fsspec.AbstractFileSystem, root: str, entry: dict[str, Any],
              columns: Sequence[str] | None = None, dictionary: Sequence[str] = (),
              get: Callable[[str], Any] | None = None) -> pa.Table:
    """One manifest entry's part as a table of ``columns``: locally a read of those columns,
    on object storage one GET of the whole object (through ``get``, an object URI to its
    bytes, when given: ``bulk.object_getter``). ``dictionary``: nested column paths read
    dictionary-encoded (``TOKEN_DICTIONARY``)."""
    path = join(root, entry["path"])
    try:
        if is_local(fs):
            with open(path, "rb") as f:
                data = f.read()
        else:
            if get is not None:
                data = get(to_uri(fs, path))
            else:
                one = {"max_concurrency": 1} if hasattr(fs, "max_concurrency") else {}
                data = fs.cat_file(path, **one)
            size = entry.get("bytes")
            if size is not None and len(data) != int(size):
                raise PartUnreadable(path, f"{len(data)} bytes, the manifest lists {size}")
        table = decode_part(data, columns, dictionary)
    except PartUnreadable:
        raise
    except Exception as e:
        raise PartUnreadable(path, f"{type(e).__name__}: {e}") from None
    rows = entry.get("rows")
    if rows is not None and table.num_rows != int(rows):
        raise PartUnreadable(path, f"{table.num_rows} rows, the manifest lists {rows}")
    return table


def decode_part(data: bytes, columns: Sequence[str] | None = None,
                dictionary: Sequence[str] = ()) -> pa.Table:
    """A part's bytes as a table of ``columns`` (all when None or empty), row group by row
    group; ``KeyError`` for a column the part lacks.

    ``pq.ParquetFile`` straight on the bytes, without ``pq.read_table``'s dataset
    layer, whose cost per call counts for parts of a thousand rows read three times
    each. ``dictionary``: the nested column paths of those that
    the file has are read dictionary-encoded.
    """
    source = pa.BufferReader(data)
    meta = pq.read_metadata(source)
    paths = {meta.schema.column(i).path for i in range(meta.num_columns)}
    pf = pq.ParquetFile(source, metadata=meta,
                        read_dictionary=[p for p in dictionary if p in paths] or None)
    cols = list(columns) if columns else None
    missing = [c for c in cols or () if c not in pf.schema_arrow.names]
    if missing:  # read_row_group would leave them out without a word
        raise KeyError(f"no column {', '.join(missing)}")
    if meta.num_row_groups == 0:
        schema = pf.schema_arrow
        return schema.empty_table().select(cols) if cols is not None else schema.empty_table()
    return pa.concat_tables([pf.read_row_group(i, columns=cols, use_threads=False)
                             for i in range(meta.num_row_groups)])


def prefetched(output: str, storage: StorageSettings, entries: Sequence[dict[str, Any]],
               columns: Sequence[str] | None = None, ahead: int = PREFETCH,
               dictionary: Sequence[str] = ()) -> Iterator[pa.Table]:
    """``entries``' parts in order, up to ``ahead`` of them read in threads meanwhile.

    Locally two threads suffice (the disk answers at once); a remote store gets
    ``ahead`` requests in flight. Memory: ``ahead`` parts.
    """
    if not entries:
        return
    fs, root = filesystem(output, storage)
    get = None if is_local(fs) else object_getter(output, storage)
    width = max(1, min(ahead, len(entries), 2 if is_local(fs) else ahead))
    with ThreadPoolExecutor(width, thread_name_prefix="nibt-read") as pool:
        queue: list[Future] = []
        nxt = 0
        try:
            for _ in range(len(entries)):
                while nxt < len(entries) and len(queue) < width:
                    queue.append(pool.submit(read_part, fs, root, entries[nxt], columns,
                                             dictionary, get))
                    nxt += 1
                yield queue.pop(0).result()
        finally:
            for f in queue:
                f.cancel()


def iter_parts(
    output: str,
    storage: StorageSettings | None = None,
    columns: Sequence[str] | None = None,
    manifest: dict | None = None,
) -> Iterator[pa.Table]:
    """Each committed part of ``output`` as a table, in manifest (input) order.

    Pass ``manifest`` to read the parts of one manifest read several times over
    (the manifest is re-read otherwise, and may list more parts by then).
    """
    storage = storage or StorageSettings()
    manifest = manifest if manifest is not None else read_manifest(output, storage)
    yield from prefetched(output, storage, manifest["parts"], columns)


def read_results(
    output: str, storage: StorageSettings | None = None, columns: Sequence[str] | None = None
) -> pa.Table:
    """All results in one table (for small outputs and tests; use ``iter_parts`` at scale)."""
    tables = list(iter_parts(output, storage, columns))
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="permissive")
