"""The vectorised per-part passes against plain per-row loops (the oracles written here).

Word merging is checked against ``pipeline.engine.words.merge_words`` (the per-caption
reference, tested on its own), term matching against a greedy scan written
below, error counting, the spatial sums and the co-occurrence counts against
naive loops over the same rows.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pytest

from pipeline.engine.words import merge_words
from pipeline.report import ReportSettings
from pipeline.report import aggregate as agg_mod
from pipeline.report.aggregate import Aggregator, error_kind
from pipeline.report.regions import Grid
from pipeline.report.settings import GroupFamily
from pipeline.report.space import CoOccurrence, WordSpace
from pipeline.report.tokens import FamilyMatcher, may_hold, part_words, word_hits

PIECES = ["a</w>", "old</w>", "man</w>", "wo", "man</w>", "Man</w>", "ß</w>", "SS</w>",
          "pho", "to</w>", "dog", "<start_of_text>", "<end_of_text>", "of</w>", "vin", "tage</w>",
          "lady</w>", "!</w>", ""]


def random_captions(n: int, seed: int) -> tuple[list, list]:
    """Token lists with specials mid-word, trailing pieces without ``</w>``, nulls, empties,
    values with nulls and of the wrong length."""
    rng = np.random.default_rng(seed)
    tokens, values = [], []
    for _ in range(n):
        u = rng.random()
        k = int(rng.integers(0, 12))
        tk = [str(p) for p in rng.choice(PIECES, size=k)]
        va = [float(x) for x in rng.normal(0, 1, k)]
        if u < 0.05:
            tk = None
        elif u < 0.1:
            va = None
        elif u < 0.15:
            va = va[:-1] if va else [1.0]
        elif u < 0.25 and va:
            va[int(rng.integers(len(va)))] = None
        tokens.append(tk)
        values.append(va)
    return tokens, values


@pytest.mark.parametrize(("seed", "encoded"), [(0, False), (1, False), (2, True)])
def test_part_words_matches_merge_words(seed, encoded):
    """``encoded``: the pieces dictionary-encoded, as the passes read them from Parquet
    (``io.results.TOKEN_DICTIONARY``), including null pieces."""
    tokens, values = random_captions(400, seed)
    if encoded:
        tokens = [t if t is None else [None if p == "" else p for p in t] for t in tokens]
    piece = pa.dictionary(pa.int32(), pa.string()) if encoded else pa.string()
    tk = pa.chunked_array([pa.array(tokens[:150], pa.list_(piece)),
                           pa.array(tokens[150:], pa.list_(piece))])
    if encoded:
        tokens = [t if t is None else ["" if p is None else p for p in t] for t in tokens]
    va = pa.array(values, pa.list_(pa.float32()))
    pw = part_words(tk, va)
    got = defaultdict(list)
    for r, w, a in zip(pw.row, pw.word, pw.attr):
        got[int(r)].append((pw.words[w], a))
    skipped = 0
    for i, (t, v) in enumerate(zip(tokens, values)):
        if t is None or v is None or len(t) != len(v):
            skipped += 1
            assert i not in got
            continue
        v32 = [0.0 if x is None else float(np.float32(x)) for x in v]
        want = merge_words(t, v32, lower=True)
        assert [w for w, _ in got[i]] == [w for w, _ in want], (t, got[i])
        np.testing.assert_allclose([a for _, a in got[i]], [a for _, a in want], rtol=1e-12)
    assert pw.skipped == skipped
    assert pw.words == list(dict.fromkeys(pw.words[w] for w in pw.word))  # first use order
    # tokens alone (the spatial passes): no row is skipped for its values
    alone = part_words(tk)
    assert alone.skipped == 0
    rows_with_words = {i for i, t in enumerate(tokens) if t and merge_words(t, [0] * len(t))}
    assert set(alone.row.tolist()) == rows_with_words


@pytest.mark.parametrize(("seed", "encoded"), [(3, False), (4, True)])
def test_may_hold_keeps_every_row_that_holds_a_word(seed, encoded):
    """The rows ``may_hold`` keeps are a superset of those whose merged words (the oracle,
    ``merge_words``) hold one of the words, and it skips rows too."""
    tokens, _ = random_captions(600, seed)
    piece = pa.dictionary(pa.int32(), pa.string()) if encoded else pa.string()
    tk = pa.array(tokens, pa.list_(piece))
    for words in (["woman", "ss"], ["vintage", "photo"], ["dog"], ["man"], ["!"], []):
        got = may_hold(tk, words)
        assert got.dtype == bool and got.shape == (len(tokens),)
        holds = np.array([bool(t) and bool({w for w, _ in merge_words(t, [0] * len(t),
                                                                      lower=True)} & set(words))
                          for t in tokens])
        assert not (holds & ~got).any(), [tokens[i] for i in np.flatnonzero(holds & ~got)]
        if words and words != ["!"]:
            assert got.sum() < len(tokens), words  # a filter that keeps everything is no filter
        # word_hits: the distinct (row, word) pairs, by row then word, rows of a mask only
        pick = np.arange(len(tokens)) % 3 != 0
        want = sorted({(i, words.index(w)) for i, t in enumerate(tokens) if t and pick[i]
                       for w, _ in merge_words(t, [0] * len(t), lower=True) if w in words})
        r, i = word_hits(tk, pa.array(words, pa.string()), pick)
        assert list(zip(r.tolist(), i.tolist())) == want


def greedy(words: list[str], terms: dict[tuple[str, ...], int]) -> list[tuple[int, float, int]]:
    """Oracle: at each position the longest term (then the first group) wins; skip its words.
    Returns (group, position, length) of each occurrence."""
    out, i = [], 0
    longest = max(len(t) for t in terms)
    while i < len(words):
        for n in range(min(longest, len(words) - i), 0, -1):
            t = tuple(words[i : i + n])
            if t in terms:
                out.append((terms[t], i, n))
                i += n
                break
        else:
            i += 1
    return out


def test_family_matcher_matches_a_greedy_scan():
    fam = GroupFamily.from_config("age", {"groups": {
        "adult": ["man", "woman", "lady"], "older": ["old man", "old", "old lady of"],
        "again": ["man", "photo of a"]}, "rest": "none"})
    terms: dict[tuple[str, ...], int] = {}
    for gi, ts in enumerate(fam.groups.values()):
        for t in ts:
            terms.setdefault(t, gi)  # a term in two groups: the first group wins
    vocab = ["a", "old", "man", "woman", "lady", "of", "photo", "dog"]
    rng = np.random.default_rng(4)
    caps = [[str(w) for w in rng.choice(vocab, size=int(rng.integers(0, 9)))] for _ in range(500)]
    tokens = pa.array([[w + "</w>" for w in c] for c in caps], pa.list_(pa.string()))
    values = pa.array([[float(x) for x in rng.normal(0, 1, len(c))] for c in caps],
                      pa.list_(pa.float64()))
    pw = part_words(tokens, values)
    rows, groups, attrs, slow = FamilyMatcher(fam).hits(pw)
    got = sorted(zip(rows.tolist(), groups.tolist(), np.round(attrs, 9).tolist()))
    want = []
    for r, c in enumerate(caps):
        v = values[r].as_py()
        for g, i, n in greedy(c, terms):
            want.append((r, g, round(sum(v[i : i + n]), 9)))
    assert got == sorted(want)
    assert slow.size < len(caps) / 2  # most captions took the vectorised path


def test_errors_are_counted_by_kind_in_order_of_first_appearance(monkeypatch):
    monkeypatch.setattr(agg_mod, "MAX_ERROR_KINDS", 3)
    msgs = [None, "", "disk 1 full", "disk 22 full", "x", "y", "x", None, "z", "x 3"]
    s = ReportSettings(errors_examples=2)
    agg = Aggregator(s, [])
    for p, chunk in enumerate((msgs[:4], msgs[4:])):
        agg.add(pa.table({"id": [f"{p}-{i}" for i in range(len(chunk))],
                          "status": ["error"] * len(chunk), "error": pa.array(chunk, pa.string())}),
                p)
    want: dict[str, list] = {}
    other = 0
    for p, chunk in enumerate((msgs[:4], msgs[4:])):
        for i, m in enumerate(chunk):
            k = error_kind(m)
            if k not in want and len(want) >= 3:
                other += 1
                continue
            e = want.setdefault(k, [0, []])
            e[0] += 1
            if len(e[1]) < 2:
                e[1].append(f"{p}-{i}")
    assert agg.errors == want and agg.errors_other == other
    assert list(agg.errors) == list(want)


def _space_rows(n: int, seed: int) -> tuple[pa.Table, np.ndarray, list[list[str]]]:
    rng = np.random.default_rng(seed)
    vocab = ["a", "vintage", "photo", "of", "dog", "Dog", "cat"]
    caps = [[str(w) for w in rng.choice(vocab, size=int(rng.integers(0, 6)))] for _ in range(n)]
    maps = rng.normal(0, 1, (n, 9))
    maps[::7] = 0.0  # constant maps: no top patch
    maps[1::11] = -1.0 - np.abs(maps[1::11])  # no positive mass
    status = ["ok" if i % 13 else "error" for i in range(n)]
    table = pa.table({
        "status": status,
        "tokens": pa.array([[w + "</w>" for w in c] for c in caps], pa.list_(pa.string())),
        "image_attr": pa.array([list(m) for m in maps], pa.list_(pa.float32())),
        "grid_h": pa.array([3] * n, pa.int16()), "grid_w": pa.array([3] * n, pa.int16())})
    return table, maps.astype(np.float32).astype(np.float64), caps


def test_spatial_sums_and_cooccurrence_match_naive_loops():
    tracked = ["dog", "a", "vintage", "photo"]
    table, maps, caps = _space_rows(300, 5)
    ws = WordSpace(tracked, Grid(3, 3), examples=2).consume([table.slice(0, 120),
                                                             table.slice(120)])
    co = CoOccurrence(tracked, Grid(3, 3)).consume([table.slice(0, 120), table.slice(120)])
    pos = np.zeros((4, 9))
    top = np.zeros((4, 9), np.int64)
    counts: dict = defaultdict(lambda: np.zeros(9, np.int64))
    for i, (m, c) in enumerate(zip(maps, caps)):
        p = np.maximum(m, 0)
        if i % 13 == 0 or p.sum() <= 0 or m.max() == m.min():
            continue
        present = {tracked.index(w.lower()) for w in c if w.lower() in tracked}
        for w in present:
            pos[w] += p / p.sum()
            top[w, int(np.argmax(m))] += 1
            counts[w, frozenset(present - {w})][int(np.argmax(m))] += 1
    np.testing.assert_allclose(ws.pos_sum, pos, rtol=1e-9, atol=1e-12)
    assert (ws.top == top).all() and (ws.n == top.sum(axis=1)).all()
    assert set(co.counts) == set(counts)
    for k, v in counts.items():
        assert (co.counts[k] == v).all(), k
    # example pointers: at most 2 per word, each a row whose caption has the word
    for wid, w in enumerate(tracked):
        ptrs = ws.example_pointers(wid, 0, 5)
        assert 0 < len(ptrs) <= 2
        for part, row in ptrs:
            assert w in [x.lower() for x in caps[row + 120 * part]]


def _splitmix_key(row_key: float, word: str) -> float:
    """The key of a (row, word) pair, in plain integers: the row's key as 53 bits, xor the
    first 8 bytes (little-endian) of the word's blake2b, through the splitmix64 finaliser."""
    mask = 2**64 - 1
    h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
    z = int(row_key * 2**53) ^ h
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    z ^= z >> 31
    return (z >> 11) / 2**53


def test_each_word_keeps_the_pairs_with_the_smallest_keys_however_the_parts_come():
    """A word's example pointers are its ``examples`` pairs of smallest seeded key, whether
    the parts come one at a time (most words gaining no new example in a part), merged, or
    with other words tracked beside it: a pair's key depends on its part, row and word."""
    tracked = ["dog", "a", "vintage", "photo", "cat"]
    table, maps, caps = _space_rows(600, 7)
    sizes = [5, 40, 3, 120, 1, 200, 31, 200]
    parts = [table.slice(sum(sizes[:i]), n) for i, n in enumerate(sizes)]
    ws = WordSpace(tracked, Grid(3, 3), seed=4, examples=3).consume(parts)
    halves = [WordSpace(tracked, Grid(3, 3), seed=4, examples=3).consume(parts[:3]),
              WordSpace(tracked, Grid(3, 3), seed=4, examples=3).consume(parts[3:], first=3)]
    halves[0].merge(halves[1])
    fewer = WordSpace(tracked[::-2], Grid(3, 3), seed=4, examples=3).consume(parts)
    want = []  # (word, key, part, row) of every usable pair, the smallest 3 keys of each word
    for p, t in enumerate(parts):
        # row r of a part has the r-th key of the part's stream; its pairs mix in the word
        row_keys = np.random.default_rng([4, zlib.crc32(b"examples"), zlib.crc32(str(p).encode())]
                                         ).random(t.num_rows)
        first = sum(sizes[:p])
        for r in range(t.num_rows):
            m, c = maps[first + r], caps[first + r]
            if (first + r) % 13 == 0 or np.maximum(m, 0).sum() <= 0 or m.max() == m.min():
                continue
            want += [(tracked.index(w), _splitmix_key(float(row_keys[r]), w), p, r)
                     for w in {x.lower() for x in c} if w in tracked]
    want = [x for wid in range(len(tracked)) for x in sorted(y for y in want if y[0] == wid)[:3]]
    for got in (ws, halves[0]):
        assert list(zip(got.ex["word"].tolist(), got.ex["key"].tolist(), got.ex["part"].tolist(),
                        got.ex["row"].tolist())) == [(w, k, p, r) for w, k, p, r in want]
    assert len(want) == 15
    for wid, w in enumerate(tracked[::-2]):  # the same pairs, whatever else is tracked
        assert [x[1:] for x in want if x[0] == tracked.index(w)] == [
            (k, p, r) for i, k, p, r in zip(*(fewer.ex[f].tolist() for f in
                                             ("word", "key", "part", "row"))) if i == wid]


def test_examples_differing_past_the_packed_sort_precision_keep_the_smaller_key():
    """With many tracked words the examples are sorted by word and key packed into one
    integer, which holds fewer bits of the key than the key has: two keys equal there must
    still keep the smaller one, in whichever order they come (else a spread report and a
    one-process report could keep different examples)."""
    words = [f"w{i}" for i in range(20_000)]  # 15 bits of word: 48 of key in the packed sort
    small, large = 0.25, 0.25 + 2.0**-52  # apart by less than 2**-48
    kept = []
    for keys in ([small, large], [large, small]):
        ws = WordSpace(words, Grid(2, 2), examples=1)
        for k in keys:  # one at a time: held, then a candidate sorted in beside it
            ws._keep_examples(np.array([7]), np.array([k]), 0, np.array([int(k == large)]),
                              np.array([0]))
            ws._compact()
        kept.append((ws.ex["word"].tolist(), ws.ex["key"].tolist(), ws.ex["row"].tolist()))
    assert kept == [([7], [small], [0])] * 2


def test_ranges_equal_the_concatenated_aranges():
    from pipeline.report.tokens import ranges

    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(0, 6))
        starts, sizes = rng.integers(0, 100, n), rng.integers(0, 4, n)
        want = np.concatenate([np.arange(a, a + k) for a, k in zip(starts, sizes)] or
                              [np.empty(0, np.int64)])
        assert ranges(starts, sizes).tolist() == want.tolist()
