"""Comparing two audits on hand-built results: planted changes found, identical inputs quiet.

The oracles are naive loops over the known rows (per-word means and variances,
the share of a word's pairs whose map peaks in a cell, the exact Wasserstein
distance of two samples) and Newcombe's published intervals.
"""

from __future__ import annotations

import json
import shutil
from statistics import NormalDist

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError
from pipeline.io.previous import previous_success
from pipeline.report import ReportSettings, build_report, summary
from pipeline.report.stats import hist_distances, proportion_diff
from tests.report.builders import Row, write_input, write_results

GRID = (4, 4)
CORNER = 15
BASE = ["a", "photo", "of", "red", "blue", "circle", "square", "green"]
FAMILIES = {"gender": {"groups": {"female": ["woman"], "male": ["man"]}, "rest": "other"}}
Z = NormalDist().inv_cdf(0.975)


def night(n: int, seed: int, dog: float = 0.01, shortcut: bool = False, woman: float = 0.02,
          bad: int = 0, score: float = 0.3) -> list[Row]:
    """``n`` rows: "dog" with attribution ``dog``, "vintage" pairs peaking in the corner when
    ``shortcut``, "woman" with ``woman`` ("man": 0.02), the first ``bad`` rows failed."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        if i < bad:
            rows.append(Row(f"r{i}", [], [], 0.0, None, GRID, "bad_image", f"image {i} is empty"))
            continue
        words = [str(w) for w in rng.choice(BASE, size=int(rng.integers(3, 6)))]
        attrs = [float(x) for x in rng.normal(0.01, 0.005, len(words))]
        if rng.random() < 0.3:
            words.append("dog")
            attrs.append(float(rng.normal(dog, 0.005)))
        u = rng.random()
        if u < 0.2:
            words.append("woman")
            attrs.append(float(rng.normal(woman, 0.005)))
        elif u < 0.4:
            words.append("man")
            attrs.append(float(rng.normal(0.02, 0.005)))
        peak = int(rng.integers(16))
        if rng.random() < 0.25:
            words.insert(0, "vintage")
            attrs.insert(0, float(rng.normal(0.01, 0.005)))
            if shortcut and rng.random() < 0.8:
                peak = CORNER
        m = rng.normal(0.0, 0.004, 16)
        m[peak] += 0.03
        rows.append(Row(f"r{i}", words, attrs, float(rng.normal(score, 0.03)), list(m), GRID))
    return rows


def settings(**kw) -> ReportSettings:
    return ReportSettings(words_min_count=5, compare_min_count=5, groups=FAMILIES,
                          groups_min_pairs=20, **kw)


@pytest.fixture(scope="module")
def audits(tmp_path_factory):
    d = tmp_path_factory.mktemp("cmp")
    src = str(d / "input.parquet")
    write_input(src, 400)
    before = night(400, seed=1)
    after = night(400, seed=2, dog=0.05, shortcut=True, woman=0.05, bad=20, score=0.28)
    write_results(str(d / "base"), [before[:200], before[200:]], src, input_version="night1")
    write_results(str(d / "cur"), [after[:150], after[150:]], src, input_version="night2")
    report = build_report(str(d / "cur"), str(d / "out"), settings(), baseline=str(d / "base"))
    return d, before, after, report


def _word(rows: list[Row], word: str) -> np.ndarray:
    return np.array([a for r in rows if r.status == "ok" for w, a in zip(r.words, r.attrs)
                     if w == word])


def _corner_share(rows: list[Row], word: str) -> tuple[int, int]:
    pairs = [r for r in rows if r.status == "ok" and word in r.words]
    return sum(int(np.argmax(r.image)) == CORNER for r in pairs), len(pairs)


def test_a_planted_word_shift_is_found_with_the_naive_interval(audits):
    _, before, after, report = audits
    c = report["comparison"]
    moved = {w["word"]: w for w in c["words"]["moved"]}
    assert "dog" in moved and "woman" in moved
    a, b = _word(after, "dog"), _word(before, "dog")
    d = a.mean() - b.mean()
    half = Z * np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    w = moved["dog"]
    assert (w["count"], w["baseline_count"]) == (a.size, b.size)
    assert w["attr_diff"] == pytest.approx(d, rel=1e-6)
    assert w["attr_ci_low"] == pytest.approx(d - half, rel=1e-5)
    assert w["attr_ci_high"] == pytest.approx(d + half, rel=1e-5)
    pooled = np.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1))
                     / (a.size + b.size - 2))
    assert w["attr_d"] == pytest.approx(d / pooled, rel=1e-5)
    # the unplanted words stay put
    assert not {"red", "blue", "circle", "square", "photo"} & set(moved)
    table = pq.read_table(audits[0] / "out" / "aggregates" / "comparison_words.parquet")
    rows = {r["word"]: r for r in table.to_pylist()}
    assert rows["dog"]["moved"] and not rows["circle"]["moved"]
    assert rows["dog"]["attr_diff"] == pytest.approx(d, rel=1e-6)


def test_the_word_table_worked_out_in_slices_is_the_same(audits, tmp_path, monkeypatch):
    """The union of the two vocabularies is worked out and written ``summary.WORD_ROWS``
    words at a time: in slices of 2 words the section and the table are those the naive
    checks above hold for, planted words moved included."""
    d, _, _, report = audits
    monkeypatch.setattr(summary, "WORD_ROWS", 2)
    sliced = build_report(str(d / "cur"), str(tmp_path / "out"), settings(),
                          baseline=str(d / "base"))
    assert sliced["comparison"]["words"] == report["comparison"]["words"]
    assert {"dog", "woman"} <= {w["word"] for w in sliced["comparison"]["words"]["moved"]}
    whole = pq.read_table(d / "out" / "aggregates" / "comparison_words.parquet")
    path = tmp_path / "out" / "aggregates" / "comparison_words.parquet"
    assert pq.ParquetFile(path).metadata.num_row_groups == -(-whole.num_rows // 2) > 2
    table = pq.read_table(path)
    assert table.schema == whole.schema and table.schema.field("word").type == pa.string()
    for name in whole.column_names:  # NaN where NaN
        np.testing.assert_array_equal(table[name].to_numpy(zero_copy_only=False),
                                      whole[name].to_numpy(zero_copy_only=False), name)


def test_a_new_shortcut_is_found_with_both_shares(audits):
    _, before, after, report = audits
    entries = {e["word"]: e for e in report["comparison"]["shortcuts"]["words"]}
    e = entries["vintage"]
    assert e["change"] == "appeared" and e["suspect_now"] and not e["suspect_before"]
    assert e["cell"] == CORNER
    h1, n1 = _corner_share(after, "vintage")
    h0, n0 = _corner_share(before, "vintage")
    assert (e["pairs"], e["baseline_pairs"]) == (n1, n0)
    assert e["share"] == pytest.approx(h1 / n1) and e["baseline_share"] == pytest.approx(h0 / n0)
    assert e["ci_low"] > 0


def test_findings_are_ranked_like_the_report(audits):
    _, before, after, report = audits
    f = report["comparison"]["findings"]
    kinds = [x["kind"] for x in f]
    assert kinds[0] == "shortcut" and "vintage" in f[0]["text"] and "New shortcut" in f[0]["text"]
    order = ["shortcut", "group_gap", "status", "score", "group_share", "word"]
    assert kinds == sorted(kinds, key=order.index)
    assert {"group_gap", "status", "score", "word"} <= set(kinds)
    gap = next(x for x in f if x["kind"] == "group_gap")
    assert gap["change"] == "opened" and "female" in gap["text"]
    status = next(x for x in f if x["kind"] == "status")
    assert status["change"] == "rose" and "bad_image 0 \u2192 20" in status["text"]
    html = (audits[0] / "out" / "report.html").read_text()
    assert html.index('id="comparison"') < html.index('id="findings"')
    for x in f:
        assert f'id="{x["anchor"]}"' in html


def test_the_score_shift_matches_welch_and_the_exact_wasserstein_distance(audits):
    _, before, after, report = audits
    sc = report["comparison"]["score"]
    a = np.array([r.score for r in after if r.status == "ok"])
    b = np.array([r.score for r in before if r.status == "ok"])
    d = a.mean() - b.mean()
    half = Z * np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    assert sc["diff"] == pytest.approx(d, rel=1e-5)
    assert (sc["ci_low"], sc["ci_high"]) == pytest.approx((d - half, d + half), rel=1e-4)
    assert sc["shifted"]
    # W1 of two samples: the integral of |F_a - F_b| over the merged values
    xs = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), xs[:-1], side="right") / a.size
    fb = np.searchsorted(np.sort(b), xs[:-1], side="right") / b.size
    exact = float(np.sum(np.abs(fa - fb) * np.diff(xs)))
    assert abs(sc["wasserstein"] - exact) <= 2 * 0.005  # within the histogram's bins


def test_identical_inputs_give_no_findings(audits, tmp_path):
    d = audits[0]
    same = build_report(str(d / "base"), str(tmp_path / "same"), settings(),
                        baseline=str(d / "base"))
    c = same["comparison"]
    assert c["findings"] == []
    assert c["settings"]["same"] and c["settings"]["input"]["same"]
    assert c["words"]["moved"] == [] and not c["score"]["shifted"]
    assert all(e["change"] == "unchanged" for e in c["shortcuts"]["words"])
    assert all(g["what"] == "unchanged" for fam in c["groups"] for g in fam["gaps"])
    # a copy elsewhere reads the same: the same input, no findings either
    shutil.copytree(d / "base", tmp_path / "copy")
    again = build_report(str(d / "base"), str(tmp_path / "same2"), settings(),
                         baseline=str(tmp_path / "copy"))
    assert again["comparison"]["findings"] == []
    # the report's own sections do not depend on the baseline
    alone = build_report(str(d / "base"), str(tmp_path / "alone"), settings())
    for key in ("overview", "words", "groups", "space", "findings", "review", "flags"):
        assert same[key] == alone[key], key
    assert "comparison" not in alone


def test_settings_that_differ_are_stated_and_confound_the_findings(audits, tmp_path):
    d, before, after, _ = audits
    src = str(d / "input.parquet")
    write_results(str(tmp_path / "other"), [after], src, meta={"model": "ViT-B-32",
                                                               "weights": "openai"},
                  input_version="night2")
    report = build_report(str(d / "cur"), str(tmp_path / "out"), settings(),
                          baseline=str(tmp_path / "other"))
    st = report["comparison"]["settings"]
    assert [x["setting"] for x in st["differences"]] == ["model", "weights"]
    assert st["input"]["same"] is True
    assert any("every difference below comes from the settings" in t for t in st["caveats"])
    # same rows under another "model": nothing to find, and nothing blamed on the data
    assert report["comparison"]["findings"] == []
    # steps alone on other data: attributions are confounded, scores are not
    write_results(str(tmp_path / "steps"), [before], src, meta={"steps": 50},
                  input_version="night1")
    report = build_report(str(d / "cur"), str(tmp_path / "out2"), settings(),
                          baseline=str(tmp_path / "steps"))
    st = report["comparison"]["settings"]
    assert [x["setting"] for x in st["differences"]] == ["steps"]
    assert any("CLIP scores and statuses still compare" in t for t in st["caveats"])
    f = {x["kind"]: x for x in report["comparison"]["findings"]}
    assert f["shortcut"]["confounded_by"] == ["steps"] and "not attributable" in f["shortcut"]["text"]
    assert f["score"]["confounded_by"] == [] and f["status"]["confounded_by"] == []


def test_newcombe_intervals_match_the_published_examples():
    """Newcombe (1998), Statistics in Medicine 17:873, table II, method 10."""
    for (x1, n1, x0, n0), (lo, hi) in [((56, 70, 48, 80), (0.0524, 0.3339)),
                                         ((9, 10, 3, 10), (0.1705, 0.8090)),
                                         ((5, 56, 0, 29), (-0.0381, 0.1926))]:
        _, a, b = proportion_diff(x1, n1, x0, n0)
        assert (round(a, 4), round(b, 4)) == (lo, hi)


def test_histogram_distances_bound_the_sample_ones():
    rng = np.random.default_rng(4)
    a, b = rng.normal(0.3, 0.05, 3000), rng.normal(0.27, 0.06, 2000)
    edges = np.linspace(-1, 1, 401)
    w1, ks = hist_distances(np.histogram(a, edges)[0], np.histogram(b, edges)[0], 0.005)
    xs = np.sort(np.concatenate([a, b]))
    fa = np.searchsorted(np.sort(a), xs, side="right") / a.size
    fb = np.searchsorted(np.sort(b), xs, side="right") / b.size
    assert abs(w1 - float(np.sum(np.abs(fa - fb)[:-1] * np.diff(xs)))) <= 0.01
    assert abs(ks - float(np.abs(fa - fb).max())) <= 0.05


def test_the_previous_successful_date_is_found(tmp_path):
    root = tmp_path / "audits"
    for date, ok in (("2026-11-20", True), ("2026-11-25", True), ("2026-11-27", False),
                     ("2026-11-29", True), ("2026-11-30", True)):
        (root / f"dt={date}").mkdir(parents=True)
        (root / f"dt={date}" / "_manifest.json").write_text("{}")
        if ok:
            (root / f"dt={date}" / "_SUCCESS").write_text("{}")
    (root / "dt=garbage").mkdir()
    from pipeline.config import StorageSettings

    s = StorageSettings()
    # 27 is partial (no _SUCCESS), 30 is later: the latest earlier success is 25
    assert previous_success(str(root / "dt=2026-11-29"), s) == f"{root}/dt=2026-11-25"
    assert previous_success(f"{root}/dt=2026-11-25/", s) == f"{root}/dt=2026-11-20"
    assert previous_success(str(root / "dt=2026-11-20"), s) is None
    with pytest.raises(ValueError, match="not a dated output"):
        previous_success(str(root), s)


def test_the_previous_date_on_s3(tmp_path, s3_endpoint):
    import s3fs

    from pipeline.config import StorageSettings

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("nibt-prev")
    for date, ok in (("2026-11-27", True), ("2026-11-28", False), ("2026-11-29", True)):
        fs.pipe_file(f"nibt-prev/a/dt={date}/_manifest.json", b"{}")
        if ok:
            fs.pipe_file(f"nibt-prev/a/dt={date}/_SUCCESS", b"{}")
    s = StorageSettings(endpoint_url=s3_endpoint)
    assert previous_success("s3://nibt-prev/a/dt=2026-11-29", s) == "s3://nibt-prev/a/dt=2026-11-27"
    assert previous_success("s3://nibt-prev/b/dt=2026-11-29", s) is None


def test_the_command_compares_with_a_baseline_and_previous(audits, tmp_path):
    from hydra import compose, initialize_config_dir

    from pipeline.cli.report import CONF_DIR, run_from_config

    d = audits[0]
    root = tmp_path / "root"
    shutil.copytree(d / "base", root / "dt=2026-11-28")
    (root / "dt=2026-11-28" / "_SUCCESS").write_text("{}")
    shutil.copytree(d / "cur", root / "dt=2026-11-29")

    def run(*overrides: str) -> int:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="report", overrides=list(overrides))
        return run_from_config(cfg)

    args = ["report.words_min_count=5", "report.compare_min_count=5",
            "+report.groups.gender={groups:{female:[woman],male:[man]},rest:other}"]
    assert run(f"results='{root}/dt=2026-11-29'", f"output={tmp_path}/o1", "baseline=previous",
               *args) == 0
    report = json.loads((tmp_path / "o1" / "report.json").read_text())
    assert report["baseline"] == f"{root}/dt=2026-11-28"
    assert report["comparison"]["findings"][0]["kind"] == "shortcut"
    assert (tmp_path / "o1" / "aggregates" / "comparison_words.parquet").is_file()
    # the first date has nothing before it: a plain report
    assert run(f"results='{root}/dt=2026-11-28'", f"output={tmp_path}/o2", "baseline=previous",
               *args) == 0
    assert "comparison" not in json.loads((tmp_path / "o2" / "report.json").read_text())
    # previous needs a dated output; a missing baseline is a configuration error
    assert run(f"results={d / 'cur'}", f"output={tmp_path}/o3", "baseline=previous") == 2
    assert run(f"results={d / 'cur'}", f"output={tmp_path}/o4",
               f"baseline={tmp_path}/nothing") == 2
    with pytest.raises(ConfigError, match="baseline: cannot read"):
        build_report(str(d / "cur"), str(tmp_path / "o5"), baseline=str(tmp_path / "nothing"))


def test_an_empty_or_failed_baseline_still_gives_a_report(audits, tmp_path):
    d = audits[0]
    src = str(d / "input.parquet")
    write_results(str(tmp_path / "empty"), [], src)
    failed = [Row(f"f{i}", [], [], 0.0, None, GRID, "error", "worker 3 raised") for i in range(30)]
    write_results(str(tmp_path / "failed"), [failed], src)
    for name in ("empty", "failed"):
        report = build_report(str(d / "cur"), str(tmp_path / f"out-{name}"), settings(),
                              baseline=str(tmp_path / name))
        c = report["comparison"]
        assert c["score"]["diff"] is None and not c["score"]["shifted"]
        assert all(e["change"] == "appeared" for e in c["shortcuts"]["words"])
        assert (tmp_path / f"out-{name}" / "report.html").is_file()
    # everything failed before: the share not attributed fell
    assert next(f for f in c["findings"] if f["kind"] == "status")["change"] == "fell"


def test_benjamini_hochberg_matches_the_papers_example():
    """Benjamini & Hochberg (1995), JRSS B 57:289, section 4.1: 15 p-values, 4 rejected at 0.05."""
    from pipeline.report.stats import benjamini_hochberg, normal_p

    p = [0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344, 0.0459, 0.3240,
         0.4262, 0.5719, 0.6528, 0.7590, 1.0000]
    assert benjamini_hochberg(np.array(p[::-1]), 0.05).tolist() == [False] * 11 + [True] * 4
    assert normal_p(np.array([Z, 0.0, np.inf, np.nan])) == pytest.approx([0.05, 1.0, 0.0, np.nan],
                                                                         nan_ok=True)


def test_many_words_without_a_change_do_not_move(tmp_path):
    """Two nights of the same distribution over 300 words: some words' own intervals exclude
    0 by chance, none is a discovery once the false discovery rate is controlled."""
    vocab = [f"w{i}" for i in range(300)]

    def rows(seed: int) -> list[Row]:
        rng = np.random.default_rng(seed)
        return [Row(f"r{i}", [str(w) for w in rng.choice(vocab, 6)],
                    [float(x) for x in rng.normal(0.01, 0.01, 6)], 0.3, None, GRID)
                for i in range(1500)]

    write_results(str(tmp_path / "a"), [rows(1)], str(tmp_path / "in.parquet"))
    write_results(str(tmp_path / "b"), [rows(2)], str(tmp_path / "in.parquet"))
    report = build_report(str(tmp_path / "a"), str(tmp_path / "o"), settings(),
                          baseline=str(tmp_path / "b"))
    assert report["comparison"]["words"]["compared"] == 300
    assert report["comparison"]["words"]["moved"] == []
    table = pq.read_table(tmp_path / "o" / "aggregates" / "comparison_words.parquet").to_pylist()
    by_chance = [r for r in table if r["attr_ci_low"] > 0 or r["attr_ci_high"] < 0]
    assert by_chance and all(abs(r["attr_d"]) >= 0.2 for r in by_chance)
