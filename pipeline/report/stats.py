"""Bounded-memory statistics for the report: moments, reservoirs, bootstrap, effect sizes.

Everything here is streaming-friendly and mergeable: ``Moments`` merges exact
count / mean / variance part by part (Chan's parallel update), ``Reservoir``
keeps a seeded uniform sample of fixed size (bottom-k of random keys, which two
workers' samples merge into exactly), and the bootstrap runs
on that sample. When a group has more values than the reservoir holds, the
bootstrap spread of the sample mean is rescaled by ``sqrt(k / n)`` and centred
on the exact mean, so the interval describes all ``n`` values, not just the
sample (the spread of a mean shrinks as ``1 / sqrt(n)``).
"""

from __future__ import annotations

import functools
import hashlib
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np


def stable_seed(seed: int, *names: object) -> list[int]:
    """A seed sequence from ``seed`` and names (crc32), independent of processing order."""
    return [int(seed), *(zlib.crc32(str(n).encode()) for n in names)]


def part_keys(seed: int, name: str, parts: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """A seeded random key per row, given by its part (``parts``; each part's rows together,
    in order) and its place in the part (``pos``): the row at place p gets the p-th draw of
    its part's own stream (``stable_seed(seed, name, part)``), so a key depends neither on
    which parts, or which slices of a part, are worked on together nor on which rows are
    kept beside it."""
    parts, pos = np.asarray(parts, np.int64), np.asarray(pos, np.int64)
    out = np.empty(parts.size)
    starts = np.flatnonzero(np.r_[True, parts[1:] != parts[:-1]]) if parts.size else parts
    for a, b in zip(starts.tolist(), np.r_[starts[1:], parts.size].tolist()):
        at = pos[a:b]
        lo = int(at.min())
        bits = np.random.PCG64(stable_seed(seed, name, int(parts[a])))
        bits.advance(lo)  # one draw a place: the stream from place lo on
        out[a:b] = np.random.Generator(bits).random(int(at.max()) - lo + 1)[at - lo]
    return out


def word_hashes(words: Sequence[str]) -> np.ndarray:
    """A stable 64-bit hash of each word (the same in every process, unlike ``hash``); the
    last few lists' hashes are kept (each task of a pass hashes the same words)."""
    return _hashes(tuple(words))


@functools.lru_cache(maxsize=8)
def _hashes(words: tuple[str, ...]) -> np.ndarray:
    out = np.array([int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(),
                                   "little") for w in words], np.uint64)
    out.flags.writeable = False
    return out


def pair_keys(row_keys: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """A seeded random key in [0, 1) per (row, word) pair, from the row's key (``part_keys``
    over every row of its part) and the word's hash (``word_hashes``), mixed by the
    splitmix64 finaliser: a pair's key depends on the pair alone, not on which other
    pairs or words are worked on with it."""
    z = splitmix64((np.asarray(row_keys) * 2.0**53).astype(np.uint64)
                   ^ np.asarray(hashes, np.uint64))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser of each 64-bit value (a bijection that spreads every input
    bit over the output; uint64 arithmetic wraps)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@dataclass
class Moments:
    """Exact count, mean and variance of a stream of values (NaNs skipped)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: np.ndarray) -> None:
        """Add a batch of values (its own moments, merged in)."""
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            return
        mb = float(v.mean())
        self.merge(Moments(v.size, mb, float(((v - mb) ** 2).sum())))

    def merge(self, other: Moments) -> None:
        """Add another stream's moments (Chan et al.'s pairwise update)."""
        if other.n == 0:
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean += delta * other.n / n
        self.m2 += other.m2 + delta * delta * self.n * other.n / n
        self.n = n

    @property
    def var(self) -> float:
        """Sample variance (ddof=1); NaN below two values."""
        return self.m2 / (self.n - 1) if self.n > 1 else float("nan")

    @property
    def std(self) -> float:
        return float(np.sqrt(self.var)) if self.n > 1 else float("nan")


@dataclass
class Reservoir:
    """A seeded uniform sample of at most ``size`` values from a stream.

    Each value gets a random key; the reservoir keeps the ``size`` smallest keys
    (a bottom-k sketch), which is a uniform sample without replacement. The
    caller passes the keys, so the sample does not depend on how many
    reservoirs share a random stream.
    """

    size: int
    keys: np.ndarray = field(default_factory=lambda: np.empty(0))
    values: np.ndarray = field(default_factory=lambda: np.empty(0))

    def add(self, values: np.ndarray, keys: np.ndarray) -> None:
        v = np.asarray(values, dtype=np.float64)
        k = np.asarray(keys, dtype=np.float64)
        ok = np.isfinite(v)
        v, k = v[ok], k[ok]
        if v.size == 0:
            return
        keys = np.concatenate([self.keys, k])
        vals = np.concatenate([self.values, v])
        if keys.size > self.size:
            keep = _smallest(keys, self.size)
            keys, vals = keys[keep], vals[keep]
        self.keys, self.values = keys, vals

    def merge(self, other: Reservoir) -> None:
        """Add another reservoir of the same size that sampled a later part of the stream:
        the result is the reservoir of the whole stream (bottom-k of bottom-ks)."""
        self.add(other.values, other.keys)


def _smallest(keys: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` smallest keys, in position order; on a tie at the boundary the
    earlier position (as a stable sort would choose)."""
    keep = np.argpartition(keys, k - 1)[:k]
    edge = keys[keep].max()
    if np.count_nonzero(keys == edge) > np.count_nonzero(keys[keep] == edge):
        keep = np.argsort(keys, kind="stable")[:k]  # a tie at the boundary
    keep.sort()
    return keep


def boot_deviations(
    values: np.ndarray, n_total: int, samples: int, rng: np.random.Generator, chunk: int = 64
) -> np.ndarray:
    """Bootstrap deviations of the mean, scaled to a population of ``n_total`` values.

    Resamples ``values`` (a reservoir of ``k`` values) with replacement, takes
    each resample's mean minus the sample mean and scales by ``sqrt(k / n_total)``.
    Memory: ``chunk * k`` indices at a time.
    """
    v = np.asarray(values, dtype=np.float64)
    k = v.size
    if k == 0 or samples < 1:
        return np.empty(0)
    out = np.empty(samples)
    base = v.mean()
    for start in range(0, samples, chunk):
        b = min(chunk, samples - start)
        idx = rng.integers(0, k, size=(b, k))
        out[start : start + b] = v[idx].mean(axis=1) - base
    return out * np.sqrt(k / max(n_total, k))


def interval(center: float, deviations: np.ndarray, confidence: float) -> tuple[float, float]:
    """Percentile interval ``center + quantiles(deviations)`` (NaN when no deviations)."""
    if deviations.size == 0 or not np.isfinite(center):
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(deviations, [alpha, 1.0 - alpha])
    return float(center + lo), float(center + hi)


def cohens_d(a: Moments, b: Moments) -> float:
    """Cohen's d: difference of means over the pooled standard deviation (exact moments)."""
    if a.n < 2 or b.n < 2:
        return float("nan")
    return float(pooled_d(a.mean - b.mean, a.var, a.n, b.var, b.n))


def pooled_d(diff: np.ndarray, var_a: np.ndarray, n_a: np.ndarray, var_b: np.ndarray,
             n_b: np.ndarray) -> np.ndarray:
    """Cohen's d elementwise from differences of means and each side's sample variance and
    count: the difference over the pooled standard deviation; where both sides are
    constant, 0 for equal means and an infinity of the difference's sign otherwise."""
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = np.sqrt(((n_a - 1) * var_a + (n_b - 1) * var_b) / (n_a + n_b - 2))
        return np.where(pooled > 0, diff / pooled,
                        np.where(diff == 0, 0.0, np.inf * np.sign(diff)))


def welch_se(var_a: np.ndarray, n_a: np.ndarray, var_b: np.ndarray,
             n_b: np.ndarray) -> np.ndarray:
    """The standard error of a difference of two means (Welch), elementwise."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(var_a / n_a + var_b / n_b)


def cliffs_delta(a: np.ndarray, b: np.ndarray) -> float:
    """Cliff's delta P(a > b) - P(a < b), by sorting (O((m + n) log n))."""
    a = np.asarray(a, dtype=np.float64)
    b = np.sort(np.asarray(b, dtype=np.float64))
    if a.size == 0 or b.size == 0:
        return float("nan")
    less = np.searchsorted(b, a, side="left")  # b values below each a
    greater = b.size - np.searchsorted(b, a, side="right")  # b values above each a
    return float((less.sum() - greater.sum()) / (a.size * b.size))


def _wilson(successes: np.ndarray, n: np.ndarray,
            z: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Wilson score interval's parts: its bounds are ``(centre -/+ margin) / scale``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        p = successes / n
        centre = p + z * z / (2 * n)
        margin = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        scale = 1 + z * z / n
    return centre, margin, scale


def wilson_lower(successes: np.ndarray, n: np.ndarray, z: float = 1.96) -> np.ndarray:
    """Wilson score lower bound of a proportion (0 where n is 0)."""
    n = np.asarray(n, dtype=np.float64)
    centre, margin, scale = _wilson(np.asarray(successes, dtype=np.float64), n, z)
    with np.errstate(divide="ignore", invalid="ignore"):
        low = (centre - margin) / scale
    return np.where(n > 0, low, 0.0)


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = 1e-6) -> float:
    """KL(p || q) in nats of two non-negative maps, each renormalised, smoothed by ``eps``."""
    p = np.asarray(p, dtype=np.float64).ravel() + eps
    q = np.asarray(q, dtype=np.float64).ravel() + eps
    p, q = p / p.sum(), q / q.sum()
    return float((p * np.log(p / q)).sum())


def z_value(confidence: float) -> float:
    """The two-sided normal quantile of ``confidence`` (1.96 for 0.95)."""
    return float(NormalDist().inv_cdf(0.5 + confidence / 2.0))


def wilson_interval(successes: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion, within [0, 1]; (0, 1) when ``n`` is 0."""
    if n <= 0:
        return 0.0, 1.0
    centre, margin, scale = _wilson(np.float64(successes), np.float64(n), z)
    return float(max(0.0, centre / scale - margin / scale)), \
        float(min(1.0, centre / scale + margin / scale))


def proportion_diff(x1: float, n1: float, x0: float, n0: float,
                    z: float = 1.96) -> tuple[float, float, float]:
    """``p1 - p0`` and Newcombe's hybrid score interval (his method 10, no continuity
    correction), built from each proportion's Wilson interval: it stays inside
    [-1, 1] and behaves at 0 and 1 (a status that never occurred), where the
    Wald interval collapses. NaNs when a side is empty."""
    if n1 <= 0 or n0 <= 0:
        return float("nan"), float("nan"), float("nan")
    p1, p0 = x1 / n1, x0 / n0
    l1, u1 = wilson_interval(x1, n1, z)
    l0, u0 = wilson_interval(x0, n0, z)
    d = p1 - p0
    lo = d - np.sqrt((p1 - l1) ** 2 + (u0 - p0) ** 2)
    hi = d + np.sqrt((u1 - p1) ** 2 + (p0 - l0) ** 2)
    return float(d), float(lo), float(hi)


def mean_diff(a: Moments, b: Moments, z: float = 1.96) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` with Welch's normal interval from exact moments (NaNs below
    two values a side)."""
    if a.n < 2 or b.n < 2:
        return float("nan"), float("nan"), float("nan")
    d = a.mean - b.mean
    se = float(welch_se(a.var, a.n, b.var, b.n))
    return float(d), d - z * se, d + z * se


def hist_distances(h1: np.ndarray, h0: np.ndarray, width: float) -> tuple[float, float]:
    """Wasserstein-1 (earth mover's) distance and Kolmogorov-Smirnov statistic of two
    histograms on the same bins of ``width``: each within one bin of the values' own."""
    h1, h0 = np.asarray(h1, np.float64), np.asarray(h0, np.float64)
    if h1.sum() <= 0 or h0.sum() <= 0:
        return float("nan"), float("nan")
    gap = np.abs(np.cumsum(h1) / h1.sum() - np.cumsum(h0) / h0.sum())
    return float(gap.sum() * width), float(gap.max())


def normal_p(z: np.ndarray) -> np.ndarray:
    """Two-sided p-values of standard normal statistics (NaN stays NaN)."""
    z = np.abs(np.asarray(z, dtype=np.float64))
    out = np.full(z.shape, np.nan)
    ok = np.isfinite(z)
    out[ok] = [math.erfc(x / math.sqrt(2.0)) for x in z[ok]]
    out[np.isinf(z)] = 0.0
    return out


def benjamini_hochberg(p: np.ndarray, q: float) -> np.ndarray:
    """Which of the tests with p-values ``p`` are discoveries at false discovery rate ``q``
    (Benjamini-Hochberg step-up; NaN p-values are not tests)."""
    p = np.asarray(p, dtype=np.float64)
    out = np.zeros(p.shape, bool)
    idx = np.flatnonzero(np.isfinite(p))
    if idx.size == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    m = idx.size
    below = p[order] <= q * np.arange(1, m + 1) / m
    if below.any():
        out[order[: int(np.flatnonzero(below)[-1]) + 1]] = True
    return out
