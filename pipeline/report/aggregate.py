"""The report's first pass: everything that one streaming read of the results can count.

``Aggregator.add(table, part)`` takes one results part at a time and keeps only
running sums, fixed-size histograms, seeded reservoirs and the few pairs to
review, so memory does not grow with the number of rows (the word table grows
with the number of distinct words). Only ``status == "ok"`` rows enter the
statistics; the others are counted with their errors.

Aggregators of consecutive runs of parts ``merge`` into the aggregator of all of
them: counts, histograms, reservoirs, the pairs to review and the error kinds
exactly as one aggregator reading every part would have them, moments to
rounding (``stats.Moments.merge``). So the parts can be read by many workers.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.report.regions import Grid, first_grid, maps_of, positive_maps, region_shares
from pipeline.report.settings import GroupFamily, ReportSettings
from pipeline.report.stats import Moments, Reservoir, part_keys
from pipeline.report.tokens import FamilyMatcher, Matcher, part_words
from pipeline.report.vocabulary import MergedVocabulary, Vocabulary

__all__ = ["Aggregator", "Matcher", "error_kind"]

METRICS = ("img_conf_drop", "img_conf_incr", "txt_conf_drop", "txt_conf_incr")
GROUP_METRICS = ("score", "term_attr", "term_share")
#: Fixed score histogram bins over the cosine range (0.005 wide), so parts add up exactly.
SCORE_EDGES = np.linspace(-1.0, 1.0, 401)
COLUMNS = ["id", "status", "error", "score", "image_attr", "grid_h", "grid_w",
           "image_cls_share", "tokens", "text_attr", "text_eot_share", "caption_truncated",
           *METRICS]
#: What the report shows of a pair to review (read by the last pass, at its pointer).
ROW_COLUMNS = ["id", "source", "row", "status", "score", "image_attr", "grid_h", "grid_w",
               "tokens", "text_attr"]
MAX_ERROR_KINDS = 200


def error_kind(message: str | None) -> str:
    """An error message with its numbers masked, so similar errors count together."""
    return re.sub(r"\d+", "#", str(message or "(no message)"))[:160]


def positions(n: int, part: int | np.ndarray, pos: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Each of a chunk's ``n`` rows' part and row in it (int64), from one part index (its
    rows in order) or from ``part`` and ``pos`` given per row."""
    parts = np.full(n, part, np.int64) if np.ndim(part) == 0 else np.asarray(part, np.int64)
    return parts, np.arange(n, dtype=np.int64) if pos is None else np.asarray(pos, np.int64)


def score_bins(values: np.ndarray) -> np.ndarray:
    """Each value's bin of ``SCORE_EDGES`` (values clipped to [-1, 1], the last bin closed);
    -1 for NaN and infinities."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    out = np.full(v.shape, -1, np.int64)
    b = np.searchsorted(SCORE_EDGES, np.clip(v[ok], -1.0, 1.0), side="right") - 1
    out[ok] = np.minimum(b, SCORE_EDGES.size - 2)
    return out


def score_hist(values: np.ndarray) -> np.ndarray:
    """Counts of finite values per bin of ``SCORE_EDGES``."""
    b = score_bins(values)
    return np.bincount(b[b >= 0], minlength=SCORE_EDGES.size - 1).astype(np.int64)


class TopN:
    """The ``n`` smallest values seen, with (part, row) pointers; ties by position. (The rows
    themselves are read by the last pass, ``passes.LastPass.pointers``.)"""

    def __init__(self, n: int) -> None:
        self.n = n
        self.values, self.parts, self.rows = np.empty(0), np.empty(0, np.int64), np.empty(0, np.int64)

    def add(self, values: np.ndarray, parts: np.ndarray, rows: np.ndarray) -> None:
        """Add values at (``parts``, ``rows``) pointers."""
        ok = np.flatnonzero(np.isfinite(values))
        if ok.size > 4 * self.n > 0:  # the n smallest and their ties, before sorting
            ok = ok[values[ok] <= np.partition(values[ok], self.n - 1)[self.n - 1]]
        ok = ok[np.lexsort((rows[ok], parts[ok], values[ok]))[: self.n]]
        self._keep(values[ok], parts[ok].astype(np.int64), rows[ok].astype(np.int64))

    def _keep(self, values: np.ndarray, parts: np.ndarray, rows: np.ndarray) -> None:
        v = np.concatenate([self.values, values])
        p = np.concatenate([self.parts, parts])
        r = np.concatenate([self.rows, rows])
        keep = np.lexsort((r, p, v))[: self.n]
        self.values, self.parts, self.rows = v[keep], p[keep], r[keep]

    def merge(self, other: TopN) -> None:
        """Add another TopN (of other parts)."""
        self._keep(other.values, other.parts, other.rows)

    def pointers(self) -> list[tuple[int, int, float]]:
        return [(int(p), int(r), float(v)) for p, r, v in zip(self.parts, self.rows, self.values)]


@dataclass
class GroupAcc:
    """One group's running statistics."""

    reservoir_size: int
    moments: dict[str, Moments] = field(default_factory=lambda: {m: Moments() for m in GROUP_METRICS})
    reservoirs: dict[str, Reservoir] = field(default_factory=dict)
    hist: np.ndarray = field(default_factory=lambda: np.zeros(SCORE_EDGES.size - 1, np.int64))
    map_sum: np.ndarray | None = None
    map_n: int = 0
    border: Moments = field(default_factory=Moments)
    corner: Moments = field(default_factory=Moments)
    pairs: int = 0

    def __post_init__(self) -> None:
        self.reservoirs = {m: Reservoir(self.reservoir_size) for m in GROUP_METRICS}

    def add(self, metric: str, values: np.ndarray, keys: np.ndarray) -> None:
        self.moments[metric].add(values)
        self.reservoirs[metric].add(values, keys)

    def merge(self, other: GroupAcc) -> None:
        """Add the same group's statistics over later parts."""
        for m in GROUP_METRICS:
            self.moments[m].merge(other.moments[m])
            self.reservoirs[m].merge(other.reservoirs[m])
        self.hist += other.hist
        if other.map_sum is not None:
            self.map_sum = other.map_sum.copy() if self.map_sum is None \
                else self.map_sum + other.map_sum
        self.map_n += other.map_n
        self.border.merge(other.border)
        self.corner.merge(other.corner)
        self.pairs += other.pairs


@dataclass
class Seen:
    """A chunk's ok rows as ``Aggregator.add`` worked them out: their distinct words and
    their maps, so that the word maps (``space.WordSpace.add_seen``) need no second look."""

    rows: np.ndarray  # the table row of each ok row
    pairs: tuple[np.ndarray, np.ndarray, list[str]]  # (ok row, word) by row; the words
    map_row: np.ndarray  # each ok row's index into the maps below (-1: none)
    norm: np.ndarray  # ``regions.positive_maps``: normalised maps, top cells, usable
    top: np.ndarray
    usable: np.ndarray
    tokens: pa.ChunkedArray | pa.Array  # for the rows left out of ``pairs`` for their values
    left_out: np.ndarray | None  # (mask over the table's rows), whose words still count


class GridConflict(Exception):
    """Parts aggregated under another patch grid than the results' first one."""


class Aggregator:
    """Pass one over the results: overview, words, groups, dataset maps, pairs to review.

    ``grid`` fixes the patch grid (else the first part with a map sets it);
    ``capped=False`` keeps every error kind, not only the first ``MAX_ERROR_KINDS``
    (an aggregator of some of the parts, whose merge applies the cap as one
    aggregator of all of them would), and counts its words in a task's dictionary
    (``vocabulary.Vocabulary``); the report's own aggregator holds the merged words
    compactly (``vocabulary.MergedVocabulary``): they grow with the whole audit.
    """

    def __init__(self, settings: ReportSettings, families: list[GroupFamily],
                 grid: Grid | None = None, capped: bool = True) -> None:
        self.s = settings
        self.families = families
        self.matchers = [FamilyMatcher(f) for f in families]
        self.capped = capped
        self.rows = 0
        self.status: Counter = Counter()
        self.errors: dict[str, list] = {}  # kind -> [count, example ids]
        self.errors_other = 0
        self.score = Moments()
        self.hist = np.zeros(SCORE_EDGES.size - 1, np.int64)
        self.metrics = {m: Moments() for m in METRICS}
        self.cls_share, self.eot_share = Moments(), Moments()
        self.truncated = 0
        self.skipped_tokens = 0
        self.vocab: Vocabulary | MergedVocabulary = MergedVocabulary() if capped else Vocabulary()
        self.groups = [[GroupAcc(settings.bootstrap_reservoir) for _ in f.names] for f in families]
        self.overlap = [0 for _ in families]
        self.grid: Grid | None = grid
        self.grid_mismatch = 0
        self.unplaced = 0  # rows with a map seen before any grid was known
        self.map_sum: np.ndarray | None = None
        self.map_n = 0
        self.pos_sum: np.ndarray | None = None
        self.top_counts: np.ndarray | None = None
        self.space_n = 0
        self.border, self.corner = Moments(), Moments()
        self.lowest = TopN(settings.review_pairs)
        self.negative = TopN(settings.review_pairs)

    def consume(self, tables: Iterable[pa.Table], first: int = 0) -> Aggregator:
        """Add each table in turn (part index = ``first`` + position); nothing is
        concatenated."""
        for part, table in enumerate(tables, first):
            self.add(table, part)
        return self

    def add(self, table: pa.Table, part: int | np.ndarray,
            pos: np.ndarray | None = None) -> Seen | None:
        """Add one results part (``part``: its manifest index), or consecutive parts joined
        (``part`` and ``pos``: each row's part and row in it; review pointers and sample
        keys come from them, so they are the same either way). Returns the words and maps
        of its ok rows (None when it has none), which ``space.WordSpace.add_seen`` maps."""
        n = table.num_rows
        parts, pos = positions(n, part, pos)
        self.rows += n
        status = table.column("status")
        self.status.update(_counts(status))
        ok = pc.equal(status, "ok").fill_null(False).to_numpy(zero_copy_only=False)
        self._errors(table.select(["id", "error"]).filter(pa.array(~ok)))
        rows = np.flatnonzero(ok)  # the ok rows: what the statistics index (nothing is copied)
        if rows.size == 0:
            return None
        score = _floats(table, "score")[rows]
        self.score.add(score)
        self.hist += score_hist(score)
        for m in METRICS:
            self.metrics[m].add(_floats(table, m)[rows])
        self.cls_share.add(_floats(table, "image_cls_share")[rows])
        self.eot_share.add(_floats(table, "text_eot_share")[rows])
        self.truncated += int(table.column("caption_truncated").fill_null(False).to_numpy(
            zero_copy_only=False)[rows].sum())
        keys = part_keys(self.s.seed, "reservoir", parts[rows], pos[rows])
        members, min_attr, pairs, left_out = self._words(table, ok)
        self.lowest.add(score, parts[rows], pos[rows])
        self.negative.add(min_attr, parts[rows], pos[rows])
        map_row, maps, shares, norm = self._maps(table, ok)
        for fi, fam in enumerate(members):
            for gi, (idx, term_attr, term_share) in enumerate(fam):
                self._group(self.groups[fi][gi], idx, term_attr, term_share, score, keys,
                            map_row, maps, shares)
        return Seen(rows, pairs, map_row, *norm, table.column("tokens"), left_out)

    def merge(self, other: Aggregator) -> None:
        """Add the aggregator of the parts that follow this one's (``GridConflict`` when
        ``other`` placed maps on another grid: aggregate its parts again with ``grid``)."""
        if other.grid is not None and self.grid is not None and other.grid != self.grid:
            raise GridConflict(f"{other.grid} after {self.grid}")
        if self.grid is not None:
            self.grid_mismatch += other.grid_mismatch + other.unplaced
        else:
            self.grid, self.grid_mismatch = other.grid, other.grid_mismatch
            self.unplaced += other.unplaced
        self.rows += other.rows
        self.status.update(other.status)
        self._merge_errors(other)
        for mine, theirs in ((self.score, other.score), (self.cls_share, other.cls_share),
                             (self.eot_share, other.eot_share), (self.border, other.border),
                             (self.corner, other.corner),
                             *((self.metrics[m], other.metrics[m]) for m in METRICS)):
            mine.merge(theirs)
        self.hist += other.hist
        self.truncated += other.truncated
        self.skipped_tokens += other.skipped_tokens
        self.vocab.merge(other.vocab)
        for fi in range(len(self.families)):
            self.overlap[fi] += other.overlap[fi]
            for mine_g, theirs_g in zip(self.groups[fi], other.groups[fi]):
                mine_g.merge(theirs_g)
        if other.map_sum is not None:
            if self.map_sum is None:
                self.map_sum, self.pos_sum = np.zeros_like(other.map_sum), np.zeros_like(other.pos_sum)
                self.top_counts = np.zeros_like(other.top_counts)
            self.map_sum += other.map_sum
            self.pos_sum += other.pos_sum
            self.top_counts += other.top_counts
        self.map_n += other.map_n
        self.space_n += other.space_n
        self.lowest.merge(other.lowest)
        self.negative.merge(other.negative)

    def _merge_errors(self, other: Aggregator) -> None:
        """Error kinds of later parts, in their order of first appearance, under the cap."""
        self.errors_other += other.errors_other
        for kind, (count, examples) in other.errors.items():
            entry = self.errors.get(kind)
            if entry is None:
                if self.capped and len(self.errors) >= MAX_ERROR_KINDS:
                    self.errors_other += count
                    continue
                entry = self.errors[kind] = [0, []]
            entry[0] += count
            entry[1] += examples[: max(0, self.s.errors_examples - len(entry[1]))]

    def _errors(self, bad: pa.Table) -> None:
        """Count failed rows by error kind (kinds in order of first appearance), keep examples."""
        if bad.num_rows == 0:
            return
        # a null or empty message is "(no message)" either way (see error_kind)
        enc = pc.dictionary_encode(bad.column("error").combine_chunks().fill_null("(no message)"))
        kinds: dict[str, int] = {}
        msg_kind = np.array([kinds.setdefault(error_kind(m), len(kinds))
                             for m in enc.dictionary.to_pylist()], np.int64)
        kid = msg_kind[enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)]
        names = list(kinds)
        order = np.argsort(kid, kind="stable")
        firsts = np.searchsorted(kid[order], np.arange(len(names)))
        counts = np.bincount(kid, minlength=len(names))
        ids = bad.column("id")
        for k in sorted(range(len(names)), key=lambda k: order[firsts[k]]):
            entry = self.errors.get(names[k])
            if entry is None:
                if self.capped and len(self.errors) >= MAX_ERROR_KINDS:
                    self.errors_other += int(counts[k])
                    continue
                entry = self.errors[names[k]] = [0, []]
            entry[0] += int(counts[k])
            need = self.s.errors_examples - len(entry[1])
            if need > 0:
                take = order[firsts[k] : firsts[k] + min(need, int(counts[k]))]
                entry[1] += [str(x) for x in ids.take(pa.array(take)).to_pylist()]

    def _words(self, table: pa.Table, ok: np.ndarray
               ) -> tuple[list, np.ndarray, tuple[np.ndarray, np.ndarray, list[str]],
                          np.ndarray | None]:
        """Per-word sums; per family and group: (ok rows, term attribution, term share); each
        row's minimum word attribution; each ok row's distinct words (``Seen.pairs``) and the
        rows left out for their values (``Seen.left_out``)."""
        n = int(ok.sum())
        min_attr = np.full(n, np.nan)
        pw = part_words(table.column("tokens"), table.column("text_attr"), ok)
        pw.row = (np.cumsum(ok) - 1)[pw.row]  # as indices among the ok rows
        self.skipped_tokens += pw.skipped
        left_out = pw.left_out if pw.left_out is not None and pw.left_out.any() else None
        members = [[(np.empty(0, np.int64), np.empty(0), np.empty(0)) for _ in f.names]
                   for f in self.families]
        if pw.word.size == 0:
            return members, min_attr, (pw.row, pw.word, pw.words), left_out
        total = np.bincount(pw.row, weights=np.abs(pw.attr), minlength=n)
        safe = np.where(total > 0, total, 1.0)
        share = np.where(total[pw.row] > 0, pw.attr / safe[pw.row], 0.0)
        prow, pword = pw.pairs()
        self.vocab.add(pw.words, pw.word, pw.attr, share, pword)
        starts = pw.starts()
        with_words = pw.row[starts]
        min_attr[with_words] = np.minimum.reduceat(pw.attr, starts)
        for fi, fam in enumerate(self.families):
            rows, groups, attrs, _ = self.matchers[fi].hits(pw)
            g_count = len(fam.groups)
            key, inv = np.unique(rows * g_count + groups, return_inverse=True)
            occ_sum = np.bincount(inv, weights=attrs, minlength=key.size)
            occ_n = np.bincount(inv, minlength=key.size)
            k_row, k_group = key // g_count, key % g_count
            per_row = np.bincount(k_row, minlength=n)
            self.overlap[fi] += int((per_row > 1).sum())
            for gi in range(g_count):
                sel = k_group == gi
                r = k_row[sel]
                members[fi][gi] = (r, occ_sum[sel] / occ_n[sel],
                                   np.where(total[r] > 0, occ_sum[sel] / safe[r], 0.0))
            if fam.rest:
                members[fi][-1] = (with_words[per_row[with_words] == 0], np.empty(0), np.empty(0))
        return members, min_attr, (prow, pword, pw.words), left_out

    def _maps(self, table: pa.Table, ok: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        """Dataset map sums; returns each ok row's index into the part's maps (-1: none), the
        maps, each map's border and corner shares and whether it has mass (for the groups,
        computed once), and ``regions.positive_maps`` of the maps (for the word maps)."""
        if self.grid is None:
            self.grid = first_grid(table, ok)
        map_row = np.full(int(ok.sum()), -1, dtype=np.int64)
        has_map = ok & (pc.list_value_length(table.column("image_attr")).fill_null(0)
                        .to_numpy(zero_copy_only=False) > 0)
        none = (np.empty((0, 0)), np.empty(0, np.int64), np.empty(0, bool))
        if self.grid is None:
            self.unplaced += int(has_map.sum())
            return map_row, np.empty((0, 0)), (), none
        maps, valid = maps_of(table, self.grid, ok)
        self.grid_mismatch += int((has_map & ~valid).sum())
        map_row[valid[ok]] = np.arange(int(valid.sum()))
        if maps.shape[0] == 0:
            return map_row, maps, (), none
        cells = self.grid.cells
        if self.map_sum is None:
            self.map_sum, self.pos_sum = np.zeros(cells), np.zeros(cells)
            self.top_counts = np.zeros(cells, np.int64)
        self.map_sum += maps.sum(axis=0)
        self.map_n += maps.shape[0]
        norm, top, usable = positive_maps(maps)
        self.pos_sum += norm[usable].sum(axis=0)
        self.top_counts += np.bincount(top[usable], minlength=cells)
        self.space_n += int(usable.sum())
        border, corner, has = region_shares(maps, self.grid)
        self.border.add(border[has])
        self.corner.add(corner[has])
        return map_row, maps, (border, corner, has), (norm, top, usable)

    def _group(self, g: GroupAcc, idx: np.ndarray, term_attr: np.ndarray,
               term_share: np.ndarray, score: np.ndarray, keys: np.ndarray,
               map_row: np.ndarray, part_maps: np.ndarray,
               shares: tuple[np.ndarray, ...]) -> None:
        if len(idx) == 0:
            return
        rows = np.asarray(idx, dtype=np.int64)
        g.pairs += rows.size
        g.add("score", score[rows], keys[rows])
        g.hist += score_hist(score[rows])
        if len(term_attr):
            g.add("term_attr", np.asarray(term_attr), keys[rows])
            g.add("term_share", np.asarray(term_share), keys[rows])
        mr = map_row[rows]
        mr = mr[mr >= 0]
        if mr.size and self.grid is not None:
            maps = part_maps[mr]
            g.map_sum = (g.map_sum if g.map_sum is not None else 0.0) + maps.sum(axis=0)
            g.map_n += mr.size
            border, corner, has = (x[mr] for x in shares)
            g.border.add(border[has])
            g.corner.add(corner[has])


def _counts(col: pa.ChunkedArray) -> dict[str, int]:
    vc = pc.value_counts(col.fill_null("(null)"))
    return dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()))


def _floats(t: pa.Table, name: str) -> np.ndarray:
    """A float column as float64 with NaN for nulls."""
    return t.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
