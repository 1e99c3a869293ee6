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


def test_the_vocabulary_grows_with_the_rows_when_asked(tmp_path):
    """``tail``: 5% of the captions hold one of ``tail`` rare words, so the distinct words
    grow with the rows (the benchmark's memory bar is measured so)."""
    pieces, index = bench._vocab(500, 1)
    words = set()
    for p in range(4):
        t = bench.make_part(2000, p, pieces, index, seed=1, tail=10_000)
        for r in t.column("tokens").to_pylist():
            words.update(x[:-4] for x in r or [] if x.startswith("t") and x.endswith("x</w>"))
    assert 300 < len(words) <= 0.05 * 8000  # about 5% of 8,000 captions, nearly all distinct


def test_the_benchmark_section_runs_small(monkeypatch, tmp_path):
    """One local report (its 4 parts make one task: 1 worker only), the comparison, one round
    of the runs with tasks as large as at full size (here 10,000 rows: 4 tasks, 2 workers;
    as the report cuts 40,000 rows, one task), and one round of the read window's runs (3
    parts of the audit's size through the local S3 store), and one round of the merge of the
    words alone (4 tasks); the store that is far away has its own test (test_reads.py)."""
    for name, value in (("ROWS", "20000"), ("PART_ROWS", "5000"), ("REMOTE_ROWS", "0"),
                        ("RAY_ROWS", "0"), ("MEMORY_ROWS", "0"), ("COMPARE_ROWS", "20000"),
                        ("WINDOW_ROWS", "0"), ("TASKS_ROWS", "0"), ("VOCABULARY_ROWS", "0")):
        monkeypatch.setenv(f"NIBT_BENCH_REPORT_{name}", value)
    tasks = bench.tasks_runs(tmp_path, 40_000, task_rows=10_000, rounds=1, part_rows=2_000)
    assert [(t["task_rows"], t["tasks_a_pass"], t["workers"]) for t in tasks] == [
        (10_000, 4, 2), (None, 1, 1)]
    assert all(t["driver_passes_cpu_seconds"] > 0 and t["seconds"] > t["passes_seconds"] > 0
               for t in tasks)
    window = bench.window_runs(tmp_path, 140_000, 0, rounds=1)
    assert [(w["window"], w["rows"], w["part_rows"], w["tasks"]) for w in window] == [
        ("bytes", 140_000, 65_536, 1), ("parts", 140_000, 65_536, 1)]
    assert all(w["seconds"] > 0 and w["workers_peak_rss_mb"] and
               all(0 < m < 2048 for m in w["workers_peak_rss_mb"]) for w in window)
    vocab = bench.vocabulary_runs(4_000_000, task_rows=1_000_000, rounds=1)
    assert [(v["vocabulary"], v["tasks"]) for v in vocab] == [("merged", 4), ("dictionary", 4)]
    assert vocab[0]["distinct_words"] == vocab[1]["distinct_words"] > 100_000
    assert all(v["cpu_ms_a_task"] > 0 and v["resident_bytes_a_word"] > 0 for v in vocab)
    assert vocab[0]["arrays_bytes_a_word"] > 0 and vocab[1]["arrays_bytes_a_word"] is None
    figures = bench.run()
    [run] = figures["runs"]
    assert (run["rows"], run["part_rows"], run["parts"], run["workers"]) == (20000, 5000, 4, 1)
    assert run["planted_shortcut_found"] and run["distinct_words"] > 500 and run["flagged"] > 0
    assert 0 < run["peak_rss_mb"] < 2048 and run["seconds"] > 0
    assert set(run["step_seconds"]) == set(run["driver_step_cpu_seconds"]) == {
        "sample", "first_pass", "space_pass", "last_pass", "sections", "render", "write"}
    c = figures["compare"]
    assert c["planted_word_change_found"] and c["rows"] == [20000, 20000] and c["seconds"] > 0
    # both audits carry the long tail, and the baseline's own pseudo-words join the union
    assert c["union_words"] > c["distinct_words"] > 1000 and c["part_rows"] == 10_000
    assert 0 < c["driver_peak_rss_mb"] <= c["peak_rss_mb"] < 2048


def test_the_horizon_takes_the_merge_from_the_report_process_cpu_in_the_passes():
    """The extrapolation's merge rate: rows over the report's own CPU in the passes where the
    run measured it by step, else its CPU in all less the steps after the passes (wall)."""
    from benchmarks import tables

    run = {"rows": 1_000_000, "part_rows": 10_000, "workers": 2, "store": "local",
           "rows_per_cpu_s": 100_000, "driver_cpu_seconds": 9.0,
           "step_seconds": {"sample": 0.1, "first_pass": 3.0, "space_pass": 0.0,
                            "last_pass": 1.0, "sections": 1.0, "render": 1.0, "write": 1.0},
           "driver_step_cpu_seconds": {"sample": 0.5, "first_pass": 1.5, "space_pass": 0.0,
                                       "last_pass": 0.5, "sections": 1.0, "render": 0.2,
                                       "write": 1.0}}
    assert "at 500,000 rows per CPU-second" in tables._horizon({"runs": [run]})
    del run["driver_step_cpu_seconds"]
    assert "at 166,667 rows per CPU-second" in tables._horizon({"runs": [run]})
