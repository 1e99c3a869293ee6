"""The curation list, ``flags.parquet``: the pairs a team would review or drop.

One row per flagged pair, joinable with the input by ``id`` (or by ``source``
and ``row``), with every reason it is flagged and what each reason rests on:

* ``shortcut``: the caption holds a shortcut suspect and the pair's top patch
  is in that suspect's cell (the pairs that carry the shortcut, not every pair
  with the word);
* ``low_score``: among the lowest ``report.flags_low_score_share`` of the
  attributed pairs by CLIP score (exactly that many, ties by input position);
* ``not_ok``: the row was not attributed (its status and error).

Built in two steps so that no step holds the list in memory. ``FlagScan``, in
the last pass over the parts (on any worker), keeps each part's rows that may
be flagged: every failed row, the pairs of every shortcut candidate that peak
in its cell, and the pairs whose score falls in the score histogram's bins up
to the one holding the k-th lowest (``low_bin``: a threshold from the first
pass, so no part is sorted against the others). ``FlagList`` appends those rows
in input order to a staging file on local disk (``BATCH`` rows a write), keeps
the (score, part, row) of the low-score candidates (24 bytes each) pruned to the
lowest k as they come, and at the end writes ``flags.parquet`` batch by batch,
built by column: the suspects that survived the co-occurrence check, the exact
k lowest with their ranks.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.report.aggregate import SCORE_EDGES, score_bins
from pipeline.report.regions import Grid
from pipeline.report.tokens import ranges

COLUMNS = ["id", "source", "row", "status", "error", "score", "tokens", "image_attr",
           "grid_h", "grid_w"]
SCHEMA = pa.schema([
    ("id", pa.string()), ("source", pa.string()), ("row", pa.int64()), ("status", pa.string()),
    ("score", pa.float64()), ("reasons", pa.list_(pa.string())),
    ("evidence", pa.list_(pa.string())), ("suspect_words", pa.list_(pa.string())),
    ("top_cell", pa.int32()), ("score_rank", pa.int64()), ("error", pa.string()),
])
#: The rows a part contributes to the staging file (``pos``: the row's index in its part).
STAGE = pa.schema([
    ("part", pa.int64()), ("pos", pa.int64()), ("id", pa.string()), ("source", pa.string()),
    ("row", pa.int64()), ("status", pa.string()), ("error", pa.string()),
    ("score", pa.float64()), ("top_cell", pa.int32()), ("cands", pa.list_(pa.int32())),
    ("low", pa.bool_()),
])
REASONS = ("shortcut", "low_score", "not_ok")
BATCH = 65_536


def low_score_pairs(rows_ok: int, share: float) -> int:
    """How many pairs the low-score flag takes: ceil(share x attributed pairs)."""
    return min(rows_ok, math.ceil(share * rows_ok)) if share > 0 else 0


def low_bin(hist: np.ndarray, k: int) -> int:
    """The last score bin whose pairs may be among the ``k`` lowest (-1 for none)."""
    if k <= 0 or hist.sum() == 0:
        return -1
    return int(min(np.searchsorted(np.cumsum(hist), k), SCORE_EDGES.size - 2))


class FlagScan:
    """The rows of one part that may be flagged (``STAGE``), given the shortcut candidates'
    cells (``cells[i]``: candidate i's modal cell) and ``low_bin``."""

    def __init__(self, cells: list[int], grid: Grid | None, low_bin: int) -> None:
        self.cells = np.asarray(cells, np.int64)
        self.grid, self.low_bin = grid, low_bin

    def rows(self, table: pa.Table, parts: np.ndarray, pos: np.ndarray, ok: np.ndarray,
             hits: tuple[np.ndarray, np.ndarray, np.ndarray]) -> pa.Table:
        """The rows of ``table`` (row i: row ``pos[i]`` of part ``parts[i]``) that may be
        flagged. ``ok``: the ok mask; ``hits``: (row, candidate, top cell) of each candidate
        in each ok row with a usable map, by row then candidate."""
        okr = np.flatnonzero(ok)
        mi, wi, top = hits
        mi = (np.cumsum(ok) - 1)[mi]  # as indices among the ok rows
        score = table.column("score").to_numpy(zero_copy_only=False).astype(np.float64)[okr]
        b = score_bins(score)
        low = (b >= 0) & (b <= self.low_bin)
        there = top == self.cells[wi] if wi.size else np.zeros(0, bool)
        mi, wi, top = mi[there], wi[there], top[there]
        keep = low.copy()
        keep[mi] = True
        sel = np.sort(np.concatenate([np.flatnonzero(~ok), okr[keep]]))
        n = sel.size
        if n == 0:
            return STAGE.empty_table()
        stage_of = np.full(table.num_rows, -1, np.int64)
        stage_of[sel] = np.arange(n)
        j = np.full(table.num_rows, -1, np.int64)
        j[okr] = np.arange(okr.size)
        j = j[sel]
        is_ok = j >= 0
        sc, lw = np.full(n, np.nan), np.zeros(n, bool)
        sc[is_ok], lw[is_ok] = score[j[is_ok]], low[j[is_ok]]
        st = stage_of[okr[mi]]
        cell = np.full(n, -1, np.int64)
        cell[st] = top
        offsets = np.r_[0, np.cumsum(np.bincount(st, minlength=n))].astype(np.int32)
        sub = table.select(["id", "source", "row", "status", "error"]).take(pa.array(sel))
        return pa.table({
            "part": pa.array(parts[sel].astype(np.int64)), "pos": pa.array(pos[sel].astype(np.int64)),
            **{c: sub.column(c) for c in ("id", "source", "row", "status", "error")},
            "score": pa.array(sc, mask=~np.isfinite(sc)),
            "top_cell": pa.array(cell.astype(np.int32), mask=cell < 0),
            "cands": pa.ListArray.from_arrays(pa.array(offsets), pa.array(wi.astype(np.int32))),
            "low": pa.array(lw),
        }, schema=STAGE)


@dataclass
class _Decision:
    """What a batch of staged rows is: shortcut (kept suspects ``words[at[i]:at[i+1]]``),
    low-score rank (0: none), failed, flagged at all."""

    short: np.ndarray
    words: np.ndarray
    at: np.ndarray
    rank: np.ndarray
    bad: np.ndarray
    keep: np.ndarray


def _np(a: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return a.to_numpy(zero_copy_only=False)


def _two_slots(has1: np.ndarray, first: np.ndarray, has2: np.ndarray,
               second: np.ndarray) -> pa.ListArray:
    """Per row the list [first[i] if has1[i]] + [second[i] if has2[i]] (strings)."""
    both = np.stack([first, second], axis=1).ravel()
    there = np.stack([has1, has2], axis=1).ravel()
    offsets = np.r_[0, np.cumsum(has1.astype(np.int64) + has2)].astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(both[there], pa.string()))


class FlagList:
    """The staged rows of every part in input order, and the lowest-score candidates."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.dir = tempfile.mkdtemp(prefix="nibt-flags-")
        self.path = os.path.join(self.dir, "stage.parquet")
        self.writer = pq.ParquetWriter(self.path, STAGE)
        self.low = (np.empty(0), np.empty(0, np.int64), np.empty(0, np.int64))
        self.staged = 0
        self.held: list[pa.Table] = []  # staged rows not yet written (under ``BATCH``)

    def add(self, staged: pa.Table) -> None:
        """Append a task's staged rows (parts in order)."""
        if staged.num_rows == 0:
            return
        self.held.append(staged)  # written a batch at a time: one small write a part costs
        self.staged += staged.num_rows
        if sum(t.num_rows for t in self.held) >= BATCH:
            self._flush()
        low = staged.filter(staged.column("low"))
        if low.num_rows:
            s, p, r = self.low
            self.low = (np.r_[s, low.column("score").to_numpy(zero_copy_only=False)],
                        np.r_[p, low.column("part").to_numpy()], np.r_[r, low.column("pos").to_numpy()])
            if self.low[0].size > 2 * self.k + 4096:
                self._prune()

    def _flush(self) -> None:
        if self.held:
            self.writer.write_table(pa.concat_tables(self.held), row_group_size=BATCH)
            self.held = []

    def _prune(self) -> None:
        s, p, r = self.low
        keep = np.lexsort((r, p, s))[: self.k]
        self.low = (s[keep], p[keep], r[keep])

    def summary(self, suspects: list[dict[str, Any]], cand_index: dict[str, int],
                grid: Grid | None, rows_ok: int) -> dict[str, Any]:
        """Settle the list (the lowest k with their ranks, the suspects kept) and count it."""
        self._flush()
        self.writer.close()
        self.writer = None
        self._prune()
        s, p, r = self.low
        self.threshold = float(s[-1]) if s.size else None
        key = p * 2**32 + r
        order = np.argsort(key)
        self.low_keys, self.low_ranks = key[order], order + 1
        self.grid = grid
        self.suspects = [x for x in suspects if grid is not None]
        self.kept = {cand_index[x["word"]]: x for x in self.suspects}
        self.rows_ok = rows_ok
        by, rows = dict.fromkeys(REASONS, 0), 0
        for batch in self._batches():
            d = self._decide(batch)
            by["shortcut"] += int(d.short.sum())
            by["low_score"] += int((d.rank > 0).sum())
            by["not_ok"] += int(d.bad.sum())
            rows += int(d.keep.sum())
        return {"rows": rows, "by_reason": by, "low_score_pairs": self.k,
                "low_score_share": self.k / rows_ok if rows_ok else 0.0,
                "low_score_max": self.threshold, "suspects": [x["word"] for x in self.suspects]}

    def _batches(self) -> Iterator[pa.RecordBatch]:
        if self.staged:
            yield from pq.ParquetFile(self.path).iter_batches(batch_size=BATCH)

    def _decide(self, batch: pa.RecordBatch) -> _Decision:
        """Per staged row: the kept suspects it carries, its low-score rank, whether it failed."""
        n = batch.num_rows
        cands = batch.column("cands")
        flat = _np(pc.list_flatten(cands)).astype(np.int64)
        parent = _np(pc.list_parent_indices(cands)).astype(np.int64)
        mine = np.isin(flat, np.fromiter(self.kept, np.int64, len(self.kept)))
        words, parent = flat[mine], parent[mine]
        count = np.bincount(parent, minlength=n)
        key = batch.column("part").to_numpy() * 2**32 + batch.column("pos").to_numpy()
        rank = np.zeros(n, np.int64)
        if self.low_keys.size:
            at = np.minimum(np.searchsorted(self.low_keys, key), self.low_keys.size - 1)
            hit = self.low_keys[at] == key
            rank[hit] = self.low_ranks[at[hit]]
        bad = ~_np(pc.equal(batch.column("status"), "ok").fill_null(False))
        short = (count > 0) & ~bad
        return _Decision(short, words, np.r_[0, np.cumsum(count)], rank, bad,
                         bad | short | (rank > 0))

    def write(self, sink: Any, metadata: dict[bytes, bytes] | None = None) -> None:
        """``flags.parquet`` into ``sink`` (a path or a writable file), input order, one batch
        of staged rows at a time, built by column."""
        share = self.k / self.rows_ok if self.rows_ok else 0.0
        said = {}
        for c, x in self.kept.items():
            cell = self.grid.name(x["modal_cell"])
            said[c] = (f"caption has shortcut suspect \u201c{x['word']}\u201d, whose pairs "
                       f"peak in cell {cell} ({x['consistency']:.0%} of {x['pairs']}; all "
                       f"pairs {x['baseline']:.0%}); this pair's top patch is there")
        tail = (f" of {self.rows_ok} attributed pairs, among the lowest {self.k} ({share:.1%}; "
                f"at most {self.threshold:.4g})" if self.threshold is not None else "")
        with pq.ParquetWriter(sink, SCHEMA.with_metadata(metadata)) as out:
            for batch in self._batches():
                d = self._decide(batch)
                sel = np.flatnonzero(d.keep)
                if sel.size:
                    out.write_table(self._rows(batch.take(pa.array(sel)), d, sel, said, tail))

    def _rows(self, b: pa.RecordBatch, d: _Decision, sel: np.ndarray, said: dict[int, str],
              tail: str) -> pa.Table:
        """The flagged rows ``sel`` of a staged batch (``b``: those rows) as ``SCHEMA``, built
        by column: each row's reasons and evidence are two slots, the first (``not_ok``, or
        ``shortcut``) and the second (``low_score``), each there or not."""
        bad, short, rank = d.bad[sel], d.short[sel], d.rank[sel]
        low = (rank > 0) & ~bad
        n = sel.size
        score = _np(b.column("score")).astype(np.float64)
        # the kept suspects of each shortcut row, in the order its caption's candidates come
        count = np.where(short, d.at[sel + 1] - d.at[sel], 0)
        words = d.words[ranges(d.at[sel][short], count[short])]
        word_of = {c: x["word"] for c, x in self.kept.items()}
        suspects = pa.ListArray.from_arrays(
            pa.array(np.r_[0, np.cumsum(count)].astype(np.int32)),
            pa.array([word_of[c] for c in words.tolist()], pa.string()))
        first = np.full(n, None, object)  # the first slot's evidence
        error = b.column("error")
        first[bad] = pc.binary_join_element_wise(
            "status ", b.column("status").fill_null(""), ": ",
            pc.if_else(pc.greater(pc.binary_length(error).fill_null(0), 0), error,
                       "no error message"), "").filter(pa.array(bad)).to_numpy(
                           zero_copy_only=False)
        starts = np.r_[0, np.cumsum(count)]
        said_of = np.array([said.get(c) for c in range(max(said, default=-1) + 1)], object)
        one = count == 1  # most shortcut rows carry one suspect
        first[one] = said_of[words[starts[:-1][one]]] if one.any() else []
        many = np.flatnonzero(count > 1)
        first[many] = ["; ".join(said_of[words[starts[i]:starts[i + 1]]].tolist())
                       for i in many.tolist()]
        second = np.full(n, None, object)
        second[low] = pc.binary_join_element_wise(
            "score ", pa.array([f"{x:.4g}" for x in score[low]], pa.string()), ": rank ",
            pa.array(rank[low]).cast(pa.string()), tail, "").to_numpy(zero_copy_only=False)
        has1, has2 = bad | short, low
        reason1 = np.where(bad, "not_ok", "shortcut")
        cell = _np(b.column("top_cell").fill_null(-1)).astype(np.int64)
        return pa.table({
            "id": b.column("id"), "source": b.column("source"), "row": b.column("row"),
            "status": b.column("status"), "score": pa.array(score, mask=bad | ~np.isfinite(score)),
            "reasons": _two_slots(has1, reason1, has2, np.full(n, "low_score", object)),
            "evidence": _two_slots(has1, first, has2, second),
            "suspect_words": suspects,
            "top_cell": pa.array(cell.astype(np.int32), mask=~short | (cell < 0)),
            "score_rank": pa.array(rank, mask=~low), "error": error}, schema=SCHEMA)

    def close(self) -> None:
        """Remove the staging file."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)
