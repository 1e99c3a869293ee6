"""WebDataset tar shards: members grouped into samples by key, streamed a batch at a time.

A shard is a plain tar archive. A member's key is its name up to the first dot of
its basename, the directory kept (``a/000123.jpg`` -> key ``a/000123``, extension
``jpg``); consecutive members with the same key are one sample, as the
``webdataset`` package groups them. Of a sample, the image is the first member of
``data.image_extensions`` present (compared without case), the caption the
``data.caption_extension`` member or, with ``data.caption_json_field``, that field
of the ``json`` member; ``data.keep_columns`` are top-level fields of the ``json``
member, kept as text (a string as itself, any other value as its JSON), so every
part has the same columns whatever each sample's JSON holds.

The file is read as the plan saw it (``open_pinned``: on S3 every ranged GET carries
``If-Match`` with the planned ETag), front to back in chunks of ``READ_BYTES``, the
next ``READ_AHEAD`` fetched while one is parsed (the first chunk and the ``READ_AHEAD``
after it asked for together). Memory per task is one batch of
samples and those chunks, never the shard. The headers are parsed here: a sample
needs only a member's name, type and size, and reading them straight from the block
costs a fifth of ``tarfile.TarFile.next`` (which decodes every field; the
``webdataset`` package reads through it too): with a near store a shard reads about as
fast as Parquet; 30 ms a request away, at 1.2x of its rate (``python -m benchmarks
webdataset``, docs/performance.md). Checksums, POSIX (ustar) and GNU long
names and pax headers are handled as tarfile handles them, with its helpers for the
rare cases; a GNU sparse member fails the shard.

Nothing is dropped without a word. A sample without an image member, or whose image
member is not a regular file, too large, or named twice, gets a null image (the
decoder makes it ``bad_image``); one without its caption gets a null caption
(``bad_caption``); the reason goes with the row (``InputRows.notes``). A shard cut
short or with a corrupt header fails its task (``ShardError``, not retried), naming
the shard, the byte where the damage is and how many samples came whole before it:
a tar says where it ends (its zero end-of-archive block), so one cut at a member
boundary is caught too (the webdataset package returns the samples before such a cut
as if the shard ended there).

Planning reads the first 512 bytes of each shard (one ranged read, many in flight,
none for a shard the saved plan holds unchanged): a file that is not a tar archive
is refused before any work (``NotATar``, exit 2).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import fsspec
import pyarrow as pa

from pipeline.config import DataSettings, StorageSettings
from pipeline.io.bulk import read_heads
from pipeline.io.footers import Footer
from pipeline.io.shards import InputRows, Shard, TaskError, open_pinned

#: A tar is made of 512-byte blocks: headers, member data padded to a block, and at the
#: end at least one zero block.
BLOCK = 512
#: Bytes read from the shard at a time (one ranged GET on S3), and the chunks fetched
#: ahead while one is parsed: a task's read buffers hold ``READ_AHEAD + 1`` chunks.
READ_BYTES, READ_AHEAD = 8 * 2**20, 4
#: Members larger than this are not read (their sample gets a null in that place).
MAX_MEMBER_BYTES = 256 * 2**20
#: What the plan keeps of a shard that is a tar archive (in the saved plan, as a Parquet
#: file's footer): no row groups (its samples are known only once read) and no columns
#: (its members are found by name).
SHARD_FOOTER = Footer((), pa.schema([]))
#: First bytes of compressed files, which are not plain tar archives.
_COMPRESSED = ((b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"BZh", "bzip2"),
               (b"\xfd7zXZ\x00", "xz"))


class NotATar(ValueError):
    """A file under ``data.format=webdataset`` that is not a plain tar archive."""


class ShardError(TaskError):
    """A shard damaged past some byte: its task fails and is not retried (the same bytes
    would fail the same way)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


# ------------------------------------------------------------------ planning
def head_problem(head: bytes, size: int) -> str | None:
    """Why a file of ``size`` bytes whose first bytes are ``head`` is not a tar archive
    this reader takes, or None when it is one (an empty archive included)."""
    if size == 0:
        return "an empty file (0 bytes), not a tar archive"
    for magic, name in _COMPRESSED:
        if head.startswith(magic):
            return (f"a {name}-compressed file, not a plain tar archive: decompress it "
                    "(data.format=webdataset reads .tar shards)")
    if head.startswith(b"PAR1"):
        return ("a Parquet file, not a tar archive: Parquet inputs are read with "
                "data.format=parquet (data=default, data=hf, data=img2dataset)")
    if len(head) < BLOCK:
        return f"{size} bytes, shorter than one tar header ({BLOCK} bytes): not a tar archive"
    block = head[:BLOCK]
    if block == bytes(BLOCK):
        return None  # an archive with no member: its end-of-archive block
    try:
        tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
    except tarfile.HeaderError as e:
        return f"not a tar archive (its first {BLOCK} bytes are no tar header: {e})"
    return None


def read_shard_heads(files: Sequence[tuple[str, int]], storage: StorageSettings,
                     in_flight: int = 64) -> Iterator[Footer | BaseException]:
    """For each (uri, size): ``SHARD_FOOTER`` when its first block is a tar header,
    ``NotATar`` saying why not, ``ShardError`` for a size that is no whole number of
    blocks (a shard cut short), or the exception its read raised."""
    heads = read_heads([(uri, size, BLOCK) for uri, size in files], storage, in_flight)
    for (uri, size), head in zip(files, heads):
        if isinstance(head, BaseException):
            yield head
            continue
        problem = head_problem(head, size)
        if problem:
            yield NotATar(problem)
        elif size % BLOCK:
            yield ShardError(f"{uri}: {size} bytes, not a whole number of {BLOCK}-byte tar "
                             "blocks: the shard is cut short (its samples are not read)")
        else:
            yield SHARD_FOOTER


# ------------------------------------------------------------------ members
def split_name(name: str) -> tuple[str, str]:
    """(key, extension) of a member: its name up to the first dot of its basename (the
    directory kept), and the rest. A leading ``./`` is dropped; a basename starting with
    a dot is all key."""
    name = name[2:] if name.startswith("./") else name
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    if not stem:
        return name, ""
    return (f"{folder}/{stem}" if folder else stem), ext


def _damaged(uri: str, offset: int, size: int, samples: int, why: str) -> ShardError:
    return ShardError(f"{uri}: damaged tar shard: {why} at byte {offset} of {size}, after "
                      f"{samples} whole sample(s); nothing from this shard is committed")


@dataclass(slots=True)
class _Member:
    name: str
    ext: str  # lower case
    data: bytes | None
    problem: str | None = None  # why ``data`` is None


#: Header types: regular files (``7``: contiguous, read as regular), a directory, and the
#: headers that say something of the next member (pax ``x``; GNU long name ``L`` and long
#: link ``K``) or of all (pax global ``g``).
_FILE, _DIR, _NEXT_META = (b"0", b"\0", b"7"), b"5", (b"x", b"L", b"K", b"g")
_ZERO = bytes(BLOCK)


def _number(field: bytes) -> int:
    """A header's number field: octal digits (NUL or space ended), or tarfile's reading of
    the base-256 form (sizes over 8 GiB)."""
    if field[0] & 0x80:
        return tarfile.nti(field)
    try:
        return int(field.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        raise tarfile.InvalidHeaderError(f"invalid number field {field!r}") from None


def _header(block: bytes) -> tuple[str, bytes, int]:
    """(name, type, size) of a header block; ``tarfile.HeaderError`` when it is none. The
    checksum as POSIX defines it (either byte sign, as tarfile accepts); the fields tarfile's
    way (``nts``, ``nti``)."""
    stored = _number(block[148:156])
    # the sum of the block's bytes from zlib's adler32 (its low half: 1 + the sum, modulo
    # 65521, exact for 256 bytes) in C, not a Python loop over 512 ints
    total = (zlib.adler32(block[:256]) & 0xFFFF) + (zlib.adler32(block[256:]) & 0xFFFF) - 2
    if stored != total - sum(block[148:156]) + 256 and \
            stored not in tarfile.calc_chksums(block):
        raise tarfile.InvalidHeaderError("bad checksum")
    name = block[:100].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
    if block[257:263] == b"ustar\x00" and block[345]:  # POSIX: a long name's first part
        name = tarfile.nts(block[345:500], "utf-8", "surrogateescape") + "/" + name
    return name, block[156:157], _number(block[124:136])


def _pax(data: bytes) -> dict[str, str]:
    """The records of a pax extended header (``<length> <key>=<value>\\n``)."""
    out, pos = {}, 0
    while pos < len(data) and data[pos] != 0:
        length = int(data[pos:data.index(b" ", pos)])
        key, _, value = data[data.index(b" ", pos) + 1:pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _members(fh: BinaryIO, uri: str, size: int) -> Iterator[tuple[str, _Member]]:
    """(key, member) for each member of the archive in ``fh``, read front to back; the
    headers are parsed here (name, type, size: all a sample needs) for speed, pax and GNU
    long names included. Directories are skipped. Raises ``ShardError`` where the archive
    is damaged (a block that is no header, data or a header cut short, no end block),
    saying how many samples came whole before it (those before the one being read)."""
    runs, last = 0, None  # samples begun (runs of one key), the current key
    offset, meta = 0, {}  # this header's byte; the next member's name / size from pax or GNU

    def damaged(at: int, why: str, key: str | None = None) -> ShardError:
        whole = runs if key is not None and key != last else max(0, runs - 1)
        return _damaged(uri, at, size, whole, why)

    while True:
        block = fh.read(BLOCK)
        if block == _ZERO:
            return  # the end-of-archive block
        if len(block) < BLOCK:
            raise damaged(offset, "no end-of-archive block (cut short)" if not block
                          else "a header cut short")
        try:
            name, kind, n = _header(block)
            if kind in _NEXT_META:
                data = fh.read(n)
                if len(data) < n:
                    raise damaged(offset + BLOCK + len(data), f"header {name} cut short")
                if kind == b"x":
                    meta.update({k: v for k, v in _pax(data).items() if k in ("path", "size")})
                elif kind == b"L":
                    meta["path"] = tarfile.nts(data, "utf-8", "surrogateescape")
                fh.seek(-n % BLOCK, 1)
                offset += BLOCK + n + -n % BLOCK
                continue
            if meta:
                name, n = meta.pop("path", name), int(meta.pop("size", n))
        except (tarfile.HeaderError, ValueError) as e:
            raise damaged(offset, f"a block that is no tar header ({e})") from None
        pad = -n % BLOCK
        data_at, offset = offset + BLOCK, offset + BLOCK + n + pad
        if kind == _DIR:
            fh.seek(n + pad, 1)
            continue
        key, ext = split_name(name)
        member = _Member(name, ext.lower(), None)
        if kind == b"S":
            raise ShardError(f"{uri}: member {name} at byte {data_at - BLOCK} is a GNU sparse "
                             "file, which this reader does not read")
        if kind not in _FILE:
            member.problem = f"member {name} is not a regular file (a link or a device)"
        elif n > MAX_MEMBER_BYTES:
            member.problem = (f"member {name} is {n} bytes, over the limit of "
                              f"{MAX_MEMBER_BYTES} (not read)")
        else:
            member.data = fh.read(n)
            if len(member.data) < n:
                raise damaged(data_at + len(member.data), f"member {name} cut short", key)
        fh.seek((n if member.data is None else 0) + pad, 1)
        if key != last:
            runs, last = runs + 1, key
        yield key, member


@dataclass
class Sample:
    """One sample: its key and its members by extension (lower case)."""

    key: str
    members: dict[str, _Member] = field(default_factory=dict)
    twice: list[str] = field(default_factory=list)  # member names seen twice


def iter_samples(fh: BinaryIO, uri: str, size: int) -> Iterator[Sample]:
    """The samples of the tar archive in ``fh``: consecutive members sharing a key.
    Raises ``ShardError`` where the archive is damaged."""
    current: Sample | None = None
    for key, member in _members(fh, uri, size):
        if current is None or key != current.key:
            if current is not None:
                yield current
            current = Sample(key)
        if member.ext in current.members:
            current.twice.append(member.name)
        else:
            current.members[member.ext] = member
    if current is not None:
        yield current


# ------------------------------------------------------------------ rows
def _text(value: Any) -> str | None:
    """A kept JSON value as text: a string as itself, any other value as its JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _names(s: Sample) -> str:
    return ", ".join(m.name for m in s.members.values())


def _json(s: Sample, notes: list[str]) -> dict[str, Any] | None:
    member = s.members.get("json")
    if member is None or member.data is None:
        notes.append(member.problem if member else f"no json member (members: {_names(s)})")
        return None
    try:
        value = json.loads(member.data)
    except ValueError as e:
        notes.append(f"member {member.name} is not valid JSON ({e})")
        return None
    if not isinstance(value, dict):
        notes.append(f"member {member.name} holds a JSON {type(value).__name__}, not an object")
        return None
    return value


def _image(s: Sample, d: DataSettings, notes: list[str]) -> bytes | None:
    if s.twice:
        notes.append(f"member(s) {', '.join(s.twice)} appear twice in one sample")
        return None
    ext = next((e for e in d.image_extensions if e in s.members), None)
    if ext is None:
        notes.append(f"no image member ({', '.join(d.image_extensions)}; members: "
                     f"{_names(s)})")
        return None
    member = s.members[ext]
    if member.problem:
        notes.append(member.problem)
    return member.data


def _caption(s: Sample, d: DataSettings, meta: dict[str, Any] | None,
             notes: list[str]) -> bytes | None:
    f = d.caption_json_field
    if f:
        value = meta.get(f) if meta is not None else None
        if isinstance(value, str):
            return value.encode("utf-8", "surrogatepass")
        if meta is not None:
            notes.append(f"json field {f!r} is missing" if f not in meta
                         else f"json field {f!r} is {_text(value)}, not text")
        return None
    member = s.members.get(d.caption_extension)
    if member is None:
        notes.append(f"no {d.caption_extension} member (members: {_names(s)})")
        return None
    if member.problem:
        notes.append(member.problem)
    return member.data


@dataclass
class SampleRow:
    """One sample as the worker takes it: its key, image and caption bytes (None when
    missing, ``note`` saying why), and the kept JSON fields as text."""

    key: str
    image: bytes | None
    caption: bytes | None
    note: str | None
    kept: list[str | None]


def sample_row(s: Sample, d: DataSettings) -> SampleRow:
    """What ``s`` gives under ``d``."""
    notes: list[str] = []
    image = _image(s, d, notes)
    json_notes: list[str] = []
    meta = _json(s, json_notes) if d.keep_columns or d.caption_json_field else None
    caption = _caption(s, d, meta, notes)
    if d.caption_json_field and caption is None:
        notes += json_notes
    kept = [_text(meta.get(name)) if meta is not None else None for name in d.keep_columns]
    return SampleRow(s.key, image, caption, "; ".join(notes) or None, kept)


def _rows(rows: list[SampleRow], d: DataSettings) -> InputRows:
    carried = None
    if d.keep_columns:
        carried = pa.record_batch([pa.array([r.kept[i] for r in rows], pa.string())
                                   for i in range(len(d.keep_columns))],
                                  names=list(d.keep_columns))
    return InputRows([r.image for r in rows], [r.caption for r in rows],
                     [r.key for r in rows], carried, [r.note for r in rows])


def _ranges(fh: Any) -> Callable[[int, int], bytes]:
    """``read(start, end)`` of an open file that keeps no position, so several threads can
    read at once: the pinned ranged GET of an fsspec file (``_fetch_range``, what its own
    cache calls), ``pread`` of a local one."""
    if hasattr(fh, "_fetch_range"):
        return fh._fetch_range
    return lambda start, end: os.pread(fh.fileno(), end - start, start)


class _ReadAhead:
    """A file of ``size`` bytes read front to back in chunks of ``chunk`` bytes (one
    ranged GET each on S3), the next ``depth`` chunks fetched in threads while the caller
    parses this one. ``read`` copies each byte it returns once; ``seek`` moves forward
    only (``whence=1``), dropping what it passes."""

    def __init__(self, fh: Any, size: int, chunk: int, depth: int,
                 pool: Executor | None = None) -> None:
        self.read_range, self.size, self.chunk, self.depth = _ranges(fh), size, chunk, depth
        self.pos, self.buf = 0, memoryview(b"")  # ``buf``: fetched bytes from ``pos`` on
        self.own = pool is None  # a pool of its own, shut down on close; else the caller's
        self.pool = pool or ThreadPoolExecutor(depth + 1, thread_name_prefix="nibt-shard-read")
        self.ahead: deque[tuple[int, Future]] = deque()  # (where, its fetch), in order

    def _submit(self, at: int) -> None:
        self.ahead.append((at, self.pool.submit(self.read_range, at,
                                                min(self.size, at + self.chunk))))

    def _fill(self) -> bool:
        """Make ``buf`` hold the chunk at ``pos`` and keep ``depth`` chunks after it coming;
        False at the end of the file."""
        if self.pos >= self.size:
            return False
        if self.ahead and self.ahead[0][0] != self.pos:  # a seek went past them
            for _, f in self.ahead:
                f.cancel()
            self.ahead.clear()
        # the chunk at ``pos`` and the ``depth`` after it asked for before waiting on it: a
        # task's first GETs go out together, not the read-ahead one round trip later
        nxt = self.ahead[-1][0] + self.chunk if self.ahead else self.pos
        while len(self.ahead) <= self.depth and nxt < self.size:
            self._submit(nxt)
            nxt += self.chunk
        self.buf = memoryview(self.ahead.popleft()[1].result())
        return bool(self.buf)

    def read(self, n: int) -> bytes:
        """The next ``n`` bytes (fewer at the end of the file)."""
        if len(self.buf) >= n:
            out = bytes(self.buf[:n])
            self.buf, self.pos = self.buf[n:], self.pos + n
            return out
        parts = []
        while n and (self.buf or self._fill()):
            take = self.buf[:n]
            parts.append(bytes(take))
            self.buf, self.pos, n = self.buf[len(take):], self.pos + len(take), n - len(take)
        return b"".join(parts)

    def seek(self, offset: int, whence: int = 1) -> int:
        if whence != 1 or offset < 0:
            raise io.UnsupportedOperation("only forward from here")
        self.buf = self.buf[offset:] if offset < len(self.buf) else memoryview(b"")
        self.pos += offset
        return self.pos

    def close(self) -> None:
        """Drop the fetches ahead, waiting for those already running (they read ``fh``)."""
        for _, f in self.ahead:
            f.cancel()
        wait([f for _, f in self.ahead])
        if self.own:
            self.pool.shutdown(wait=True)


def iter_sample_rows(fs: fsspec.AbstractFileSystem, path: str, task: Shard,
                     data: DataSettings, batch_rows: int,
                     pool: Executor | None = None) -> Iterator[InputRows]:
    """Batches of ``batch_rows`` samples of the task's shard, in order, read from the file
    as the plan saw it (``open_pinned``), ``READ_BYTES`` at a time (one ranged GET each on
    S3, ``READ_AHEAD`` fetched ahead in ``pool``'s threads, or in threads of its own).
    The ids are the keys; the carried columns, the kept JSON fields. Raises
    ``ShardError`` where the shard is damaged, after the batches before the damage."""
    rows: list[SampleRow] = []
    # the reads are sequential: fsspec's own cache would only copy what the buffer holds
    with open_pinned(fs, path, task, cache_type="none") as raw, \
            contextlib.closing(_ReadAhead(raw, task.size, READ_BYTES, READ_AHEAD, pool)) as fh:
        for sample in iter_samples(fh, task.uri, task.size):
            rows.append(sample_row(sample, data))
            if len(rows) >= batch_rows:
                yield _rows(rows, data)
                rows = []
        if rows:
            yield _rows(rows, data)
