"""Parquet footers of many files: one ranged read each, many in flight.

A Parquet file ends with its metadata, then its length and ``PAR1``. The size of
every file is already known from the listing, so one ranged GET of the last
``TAIL_BYTES`` holds the whole footer of almost any file (a second read fetches
the rest of a larger one): no HEAD, no open. On object storage the reads go
through the filesystem's event loop, ``in_flight`` at a time; locally they are
plain reads.

``FooterCache`` keeps what the plan needs of each footer (row counts of the row
groups, the schema) beside the output, keyed by the file's URI, size and ETag or
mtime: a rerun over unchanged inputs reads no input footer at all.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import StorageSettings
from pipeline.io.bulk import read_tails
from pipeline.io.storage import InputFile, join, put_atomic, read_bytes

log = logging.getLogger("nibt-audit")

#: Bytes read from the end of a file in its first request: holds the footer of a file
#: with thousands of row groups or columns.
TAIL_BYTES = 64 * 1024
#: Files whose footers are asked for in one call of the filesystem (bounds the memory
#: of tails in hand; each call keeps ``in_flight`` requests going).
CALL_FILES = 4096
MAGIC = b"PAR1"


class NotParquet(ValueError):
    """The bytes at the end of a file are not a Parquet footer."""


@dataclass(frozen=True)
class Footer:
    """What planning needs of one file's footer."""

    row_groups: tuple[int, ...]  # rows in each row group
    schema: pa.Schema


def footer_length(tail: bytes, size: int | None) -> int:
    """Bytes the footer takes at the end of the file, length and magic included
    (``size``: the file's, when known)."""
    if (size is not None and size < 12) or len(tail) < 12 or tail[-4:] != MAGIC:
        raise NotParquet(f"not a Parquet file (no PAR1 footer in its last {len(tail)} bytes)")
    n = struct.unpack("<I", tail[-8:-4])[0] + 8
    whole = size if size is not None else len(tail) if len(tail) < TAIL_BYTES else None
    if whole is not None and n > whole - 4:
        raise NotParquet(f"footer length {n} exceeds the file ({whole} bytes)")
    return n


def parse_footer(tail: bytes) -> Footer:
    """A ``Footer`` from bytes that end with a whole footer."""
    meta = pq.read_metadata(pa.BufferReader(tail))
    # the file's own key-value metadata (pandas' index, writer details) is not needed
    # to plan, and differs from file to file: without it, one schema object serves all
    return Footer(tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups)),
                  meta.schema.to_arrow_schema().remove_metadata())


def read_footers(
    files: Sequence[tuple[str, int | None]], storage: StorageSettings, in_flight: int = 64,
    parse: Callable[[bytes], Any] = parse_footer,
) -> Iterator[Any]:
    """``parse`` of the footer of each (uri, size) (a ``Footer`` by default), in order; an
    exception for a file whose footer cannot be read (``FileNotFoundError`` for one that
    is not there). One request per file unless its footer is over ``TAIL_BYTES``; a size
    of None costs nothing more (a suffix range)."""
    for lo in range(0, len(files), CALL_FILES):
        chunk = files[lo:lo + CALL_FILES]
        tails = read_tails([(u, size, TAIL_BYTES) for u, size in chunk], storage, in_flight)
        longer: dict[int, int] = {}  # index in chunk -> footer length, footers over the tail
        out: list[Any] = []
        for i, ((_, size), tail) in enumerate(zip(chunk, tails)):
            if isinstance(tail, BaseException):
                out.append(tail)
                continue
            try:
                n = footer_length(tail, size)
                if n > len(tail):
                    longer[i] = n
                    out.append(None)
                else:
                    out.append(parse(tail[-n:]))
            except Exception as err:
                out.append(err)
        if longer:
            idx = sorted(longer)
            rest = read_tails([(chunk[i][0], chunk[i][1], longer[i]) for i in idx], storage,
                              in_flight)
            for i, tail in zip(idx, rest):
                try:
                    out[i] = tail if isinstance(tail, BaseException) else parse(tail)
                except Exception as err:
                    out[i] = err
        yield from out


#: The saved plan, beside the output.
CACHE_PATH = "_ledger/inputs.parquet"
_CACHE_SCHEMA = pa.schema([("uri", pa.string()), ("size", pa.int64()), ("tag", pa.string()),
                           ("row_groups", pa.list_(pa.int64())), ("schema", pa.binary())])


class FooterCache:
    """Footers of input files, saved at ``<output>/_ledger/inputs.parquet``.

    An entry is used only for the same URI, size and tag (ETag or mtime): a file that
    changed is read again. ``save`` writes the footers of the files of the latest
    plan (one object; the schema bytes are dictionary-encoded, so one schema shared
    by 230,000 files is stored once per row group).
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, out_path: str) -> None:
        self.fs, self.path = fs, join(out_path, CACHE_PATH)
        self.entries: dict[str, tuple[int, str, Footer]] = {}
        self.changed = False

    def load(self) -> FooterCache:
        """Read the saved footers; none when there are none or they cannot be read."""
        try:
            data = read_bytes(self.fs, self.path)
        except FileNotFoundError:
            return self
        except Exception as e:
            log.warning("saved plan %s not read (%s: %s); input footers are read again",
                        self.path, type(e).__name__, e)
            return self
        try:
            table = pq.read_table(pa.BufferReader(data))
            schemas: dict[bytes, pa.Schema] = {}
            for uri, size, tag, groups, blob in zip(*(table.column(c).to_pylist()
                                                      for c in _CACHE_SCHEMA.names)):
                if blob not in schemas:
                    schemas[blob] = pa.ipc.read_schema(pa.BufferReader(blob))
                self.entries[uri] = (size, tag, Footer(tuple(groups), schemas[blob]))
        except Exception as e:
            self.entries.clear()
            log.warning("saved plan %s is not readable (%s: %s); input footers are read again",
                        self.path, type(e).__name__, e)
        return self

    def get(self, f: InputFile) -> Footer | None:
        hit = self.entries.get(f.uri)
        if hit is None or hit[0] != f.size or hit[1] != f.tag:
            return None
        return hit[2]

    def put(self, f: InputFile, footer: Footer) -> None:
        self.entries[f.uri] = (f.size, f.tag, footer)
        self.changed = True

    def keep_only(self, uris: set[str]) -> None:
        """Forget files that are no longer inputs."""
        gone = [u for u in self.entries if u not in uris]
        for u in gone:
            del self.entries[u]
        self.changed = self.changed or bool(gone)

    def save(self) -> None:
        """Write the footers if they changed since ``load``."""
        if not self.changed:
            return
        blobs: dict[pa.Schema, bytes] = {}
        rows: dict[str, list] = {n: [] for n in _CACHE_SCHEMA.names}
        for uri in sorted(self.entries):
            size, tag, footer = self.entries[uri]
            if footer.schema not in blobs:
                blobs[footer.schema] = footer.schema.serialize().to_pybytes()
            for name, value in zip(_CACHE_SCHEMA.names, (uri, size, tag, list(footer.row_groups),
                                                         blobs[footer.schema])):
                rows[name].append(value)
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table(rows, schema=_CACHE_SCHEMA), sink, compression="zstd")
        put_atomic(self.fs, self.path, sink.getvalue().to_pybytes())
        self.changed = False


def footers_of(
    files: Sequence[InputFile], storage: StorageSettings, cache: FooterCache | None = None,
    in_flight: int = 64,
) -> list[Footer | BaseException]:
    """The footer of each input file: from ``cache`` when the file is unchanged, else one
    ranged read (``in_flight`` at a time), then kept in ``cache``."""
    out: list[Footer | BaseException | None] = [cache.get(f) if cache else None for f in files]
    shared: dict[pa.Schema, pa.Schema] = {}  # equal schemas held once
    todo = [i for i, got in enumerate(out) if got is None]
    for i, footer in zip(todo, read_footers([(files[i].uri, files[i].size) for i in todo],
                                            storage, in_flight)):
        if isinstance(footer, Footer):
            footer = Footer(footer.row_groups, shared.setdefault(footer.schema, footer.schema))
            if cache is not None:
                cache.put(files[i], footer)
        out[i] = footer
    return out  # type: ignore[return-value]
