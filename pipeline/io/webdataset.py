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

Read with the standard library's ``tarfile`` over the file as the plan saw it
(``open_pinned``: on S3 every read carries ``If-Match`` with the planned ETag):
no other dependency, and reads that are the same ranged GETs as the Parquet path's.
Memory per task is one batch of samples and the file's read buffer, never the shard.

Nothing is dropped without a word. A sample without an image member, or whose image
member is not a regular file, too large, or named twice, gets a null image (the
decoder makes it ``bad_image``); one without its caption gets a null caption
(``bad_caption``); the reason goes with the row (``__note__``). A shard cut short or
with a corrupt header fails its task (``ShardError``, not retried), naming the shard,
the byte where the damage is and how many samples came before it: a tar says where
it ends (its zero end-of-archive block), so one truncated at a member boundary is
caught too.

Planning reads the first 512 bytes of each shard (one ranged read, many in flight,
none for a shard the saved plan holds unchanged): a file that is not a tar archive
is refused before any work (``NotATar``, exit 2).
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import fsspec
import pyarrow as pa

from pipeline.config import DataSettings, StorageSettings
from pipeline.io.bulk import read_heads
from pipeline.io.footers import Footer
from pipeline.io.shards import Shard, TaskError, open_pinned

#: A tar is made of 512-byte blocks: headers, member data padded to a block, and at the
#: end at least one zero block.
BLOCK = 512
#: Members larger than this are not read (their sample gets a null in that place).
MAX_MEMBER_BYTES = 256 * 2**20
#: The columns a shard's batches have, before the kept JSON fields (all text).
KEY, IMAGE, CAPTION, NOTE = "__key__", "__image__", "__caption__", "__note__"
SAMPLE_SCHEMA = pa.schema([(KEY, pa.string()), (IMAGE, pa.binary()), (CAPTION, pa.binary()),
                           (NOTE, pa.string())])
#: What the plan keeps of a shard that is a tar archive (in the saved plan, as a Parquet
#: file's footer): no row groups (its samples are known only once read), and the columns
#: its batches have.
SHARD_FOOTER = Footer((), SAMPLE_SCHEMA)
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
    folder, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    if not stem:
        return name, ""
    return (f"{folder}/{stem}" if folder else stem), ext


def _damaged(uri: str, offset: int, size: int, samples: int, why: str) -> ShardError:
    return ShardError(f"{uri}: damaged tar shard: {why} at byte {offset} of {size}, after "
                      f"{samples} whole sample(s); nothing from this shard is committed")


@dataclass
class _Member:
    name: str
    ext: str  # lower case
    data: bytes | None
    problem: str | None = None  # why ``data`` is None


def _members(fh: BinaryIO, uri: str, size: int) -> Iterator[tuple[str, _Member]]:
    """(key, member) for each member of the archive in ``fh``, in order; directories are
    skipped. Raises ``ShardError`` where the archive is damaged, saying how many samples
    came whole before it (those before the sample being read)."""
    runs, last = 0, None  # samples begun (runs of one key), the current key

    def damaged(offset: int, why: str, key: str | None = None) -> ShardError:
        whole = runs if key is not None and key != last else max(0, runs - 1)
        return _damaged(uri, offset, size, whole, why)

    try:
        tf = tarfile.TarFile(fileobj=fh)  # plain tar; closing it would leave ``fh`` open
    except tarfile.TarError as e:
        raise damaged(0, f"{type(e).__name__}: {e}") from None
    while True:
        offset = tf.offset
        try:
            info = tf.next()
        except (tarfile.TarError, EOFError) as e:
            raise damaged(offset, f"{type(e).__name__}: {e}") from None
        if info is None:
            break
        tf.members.clear()  # tarfile keeps every member it read: memory would grow
        if info.isdir():
            continue
        key, ext = split_name(info.name)
        member = _Member(info.name, ext.lower(), None)
        if not info.isfile():
            member.problem = f"member {info.name} is not a regular file (a link or a device)"
        elif info.size > MAX_MEMBER_BYTES:
            member.problem = (f"member {info.name} is {info.size} bytes, over the limit of "
                              f"{MAX_MEMBER_BYTES} (not read)")
        else:
            fh.seek(info.offset_data)
            member.data = fh.read(info.size)
            if len(member.data) < info.size:
                raise damaged(info.offset_data + len(member.data),
                              f"member {info.name} cut short", key)
        if key != last:
            runs, last = runs + 1, key
        yield key, member
    fh.seek(tf.offset)
    end = fh.read(BLOCK)
    if end != bytes(BLOCK):
        why = ("no end-of-archive block (cut short)" if len(end) < BLOCK
               else "a block that is neither a tar header nor the end of the archive")
        raise damaged(tf.offset, why)


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


def sample_row(s: Sample, d: DataSettings) -> dict[str, Any]:
    """One sample as a row of its batch: key, image and caption bytes (None when missing),
    why something is missing, and the kept JSON fields as text."""
    notes: list[str] = []
    row: dict[str, Any] = {KEY: s.key, IMAGE: _image(s, d, notes)}
    needs_json = bool(d.keep_columns) or bool(d.caption_json_field)
    json_notes: list[str] = []
    meta = _json(s, json_notes) if needs_json else None
    row[CAPTION] = _caption(s, d, meta, notes)
    if d.caption_json_field and row[CAPTION] is None:
        notes += json_notes
    for name in d.keep_columns:
        row[name] = _text(meta.get(name)) if meta is not None else None
    row[NOTE] = "; ".join(notes) or None
    return row


def batch_schema(d: DataSettings) -> pa.Schema:
    """The schema of a shard's batches under ``d``."""
    return pa.schema(list(SAMPLE_SCHEMA) + [pa.field(c, pa.string()) for c in d.keep_columns])


def _batch(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.RecordBatch:
    return pa.record_batch([pa.array([r[f.name] for r in rows], f.type) for f in schema],
                           schema=schema)


def iter_sample_batches(fs: fsspec.AbstractFileSystem, path: str, task: Shard,
                        data: DataSettings, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Batches of ``batch_rows`` samples of the task's shard, in order (``batch_schema``),
    read from the file as the plan saw it (``open_pinned``). Raises ``ShardError`` where
    the shard is damaged, after the batches before the damage."""
    schema = batch_schema(data)
    rows: list[dict[str, Any]] = []
    with open_pinned(fs, path, task) as fh:
        for sample in iter_samples(fh, task.uri, task.size):
            rows.append(sample_row(sample, data))
            if len(rows) >= batch_rows:
                yield _batch(rows, schema)
                rows = []
        if rows:
            yield _batch(rows, schema)
