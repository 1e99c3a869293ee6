"""Read audit results through their manifest (never a glob of ``parts/``).

A part is read in one request: on object storage its whole object in one GET
(no HEAD first), locally only the columns asked for. ``prefetched`` reads the
next parts in threads while the caller works on the current one, so a store
that is far away costs its latency once per window of parts, not once per
part; on object storage ``read_ahead`` starts the first reads of a
``prefetched`` call that comes next in the process (a worker's next task), so
that the window does not start empty at every task. The reads run in one set
of threads per process. A part that cannot be read (gone, truncated, not
Parquet, a storage error after the client's retries, fewer or more rows than
the manifest lists) raises ``PartUnreadable`` naming it.
"""

from __future__ import annotations

import os
import threading
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
#: Bytes of part objects (the manifest's ``bytes``) that a read window holds at most, whatever
#: their number, and at least one part: the 16 parts of ``PREFETCH`` where parts are small (a
#: 1,024-row part is about 0.3 MB, a 10,000-row part 2.5 MB), 3 of the 65,536-row parts an
#: audit writes on GPUs (about 17 MB each). A part read waits in memory decoded, about 1.5
#: times its object for the first pass: with 16 such parts in its window a worker of the
#: first pass peaked at about 1.2 GB, with this bound at 0.46 GB, and ran no slower
#: (docs/performance.md). Parts the manifest lists without a size count by number only.
PREFETCH_BYTES = 64 * 2**20
#: The caption's word pieces read as Parquet stores them, dictionary-encoded (they repeat):
#: no string per piece is built, and readers group pieces by their dictionary index.
TOKEN_DICTIONARY = ("tokens.list.element", "tokens.list.item")


#: Parts of a task that ``read_ahead`` reads before the task starts: enough to cover the
#: store's round trip while the task works on them and its own reads start (far fewer than
#: ``PREFETCH``: each waits in memory for the task before it to end).
AHEAD_PARTS = 4
#: Reads started by ``read_ahead`` and not yet taken by ``prefetched``, at most this many
#: and (beyond the newest) at most a quarter of the window's bytes (the oldest dropped first):
#: a worker's next tasks' first parts, or those of a task that never came (its worker was told
#: to stop).
AHEAD_HELD = 4 * AHEAD_PARTS


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


def _width(fs: fsspec.AbstractFileSystem, ahead: int, n: int) -> int:
    """Parts read at once: locally two (the disk answers at once), else ``ahead``."""
    return max(1, min(ahead, n, 2 if is_local(fs) else ahead))


def _size(entry: dict[str, Any]) -> int:
    """A part object's bytes as the manifest lists them (0 where it does not)."""
    return int(entry.get("bytes") or 0)


def _fitting(entries: Sequence[dict[str, Any]], count: int, budget: int | None) -> int:
    """How many of ``entries``' first ``count`` fit in ``budget`` bytes (at least one)."""
    if budget is None:
        return min(count, len(entries))
    n, held = 0, 0
    for e in entries[:count]:
        held += _size(e)
        if n and held > budget:
            break
        n += 1
    return n


class _Reads:
    """This process's read threads, shared by every ``prefetched`` call and ``read_ahead``
    (a task starts no threads of its own: with fewer threads, fewer per-thread heaps of the
    allocator hold freed memory), and the reads ``read_ahead`` started, by what they read,
    oldest first. The threads are made in the process that reads, again after a fork."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started: dict[tuple, tuple[Future, int]] = {}  # a read, its object's bytes
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0

    def submit(self, fn: Callable[..., pa.Table], *args: Any) -> Future:
        with self.lock:
            if self._pool is None or self._pid != os.getpid():
                # every call in flight at once finds a thread (each keeps its own bound)
                self._pool = ThreadPoolExecutor(64, thread_name_prefix="nibt-read")
                self._pid = os.getpid()
            return self._pool.submit(fn, *args)

    def start(self, key: tuple, size: int, budget: int | None, *args: Any) -> None:
        """Start ``read_part(*args)`` (an object of ``size`` bytes) for a later ``take(key)``;
        drop the oldest beyond ``AHEAD_HELD`` reads or ``budget`` bytes (None: no bound)."""
        with self.lock:
            if key in self.started:
                return
        future = self.submit(read_part, *args)
        with self.lock:
            self.started[key] = future, size
            while len(self.started) > 1 and (
                    len(self.started) > AHEAD_HELD
                    or (budget is not None and sum(n for _, n in self.started.values()) > budget)):
                self.started.pop(next(iter(self.started)))[0].cancel()

    def take(self, key: tuple) -> Future | None:
        with self.lock:
            held = self.started.pop(key, None)
        return held[0] if held else None


_READS = _Reads()


def _key(output: str, entry: dict[str, Any], columns: Sequence[str] | None,
         dictionary: Sequence[str]) -> tuple:
    return output, entry["path"], tuple(columns or ()), tuple(dictionary)


def read_ahead(output: str, storage: StorageSettings, entries: Sequence[dict[str, Any]],
               columns: Sequence[str] | None = None, ahead: int = PREFETCH,
               dictionary: Sequence[str] = (), budget: int | None = PREFETCH_BYTES) -> None:
    """On object storage, start reading the first parts (``AHEAD_PARTS``, no more than
    ``prefetched`` keeps in flight, and no more than a quarter of ``budget`` bytes, at least
    one) that a later ``prefetched`` call over the same arguments in this process reads, and
    return at once; that call takes them instead of reading them again. A worker that holds
    its next task calls it while it works on the current one: a task does not begin with a
    round trip to the store. At most ``AHEAD_HELD`` reads, and a quarter of ``budget`` bytes
    beyond the newest, wait to be taken (the oldest are dropped: a dropped part is read again
    by its ``prefetched``, never lost); a read that fails raises where it is taken, as it would
    have there. Locally it does nothing: the disk answers at once, and a part read early
    only waits in memory (about 60 MB more a worker at 10,000-row parts, for no time
    saved)."""
    if not entries:
        return
    fs, root = filesystem(output, storage)
    if is_local(fs):
        return
    get = object_getter(output, storage)
    held = None if budget is None else budget // 4
    count = min(AHEAD_PARTS, _width(fs, ahead, len(entries)))
    for entry in entries[: _fitting(entries, count, held)]:
        _READS.start(_key(output, entry, columns, dictionary), _size(entry), held, fs, root,
                     entry, columns, dictionary, get)


def prefetched(output: str, storage: StorageSettings, entries: Sequence[dict[str, Any]],
               columns: Sequence[str] | None = None, ahead: int = PREFETCH,
               dictionary: Sequence[str] = (), budget: int | None = PREFETCH_BYTES,
               ) -> Iterator[pa.Table]:
    """``entries``' parts in order, up to ``ahead`` of them and ``budget`` bytes of their
    objects (at least one part; None: no bound in bytes) read in threads meanwhile (those
    that ``read_ahead`` started are taken from it).

    Locally two reads at a time suffice (the disk answers at once); a remote store gets
    ``ahead`` requests in flight. Memory: the window's parts, decoded.
    """
    if not entries:
        return
    fs, root = filesystem(output, storage)
    get = None if is_local(fs) else object_getter(output, storage)
    width = _width(fs, ahead, len(entries))
    queue: list[tuple[Future, int]] = []
    nxt = 0
    try:
        for _ in range(len(entries)):
            while nxt < len(entries) and len(queue) < width and (
                    not queue or budget is None
                    or sum(n for _, n in queue) + _size(entries[nxt]) <= budget):
                e = entries[nxt]
                queue.append((_READS.take(_key(output, e, columns, dictionary))
                              or _READS.submit(read_part, fs, root, e, columns, dictionary, get),
                              _size(e)))
                nxt += 1
            yield queue.pop(0)[0].result()
    finally:
        for f, _ in queue:
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
