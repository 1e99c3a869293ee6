"""Per-word and per-group aggregates against naive loops over the known rows; bounded memory."""

from __future__ import annotations

import tracemalloc
import weakref
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.report import ReportSettings, build_report, summary
from pipeline.report.aggregate import Aggregator
from tests.report.builders import random_rows, row_dict, write_input, write_results

FAMILIES = {"gender": {"groups": {"female": ["woman", "girl"], "male": ["man", "boy"]},
                       "rest": "other"}}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """120 rows in 3 parts (every 9th failed) and their report."""
    d = tmp_path_factory.mktemp("agg")
    src = str(d / "input.parquet")
    write_input(src, 120)
    rows = random_rows(120, seed=11, bad_every=9)
    write_results(str(d / "res"), [rows[:50], rows[50:51], rows[51:]], src)
    s = ReportSettings(words_min_count=1, groups=FAMILIES, groups_min_pairs=1, seed=3)
    report = build_report(str(d / "res"), str(d / "out"), s)
    return rows, report, d / "out"


def test_word_aggregates_match_a_naive_loop(built):
    rows, report, out = built
    acc = defaultdict(lambda: {"count": 0, "sum": 0.0, "neg": 0, "share": 0.0, "pairs": 0})
    for r in rows:
        if r.status != "ok":
            continue
        total = sum(abs(a) for a in r.attrs)
        for w, a in zip(r.words, r.attrs):
            e = acc[w.lower()]
            e["count"] += 1
            e["sum"] += a
            e["neg"] += a < 0
            e["share"] += a / total
        for w in {w.lower() for w in r.words}:
            acc[w]["pairs"] += 1
    table = pq.read_table(out / "aggregates" / "words.parquet").to_pylist()
    assert {t["word"] for t in table} == set(acc)
    for t in table:
        e = acc[t["word"]]
        assert (t["count"], t["pairs"]) == (e["count"], e["pairs"]), t["word"]
        assert t["mean_attr"] == pytest.approx(e["sum"] / e["count"], rel=1e-5, abs=1e-9)
        assert t["share_negative"] == pytest.approx(e["neg"] / e["count"])
        assert t["mean_share"] == pytest.approx(e["share"] / e["count"], rel=1e-4, abs=1e-7)
    mean = {w: e["sum"] / e["count"] for w, e in acc.items()}
    helps = [w["word"] for w in report["words"]["helps"]]
    assert helps == sorted((w for w in acc if mean[w] > 0), key=lambda w: (-mean[w], w))[:15]
    hurts = [w["word"] for w in report["words"]["hurts"]]
    assert hurts == sorted((w for w in acc if mean[w] < 0), key=lambda w: (mean[w], w))[:15]
    assert report["words"]["distinct"] == len(acc)


def test_words_parquet_written_in_slices_is_the_same_table(built, tmp_path, monkeypatch):
    """``words.parquet`` is written a slice of ``WORD_ROWS`` words at a time (one row group
    each): in slices of 3 words it is the table the naive loop above checks, profiles on
    the same words."""
    rows, _, out = built
    monkeypatch.setattr(summary, "WORD_ROWS", 3)
    build_report(str(out.parent / "res"), str(tmp_path / "out"), ReportSettings(
        words_min_count=1, groups=FAMILIES, groups_min_pairs=1, seed=3))
    whole = pq.read_table(out / "aggregates" / "words.parquet")
    path = tmp_path / "out" / "aggregates" / "words.parquet"
    assert pq.ParquetFile(path).metadata.num_row_groups == -(-whole.num_rows // 3) > 2
    sliced = pq.read_table(path)
    assert sliced.schema == whole.schema and sliced.to_pylist() == whole.to_pylist()
    assert whole.column("space_pairs").null_count < whole.num_rows  # some words have profiles


def _oracle_groups(rows):
    """Per group: scores, term attributions, term shares (numpy on all values)."""
    terms = {"female": {"woman", "girl"}, "male": {"man", "boy"}}
    out = {g: {"score": [], "term_attr": [], "term_share": []} for g in ("female", "male", "other")}
    overlap = 0
    for r in rows:
        if r.status != "ok":
            continue
        words = [w.lower() for w in r.words]
        total = sum(abs(a) for a in r.attrs)
        hit = [g for g, ts in terms.items() if any(w in ts for w in words)]
        overlap += len(hit) > 1
        for g in hit:
            occ = [a for w, a in zip(words, r.attrs) if w in terms[g]]
            out[g]["score"].append(r.score)
            out[g]["term_attr"].append(np.mean(occ))
            out[g]["term_share"].append(sum(occ) / total)
        if not hit:
            out["other"]["score"].append(r.score)
    return {g: {m: np.asarray(v) for m, v in d.items()} for g, d in out.items()}, overlap


def test_group_statistics_match_a_direct_computation(built):
    rows, report, _ = built
    oracle, overlap = _oracle_groups(rows)
    fam = report["groups"][0]
    assert fam["overlap"] == overlap
    for g in fam["groups"]:
        o = oracle[g["name"]]
        assert g["pairs"] == len(o["score"])
        for m in ("score", "term_attr", "term_share"):
            v = o[m]
            if v.size == 0:
                assert g[m]["n"] == 0 and g[m]["mean"] is None
                continue
            assert g[m]["mean"] == pytest.approx(v.mean(), rel=1e-4, abs=1e-7)
            assert g[m]["std"] == pytest.approx(v.std(ddof=1), rel=1e-3, abs=1e-7)
            assert g[m]["ci_low"] <= g[m]["mean"] <= g[m]["ci_high"]
    effects = {(e["a"], e["b"], e["metric"]): e for e in fam["effects"]}
    for (a, b, m), e in effects.items():
        va, vb = oracle[a][m], oracle[b][m]
        pooled = np.sqrt(((va.size - 1) * va.var(ddof=1) + (vb.size - 1) * vb.var(ddof=1))
                         / (va.size + vb.size - 2))
        assert e["cohens_d"] == pytest.approx((va.mean() - vb.mean()) / pooled, rel=1e-3)
        brute = np.sign(va[:, None] - vb[None, :]).mean()
        assert e["cliffs_delta"] == pytest.approx(brute, abs=1e-6)
        assert e["ci_low"] <= e["diff"] <= e["ci_high"]
    assert ("female", "other", "term_attr") not in effects  # "other" has no terms
    assert ("female", "male", "score") in effects


ROWS = 40
TEMPLATES = [[row_dict(r, "/in.parquet", i) for i, r in enumerate(random_rows(ROWS, seed=s))]
             for s in range(3)]


def _tables(n_parts: int, refs: list):
    """A stream of result parts that checks the consumer drops the parts it is done with."""
    for p in range(n_parts):
        if p >= 2:  # tables hold no reference cycles: refcounting frees them
            assert refs[p - 2]() is None, "a consumed part is still referenced"
        t = pa.Table.from_pylist(TEMPLATES[p % 3])
        refs.append(weakref.ref(t))
        yield t
        del t


def _peak(n_parts: int) -> int:
    s = ReportSettings(groups=FAMILIES, bootstrap_reservoir=64, review_pairs=4)
    agg = Aggregator(s, s.families())
    tracemalloc.start()
    agg.consume(_tables(n_parts, []))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert agg.rows == n_parts * ROWS
    return peak


def test_aggregation_streams_parts_in_bounded_memory():
    refs: list = []
    s = ReportSettings(groups=FAMILIES)
    Aggregator(s, s.families()).consume(_tables(6, refs))
    small, large = _peak(3), _peak(12)
    assert large < 1.2 * small + 100_000, (small, large)
