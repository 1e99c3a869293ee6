"""Caption words of a whole results part at once: BPE pieces merged, group terms found.

``part_words`` does what ``pipeline.engine.words.merge_words(..., lower=True)`` does
for every row of a part, with pyarrow / numpy over the flattened pieces: the
Python work is per *distinct* piece and per distinct word of the part, not per
row. ``FamilyMatcher`` finds a group family's terms the way ``Matcher`` does
(longest term first at each position, matches do not overlap): single-word
terms by array lookups, and only the rare captions where a multi-word term
actually matches go through ``Matcher`` one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.engine.words import END_OF_WORD, SPECIAL
from pipeline.report.settings import GroupFamily


@dataclass
class PartWords:
    """The words of a part's captions, in row and caption order."""

    row: np.ndarray  # int64: the row (index into the part's table) of each word
    word: np.ndarray  # int64: index into ``words``
    attr: np.ndarray  # float64: summed attribution of the word's pieces (0 without values)
    words: list[str]  # the part's distinct case-folded words, in order of first use
    skipped: int = 0  # rows left out: no tokens, or values missing / of another length
    left_out: np.ndarray | None = None  # mask of the rows left out for their values

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Each row's distinct words: ``(row, word)`` by row, then word index."""
        n = max(len(self.words), 1)
        both = unique_ints(self.row * n + self.word)
        return both // n, both % n

    def starts(self) -> np.ndarray:
        """Index of each row's first word (rows in ascending order, only rows with words)."""
        return np.flatnonzero(np.r_[True, self.row[1:] != self.row[:-1]]) if self.row.size \
            else np.empty(0, np.int64)


def _np(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False)


def one_array(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def lookup(index: dict[str, int], words: list[str]) -> np.ndarray:
    """``index[w]`` of each of ``words`` (-1 for those it lacks), in one C loop."""
    return np.fromiter(map(index.get, words, repeat(-1)), np.int64, len(words))


def unique_ints(x: np.ndarray) -> np.ndarray:
    """``np.unique`` of integers by a sort (several times faster than its hashing here: the
    keys come nearly sorted)."""
    s = np.sort(x)
    return s[np.r_[True, s[1:] != s[:-1]]] if s.size else s


def _pieces(tokens: pa.Array, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """The pieces of the rows in ``mask``: each piece's row and dictionary index, and the
    dictionary (null pieces are "")."""
    flat = pc.list_flatten(tokens)
    row = _np(pc.list_parent_indices(tokens))
    keep = mask[row]
    if not pa.types.is_dictionary(flat.type):
        flat = pc.dictionary_encode(flat.fill_null(""))
    elif flat.null_count:
        flat = pc.dictionary_encode(pc.cast(flat, pa.string()).fill_null(""))
    return row[keep], _np(flat.indices).astype(np.int64)[keep], flat.dictionary


@dataclass
class Pieces:
    """The word pieces of some rows, flattened once: each piece's row and dictionary index,
    and of each distinct piece whether it is special, whether it ends a word, and its text
    without the end mark (``_marks``). What ``may_hold`` and ``word_hits`` can share."""

    row: np.ndarray
    piece: np.ndarray
    special: np.ndarray
    end: np.ndarray
    stripped: pa.Array

    def of(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The row and dictionary index of the pieces of the rows in ``mask`` (rows these
        pieces hold)."""
        keep = mask[self.row]
        return self.row[keep], self.piece[keep]


def pieces_of(tokens: pa.Array, mask: np.ndarray) -> Pieces:
    """The pieces of the rows in ``mask`` of ``tokens`` (one array: ``one_array``)."""
    row, piece, uniq = _pieces(tokens, mask)
    return Pieces(row, piece, *_marks(uniq))


def _folded(words: pa.Array) -> pa.Array:
    """``str.casefold`` of each word: ASCII lower case for the ASCII ones (the same thing),
    Python's for the others."""
    low = pc.ascii_lower(words)
    other = np.flatnonzero(~_np(pc.string_is_ascii(words)))
    if other.size == 0:
        return low
    out = low.to_pylist()
    for i in other:
        out[i] = out[i].casefold()
    return pa.array(out, pa.string())


def part_words(tokens: pa.Array | pa.ChunkedArray,
               values: pa.Array | pa.ChunkedArray | None = None,
               rows: np.ndarray | None = None) -> PartWords:
    """Every row's ``merge_words(tokens, values, lower=True)``, flattened (only the rows in
    the mask ``rows``, when given; row numbers stay those of ``tokens``).

    With ``values``, rows whose tokens or values are null or whose lengths
    differ are skipped (counted in ``skipped``) and null values count as 0.
    ``tokens`` may hold its pieces dictionary-encoded (as Parquet stores them).
    """
    tokens = one_array(tokens)
    n = len(tokens)
    valid = _np(tokens.is_valid())
    lengths = _np(pc.list_value_length(tokens).fill_null(0))
    if values is not None:
        values = one_array(values)
        valid = valid & _np(values.is_valid()) & \
            (lengths == _np(pc.list_value_length(values).fill_null(-1)))
    wanted = np.ones(n, bool) if rows is None else rows
    left_out = wanted & ~valid & _np(tokens.is_valid()) if values is not None else None
    skipped = int((wanted & ~valid).sum()) if values is not None else 0
    empty = PartWords(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0), [], skipped,
                      left_out)
    mask = valid & (lengths > 0) & wanted
    if not mask.any():
        return empty
    if values is not None:
        vrow = _np(pc.list_parent_indices(values))
        val = _np(pc.list_flatten(values).fill_null(0.0)).astype(np.float64)[mask[vrow]]
    else:
        val = None
    runs = _runs(tokens, mask, val)
    if runs is None:
        return empty
    row, key, text, attr = runs
    # distinct words in order of first use, then their case-folded forms likewise
    at = np.empty(len(text), np.int64)
    at[key[::-1]] = np.arange(key.size)[::-1]  # each key's first position (last write wins)
    used = unique_ints(key)
    used = used[np.argsort(at[used], kind="stable")]
    rank = np.empty(len(text), np.int64)
    rank[used] = np.arange(used.size)
    fenc = pc.dictionary_encode(_folded(text.take(pa.array(used))))
    word = _np(fenc.indices).astype(np.int64)[rank[key]]
    return PartWords(row, word, attr, fenc.dictionary.to_pylist(), skipped, left_out)


def may_hold(tokens: pa.Array | pa.ChunkedArray, words: list[str],
             pieces: Pieces | None = None) -> np.ndarray:
    """The rows whose caption may hold one of ``words`` (case-folded words, as ``part_words``
    gives them): a superset of those that do, found without merging any pieces (of the
    rows ``pieces`` holds, when given).

    A word's last piece, stripped of its end mark and folded, is a suffix of the
    word, and that piece either ends a word or is its caption's last piece that
    is not special. So a row can hold one of ``words`` only if it has such a
    piece; the other rows can be skipped before the pieces are merged.
    """
    tokens = one_array(tokens)
    n = len(tokens)
    if pieces is None:
        mask = with_pieces(tokens)
        if not words or not mask.any():
            return np.zeros(n, bool)
        pieces = pieces_of(tokens, mask)
    if not words:
        return np.zeros(n, bool)
    row, piece, special, end = pieces.row, pieces.piece, pieces.special, pieces.end
    stripped = _folded(pieces.stripped)
    suffixes = pa.array(sorted({w[i:] for w in words for i in range(len(w) + 1)}), pa.string())
    fits = _np(pc.is_in(stripped, value_set=suffixes)) & ~special
    keep = ~special[piece]
    row, piece = row[keep], piece[keep]
    last = np.r_[row[1:] != row[:-1], True] if row.size else np.zeros(0, bool)
    hit = fits[piece] & (end[piece] | last)
    out = np.zeros(n, bool)
    out[row[hit]] = True
    return out


def with_pieces(tokens: pa.Array) -> np.ndarray:
    """The rows whose token list is there and not empty."""
    return _np(tokens.is_valid()) & (_np(pc.list_value_length(tokens).fill_null(0)) > 0)


def _marks(uniq: pa.Array) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """Of each distinct piece: whether it is special, whether it ends a word, and its text
    without the end mark."""
    special = _np(pc.is_in(uniq, value_set=pa.array(sorted(SPECIAL), pa.string())))
    end = _np(pc.ends_with(uniq, END_OF_WORD))
    return special, end, pc.if_else(end, pc.utf8_slice_codeunits(uniq, 0, -len(END_OF_WORD)),
                                    uniq)


def _runs(tokens: pa.Array, mask: np.ndarray, val: np.ndarray | None,
          pieces: Pieces | None = None
          ) -> tuple[np.ndarray, np.ndarray, pa.Array, np.ndarray] | None:
    """The words of the rows in ``mask`` as runs of pieces: each word's row, its key into
    the returned texts (unfolded), and its summed values (``val``: one per piece of those
    rows, or None for zeros). None when there is no word. ``pieces``: those of rows
    including ``mask``'s, flattened already."""
    pieces = pieces if pieces is not None else pieces_of(tokens, mask)
    row, piece = pieces.of(mask)
    special, end, stripped = pieces.special, pieces.end, pieces.stripped
    val = np.zeros(row.size) if val is None else val
    keep = ~special[piece]
    piece, row, val = piece[keep], row[keep], val[keep]
    if piece.size == 0:
        return None
    ends = end[piece].copy()
    ends[:-1] |= row[1:] != row[:-1]  # a caption's trailing pieces form a word too
    ends[-1] = True
    first = np.r_[True, ends[:-1]]
    starts = np.flatnonzero(first)
    attr = np.add.reduceat(val, starts) if val.size else val
    key, text = _word_keys(piece, starts, stripped)
    row = row[starts]
    unended = ~end[piece[np.r_[starts[1:], piece.size] - 1]]
    if unended.any():  # an empty trailing buffer (pieces "" only) is no word
        drop = unended & (_np(pc.binary_length(text))[key] == 0)
        if drop.any():
            key, row, attr = key[~drop], row[~drop], attr[~drop]
    return row, key, text, attr


def word_hits(tokens: pa.Array | pa.ChunkedArray, words: pa.Array,
              rows: np.ndarray | None = None,
              pieces: Pieces | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(row, i)`` for each distinct ``words[i]`` (case-folded words) in each row's caption
    (of the rows in the mask ``rows``), by row then ``i``: what ``part_words`` would
    give for those words, without ordering and folding every other word of the part.
    ``pieces``: those of rows including ``rows``, flattened already."""
    tokens = one_array(tokens)
    mask = with_pieces(tokens)
    if rows is not None:
        mask &= rows
    none = (np.empty(0, np.int64), np.empty(0, np.int64))
    if len(words) == 0 or not mask.any():
        return none
    runs = _runs(tokens, mask, None, pieces)
    if runs is None:
        return none
    row, key, text, _ = runs
    of_text = _np(pc.index_in(_folded(text), value_set=words).fill_null(-1)).astype(np.int64)
    wid = of_text[key]
    hit = wid >= 0
    n = len(words)
    both = unique_ints(row[hit] * n + wid[hit])
    return both // n, both % n


def _word_keys(piece: np.ndarray, starts: np.ndarray,
               stripped: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Each word's key into a table of texts: a one-piece word is its piece's text, a word
    of several pieces the join of theirs (built once per distinct run of pieces)."""
    size = np.diff(np.r_[starts, piece.size])
    multi = np.flatnonzero(size > 1)
    key = piece[starts].copy()
    if multi.size == 0:
        return key, stripped
    idx = ranges(starts[multi], size[multi])
    offsets = np.r_[0, np.cumsum(size[multi])].astype(np.int32)
    joined = pc.binary_join(pa.ListArray.from_arrays(
        pa.array(offsets), stripped.take(pa.array(piece[idx]))), "")
    enc = pc.dictionary_encode(joined)
    key[multi] = len(stripped) + _np(enc.indices).astype(np.int64)
    return key, pa.concat_arrays([stripped, enc.dictionary])


def ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """``concatenate([arange(a, a + k) for a, k in zip(starts, sizes)])``, vectorised."""
    total = int(np.sum(sizes))
    if total == 0:
        return np.empty(0, np.int64)
    return np.repeat(starts - np.r_[0, np.cumsum(sizes)[:-1]], sizes) + np.arange(total)


class Matcher:
    """Finds a family's terms in one caption's words (longest term first at each position)."""

    def __init__(self, family: GroupFamily) -> None:
        self.by_first: dict[str, list[tuple[tuple[str, ...], int]]] = {}
        for gi, terms in enumerate(family.groups.values()):
            for t in terms:
                self.by_first.setdefault(t[0], []).append((t, gi))
        for cands in self.by_first.values():
            cands.sort(key=lambda c: -len(c[0]))

    def match(self, words: list[str], attrs: list[float]) -> dict[int, list[float]]:
        """Group index -> the attribution of each term occurrence (a term's words summed)."""
        hits: dict[int, list[float]] = {}
        i = 0
        while i < len(words):
            step = 1
            for terms, gi in self.by_first.get(words[i], ()):
                if tuple(words[i : i + len(terms)]) == terms:
                    hits.setdefault(gi, []).append(sum(attrs[i : i + len(terms)]))
                    step = len(terms)
                    break
            i += step
        return hits


class FamilyMatcher:
    """A family's terms found in a part's words; ``Matcher`` semantics, vectorised."""

    def __init__(self, family: GroupFamily) -> None:
        self.matcher = Matcher(family)
        self.n_groups = len(family.groups)
        self.single: dict[str, int] = {}
        self.multi: list[tuple[str, ...]] = []
        for gi, terms in enumerate(family.groups.values()):
            for t in terms:
                if len(t) == 1:
                    self.single.setdefault(t[0], gi)
                else:
                    self.multi.append(t)

    def hits(self, pw: PartWords) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Each term occurrence as (row, group, summed attribution), and rows with a long match.

        Returns ``row, group, attr`` (occurrences, by row then position) and the
        sorted rows where a multi-word term matched (matched one by one).
        """
        single = lookup(self.single, pw.words)
        group = single[pw.word] if pw.word.size else np.empty(0, np.int64)
        slow_rows = self._multi_rows(pw)
        fast = (group >= 0) & ~np.isin(pw.row, slow_rows)
        rows, groups, attrs = [pw.row[fast]], [group[fast]], [pw.attr[fast]]
        if slow_rows.size:
            starts = pw.starts()
            first = starts[np.searchsorted(pw.row[starts], slow_rows)]
            last = np.r_[starts[1:], pw.row.size][np.searchsorted(pw.row[starts], slow_rows)]
            sr, sg, sa = [], [], []
            for r, a, b in zip(slow_rows, first, last):
                words = [pw.words[i] for i in pw.word[a:b]]
                for gi, occ in self.matcher.match(words, pw.attr[a:b].tolist()).items():
                    sr += [r] * len(occ)
                    sg += [gi] * len(occ)
                    sa += occ
            rows.append(np.asarray(sr, np.int64))
            groups.append(np.asarray(sg, np.int64))
            attrs.append(np.asarray(sa, np.float64))
        r, g, a = np.concatenate(rows), np.concatenate(groups), np.concatenate(attrs)
        order = np.argsort(r, kind="stable")
        return r[order], g[order], a[order], slow_rows

    def _multi_rows(self, pw: PartWords) -> np.ndarray:
        """Rows where some multi-word term occurs (words in a row, same caption)."""
        if not self.multi or pw.word.size == 0:
            return np.empty(0, np.int64)
        index = {w: i for i, w in enumerate(pw.words)}
        found = np.zeros(pw.word.size, bool)
        for term in self.multi:
            ids = [index.get(w) for w in term]
            if None in ids or len(term) > pw.word.size:
                continue
            span = pw.word.size - len(term) + 1
            m = np.ones(span, bool)
            for j, wid in enumerate(ids):
                m &= pw.word[j : j + span] == wid
                m &= pw.row[j : j + span] == pw.row[:span]
            found[:span] |= m
        return np.unique(pw.row[found])
