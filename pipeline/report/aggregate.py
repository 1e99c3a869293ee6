"""The report's first pass: everything that one streaming read of the results can count.

``Aggregator.add(table, part)`` takes one results part at a time and keeps only
running sums, fixed-size histograms, seeded reservoirs and the few pointers of
pairs to review, so memory does not grow with the number of rows (the word
table grows with the number of distinct words). Only ``status == "ok"`` rows
enter the statistics; the others are counted with their errors.
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
from pipeline.report.stats import Moments, Reservoir, stable_seed
from pipeline.report.tokens import FamilyMatcher, Matcher, part_words

__all__ = ["Aggregator", "Matcher", "error_kind"]

METRICS = ("img_conf_drop", "img_conf_incr", "txt_conf_drop", "txt_conf_incr")
GROUP_METRICS = ("score", "term_attr", "term_share")
#: Fixed score histogram bins over the cosine range (0.005 wide), so parts add up exactly.
SCORE_EDGES = np.linspace(-1.0, 1.0, 401)
COLUMNS = ["id", "status", "error", "score", "image_attr", "grid_h", "grid_w",
           "image_cls_share", "tokens", "text_attr", "text_eot_share", "caption_truncated",
           *METRICS]
MAX_ERROR_KINDS = 200


def error_kind(message: str | None) -> str:
    """An error message with its numbers masked, so similar errors count together."""
    return re.sub(r"\d+", "#", str(message or "(no message)"))[:160]


def score_hist(values: np.ndarray) -> np.ndarray:
    v = np.clip(values[np.isfinite(values)], -1.0, 1.0)
    return np.histogram(v, bins=SCORE_EDGES)[0].astype(np.int64)


class Vocabulary:
    """Running per-word sums; memory grows with distinct words, not with rows.

    The sums of squares give each word's variance of attribution and share, so a
    comparison of two audits can put an interval on a word's change.
    """

    FIELDS = ("count", "attr_sum", "negative", "share_sum", "pairs", "attr_sq", "share_sq")

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.words: list[str] = []
        self.sums = {f: np.zeros(0) for f in self.FIELDS}

    def ids(self, words: Iterable[str]) -> list[int]:
        out = []
        for w in words:
            i = self.index.get(w)
            if i is None:
                i = self.index[w] = len(self.words)
                self.words.append(w)
            out.append(i)
        return out

    def add(self, ids: np.ndarray, attrs: np.ndarray, shares: np.ndarray,
            pair_ids: np.ndarray) -> None:
        """Add word uses (vocabulary ids, attributions, shares) and each pair's distinct ids."""
        n = len(self.words)
        a = np.asarray(attrs, dtype=np.float64)
        sh = np.asarray(shares, dtype=np.float64)
        i = np.asarray(ids, dtype=np.int64)
        add = {"count": np.bincount(i, minlength=n),
               "attr_sum": np.bincount(i, weights=a, minlength=n),
               "negative": np.bincount(i, weights=(a < 0).astype(np.float64), minlength=n),
               "share_sum": np.bincount(i, weights=sh, minlength=n),
               "pairs": np.bincount(np.asarray(pair_ids, dtype=np.int64), minlength=n),
               "attr_sq": np.bincount(i, weights=a * a, minlength=n),
               "share_sq": np.bincount(i, weights=sh * sh, minlength=n)}
        for f, v in add.items():
            old = self.sums[f]
            self.sums[f] = np.concatenate([old, np.zeros(n - old.size)]) + v


class TopN:
    """The ``n`` smallest values seen, with (part, row) pointers; ties by position."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.values, self.parts, self.rows = np.empty(0), np.empty(0, np.int64), np.empty(0, np.int64)

    def add(self, values: np.ndarray, part: int, rows: np.ndarray) -> None:
        ok = np.isfinite(values)
        v = np.concatenate([self.values, values[ok]])
        p = np.concatenate([self.parts, np.full(int(ok.sum()), part, dtype=np.int64)])
        r = np.concatenate([self.rows, rows[ok].astype(np.int64)])
        keep = np.lexsort((r, p, v))[: self.n]
        self.values, self.parts, self.rows = v[keep], p[keep], r[keep]

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


class Aggregator:
    """Pass one over the results: overview, words, groups, dataset maps, review pointers."""

    def __init__(self, settings: ReportSettings, families: list[GroupFamily]) -> None:
        self.s = settings
        self.families = families
        self.matchers = [FamilyMatcher(f) for f in families]
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
        self.vocab = Vocabulary()
        self.groups = [[GroupAcc(settings.bootstrap_reservoir) for _ in f.names] for f in families]
        self.overlap = [0 for _ in families]
        self.grid: Grid | None = None
        self.grid_mismatch = 0
        self.map_sum: np.ndarray | None = None
        self.map_n = 0
        self.pos_sum: np.ndarray | None = None
        self.top_counts: np.ndarray | None = None
        self.space_n = 0
        self.border, self.corner = Moments(), Moments()
        self.lowest = TopN(settings.review_pairs)
        self.negative = TopN(settings.review_pairs)

    def consume(self, tables: Iterable[pa.Table]) -> Aggregator:
        """Add each table in turn (part index = position); nothing is concatenated."""
        for part, table in enumerate(tables):
            self.add(table, part)
        return self

    def add(self, table: pa.Table, part: int) -> None:
        """Add one results part; ``part`` (its manifest index) goes into review pointers."""
        self.rows += table.num_rows
        status = table.column("status")
        self.status.update(_counts(status))
        ok = pc.equal(status, "ok").fill_null(False).to_numpy(zero_copy_only=False)
        self._errors(table.filter(pa.array(~ok)))
        rows = np.flatnonzero(ok)
        t = table.filter(pa.array(ok))
        if t.num_rows == 0:
            return
        score = _floats(t, "score")
        self.score.add(score)
        self.hist += score_hist(score)
        for m in METRICS:
            self.metrics[m].add(_floats(t, m))
        self.cls_share.add(_floats(t, "image_cls_share"))
        self.eot_share.add(_floats(t, "text_eot_share"))
        self.truncated += int(pc.sum(t.column("caption_truncated").fill_null(False)).as_py() or 0)
        keys = np.random.default_rng(stable_seed(self.s.seed, "reservoir", part)).random(t.num_rows)
        members, min_attr = self._words(t)
        self.lowest.add(score, part, rows)
        self.negative.add(min_attr, part, rows)
        map_row, maps = self._maps(t)
        for fi, fam in enumerate(members):
            for gi, (idx, term_attr, term_share) in enumerate(fam):
                self._group(self.groups[fi][gi], idx, term_attr, term_share, score, keys,
                            map_row, maps)

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
                if len(self.errors) >= MAX_ERROR_KINDS:
                    self.errors_other += int(counts[k])
                    continue
                entry = self.errors[names[k]] = [0, []]
            entry[0] += int(counts[k])
            need = self.s.errors_examples - len(entry[1])
            if need > 0:
                take = order[firsts[k] : firsts[k] + min(need, int(counts[k]))]
                entry[1] += [str(x) for x in ids.take(pa.array(take)).to_pylist()]

    def _words(self, t: pa.Table) -> tuple[list, np.ndarray]:
        """Per-word sums; per family and group: (rows, term attribution, term share)."""
        n = t.num_rows
        min_attr = np.full(n, np.nan)
        pw = part_words(t.column("tokens"), t.column("text_attr"))
        self.skipped_tokens += pw.skipped
        members = [[(np.empty(0, np.int64), np.empty(0), np.empty(0)) for _ in f.names]
                   for f in self.families]
        if pw.word.size == 0:
            return members, min_attr
        ids = np.asarray(self.vocab.ids(pw.words), np.int64)[pw.word]
        total = np.bincount(pw.row, weights=np.abs(pw.attr), minlength=n)
        safe = np.where(total > 0, total, 1.0)
        share = np.where(total[pw.row] > 0, pw.attr / safe[pw.row], 0.0)
        pairs = np.unique(pw.row * (len(self.vocab.words) + 1) + ids) % (len(self.vocab.words) + 1)
        self.vocab.add(ids, pw.attr, share, pairs)
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
        return members, min_attr

    def _maps(self, t: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Dataset map sums; returns each ok row's index into the part's maps (-1: none), maps."""
        if self.grid is None:
            self.grid = first_grid(t)
        map_row = np.full(t.num_rows, -1, dtype=np.int64)
        if self.grid is None:
            return map_row, np.empty((0, 0))
        maps, valid = maps_of(t, self.grid)
        self.grid_mismatch += int(
            (~valid & (pc.list_value_length(t.column("image_attr")).fill_null(0)
                       .to_numpy(zero_copy_only=False) > 0)).sum())
        map_row[valid] = np.arange(int(valid.sum()))
        if maps.shape[0] == 0:
            return map_row, maps
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
        return map_row, maps

    def _group(self, g: GroupAcc, idx: np.ndarray, term_attr: np.ndarray,
               term_share: np.ndarray, score: np.ndarray, keys: np.ndarray,
               map_row: np.ndarray, part_maps: np.ndarray) -> None:
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
            border, corner, has = region_shares(maps, self.grid)
            g.border.add(border[has])
            g.corner.add(corner[has])


def _counts(col: pa.ChunkedArray) -> dict[str, int]:
    vc = pc.value_counts(col.fill_null("(null)"))
    return dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()))


def _floats(t: pa.Table, name: str) -> np.ndarray:
    """A float column as float64 with NaN for nulls."""
    return t.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
