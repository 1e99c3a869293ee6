"""The ledger: the record of committed parts, written as the run goes.

Modelled on Delta Lake's log (small commits, then checkpoints that sum them, so a
reader never opens every data file): each committed part is one entry, and
entries reach storage in small Parquet files while the run goes on::

    <output>/_ledger/<fingerprint>/L<level>-<first seq>-<last seq>.parquet

The driver writes a level-0 segment (``checkpoint``) whenever ``every_tasks``
tasks have finished or ``every_s`` seconds have passed, from a thread of its
own, so a driver or head node that dies loses at most the bookkeeping since the
last segment (the parts themselves are committed by the workers). Whenever
``fanout`` files of one level accumulate, they are merged into one file of the
next level and deleted: a ledger of n parts is O(log n) files and each entry is
rewritten O(log n) times, where one checkpoint rewritten whole every time would
cost O(n) each.

Each segment also names its *frontier*: the tasks in flight and the next ones
the run was about to start, the only tasks that can be committed before the
next segment. When the newest file has a frontier (the run that wrote it did not
end cleanly), the next run reads the footers of the frontier's parts, one
request each, to find those committed after the last segment.

``load`` lists the directory, skips files whose range another file covers (left
when a merge was cut short), reads the rest many at a time and keeps each task's
latest entry. A file that cannot be read is skipped with a warning and named in
``unreadable``: the caller then checks the footers of the parts the ledger does
not hold, so nothing is lost, and an entry counts once per task id, so nothing is
counted twice; the file is deleted once the run has recorded anew what it held. One run
writes a ledger at a time (as a scheduler runs one audit per output).
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.io.images import STATUSES
from pipeline.io.manifest import STATUS_COUNTS
from pipeline.io.storage import join, list_names, put_atomic, read_many

log = logging.getLogger("nibt-audit")

LEDGER_DIR = "_ledger"
#: An entry says what became of a task; what the task is (its file and rows) the plan
#: says, by the task id (a hash of both): ~100 bytes an entry, in memory and on disk.
ENTRY_SCHEMA = pa.schema([
    ("task_id", pa.string()),
    ("seq", pa.int64()),  # the segment that recorded the entry; the latest one counts
    ("rows", pa.int64()),
    ("bytes", pa.int64()),  # the part object's size
    ("batch_size", pa.int64()),
    ("status_counts", STATUS_COUNTS),
])
_NAME = re.compile(r"^L(\d+)-(\d{12})-(\d{12})\.parquet$")


@dataclass(frozen=True, slots=True)
class Commit:
    """One committed part, as the ledger records it."""

    task_id: str
    rows: int
    bytes: int | None  # None: not known (a part found from its footer alone)
    batch_size: int
    status_counts: dict[str, int]


def to_table(commits: Iterable[Commit], seq: int) -> pa.Table:
    """Entries for ``commits``, all recorded by segment ``seq``."""
    commits = list(commits)
    cols: dict[str, list] = {n: [] for n in ENTRY_SCHEMA.names}
    for c in commits:
        extra = set(c.status_counts) - set(STATUSES)
        if extra:
            raise ValueError(f"task {c.task_id}: unknown row status(es) {sorted(extra)}")
        for name in ENTRY_SCHEMA.names:
            if name == "seq":
                cols[name].append(seq)
            elif name == "status_counts":
                cols[name].append({s: int(c.status_counts.get(s, 0)) for s in STATUSES})
            else:
                cols[name].append(getattr(c, name))
    return pa.table(cols, schema=ENTRY_SCHEMA)


def latest(tables: Iterable[pa.Table]) -> pa.Table:
    """One entry per task id: the one of the highest ``seq``."""
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return ENTRY_SCHEMA.empty_table()
    table = pa.concat_tables([t.select(ENTRY_SCHEMA.names).cast(ENTRY_SCHEMA) for t in tables])
    table = table.take(pc.sort_indices(table, [("task_id", "ascending"),
                                               ("seq", "descending")]))
    ids = table.column("task_id").combine_chunks()
    first = pa.concat_arrays([pa.array([True]), pc.not_equal(ids[1:], ids[:-1])])
    return table.filter(first)


@dataclass(order=True)
class _File:
    level: int
    lo: int
    hi: int
    name: str = field(compare=False)


def _covered(f: _File, files: list[_File]) -> bool:
    """Whether another file's range holds ``f``'s (``f`` was merged into it)."""
    return any(g is not f and g.lo <= f.lo and f.hi <= g.hi and (g.lo, g.hi) != (f.lo, f.hi)
               for g in files)


FRONTIER_KEY = b"nibt.frontier"


def encode(table: pa.Table, frontier: list[str] | None = None) -> bytes:
    """A ledger file: the entries, and the frontier in the footer's key-value metadata
    (added after the schema was written, so it is stored once, not in Arrow's copy of
    the schema too)."""
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, ENTRY_SCHEMA, compression="zstd") as w:
        w.write_table(table.select(ENTRY_SCHEMA.names).cast(ENTRY_SCHEMA))
        if frontier is not None:
            w.add_key_value_metadata({FRONTIER_KEY: json.dumps(frontier).encode()})
    return sink.getvalue().to_pybytes()


def _decode(data: bytes) -> tuple[pa.Table, list[str]]:
    """A ledger file's entries and frontier."""
    pf = pq.ParquetFile(pa.BufferReader(data))
    table = pf.read()
    missing = [n for n in ENTRY_SCHEMA.names if n not in table.column_names]
    if missing:
        raise ValueError(f"not a ledger file: no column(s) {missing}")
    frontier = json.loads((pf.metadata.metadata or {}).get(FRONTIER_KEY, b"[]"))
    return table.select(ENTRY_SCHEMA.names).cast(ENTRY_SCHEMA), [str(t) for t in frontier]


@dataclass
class _Segment:
    """A level-0 file to write: its entries and the frontier when it was cut."""

    seq: int
    table: pa.Table
    frontier: list[str]


class Ledger:
    """The committed parts of one output under one results fingerprint.

    ``load`` the ledger, ``start`` the writer thread, ``add`` each committed part,
    ``checkpoint`` when ``due``, ``close`` at the end (a segment with an empty
    frontier: the run ended cleanly).
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, out_path: str, fingerprint: str,
                 every_s: float = 30.0, every_tasks: int = 1000, fanout: int = 10,
                 in_flight: int = 64, clock: Callable[[], float] = time.monotonic) -> None:
        self.fs, self.dir = fs, join(out_path, LEDGER_DIR, fingerprint)
        self.every_s, self.every_tasks = every_s, every_tasks
        self.fanout, self.in_flight = max(2, fanout), in_flight
        self.clock = clock
        self.files: list[_File] = []
        self.frontier: list[str] = []  # the newest file's, after ``load``
        self.unreadable: list[str] = []  # files ``load`` skipped
        self._newest_frontier = False  # whether the newest file (or segment queued) has one
        self.next_seq = 0
        self._buffer: list[Commit] = []
        self._finished = 0  # tasks finished (committed or failed) since the last checkpoint
        self._last = clock()
        self._run: list[pa.Table] = []  # everything this run recorded, in memory
        self._queue: queue.Queue[_Segment | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.segments_written = 0
        self.write_failures = 0
        self.conflict = False  # another run writes this ledger: this one stops writing

    # ------------------------------------------------------------------ reading
    def _list(self) -> list[_File]:
        files = []
        for name in list_names(self.fs, self.dir):
            m = _NAME.match(name)
            if m:
                files.append(_File(int(m[1]), int(m[2]), int(m[3]), name))
        return sorted(files)

    def load(self) -> pa.Table:
        """Every task's latest entry (unreadable files skipped with a warning); sets
        ``frontier`` from the newest file."""
        listed = self._list()
        wanted = [f for f in listed if not _covered(f, listed)]
        data = read_many(self.fs, [join(self.dir, f.name) for f in wanted], self.in_flight)
        tables, self.files, self.unreadable, newest = [], [], [], (-1, [])
        for f, blob in zip(wanted, data):
            try:
                if isinstance(blob, BaseException):
                    raise blob
                table, frontier = _decode(blob)
            except Exception as e:
                log.warning("ledger file %s is not readable (%s: %s): ignored; the parts it "
                            "recorded are checked from their footers", join(self.dir, f.name),
                            type(e).__name__, str(e)[:200])
                self.unreadable.append(f.name)
                continue
            tables.append(table)
            self.files.append(f)
            if f.hi > newest[0]:
                newest = (f.hi, frontier)
        self.frontier = newest[1]
        self._newest_frontier = bool(self.frontier)
        self.next_seq = max((f.hi + 1 for f in listed), default=0)
        return latest(tables)

    def reset(self) -> None:
        """Forget every entry (``run.overwrite``): the files of this fingerprint are deleted."""
        for f in self._list():
            self.fs.rm(join(self.dir, f.name))
        self.files, self.frontier, self.next_seq = [], [], 0
        self._newest_frontier = False

    # ------------------------------------------------------------------ recording
    def add(self, commit: Commit | None) -> None:
        """One task finished: committed (``commit``) or failed (None)."""
        if commit is not None:
            self._buffer.append(commit)
        self._finished += 1

    def due(self) -> bool:
        """Whether a checkpoint is due: ``every_tasks`` finished, or ``every_s`` passed
        with something to record."""
        if self._finished >= self.every_tasks:
            return True
        return bool(self._finished) and self.clock() - self._last >= self.every_s

    def checkpoint(self, frontier: list[str]) -> None:
        """Hand what was recorded since the last checkpoint to the writer thread, with the
        tasks that may be committed before the next one (``frontier``). Nothing is written
        when there is nothing to say: no entry, and no frontier now or in the newest file."""
        if not self._buffer and not frontier and not self._newest_frontier:
            self._finished, self._last = 0, self.clock()
            return
        self._newest_frontier = bool(frontier)
        table = to_table(self._buffer, self.next_seq)
        self._run.append(table)
        self._queue.put(_Segment(self.next_seq, table, list(frontier)))
        self.next_seq += 1
        self._buffer, self._finished, self._last = [], 0, self.clock()

    def recorded(self) -> pa.Table:
        """Every entry this run recorded (written or not), in the order recorded: a task
        recorded twice appears twice, the later one last (no copy is made)."""
        pending = [to_table(self._buffer, self.next_seq)] if self._buffer else []
        tables = [*self._run, *pending]
        return pa.concat_tables(tables) if tables else ENTRY_SCHEMA.empty_table()

    # ------------------------------------------------------------------ writing
    def start(self) -> Ledger:
        """Write segments from a thread of its own until ``close``."""
        self._thread = threading.Thread(target=self._writer, name="nibt-ledger", daemon=True)
        self._thread.start()
        return self

    def _writer(self) -> None:
        unwritten: list[_Segment] = []
        while True:
            seg = self._queue.get()
            if seg is None:
                break
            unwritten.append(seg)
            unwritten = self._write(unwritten)
        self._write(unwritten)

    def _write(self, segments: list[_Segment]) -> list[_Segment]:
        """Write ``segments`` in order; those left after a failed write (tried again with
        the next checkpoint)."""
        if self.conflict:
            return segments
        for i, seg in enumerate(segments):
            name = f"L0-{seg.seq:012d}-{seg.seq:012d}.parquet"
            try:
                put_atomic(self.fs, join(self.dir, name), encode(seg.table, seg.frontier),
                           exclusive=True)
            except FileExistsError:
                self.write_failures += 1
                self.conflict = True
                log.error("ledger segment %s is there already: another run is writing this "
                          "output's ledger (one run an output at a time); this run records "
                          "no more (its parts and its manifest are written all the same)",
                          join(self.dir, name))
                return segments[i:]
            except Exception as e:
                self.write_failures += 1
                log.error("ledger segment %s not written (%s: %s); tried again at the next "
                          "checkpoint", name, type(e).__name__, str(e)[:200])
                return segments[i:]
            self.files.append(_File(0, seg.seq, seg.seq, name))
            self.segments_written += 1
        self._compact()
        return []

    def _compact(self) -> None:
        """Merge the oldest ``fanout`` files of any level that has that many; the merged
        file keeps the frontier of the newest file it holds."""
        level = 0
        while any(f.level >= level for f in self.files):
            same = sorted(f for f in self.files if f.level == level)
            if len(same) < self.fanout:
                level += 1
                continue
            group = same[: self.fanout]
            paths = [join(self.dir, f.name) for f in group]
            try:
                decoded = [_decode(_ok(b)) for b in read_many(self.fs, paths, self.in_flight)]
                out = _File(level + 1, group[0].lo, group[-1].hi,
                            f"L{level + 1}-{group[0].lo:012d}-{group[-1].hi:012d}.parquet")
                newest = max(zip(group, decoded), key=lambda fd: fd[0].hi)[1][1]
                put_atomic(self.fs, join(self.dir, out.name),
                           encode(latest(t for t, _ in decoded), newest), exclusive=True)
            except Exception as e:
                log.warning("ledger: merging %d level-%d files failed (%s: %s); left as they are",
                            len(group), level, type(e).__name__, str(e)[:200])
                return
            self.files = [f for f in self.files if f not in group] + [out]
            for p in paths:  # an input left behind is covered by ``out``: ignored by ``load``
                try:
                    self.fs.rm(p)
                except Exception as e:
                    log.warning("ledger: cannot delete merged file %s: %s", p, e)

    def close(self, frontier: list[str] | None = None, timeout_s: float = 300.0) -> bool:
        """Record the rest with ``frontier`` (empty: the run ended cleanly; the tasks it
        left when stopped otherwise), write it, stop the writer (waiting up to
        ``timeout_s``); False if something could not be written."""
        self.checkpoint(frontier or [])
        if self._thread is None:
            self.start()
        self._queue.put(None)
        assert self._thread is not None
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.error("ledger: writing did not finish within %.0f s", timeout_s)
            return False
        written = self.segments_written == len(self._run)
        if written:  # what the unreadable files held is recorded anew
            for name in self.unreadable:
                try:
                    self.fs.rm(join(self.dir, name))
                except Exception as e:
                    log.warning("ledger: cannot delete unreadable file %s: %s", name, e)
            self.unreadable = []
        return written


def _ok(blob: bytes | BaseException) -> bytes:
    if isinstance(blob, BaseException):
        raise blob
    return blob
