"""Per-word sums of the captions' words: a task's vocabulary and the report's merged one.

A task's ``Vocabulary`` is a dictionary from word to id: a part's words are looked up in one
C loop, and a task holds at most the words of its own rows. The report's own process merges
every task's vocabulary into one, which grows with the distinct words of the whole audit (at
2.3 billion rows, tens of millions of words); a dictionary of Python strings costs about
210 bytes a word there. ``MergedVocabulary`` holds the same words and sums without a Python
object per word: the words' UTF-8 bytes in one buffer, two 64-bit hashes a word, an
open-addressing table of ids, and the sums in one array: about 120 bytes a word, and a task's
words are merged by array operations.

Both give each word an id in order of first use and add sums in the order they come, so the
merged sums are the same numbers either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa

from pipeline.report.stats import splitmix64

#: The sums kept per word: uses, summed attribution, uses with a negative attribution,
#: summed share, pairs that hold the word, and the squares (for the variances).
FIELDS = ("count", "attr_sum", "negative", "share_sum", "pairs", "attr_sq", "share_sq")

#: The seeds of a word's two hashes. Two distinct words share an id only if both of their
#: hashes agree: about n**2 / 2**129 for n words (1e-23 at 100 million words).
SEEDS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F)

_GROWTH = 1.5  # the sums' and the words' buffers: growth by half keeps the slack smaller


def word_sums(n: int, word: np.ndarray, attrs: np.ndarray, shares: np.ndarray,
              pair_words: np.ndarray) -> np.ndarray:
    """``FIELDS`` x ``n`` sums of word uses (``word``: index of each use, its attribution and
    share) and of each pair's distinct words (``pair_words``)."""
    a = np.asarray(attrs, dtype=np.float64)
    sh = np.asarray(shares, dtype=np.float64)
    i = np.asarray(word, dtype=np.int64)
    return np.stack([
        np.bincount(i, minlength=n), np.bincount(i, weights=a, minlength=n),
        np.bincount(i, weights=(a < 0).astype(np.float64), minlength=n),
        np.bincount(i, weights=sh, minlength=n),
        np.bincount(np.asarray(pair_words, dtype=np.int64), minlength=n),
        np.bincount(i, weights=a * a, minlength=n),
        np.bincount(i, weights=sh * sh, minlength=n)]).astype(np.float64)


def _grown(arr: np.ndarray, need: int) -> np.ndarray:
    """``arr`` (its last axis) with room for at least ``need``, grown by ``_GROWTH``, the
    room zeros."""
    have = arr.shape[-1]
    if need <= have:
        return arr
    out = np.empty((*arr.shape[:-1], max(need, int(have * _GROWTH), 64)), arr.dtype)
    out[..., :have] = arr
    out[..., have:] = 0
    return out


def utf8_of(words: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The strings of ``words`` (no nulls) as int64 offsets from 0 and their UTF-8 bytes."""
    arr = words.cast(pa.large_string()) if words.type != pa.large_string() else words
    bufs = arr.buffers()
    off = np.frombuffer(bufs[1], np.int64, len(arr) + 1, arr.offset * 8)
    data = (np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None
            else np.zeros(0, np.uint8))[off[0]: off[-1]]
    return off - off[0], data


def string_hashes(words: pa.Array) -> np.ndarray:
    """Two 64-bit hashes of each string of ``words`` (2 x strings), one a seed of ``SEEDS``,
    by array operations: each 8-byte chunk of a string mixed with its place and the seed
    (splitmix64), summed over the string, mixed again with its length. Stable across
    processes and runs."""
    off, data = utf8_of(words)
    n = off.size - 1
    lengths = np.diff(off)
    chunks = (lengths + 7) // 8
    first = np.cumsum(chunks) - chunks
    word = np.repeat(np.arange(n), chunks)
    place = np.arange(word.size) - first[word]
    start = off[:-1][word] + 8 * place
    # the 8 bytes from each chunk's start: 8 copies of the bytes, each shifted by one more
    # byte, read as little-endian words; the bytes past the string's end masked to zero
    step = -(-(data.size + 8) // 8) * 8
    padded = np.zeros(step + 8, np.uint8)
    padded[: data.size] = data
    shifted = np.stack([padded[a: a + step].view("<u8") for a in range(8)])
    left = np.minimum(off[1:][word] - start, 8).astype(np.uint64)
    keep = np.where(left >= 8, np.uint64(2**64 - 1),
                    (np.uint64(1) << (left * np.uint64(8))) - np.uint64(1))
    value = shifted[start & 7, start >> 3] & keep
    place_mix = place.astype(np.uint64) * np.uint64(SEEDS[0])
    some = chunks > 0
    out = np.empty((len(SEEDS), n), np.uint64)
    for k, seed in enumerate(SEEDS):
        s = np.uint64(seed)
        total = np.zeros(n, np.uint64)
        if value.size:
            total[some] = np.add.reduceat(splitmix64(value ^ place_mix ^ s), first[some])
        out[k] = splitmix64(total ^ splitmix64(lengths.astype(np.uint64) ^ s))
    return out


class Vocabulary:
    """A task's running per-word sums: a dictionary from word to id; memory grows with
    distinct words, not with rows. Adding a part's (or another vocabulary's) sums costs time
    in proportion to its own words, not to the vocabulary's size.

    The sums of squares give each word's variance of attribution and share, so a comparison
    of two audits can put an interval on a word's change.
    """

    FIELDS = FIELDS

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.words: list[str] = []
        self._sums = np.zeros((len(FIELDS), 0))

    def __len__(self) -> int:
        texts = self.__dict__.get("_texts")
        return len(self.words) if texts is None else len(texts)

    def __getstate__(self) -> dict:
        """What a worker sends: the words as one array (no Python object a word to pickle,
        nor to unpickle where they are merged) and their sums."""
        return {"_texts": self.texts(), "_sums": self._sums[:, : len(self)]}

    def __getattr__(self, name: str) -> object:
        """``words`` and ``index`` of an unpickled vocabulary, each made when first used (a
        merge reads the words alone; the index comes before any word is added)."""
        texts = self.__dict__.get("_texts")
        if texts is None or name not in ("words", "index"):
            raise AttributeError(name)
        if name == "words":
            self.words = texts.to_pylist()
        else:
            self.index = {w: i for i, w in enumerate(self.words)}
            del self.__dict__["_texts"]  # words may be added from now on
        return self.__dict__[name]

    @property
    def sums(self) -> dict[str, np.ndarray]:
        """Each field's sums, one per word (views)."""
        n = len(self.words)
        return {f: self._sums[i, :n] for i, f in enumerate(FIELDS)}

    def ids(self, words: Iterable[str]) -> list[int]:
        """Vocabulary ids of ``words``, new words appended in order."""
        words = list(words)
        out = list(map(self.index.get, words))  # one C loop over the known words
        for k in [k for k, i in enumerate(out) if i is None]:  # the new ones, in order
            w = words[k]
            i = self.index.get(w)  # a word twice in ``words`` is new once
            if i is None:
                i = self.index[w] = len(self.words)
                self.words.append(w)
            out[k] = i
        return out

    def add_sums(self, words: list[str], sums: np.ndarray) -> None:
        """Add ``sums`` (``FIELDS`` x distinct ``words``) to those words' sums."""
        ids = np.asarray(self.ids(words), np.int64)
        self._sums = _grown(self._sums, len(self.words))
        self._sums[:, ids] += sums

    def add(self, words: list[str], word: np.ndarray, attrs: np.ndarray, shares: np.ndarray,
            pair_words: np.ndarray) -> None:
        """Add word uses (index into ``words``, attribution, share) and each pair's distinct
        words (indices into ``words``)."""
        self.add_sums(words, word_sums(len(words), word, attrs, shares, pair_words))

    def merge(self, other: Vocabulary) -> None:
        """Add a vocabulary of later parts (its new words follow in its order)."""
        if len(other):
            self.add_sums(other.words, other._sums[:, : len(other)])

    def texts(self) -> pa.Array:
        """Every word, by id (large strings, as ``MergedVocabulary.texts``)."""
        texts = self.__dict__.get("_texts")
        return pa.array(self.words, pa.large_string()) if texts is None else texts

    def word(self, i: int) -> str:
        """The word of id ``i``."""
        return self.words[i]

    def find(self, words: Sequence[str]) -> np.ndarray:
        """The id of each of ``words`` (-1: not in the vocabulary)."""
        return np.array([self.index.get(w, -1) for w in words], np.int64)

    def ids_of(self, other: Vocabulary | MergedVocabulary) -> np.ndarray:
        """The id here of each of ``other``'s words, in its order (-1: absent)."""
        return self.find(other.texts().to_pylist())


class MergedVocabulary:
    """The report's merged per-word sums, without a Python object per word (about 120 bytes
    a word against a dictionary's 210): ids by first use, as ``Vocabulary`` gives them.

    Held: the words' UTF-8 bytes end to end with their offsets, each word's two hashes
    (``string_hashes``), an open-addressing table from the first hash to the id (linear
    probing, at most 70% full), and the sums (``FIELDS`` x words).
    """

    FIELDS = FIELDS
    _LOAD = 0.7

    def __init__(self) -> None:
        self._n = 0
        self._data = np.zeros(0, np.uint8)
        self._used = 0
        self._off = np.zeros(1, np.int64)
        self._hash = np.zeros((2, 0), np.uint64)
        self._slots = np.full(64, -1, np.int32)
        self._sums = np.zeros((len(FIELDS), 0))

    def __len__(self) -> int:
        return self._n

    @property
    def sums(self) -> dict[str, np.ndarray]:
        """Each field's sums, one per word (views)."""
        return {f: self._sums[i, : self._n] for i, f in enumerate(FIELDS)}

    def texts(self) -> pa.Array:
        """Every word, by id, as one large-string array over the held bytes (no copy)."""
        n = self._n
        return pa.LargeStringArray.from_buffers(
            n, pa.py_buffer(self._off[: n + 1]), pa.py_buffer(self._data[: self._used]))

    def word(self, i: int) -> str:
        """The word of id ``i``."""
        return self._data[self._off[i]: self._off[i + 1]].tobytes().decode()

    def find(self, words: Sequence[str] | pa.Array) -> np.ndarray:
        """The id of each of ``words`` (-1: not in the vocabulary)."""
        arr = words if isinstance(words, pa.Array) else pa.array(list(words), pa.large_string())
        ids, _ = self._probe(string_hashes(arr), add=False)
        return ids

    def ids_of(self, other: Vocabulary | MergedVocabulary) -> np.ndarray:
        """The id here of each of ``other``'s words, in its order (-1: absent); a merged
        vocabulary's by the hashes it holds, no word hashed again."""
        hashes = (other._hash[:, : len(other)] if isinstance(other, MergedVocabulary)
                  else string_hashes(other.texts()))
        return self._probe(hashes, add=False)[0]

    def add(self, words: list[str], word: np.ndarray, attrs: np.ndarray, shares: np.ndarray,
            pair_words: np.ndarray) -> None:
        """As ``Vocabulary.add``."""
        self.add_sums(words, word_sums(len(words), word, attrs, shares, pair_words))

    def merge(self, other: Vocabulary | MergedVocabulary) -> None:
        """Add a vocabulary of later parts (its new words follow in its order)."""
        if len(other):
            self.add_sums(other.texts(), other._sums[:, : len(other)])

    def add_sums(self, words: list[str] | pa.Array, sums: np.ndarray) -> None:
        """Add ``sums`` (``FIELDS`` x ``words``) to those words' sums; ``words`` distinct."""
        arr = words if isinstance(words, pa.Array) else pa.array(words, pa.large_string())
        if len(arr) == 0:
            return
        hashes = string_hashes(arr)
        self._reserve(len(arr))
        ids, new = self._probe(hashes, add=True)
        if new.size:
            self._append(arr.take(pa.array(new)))
        self._sums = _grown(self._sums, self._n)
        self._sums[:, ids] += sums

    def _reserve(self, more: int) -> None:
        """Room in the table for ``more`` words: rebuilt twice as large when it would be
        fuller than ``_LOAD``."""
        if self._n + more >= 2**31:
            raise OverflowError("the report's vocabulary holds at most 2**31 - 1 distinct words")
        size = self._slots.size
        while (self._n + more) > self._LOAD * size:
            size *= 2
        if size != self._slots.size:
            self._slots = np.full(size, -1, np.int32)
            self._place(np.arange(self._n), self._hash[0, : self._n])

    def _place(self, ids: np.ndarray, first: np.ndarray) -> None:
        """Put ``ids`` (of distinct words, absent from the table) into free slots."""
        mask = np.uint64(self._slots.size - 1)
        slot = (first & mask).astype(np.int64)
        todo = np.arange(ids.size)
        while todo.size:
            s = slot[todo]
            want = self._slots[s] < 0
            self._slots[s[want]] = ids[todo[want]]  # of those that want a free slot, one gets it
            todo = todo[self._slots[s] != ids[todo]]
            slot[todo] = (slot[todo] + 1) & int(mask)

    def _probe(self, hashes: np.ndarray, add: bool) -> tuple[np.ndarray, np.ndarray]:
        """Each word's id (hashes: 2 x words, the words distinct), and the positions of
        those not held. With ``add`` those get the next ids in their order and their slots;
        without it their id is -1."""
        n = hashes.shape[1]
        mask = self._slots.size - 1
        slot = (hashes[0] & np.uint64(mask)).astype(np.int64)
        ids = np.full(n, -1, np.int64)
        todo = np.arange(n)
        missing = []
        while todo.size:
            at = self._slots[slot[todo]]
            free = at < 0
            held = np.flatnonzero(~free)
            same = (self._hash[0, at[held]] == hashes[0, todo[held]]) & \
                   (self._hash[1, at[held]] == hashes[1, todo[held]])
            ids[todo[held[same]]] = at[held[same]]
            missing.append(todo[free])
            rest = todo[held[~same]]
            slot[rest] = (slot[rest] + 1) & mask
            todo = rest
        new = np.sort(np.concatenate(missing)) if missing else np.empty(0, np.int64)
        if add and new.size:
            ids[new] = self._n + np.arange(new.size)
            self._hash = _grown(self._hash, self._n + new.size)
            self._hash[:, self._n: self._n + new.size] = hashes[:, new]
            self._place(ids[new], hashes[0, new])
        return ids, new

    def _append(self, words: pa.Array) -> None:
        """The new words' bytes and offsets, after the held ones (``_probe`` put their hashes
        and slots in)."""
        off, data = utf8_of(words)
        self._data = _grown(self._data, self._used + data.size)
        self._data[self._used: self._used + data.size] = data
        self._off = _grown(self._off, self._n + off.size)
        self._off[self._n + 1: self._n + off.size] = self._used + off[1:]
        self._used += data.size
        self._n += off.size - 1

