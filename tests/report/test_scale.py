"""The synthetic results of the scale benchmark (benchmarks/report.py), small: they are what
the benchmark claims, the report reads them right, and the benchmark section runs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest

from benchmarks import report as bench
from pipeline.engine.words import SPECIAL, merge_words
from pipeline.io.manifest import read_manifest
from pipeline.io.results import read_results
from pipeline.io.schema import RESULT_FIELDS
from pipeline.report import ReportSettings, build_report


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic") / "results"
    bench.make_results(str(root), rows=6000, parts=3, vocab_size=500, seed=1)
    return root


def test_synthetic_results_follow_the_schema_and_the_plan(synthetic):
    manifest = read_manifest(str(synthetic))
    assert [p["rows"] for p in manifest["parts"]] == [2000, 2000, 2000]
    table = read_results(str(synthetic))
    assert table.schema.names == [f.name for f in RESULT_FIELDS]
    assert table.schema.types == [f.type for f in RESULT_FIELDS]
    rows = table.to_pylist()
    counts = Counter(r["status"] for r in rows)
    assert sum(sum(p["status_counts"].values()) for p in manifest["parts"]) == 6000
    assert counts == sum((Counter(p["status_counts"]) for p in manifest["parts"]), Counter())
    assert 0.95 < counts["ok"] / 6000 < 0.995
    vocab = set(bench.vocabulary(500, 1))
    corner = total = 0
    for r in rows:
        if r["status"] != "ok":
            assert r["score"] is None and r["tokens"] is None and r["image_attr"] is None
            assert r["error"]
            continue
        assert (r["grid_h"], r["grid_w"]) == (7, 7) and len(r["image_attr"]) == 49
        assert r["tokens"][0] == SPECIAL[0] and r["tokens"][-1] == SPECIAL[1]
        assert len(r["tokens"]) == len(r["text_attr"]) and 6 <= len(r["tokens"]) <= 22
        words = [w for w, _ in merge_words(r["tokens"], r["text_attr"], lower=True)]
        assert 4 <= len(words) <= 10 and set(words) <= vocab
        if bench.SHORTCUT in words:
            total += 1
            corner += int(np.argmax(r["image_attr"])) == bench.CORNER
    assert total > 60 and corner / total > 0.8


def test_the_report_of_synthetic_results_counts_every_word(synthetic, tmp_path):
    report = build_report(str(synthetic), str(tmp_path / "out"), ReportSettings(
        words_min_count=5, groups={"g": {"groups": {"f": ["woman", "girl"], "m": ["man", "boy"],
                                                    "o": ["old man"]}}}))
    uses, pairs = Counter(), Counter()
    group_pairs = Counter()
    for r in read_results(str(synthetic), columns=["status", "tokens", "text_attr"]).to_pylist():
        if r["status"] != "ok":
            continue
        words = [w for w, _ in merge_words(r["tokens"], r["text_attr"], lower=True)]
        uses.update(words)
        pairs.update(set(words))
        old_man = sum(1 for a, b in zip(words, words[1:]) if (a, b) == ("old", "man"))
        hits = {g for g, ts in (("f", ["woman", "girl"]), ("m", ["boy"])) if set(ts) & set(words)}
        if old_man:
            hits.add("o")
        if words.count("man") > old_man:  # the longer term wins: "old man" is not "man"
            hits.add("m")
        group_pairs.update(hits)
    table = pq.read_table(tmp_path / "out" / "aggregates" / "words.parquet").to_pylist()
    assert {t["word"]: t["count"] for t in table} == dict(uses)
    assert {t["word"]: t["pairs"] for t in table} == dict(pairs)
    assert {g["name"]: g["pairs"] for g in report["groups"][0]["groups"]} == dict(group_pairs)
    assert report["space"]["suspects"][0]["word"] == bench.SHORTCUT


def test_the_benchmark_section_runs_small(monkeypatch):
    monkeypatch.setenv("NIBT_BENCH_REPORT_ROWS", "20000")
    figures = bench.run()
    assert figures["rows"] == 20000 and figures["parts"] == 2
    assert figures["planted_shortcut_found"] and figures["within_bar"]
    assert 0 < figures["report_peak_rss_mb"] < 2048 and figures["report_seconds"] > 0
    assert figures["planted_word_change_found"] and figures["compare_within_bar"]
    assert figures["compare_rows"] == [20000, 20000] and figures["compare_seconds"] > 0
