"""Shortcut suspects on planted data: a word whose maps always peak in a corner ranks first."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.report import ReportSettings, build_report
from pipeline.report.regions import Grid
from tests.report.builders import VOCAB, Row, write_input, write_results

CORNER = 63  # bottom-right cell of an 8 x 8 grid


def planted(n: int, seed: int, corner_rate: float = 1.0, word_rate: float = 0.2) -> list[Row]:
    """Captions with "vintage" (always as "a vintage photo of ...") peak in the corner with
    probability ``corner_rate``; every other map peaks in a random cell."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        words = [str(w) for w in rng.choice(VOCAB, size=int(rng.integers(2, 5)))]
        m = rng.normal(0, 0.01, 64)
        if rng.random() < word_rate:
            words = ["a", "vintage", "photo", "of", *words]
            peak = CORNER if rng.random() < corner_rate else int(rng.integers(64))
        else:
            peak = int(rng.integers(64))
        m[peak] += 0.08
        attrs = [float(x) for x in rng.normal(0, 0.02, len(words))]
        rows.append(Row(f"r{i}", words, attrs, float(rng.uniform(0.1, 0.4)), list(m), (8, 8)))
    return rows


def _report(tmp_path, rows, **settings):
    src = str(tmp_path / "input.parquet")
    write_input(src, len(rows))
    half = len(rows) // 2
    write_results(str(tmp_path / "res"), [rows[:half], rows[half:]], src)
    return build_report(str(tmp_path / "res"), str(tmp_path / "out"), ReportSettings(**settings))


@pytest.mark.parametrize("corner_rate", [1.0, 0.6])
def test_the_planted_word_tops_the_suspects(tmp_path, corner_rate):
    report = _report(tmp_path, planted(500, seed=1, corner_rate=corner_rate))
    suspects = report["space"]["suspects"]
    assert suspects and suspects[0]["word"] == "vintage"
    assert suspects[0]["modal_cell"] == CORNER
    assert "corner (bottom-right)" in suspects[0]["modal_cell_name"]
    assert [s["word"] for s in suspects] == ["vintage"]
    # words that only share its captions are explained by it, not listed
    for e in report["space"]["explained"]:
        assert e["by"] == ["vintage"]
    assert report["findings"][0]["kind"] == "shortcut"
    assert report["findings"][0]["anchor"] == "suspect-0"
    # the full ranking in the words table agrees
    words = pq.read_table(tmp_path / "out" / "aggregates" / "words.parquet").to_pylist()
    ranked = sorted((w for w in words if w["shortcut_score"] is not None),
                    key=lambda w: -w["shortcut_score"])
    assert ranked[0]["word"] == "vintage"
    # the per-region table: the dataset's cells, and the word's, peaking in the corner
    regions = pq.read_table(tmp_path / "out" / "aggregates" / "regions.parquet").to_pylist()
    assert len([r for r in regions if r["scope"] == "dataset"]) == 64
    vintage = [r for r in regions if r["scope"] == "word" and r["name"] == "vintage"]
    assert max(vintage, key=lambda r: r["top_share"])["cell"] == CORNER
    # its example pairs peak in the corner
    examples = report["review"]["suspects"][0]
    assert examples["word"] == "vintage" and examples["pairs"]
    for p in examples["pairs"]:
        assert "vintage" in [w["word"] for w in p["words"]]
        assert int(np.argmax(p["map"])) == CORNER


def test_a_model_wide_hot_spot_is_no_word_shortcut(tmp_path):
    rows = planted(300, seed=2, word_rate=0.0)
    for r in rows:  # every map peaks in the top-left corner, whatever the caption
        r.image[0] += 1.0
    report = _report(tmp_path, rows)
    assert report["space"]["suspects"] == []
    hot = [f for f in report["findings"] if f["kind"] == "hotspot"]
    assert hot and "no shortcut suspect" in hot[0]["text"]
    assert report["space"]["hotspot"]["cell"] == 0


def test_rare_words_need_the_minimum_count(tmp_path):
    report = _report(tmp_path, planted(200, seed=3), shortcut_min_count=1000)
    assert report["space"]["suspects"] == [] and report["space"]["profiled_words"] == 0


def test_grid_regions():
    g = Grid(3, 4)
    assert g.border().reshape(3, 4).tolist() == [[True] * 4, [True, False, False, True], [True] * 4]
    assert np.flatnonzero(g.corners()).tolist() == [0, 3, 8, 11]
    assert g.name(11) == "r2 c3 corner (bottom-right)" and g.name(5) == "r1 c1"
    assert g.name(4) == "r1 c0 border"


def test_dataset_maps_and_region_shares(tmp_path):
    rows = planted(40, seed=4, word_rate=0.0)
    report = _report(tmp_path, rows)
    maps = np.array([r.image for r in rows])
    sp = report["space"]
    np.testing.assert_allclose(sp["mean_map"], maps.mean(axis=0), rtol=1e-5, atol=1e-8)
    a = np.abs(maps)
    border = Grid(8, 8).border()
    np.testing.assert_allclose(sp["border_share"]["mean"],
                               (a[:, border].sum(1) / a.sum(1)).mean(), rtol=1e-5)
    tops = np.bincount(maps.argmax(1), minlength=64) / len(rows)
    np.testing.assert_allclose(sp["top_share"], tops)
