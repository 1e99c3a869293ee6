"""The report's merged vocabulary against a plain dictionary of word -> running sums."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from pipeline.report import vocabulary
from pipeline.report.vocabulary import (
    FIELDS,
    MergedVocabulary,
    Vocabulary,
    string_hashes,
)

ALPHABET = "abcxyz0189-é日"


def _batches(seed: int, count: int) -> list[list[str]]:
    """``count`` lists of distinct words: empty, short, 8- and 16-byte, long and non-ASCII
    words, many of them met again in later lists."""
    rng = random.Random(seed)
    pool = sorted({"".join(rng.choice(ALPHABET) for _ in range(rng.choice(
        [0, 1, 3, 7, 8, 9, 15, 16, 17, 40]))) for _ in range(3000)})
    return [list(dict.fromkeys(rng.choice(pool) for _ in range(rng.randint(0, 400))))
            for _ in range(count)]


def _oracle(batches: list[list[str]], sums: list[np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Words in order of first use and their sums, added one by one in that order."""
    order: dict[str, int] = {}
    acc: list[list[float]] = []
    for words, s in zip(batches, sums):
        for j, w in enumerate(words):
            if w not in order:
                order[w] = len(acc)
                acc.append([0.0] * len(FIELDS))
            row = acc[order[w]]
            for f in range(len(FIELDS)):
                row[f] += float(s[f, j])
    return list(order), np.array(acc).T.reshape(len(FIELDS), len(acc))


def _merged(batches: list[list[str]], sums: list[np.ndarray]) -> MergedVocabulary:
    out = MergedVocabulary()
    for words, s in zip(batches, sums):
        task = Vocabulary()
        task.add_sums(words, s)
        out.merge(task)
    return out


@pytest.fixture
def data() -> tuple[list[list[str]], list[np.ndarray]]:
    batches = _batches(7, 40)
    rng = np.random.default_rng(7)
    return batches, [rng.normal(size=(len(FIELDS), len(b))) for b in batches]


def _check(v: MergedVocabulary, words: list[str], sums: np.ndarray) -> None:
    assert len(v) == len(words)
    assert v.texts().to_pylist() == words
    assert [v.word(i) for i in range(len(v))] == words
    for f, name in enumerate(FIELDS):
        assert v.sums[name].tolist() == sums[f].tolist(), name  # the same additions, in order
    absent = ["not a word", "日本語の文", "z" * 33]
    assert v.find(words[::7] + absent).tolist() == list(range(0, len(words), 7)) + [-1, -1, -1]


def test_merged_vocabulary_equals_a_dictionary(data):
    batches, sums = data
    words, expected = _oracle(batches, sums)
    assert len(words) > 1000 and "" in words
    _check(_merged(batches, sums), words, expected)


def test_merged_vocabulary_equals_a_dictionary_when_the_hashes_crowd(data, monkeypatch):
    """Every word's first hash in one of 4 values: long probe runs, and the table rebuilt
    with them; the second hash still tells the words apart."""
    real = vocabulary.string_hashes

    def crowded(words: pa.Array) -> np.ndarray:
        h = real(words)
        h[0] &= np.uint64(3)
        return h

    monkeypatch.setattr(vocabulary, "string_hashes", crowded)
    batches, sums = data
    _check(_merged(batches[:12], sums[:12]), *_oracle(batches[:12], sums[:12]))


def test_a_merged_vocabulary_merges_into_another_and_takes_part_words():
    a, b = _batches(3, 2)
    rng = np.random.default_rng(3)
    sa, sb = rng.normal(size=(len(FIELDS), len(a))), rng.normal(size=(len(FIELDS), len(b)))
    first = MergedVocabulary()
    first.add_sums(a, sa)
    second = MergedVocabulary()
    second.merge(first)
    second.add_sums(pa.array(b), sb)
    _check(second, *_oracle([a, b], [sa, sb]))
    # a part's word uses, as a task's vocabulary counts them
    plain, merged = Vocabulary(), MergedVocabulary()
    uses, attrs, shares = rng.integers(0, len(a), 500), rng.normal(size=500), rng.random(500)
    for v in (plain, merged):
        v.add(a, uses, attrs, shares, uses[:200])
    assert merged.texts().to_pylist() == plain.words
    for name in FIELDS:
        assert merged.sums[name].tolist() == plain.sums[name].tolist(), name


def test_string_hashes_are_stable_and_tell_words_apart():
    words = [f"w{i}" for i in range(50_000)] + ["", "a", "a\x00", "ab", "é", "12345678",
                                                "123456789", "1234567812345678"]
    arr = pa.array(words)
    h = string_hashes(arr)
    assert h.shape == (2, len(words)) and h.dtype == np.uint64
    assert len(set(h[0].tolist())) == len(words) and len(set(h[1].tolist())) == len(words)
    # the same words in any array: sliced, large strings, one at a time
    assert (string_hashes(arr.slice(100, 300)) == h[:, 100:400]).all()
    assert (string_hashes(pa.array(words, pa.large_string())) == h).all()
    assert all((string_hashes(pa.array([w]))[:, 0] == h[:, i]).all()
               for i, w in enumerate(words[-8:], len(words) - 8))


def test_a_task_vocabulary_travels_as_one_array_and_works_on_after():
    """A worker's vocabulary pickles its words as one array; unpickled, it merges, looks up
    and takes new words as the one it came from."""
    import pickle

    [words, more] = _batches(5, 2)
    rng = np.random.default_rng(5)
    sums, more_sums = rng.normal(size=(len(FIELDS), len(words))), rng.normal(
        size=(len(FIELDS), len(more)))
    v = Vocabulary()
    v.add_sums(words, sums)
    back = pickle.loads(pickle.dumps(v))
    assert set(vars(back)) == {"_texts", "_sums"}  # the words as one array, no dictionary
    assert isinstance(vars(back)["_texts"], pa.Array)
    assert len(back) == len(words) and back.texts().to_pylist() == words
    into = MergedVocabulary()
    into.merge(back)
    _check(into, words, sums)
    assert back.find(words[:3] + ["nope"]).tolist() == [0, 1, 2, -1]
    back.add_sums(more, more_sums)
    v.add_sums(more, more_sums)
    assert back.words == v.words and back.index == v.index
    for name in FIELDS:
        assert back.sums[name].tolist() == v.sums[name].tolist(), name


def test_ids_of_another_vocabulary_by_its_words():
    """Each of another vocabulary's words' id here (-1: absent), merged or not, either way."""
    a, b = _batches(9, 2)
    rng = np.random.default_rng(9)
    here, there = MergedVocabulary(), MergedVocabulary()
    here.add_sums(a, rng.random((len(FIELDS), len(a))))
    there.add_sums(b, rng.random((len(FIELDS), len(b))))
    plain = Vocabulary()
    plain.add_sums(b, rng.random((len(FIELDS), len(b))))
    expected = [a.index(w) if w in a else -1 for w in b]
    assert 0 < sum(i >= 0 for i in expected) < len(b)
    assert here.ids_of(there).tolist() == expected == here.ids_of(plain).tolist()
    plain_here = Vocabulary()
    plain_here.add_sums(a, rng.random((len(FIELDS), len(a))))
    assert plain_here.ids_of(there).tolist() == expected


@pytest.mark.parametrize("skip", [True, False])
def test_the_comparisons_union_of_two_vocabularies(skip):
    """The comparison's words: every word of either audit once, in code-point order, each
    with its id on both sides (-1: absent); punctuation-only words left out when asked."""
    from pipeline.report.aggregate import Aggregator
    from pipeline.report.compare_sections import _word_union
    from pipeline.report.settings import ReportSettings
    from pipeline.report.summary import has_alnum

    a, b = _batches(11, 2)
    a += [w for w in ("-", "\u2026", "\u65e5-") if w not in a]  # "…", "日-"
    b += [w for w in ("--", "-", "") if w not in b]
    rng = np.random.default_rng(11)
    cur, base = Aggregator(ReportSettings(), []), Aggregator(ReportSettings(), [])
    cur.vocab.add_sums(a, rng.random((len(FIELDS), len(a))))
    base.vocab.add_sums(b, rng.random((len(FIELDS), len(b))))
    expected = sorted({*a, *b}, key=lambda w: w.encode())  # UTF-8 order: code points
    if skip:
        expected = [w for w in expected if has_alnum(w)]
    assert any(not has_alnum(w) for w in {*a, *b}) and any(not w.isascii() for w in expected)
    words, ic, ib = _word_union(cur, base, skip)
    assert words.to_pylist() == expected
    assert ic.tolist() == [a.index(w) if w in a else -1 for w in expected]
    assert ib.tolist() == [b.index(w) if w in b else -1 for w in expected]
