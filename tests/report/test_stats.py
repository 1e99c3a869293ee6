"""Streaming statistics against direct numpy computations on all values."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.report.stats import (
    Moments,
    Reservoir,
    boot_deviations,
    cliffs_delta,
    cohens_d,
    interval,
    kl_divergence,
    wilson_lower,
)


def _moments(values: np.ndarray, chunks: int) -> Moments:
    m = Moments()
    for part in np.array_split(values, chunks):
        m.add(part)
    return m


def test_moments_merge_parts_exactly():
    v = np.random.default_rng(1).normal(3.0, 2.0, size=1001)
    m = _moments(np.append(v, np.nan), 7)  # NaN is skipped
    assert m.n == v.size
    assert m.mean == pytest.approx(v.mean(), rel=1e-12)
    assert m.var == pytest.approx(v.var(ddof=1), rel=1e-10)


def test_reservoir_keeps_the_smallest_keys_whatever_the_chunking():
    rng = np.random.default_rng(2)
    values, keys = rng.normal(size=500), rng.random(500)
    one, many = Reservoir(40), Reservoir(40)
    one.add(values, keys)
    for v, k in zip(np.array_split(values, 13), np.array_split(keys, 13)):
        many.add(v, k)
    expected = values[np.sort(np.argsort(keys)[:40])]
    assert sorted(one.values) == sorted(many.values) == sorted(expected)


def test_bootstrap_interval_covers_the_true_mean_and_is_deterministic():
    covered = 0
    for i in range(60):
        v = np.random.default_rng(100 + i).normal(1.0, 2.0, size=120)
        dev = boot_deviations(v, v.size, 400, np.random.default_rng([7, i]))
        lo, hi = interval(v.mean(), dev, 0.95)
        covered += lo <= 1.0 <= hi
        if i == 0:
            again = interval(v.mean(), boot_deviations(v, v.size, 400, np.random.default_rng([7, i])),
                             0.95)
            assert (lo, hi) == again
            # about the normal-theory interval
            half = 1.96 * v.std(ddof=1) / np.sqrt(v.size)
            assert (hi - lo) == pytest.approx(2 * half, rel=0.2)
    assert 0.85 <= covered / 60 <= 1.0


def test_bootstrap_from_a_reservoir_is_rescaled_to_the_population():
    rng = np.random.default_rng(3)
    population = rng.normal(0.5, 1.0, size=40_000)
    res = Reservoir(2000)
    res.add(population, rng.random(population.size))
    dev = boot_deviations(res.values, population.size, 500, np.random.default_rng(4))
    lo, hi = interval(population.mean(), dev, 0.95)
    half = 1.96 * population.std(ddof=1) / np.sqrt(population.size)
    assert lo <= 0.5 <= hi
    assert (hi - lo) == pytest.approx(2 * half, rel=0.25)


def test_effect_sizes_against_brute_force():
    rng = np.random.default_rng(5)
    a, b = rng.normal(0.3, 1.0, 70), np.round(rng.normal(0.0, 1.5, 90), 1)
    a[:5] = b[:5]  # ties
    brute = np.sign(a[:, None] - b[None, :]).mean()
    assert cliffs_delta(a, b) == pytest.approx(brute, abs=1e-12)
    pooled = np.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1))
                     / (a.size + b.size - 2))
    assert cohens_d(_moments(a, 3), _moments(b, 4)) == pytest.approx((a.mean() - b.mean()) / pooled)


def test_wilson_and_kl():
    assert float(wilson_lower(np.array([8]), np.array([10]))[0]) == pytest.approx(0.4902, abs=1e-4)
    assert float(wilson_lower(np.array([0]), np.array([0]))[0]) == 0.0
    p = np.array([0.5, 0.5, 0.0, 0.0])
    assert kl_divergence(p, p) == pytest.approx(0.0, abs=1e-9)
    assert kl_divergence(p, np.full(4, 0.25)) == pytest.approx(np.log(2), rel=1e-3)
