"""The report's second pass: where each frequent word's pairs put their image attribution.

A pair's image map explains the whole caption, so a word's spatial profile is
taken over the pairs whose caption contains it: the mean of their maps'
positive mass (each map normalised to sum 1) and a count of the cell holding
each map's top patch. A *shortcut suspect* is a word whose pairs keep their
top patch in one cell whatever the image shows:

    consistency = share of the word's pairs whose top patch is in its modal cell
    baseline    = share of all pairs whose top patch is in that same cell
    score       = Wilson lower 95% bound of consistency - baseline

The lower bound keeps a rare word from ranking on luck; subtracting the
baseline keeps a model-wide hot spot (a cell that is on top for every caption)
from making every word a suspect. Memory: ``words x cells`` for the tracked
words (the most frequent, at most ``report.shortcut_max_words``). A word that
only inherits a suspect's cell by sharing its captions is set aside by
``CoOccurrence`` (one more pass, over the few candidates).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.report.aggregate import Seen, positions
from pipeline.report.regions import Grid, maps_of, positive_maps
from pipeline.report.stats import kl_divergence, pair_keys, part_keys, wilson_lower, word_hashes
from pipeline.report.tokens import (
    lookup,
    may_hold,
    one_array,
    part_words,
    pieces_of,
    with_pieces,
    word_hits,
)

COLUMNS = ["status", "tokens", "image_attr", "grid_h", "grid_w"]
EXAMPLE_FIELDS = (("word", np.int64), ("key", np.float64), ("part", np.int64),
                  ("row", np.int64), ("top", np.int64))
#: Example candidates wait until there are this many (or as many as are held) to be sorted in.
PENDING = 65_536
#: The key of a word profile (``WordSpace.profiles``) holding the word's row in its space;
#: used while building the report, never written to report.json.
WORD_ID = "word_id"


def usable_maps(table: pa.Table, grid: Grid, rows: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows (of the mask ``rows``) with a usable map on ``grid``: a mask, and each
    table row's index into the returned normalised maps and top cells (-1: none; the maps
    that are not usable stay in those arrays, unpointed to: dropping them would copy the
    rest)."""
    maps, valid = maps_of(table, grid, rows)
    norm, top, usable = positive_maps(maps, inplace=True)  # maps_of's maps are a copy
    at = np.full(table.num_rows, -1, np.int64)
    kept = np.flatnonzero(usable)
    keep = np.flatnonzero(valid)[kept]
    at[keep] = kept
    mask = np.zeros(table.num_rows, bool)
    mask[keep] = True
    return mask, at, (norm, top)


def candidate_hits(table: pa.Table, grid: Grid, words: list[str],
                   rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(row, i, top cell)`` for each distinct ``words[i]`` in each row (of the mask
    ``rows``) whose map is usable on ``grid``; by row, then ``i``."""
    tokens = one_array(table.column("tokens"))
    mask = rows & with_pieces(tokens)
    if not words or not mask.any():
        return (np.empty(0, np.int64),) * 3
    pieces = pieces_of(tokens, mask)  # flattened once for both steps below
    rows = mask & may_hold(tokens, words, pieces)  # the others cannot hold one
    mask, at, (_, top) = usable_maps(table, grid, rows)
    mi, wi = word_hits(tokens, pa.array(words, pa.string()), mask, pieces)
    return mi, wi, top[at[mi]]


class WordSpace:
    """Per tracked word: summed normalised maps, top-patch cell counts, example pointers.

    Filled from a table (``add``: the spatial pass finds the words and maps itself) or
    from what ``aggregate.Aggregator.add`` already worked out of it (``add_seen``: the
    first pass maps the words it was told to guess, with no second read).
    """

    def __init__(self, words: list[str], grid: Grid, seed: int = 0, examples: int = 12) -> None:
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.texts = pa.array(self.words, pa.string())  # what ``word_hits`` looks up
        self.hashes = word_hashes(self.words)  # what a pair's example key mixes in
        self.grid = grid
        self.seed = seed
        self.examples = max(1, examples)
        n, cells = len(self.words), grid.cells
        self.pos_sum = np.zeros((n, cells))
        self.top = np.zeros((n, cells), np.int64)
        self.n = np.zeros(n, np.int64)
        # example pointers: a seeded sample per word (the pairs of smallest key, a key
        # being ``stats.pair_keys`` of the pair alone), kept sorted by word then key;
        # candidates wait in ``_pending`` until there are enough to sort
        self._ex = {k: np.empty(0, t) for k, t in EXAMPLE_FIELDS}
        self._pending: list[dict[str, np.ndarray]] = []
        self._pending_n = 0

    def consume(self, tables: Iterable[pa.Table], first: int = 0) -> WordSpace:
        for part, table in enumerate(tables, first):
            self.add(table, part)
        return self

    def add(self, table: pa.Table, part: int | np.ndarray, pos: np.ndarray | None = None) -> None:
        """Add one part (``part``: its manifest index), or consecutive parts joined (each row's
        ``part`` and ``pos`` in it)."""
        n = table.num_rows
        parts, pos = positions(n, part, pos)
        ok = pc.equal(table.column("status"), "ok").fill_null(False).to_numpy(zero_copy_only=False)
        if not ok.any():
            return
        mask, at, (norm, top) = usable_maps(table, self.grid, ok)
        mi, wi = word_hits(table.column("tokens"), self.texts, mask)
        self._add_hits(mi, wi, np.arange(len(self.words)), at[mi], norm, top, parts, pos)

    def add_seen(self, seen: Seen, part: int | np.ndarray, pos: np.ndarray | None = None) -> None:
        """Add a chunk from what ``Aggregator.add`` returned for it (``seen``): the same sums
        and examples that ``add`` would make of the chunk."""
        if seen.norm.shape[0] == 0 or not self.words:
            return
        n = len(seen.tokens)
        parts, pos = positions(n, part, pos)
        at = np.full(n, -1, np.int64)  # each table row's usable map
        mapped = seen.map_row >= 0
        there = np.flatnonzero(mapped)[seen.usable[seen.map_row[mapped]]]
        at[seen.rows[there]] = seen.map_row[there]
        row, word, words = seen.pairs
        row = seen.rows[row]
        if seen.left_out is not None:  # their values did not fit: their words count here
            lw = part_words(seen.tokens, None, seen.left_out & (at >= 0))
            lrow, lword = lw.pairs()
            index = {w: i for i, w in enumerate(words)}
            words = list(words)
            for w in lw.words:
                if index.setdefault(w, len(words)) == len(words):
                    words.append(w)
            order = np.argsort(np.r_[row, lrow], kind="stable")
            row = np.r_[row, lrow][order]
            word = np.r_[word, np.array([index[w] for w in lw.words], np.int64)[lword]][order]
        keep = at[row] >= 0
        row, word = row[keep], word[keep]
        ids = lookup(self.index, words)
        here = ids[word] >= 0
        self._add_hits(row[here], word[here], ids, at[row[here]], seen.norm, seen.top, parts,
                       pos)

    def _add_hits(self, ri: np.ndarray, local: np.ndarray, ids: np.ndarray, mi: np.ndarray,
                  norm: np.ndarray, top: np.ndarray, parts: np.ndarray, pos: np.ndarray
                  ) -> None:
        """Add (table row ``ri``, word) pairs by row: the word as ``local``, an index into
        ``ids`` (this space's word ids), the pair's map ``mi`` (into ``norm`` and ``top``)."""
        if ri.size == 0:
            return
        cells, size = self.grid.cells, ids.size
        # each word's summed maps, one cell at a time (a scatter-add of whole maps costs more)
        sums = np.empty((size, cells))
        by_cell = np.ascontiguousarray(norm.T)
        for c in range(cells):
            sums[:, c] = np.bincount(local, weights=by_cell[c][mi], minlength=size)
        counts = np.bincount(local, minlength=size)
        used = np.flatnonzero(counts)
        self.pos_sum[ids[used]] += sums[used]
        self.n[ids[used]] += counts[used]
        tops = np.bincount(local * cells + top[mi], minlength=size * cells).reshape(size, cells)
        self.top[ids[used]] += tops[used]
        wi = ids[local]
        keys = pair_keys(part_keys(self.seed, "examples", parts, pos)[ri], self.hashes[wi])
        self._keep_examples(wi, keys, parts[ri], pos[ri], top[mi])

    @property
    def ex(self) -> dict[str, np.ndarray]:
        """The example pointers: word, key, part, row, top cell; by word, then key."""
        self._compact()
        return self._ex

    def _keep_examples(self, words: np.ndarray, keys: np.ndarray, part: int | np.ndarray,
                       rows: np.ndarray, top: np.ndarray) -> None:
        """Keep each word's ``examples`` smallest keys among those held and these."""
        bound = np.full(len(self.words), np.inf)  # a key a new pair must beat
        held = self._ex["word"]
        if held.size:
            count = np.bincount(held, minlength=len(self.words))
            full = np.flatnonzero(count >= self.examples)
            bound[full] = self._ex["key"][np.r_[0, np.cumsum(count)[:-1]][full] + self.examples - 1]
        cand = keys < bound[words]
        if not cand.any():
            return
        self._pending.append({
            "word": words[cand], "key": keys[cand],
            "part": np.broadcast_to(np.asarray(part, np.int64), words.shape)[cand],
            "row": rows[cand].astype(np.int64), "top": top[cand].astype(np.int64)})
        self._pending_n += int(cand.sum())
        if self._pending_n > max(self._ex["word"].size, PENDING):
            self._compact()

    def _compact(self) -> None:
        """Sort the waiting candidates in: each word's ``examples`` smallest keys stay."""
        if not self._pending:
            return
        cat = {k: np.concatenate([self._ex[k], *(p[k] for p in self._pending)])
               for k in self._ex}
        self._pending, self._pending_n = [], 0
        w = cat["word"]
        shift = 63 - max(int(len(self.words)).bit_length(), 1)
        order = None
        if shift >= 40:  # by word, then key, in one sort of both packed into an integer
            packed = (w << shift) | (cat["key"] * 2.0**shift).astype(np.int64)
            order = np.argsort(packed)
            if (np.diff(packed[order]) == 0).any():  # keys apart by less than it holds
                order = None
        if order is None:
            order = np.lexsort((cat["key"], w))
        w = w[order]
        start = np.flatnonzero(np.r_[True, w[1:] != w[:-1]])
        rank = np.arange(w.size) - np.repeat(start, np.diff(np.r_[start, w.size]))
        keep = order[rank < self.examples]
        self._ex = {k: v[keep] for k, v in cat.items()}

    def merge(self, other: WordSpace) -> None:
        """Add the same words' maps over other parts (examples: the smallest keys of both)."""
        self.pos_sum += other.pos_sum
        self.top += other.top
        self.n += other.n
        ex = other.ex
        self._keep_examples(ex["word"], ex["key"], ex["part"], ex["row"], ex["top"])

    @classmethod
    def gather(cls, words: list[str], spaces: Iterable[WordSpace | None],
               examples: int) -> WordSpace | None:
        """A space of ``words``, each taken from the first of ``spaces`` that has it (all of
        the same grid and seed), keeping its ``examples`` smallest-key examples; None when
        ``words`` is empty."""
        spaces = [w for w in spaces if w is not None]
        if not words:
            return None
        out = cls(words, spaces[0].grid, spaces[0].seed, examples)
        left = np.ones(len(words), bool)
        for sp in spaces:
            mine = lookup(sp.index, words)
            take = np.flatnonzero(left & (mine >= 0))
            left[take] = False
            src = mine[take]
            out.pos_sum[take], out.top[take], out.n[take] = sp.pos_sum[src], sp.top[src], sp.n[src]
            ex = sp.ex
            new_id = np.full(len(sp.words), -1, np.int64)
            new_id[src] = take
            sel = new_id[ex["word"]] >= 0
            out._keep_examples(new_id[ex["word"][sel]], ex["key"][sel], ex["part"][sel],
                               ex["row"][sel], ex["top"][sel])
        if left.any():
            raise ValueError(f"no space holds {[w for w, x in zip(words, left) if x][:5]}")
        return out

    def __getstate__(self) -> dict:
        """Pickled (a task's result) without the words no pair touched, examples sorted in."""
        self._compact()
        state = {k: v for k, v in self.__dict__.items()
                 if k not in ("pos_sum", "top", "texts", "hashes")}
        used = np.flatnonzero(self.n)
        state["_used"] = (used, self.pos_sum[used], self.top[used])
        return state

    def __setstate__(self, state: dict) -> None:
        used, pos_sum, top = state.pop("_used")
        self.__dict__.update(state)
        self.texts = pa.array(self.words, pa.string())
        self.hashes = word_hashes(self.words)
        self.pos_sum = np.zeros((len(self.words), self.grid.cells))
        self.top = np.zeros((len(self.words), self.grid.cells), np.int64)
        self.pos_sum[used], self.top[used] = pos_sum, top

    def profiles(self, dataset_pos_mean: np.ndarray, dataset_top_share: np.ndarray,
                 min_count: int) -> list[dict]:
        """One row per tracked word with at least ``min_count`` pairs, best suspect first;
        ``WORD_ID`` holds the word's row here (for ``mean_map``, ``top_share`` and
        ``example_pointers``)."""
        out = []
        ref_max = float(dataset_pos_mean.max()) if dataset_pos_mean.size else 0.0
        names = [self.grid.name(c) for c in range(self.grid.cells)]
        wids = np.flatnonzero(self.n >= max(min_count, 1))
        modal = np.argmax(self.top[wids], axis=1) if wids.size else wids
        hits = self.top[wids, modal]
        lower = wilson_lower(hits, self.n[wids])
        for wid, cell, hit, low in zip(wids.tolist(), modal.tolist(), hits.tolist(),
                                       lower.tolist()):
            n = int(self.n[wid])
            mean_map = self.pos_sum[wid] / n
            baseline = float(dataset_top_share[cell])
            out.append({
                "word": self.words[wid],
                "pairs": n,
                "modal_cell": cell,
                "modal_cell_name": names[cell],
                "consistency": hit / n,
                "baseline": baseline,
                "score": low - baseline,
                "concentration": float(mean_map.max()) / ref_max if ref_max > 0 else float("nan"),
                "kl": kl_divergence(mean_map, dataset_pos_mean),
                WORD_ID: wid,
            })
        out.sort(key=lambda r: (-r["score"], -r["consistency"], r["word"]))
        return out

    def mean_map(self, wid: int | np.ndarray) -> np.ndarray:
        """The word's (or each word's, for an array of ids) mean normalised map."""
        return self.pos_sum[wid] / np.maximum(self.n[wid], 1)[..., None]

    def top_share(self, wid: int | np.ndarray) -> np.ndarray:
        """The share of the word's (or each word's) pairs whose top patch is in each cell."""
        return self.top[wid] / np.maximum(self.n[wid], 1)[..., None]

    def example_pointers(self, wid: int, modal: int, k: int) -> list[tuple[int, int]]:
        """Up to ``k`` sampled pairs of the word, those peaking in ``modal`` first."""
        sel = np.flatnonzero(self.ex["word"] == wid)
        first = sorted(sel, key=lambda i: (self.ex["top"][i] != modal, self.ex["key"][i]))
        return [(int(self.ex["part"][i]), int(self.ex["row"][i])) for i in first[:k]]


class CoOccurrence:
    """Top-patch counts of candidate suspects, by which other candidates share the caption.

    A word that mostly appears with a shortcut word inherits its corner ("a
    vintage photo of": "photo" peaks where "vintage" does). ``resolve`` walks
    the candidates in rank order and keeps a word only if its pairs without any
    word already kept still peak in one cell; the others are listed as
    explained by the kept words they appear with. Memory: one cell count per
    (word, set of co-occurring candidates) seen.
    """

    def __init__(self, words: list[str], grid: Grid) -> None:
        self.words = list(words)
        self.grid = grid
        self.counts: dict[tuple[int, frozenset[int]], np.ndarray] = {}
        self._sets: dict[tuple[int, ...], frozenset[int]] = {}  # bit masks seen, as sets

    def consume(self, tables: Iterable[pa.Table]) -> CoOccurrence:
        for table in tables:
            self.add(table)
        return self

    def add(self, table: pa.Table) -> None:
        ok = pc.equal(table.column("status"), "ok").fill_null(False).to_numpy(zero_copy_only=False)
        if ok.any():
            self.add_hits(*candidate_hits(table, self.grid, self.words, ok))

    def add_hits(self, mi: np.ndarray, wi: np.ndarray, cell: np.ndarray) -> None:
        """Count (row, candidate, top cell) triples (``candidate_hits``)."""
        if mi.size == 0:
            return
        # each (map, candidate) pair keyed by the set of the other candidates in its caption,
        # as bit masks (62 candidates a limb)
        rows, inv = np.unique(mi, return_inverse=True)
        limbs = -(-len(self.words) // 62)
        masks = np.zeros((rows.size, limbs), np.int64)
        np.bitwise_or.at(masks, (inv, wi // 62), np.left_shift(1, wi % 62).astype(np.int64))
        others = masks[inv].copy()
        others[np.arange(wi.size), wi // 62] &= ~np.left_shift(1, wi % 62).astype(np.int64)
        cells, n = self.grid.cells, len(self.words)
        if (n * cells) << n < 2**62:  # (candidate, others, cell) as one integer
            code, counts = np.unique((wi * (1 << n) + others[:, 0]) * cells + cell,
                                     return_counts=True)
            keys = np.column_stack([code // cells >> n, code // cells & ((1 << n) - 1),
                                    code % cells])
        else:
            keys, counts = np.unique(np.column_stack([wi, others, cell]), axis=0,
                                     return_counts=True)
        for key, c in zip(keys.tolist(), counts.tolist()):
            i, bits, cl = key[0], tuple(key[1:-1]), key[-1]
            present = self._sets.get(bits)
            if present is None:
                present = self._sets[bits] = frozenset(
                    62 * li + b for li, v in enumerate(bits) for b in range(62) if v >> b & 1)
            arr = self.counts.setdefault((i, present), np.zeros(cells, np.int64))
            arr[cl] += c

    def merge(self, other: CoOccurrence) -> None:
        """Add the same candidates' counts over other parts."""
        for key, c in other.counts.items():
            mine = self.counts.get(key)
            if mine is None:
                self.counts[key] = c.copy()
            else:
                mine += c

    def resolve(self, top_share: np.ndarray, min_count: int,
                min_score: float) -> tuple[list[dict], list[dict]]:
        """(kept: index and stats without earlier kept words; explained: index and by whom)."""
        kept: list[int] = []
        out_kept, out_explained = [], []
        for i in range(len(self.words)):
            alone = np.zeros(self.grid.cells, np.int64)
            by: set[int] = set()
            for (j, others), c in self.counts.items():
                if j != i:
                    continue
                shared = others.intersection(kept)
                if shared:
                    by |= shared
                else:
                    alone += c
            n = int(alone.sum())
            modal = int(np.argmax(alone))
            score = float(wilson_lower(np.array([alone[modal]]), np.array([n]))[0]
                          - top_share[modal]) if n else float("nan")
            if n >= max(min_count, 1) and score >= min_score:
                kept.append(i)
                out_kept.append({"index": i, "alone_pairs": n, "alone_score": score})
            else:
                out_explained.append({"index": i, "alone_pairs": n,
                                      "alone_score": score if n else None,
                                      "by": sorted(self.words[j] for j in by)})
        return out_kept, out_explained
