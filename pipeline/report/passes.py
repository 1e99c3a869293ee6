"""The report's passes over an audit's parts, cut into tasks that any worker can run.

A task is a run of consecutive parts (at least ``TASK_PARTS`` parts and
``TASK_ROWS`` rows, so that its result is worth sending, while a small result
still gives each worker several tasks; a worker reads up to ``PREFETCH`` of a
task's parts ahead; about ``TASKS`` tasks a pass for large results, so
that merging them costs the driver little); the cut depends only on the manifest, never on the
number of workers, so partial results merge into the same bytes however many
workers there are. Each pass's work is a small picklable object whose ``run``
turns the task's tables into a partial result; the driver merges the partial
results in task order (``Pass.merge``).

* ``FirstPass``: the aggregates (``aggregate.Aggregator``), the pointers to the
  pairs to review by score and by word attribution, and the maps of the words
  that ``guess_words`` expects to be tracked (``space.WordSpace``, from the
  words and maps the aggregates were made of);
* ``SpacePass``: the maps of the tracked words that the guess missed (it runs
  only then);
* ``LastPass``: the shortcut candidates' co-occurrence counts
  (``space.CoOccurrence``), the rows that may be flagged (``flags.FlagScan``)
  and the rows of the pairs to review and of the suspects' example pairs.

So each part is read twice, in one request each (three times when the guess
missed a word), plus once for the parts of the guess's sample.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import StorageSettings
from pipeline.io.results import (
    PREFETCH,
    PREFETCH_BYTES,
    TOKEN_DICTIONARY,
    prefetched,
    read_ahead,
)
from pipeline.report import aggregate, flags, space
from pipeline.report.aggregate import ROW_COLUMNS, Aggregator, GridConflict
from pipeline.report.flags import FlagList, FlagScan
from pipeline.report.pool import Executor
from pipeline.report.progress import watched
from pipeline.report.regions import Grid
from pipeline.report.settings import ReportSettings
from pipeline.report.space import CoOccurrence, WordSpace, candidate_hits
from pipeline.report.summary import alnum_mask
from pipeline.report.tokens import part_words

#: Consecutive small parts are worked on together, this many rows at least at a time (what
#: a part costs apart from its rows is paid once a chunk); a part of more than twice as many
#: is worked on in slices of as many or a little more (an audit's 65,536-row parts in 8), so
#: that the arrays a chunk's work makes on the way stay as small whatever the part size.
CHUNK_ROWS = 8192
#: A task holds at least this many rows and this many parts (the last one fewer), and
#: larger results are cut into about ``TASKS`` tasks a pass, at most ``MAX_TASK_ROWS`` rows
#: each: the merge of a task's result costs the driver about the same whatever its size.
TASK_ROWS, TASK_PARTS, TASKS, MAX_TASK_ROWS = 50_000, 4, 256, 2_000_000
#: The words the first pass maps are guessed from about this many rows, in at most this
#: many parts (``guess_words``).
SAMPLE_ROWS, SAMPLE_PARTS = 200_000, 128
SAMPLE_COLUMNS = ["status", "tokens"]


@dataclass
class Task:
    """Parts ``first`` .. ``first + len(entries) - 1`` of an audit, and the pass's work."""

    results: str
    storage: StorageSettings
    first: int
    entries: list[dict[str, Any]]
    work: Any
    prefetch: int = PREFETCH
    window_bytes: int | None = PREFETCH_BYTES


def cut(entries: Sequence[dict[str, Any]], rows: int | None = None,
        parts: int | None = None) -> list[tuple[int, int]]:
    """The manifest's parts as ``(start, stop)`` runs of at least ``rows`` rows and ``parts``
    parts (the last run may hold fewer). Default: ``TASK_PARTS`` parts and ``TASK_ROWS``
    rows, or a ``TASKS``-th of all rows (up to ``MAX_TASK_ROWS``) when that is more."""
    total = sum(int(e.get("rows") or 0) for e in entries)
    rows = rows or max(TASK_ROWS, min(MAX_TASK_ROWS, -(-total // TASKS)))
    parts = parts or TASK_PARTS
    out, start, held = [], 0, 0
    for i, e in enumerate(entries):
        held += int(e.get("rows") or 0)
        if held >= rows and i + 1 - start >= parts:
            out.append((start, i + 1))
            start, held = i + 1, 0
    if start < len(entries):
        out.append((start, len(entries)))
    return out


def tasks(results: str, storage: StorageSettings, entries: Sequence[dict[str, Any]],
          work: Any) -> list[Task]:
    """One pass's tasks over ``entries`` (the manifest's parts)."""
    return [Task(results, storage, a, list(entries[a:b]), work) for a, b in cut(entries)]


def run_task(task: Task) -> Any:
    """A task's partial result (what a worker runs)."""
    tables = prefetched(task.results, task.storage, task.entries, task.work.columns,
                        task.prefetch, TOKEN_DICTIONARY, task.window_bytes)
    return task.work.run(enumerate(tables, task.first))


def read_task_ahead(task: Task) -> None:
    """Start reading ``task``'s first parts (``read_ahead``), for ``run_task`` to take: the
    executors call it in the process that will run the task, as soon as it holds it."""
    read_ahead(task.results, task.storage, task.entries, task.work.columns, task.prefetch,
               TOKEN_DICTIONARY, task.window_bytes)


@dataclass
class Chunk:
    """Consecutive parts joined: the table, and each row's part and row in it."""

    table: pa.Table
    part: np.ndarray
    pos: np.ndarray


def _slices(table: pa.Table) -> list[tuple[pa.Table, int]]:
    """A part as slices of ``CHUNK_ROWS`` rows or a little more (itself when it holds fewer
    than twice as many), each with its first row's place in the part."""
    n = table.num_rows
    k = max(1, n // CHUNK_ROWS)
    if k == 1:
        return [(table, 0)]
    starts = [n * i // k for i in range(k + 1)]
    return [(table.slice(a, b - a), a) for a, b in zip(starts, starts[1:])]


def chunks(tables: Iterator[tuple[int, pa.Table]], alone: Any = None) -> Iterator[Chunk]:
    """Consecutive parts joined until they hold ``CHUNK_ROWS`` rows, a large part in slices
    (``_slices``); while ``alone()`` is true, each part or slice by itself (checked as each
    comes)."""
    held: list[tuple[int, pa.Table, int]] = []
    for part, whole in tables:
        for table, start in _slices(whole):
            if alone is not None and alone():
                yield from ([_join(held)] if held else [])
                held = []
                yield _join([(part, table, start)])
                continue
            held.append((part, table, start))
            if sum(t.num_rows for _, t, _ in held) >= CHUNK_ROWS:
                yield _join(held)
                held = []
    if held:
        yield _join(held)


def _join(held: list[tuple[int, pa.Table, int]]) -> Chunk:
    sizes = [t.num_rows for _, t, _ in held]
    table = held[0][1] if len(held) == 1 else pa.concat_tables(
        [t.replace_schema_metadata(None) for _, t, _ in held])
    return Chunk(table, np.repeat(np.array([p for p, _, _ in held], np.int64), sizes),
                 np.concatenate([np.arange(a, a + n, dtype=np.int64)
                                 for (_, _, a), n in zip(held, sizes)]))


def _ok(table: pa.Table) -> np.ndarray:
    return pc.equal(table.column("status"), "ok").fill_null(False).to_numpy(zero_copy_only=False)


@dataclass
class FirstPass:
    """The aggregates, and the maps of the ``guess`` words (``space.WordSpace``, seeded by
    ``settings.seed``, ``examples`` example pairs a word); ``grid`` fixes the patch grid (a
    task aggregated again under the results' grid when its own first grid differed)."""

    settings: ReportSettings
    grid: Grid | None = None
    guess: list[str] = field(default_factory=list)
    examples: int = 1
    columns: list[str] = field(default_factory=lambda: list(aggregate.COLUMNS))

    def run(self, tables: Iterator[tuple[int, pa.Table]]) -> tuple[Aggregator, WordSpace | None]:
        agg = Aggregator(self.settings, self.settings.families(), self.grid, capped=False)
        ws = None
        # part by part until a part sets the grid (its rows and those before it count so)
        for c in chunks(tables, alone=lambda: agg.grid is None):
            seen = agg.add(c.table, c.part, c.pos)
            if seen is not None and self.guess and agg.grid is not None:
                if ws is None:
                    ws = WordSpace(self.guess, agg.grid, self.settings.seed, self.examples)
                ws.add_seen(seen, c.part, c.pos)
        return agg, ws


@dataclass
class SpacePass:
    """The maps of the tracked ``words`` (profiled, with examples) and of ``extra`` words
    (counted for a comparison)."""

    grid: Grid
    seed: int
    examples: int
    words: list[str]
    extra: list[str]
    columns: list[str] = field(default_factory=lambda: list(space.COLUMNS))

    def spaces(self) -> tuple[WordSpace | None, WordSpace | None]:
        """Empty word spaces of this pass (the partial result of no parts)."""
        return (WordSpace(self.words, self.grid, self.seed, self.examples) if self.words
                else None, WordSpace(self.extra, self.grid, self.seed, 1) if self.extra else None)

    def run(self, tables: Iterator[tuple[int, pa.Table]]
            ) -> tuple[WordSpace | None, WordSpace | None]:
        ws, wx = self.spaces()
        for c in chunks(tables):
            for w in (ws, wx):
                if w is not None:
                    w.add(c.table, c.part, c.pos)
        return ws, wx


def _pointer_key(part: Any, row: Any) -> Any:
    """A (part, row) pointer as one int64 (rows of a part stay below 2**32)."""
    return (np.asarray(part, np.int64) << 32) | np.asarray(row, np.int64)


@dataclass
class LastResult:
    """A ``LastPass`` task's partial result."""

    co: CoOccurrence | None
    staged: list[pa.Table]
    rows: dict[tuple[int, int], dict[str, Any]]


@dataclass
class LastPass:
    """Co-occurrence of the shortcut candidates (``cooccur``), the rows that may be flagged
    (``scan``), and the rows at ``pointers`` ((part, row) of example pairs)."""

    grid: Grid | None
    cands: list[str]
    cooccur: bool
    scan: FlagScan | None
    pointers: set[tuple[int, int]]
    columns: list[str] = field(default_factory=lambda: sorted(
        set(flags.COLUMNS) | set(ROW_COLUMNS) | set(space.COLUMNS)))

    def empty(self) -> LastResult:
        return LastResult(CoOccurrence(self.cands, self.grid) if self.cooccur else None, [], {})

    def run(self, tables: Iterator[tuple[int, pa.Table]]) -> LastResult:
        out = self.empty()
        wanted = np.array(sorted(_pointer_key(p, r) for p, r in self.pointers), np.int64)
        for c in chunks(tables):
            table = c.table
            if wanted.size:
                at = np.flatnonzero(np.isin(_pointer_key(c.part, c.pos), wanted))
                if at.size:  # rows of a chunk come by part, then row: in pointer order
                    got = table.select(ROW_COLUMNS).take(pa.array(at))
                    keys = zip(c.part[at].tolist(), c.pos[at].tolist())
                    out.rows.update(zip(keys, got.to_pylist()))
            ok = _ok(table)
            hits = (np.empty(0, np.int64),) * 3
            if self.grid is not None and self.cands and ok.any():
                mi, wi, top = candidate_hits(table, self.grid, self.cands, ok)
                hits = (mi, wi, top)
                if out.co is not None:
                    out.co.add_hits(mi, wi, top)
            if self.scan is not None:
                staged = self.scan.rows(table, c.part, c.pos, ok, hits)
                if staged.num_rows:
                    out.staged.append(staged)
        return out


# ------------------------------------------------------------ the driver's side
def first_pass(ex: Executor, results: str, storage: StorageSettings,
               entries: Sequence[dict[str, Any]], s: ReportSettings,
               guess: Sequence[str] = (), examples: int = 1) -> tuple[Aggregator, WordSpace | None]:
    """The aggregates of every part, and the maps of the ``guess`` words (None when no part
    had a map or nothing was guessed): tasks spread over ``ex``, merged in order."""
    total, ws = Aggregator(s, s.families()), None
    work = FirstPass(s, guess=list(guess), examples=examples)
    ts = tasks(results, storage, entries, work)
    done = ex.map(run_task, ts, read_task_ahead)
    for task, (part, pws) in watched(f"first pass over {results}", ts, done, s.log_every_s,
                                     s.progress):
        try:
            total.merge(part)
        except GridConflict:  # its maps went on its own first grid: again, on the results'
            part, pws = run_task(replace(task, work=replace(work, grid=total.grid)))
            total.merge(part)
        if pws is not None:
            if ws is None:
                ws = WordSpace(work.guess, total.grid, s.seed, examples)
            ws.merge(pws)
    return total, ws


def guess_words(results: str, storage: StorageSettings, entries: Sequence[dict[str, Any]],
                s: ReportSettings) -> list[str]:
    """The words the first pass maps: those the spatial pass would profile, guessed from
    ``SAMPLE_ROWS`` rows of parts spread evenly over the manifest (at most ``SAMPLE_PARTS``
    parts), ranked by their pairs there; twice as many as ``report.shortcut_max_words``.
    When the sample is every part, only words with ``shortcut_min_count`` pairs. A word
    it misses is mapped by a pass of its own (``build.spaces``)."""
    picked = sample_parts(entries)
    counts: dict[str, int] = {}
    for table in prefetched(results, storage, [entries[i] for i in picked], SAMPLE_COLUMNS,
                            PREFETCH, TOKEN_DICTIONARY):
        ok = _ok(table)
        if not ok.any():
            continue
        pw = part_words(table.column("tokens"), None, ok)
        _, word = pw.pairs()
        for w, n in zip(pw.words, np.bincount(word, minlength=len(pw.words)).tolist()):
            counts[w] = counts.get(w, 0) + n
    floor = max(s.shortcut_min_count, 1) if len(picked) == len(entries) else 1
    words = [w for w, n in counts.items() if n >= floor]
    if s.words_skip_punctuation and words:
        words = [w for w, keep in zip(words, alnum_mask(words)) if keep]
    return sorted(words, key=lambda w: (-counts[w], w))[: 2 * max(s.shortcut_max_words, 1)]


def sample_parts(entries: Sequence[dict[str, Any]]) -> list[int]:
    """Indices of parts spread evenly over ``entries`` holding ``SAMPLE_ROWS`` rows (all
    parts when they hold fewer; at most ``SAMPLE_PARTS``), in order."""
    sizes = np.array([int(e.get("rows") or 0) for e in entries], np.int64)
    if sizes.sum() <= SAMPLE_ROWS:
        return list(range(len(entries)))
    mean = max(float(sizes.mean()), 1.0)
    k = int(min(SAMPLE_PARTS, len(entries), max(1, np.ceil(SAMPLE_ROWS / mean))))
    return sorted(set(np.linspace(0, len(entries) - 1, k).round().astype(int).tolist()))


def space_pass(ex: Executor, results: str, storage: StorageSettings,
               entries: Sequence[dict[str, Any]], work: SpacePass, s: ReportSettings
               ) -> tuple[WordSpace | None, WordSpace | None]:
    """The tracked words' maps over every part."""
    ws, wx = work.spaces()
    ts = tasks(results, storage, entries, work)
    done = ex.map(run_task, ts, read_task_ahead)
    for _, (pws, pwx) in watched(f"spatial pass over {results}", ts, done, s.log_every_s,
                                 s.progress):
        for mine, theirs in ((ws, pws), (wx, pwx)):
            if mine is not None:
                mine.merge(theirs)
    return ws, wx


def last_pass(ex: Executor, results: str, storage: StorageSettings,
              entries: Sequence[dict[str, Any]], work: LastPass, s: ReportSettings,
              flag_list: FlagList | None = None) -> LastResult:
    """Co-occurrence counts and example rows over every part; the rows that may be flagged
    go to ``flag_list`` as they come."""
    total = work.empty()
    ts = tasks(results, storage, entries, work)
    done = ex.map(run_task, ts, read_task_ahead)
    for _, part in watched(f"last pass over {results}", ts, done, s.log_every_s, s.progress):
        if total.co is not None:
            total.co.merge(part.co)
        total.rows.update(part.rows)
        for staged in part.staged:
            if flag_list is not None:
                flag_list.add(staged)
    return total
