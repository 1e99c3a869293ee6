"""The report spread over workers is the report of one process.

Partial aggregates of runs of parts merge into what one aggregator reading every
part holds: counts, histograms, reservoirs, the pairs to review, error kinds and
word maps exactly, moments and sums to 1e-12. On 100,000 synthetic rows in 100
parts cut into 13 tasks, the report of two worker processes (one of them killed on
its way, its task sent again) is byte for byte the report of one, its curation
list matches a naive sort of every row, and one task reading every part gives the
same report but for rounding.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import signal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks import report as bench
from pipeline.config import StorageSettings
from pipeline.io.manifest import read_manifest
from pipeline.io.results import read_results
from pipeline.report import ReportSettings, aggregate, build, build_report, passes
from pipeline.report.aggregate import Aggregator, GridConflict
from pipeline.report.pool import InProcess, LocalPool
from pipeline.report.regions import Grid
from pipeline.report.space import CoOccurrence, WordSpace

FAMILIES = {"gender": {"groups": {"female": ["woman", "girl"], "male": ["man", "boy"],
                                  "elder": ["old man"]}, "rest": "other"},
            "kids": {"groups": {"kid": ["children", "boy", "girl"], "adult": ["woman", "man"]}}}
RUNS = [(0, 1), (1, 5), (5, 6), (6, 12)]


def _regrid(table: pa.Table, rows: list[int], h: int, w: int) -> pa.Table:
    """``table`` with the maps of ``rows`` replaced by ``h x w`` ones (another grid)."""
    maps, gh, gw = (table.column(c).to_pylist() for c in ("image_attr", "grid_h", "grid_w"))
    for r in rows:
        if maps[r] is not None:
            maps[r], gh[r], gw[r] = [float((r * 7 + i) % 5) for i in range(h * w)], h, w
    for name, col in (("image_attr", maps), ("grid_h", gh), ("grid_w", gw)):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, table.schema.field(i), pa.array(col, table.schema.field(i).type))
    return table


@pytest.fixture(scope="module")
def tables() -> list[pa.Table]:
    """12 synthetic parts: the first without a usable map (maps of the wrong length), some
    rows of later parts on another grid, error messages of many kinds."""
    pieces, index = bench._vocab(400, 5)
    out = []
    for p in range(12):
        t = bench.make_part(300, p, pieces, index, seed=5, tail=500)
        if p == 0:
            t = _regrid(t, list(range(300)), 3, 3)
            t = t.set_column(t.schema.get_field_index("grid_h"), "grid_h",
                             pa.array([2] * 300, pa.int16()))  # 9 values for 2 x 3: unusable
        if p in (3, 7):
            t = _regrid(t, list(range(5, 300, 9)), 5, 5)
        errors = [None if e is None else f"{e} kind {chr(97 + (i + p) % 26)}{chr(97 + p)}"
                  for i, e in enumerate(t.column("error").to_pylist())]
        out.append(t.set_column(t.schema.get_field_index("error"), "error",
                                pa.array(errors, pa.string())))
    return out


def _settings() -> ReportSettings:
    return ReportSettings(groups=FAMILIES, bootstrap_reservoir=40, review_pairs=5,
                          errors_examples=2)


def _close(a: float, b: float) -> bool:
    return a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)


def _same_moments(a, b) -> None:
    assert a.n == b.n and _close(a.mean, b.mean) and _close(a.m2, b.m2)


def test_partial_aggregates_merge_into_the_aggregate_of_one_stream(tables, monkeypatch):
    monkeypatch.setattr(aggregate, "MAX_ERROR_KINDS", 30)  # the cap falls inside a later run
    s = _settings()
    one = Aggregator(s, s.families()).consume(tables)
    merged = Aggregator(s, s.families())
    for a, b in RUNS:
        merged.merge(Aggregator(s, s.families(), capped=False).consume(tables[a:b], a))
    assert one.grid == merged.grid == Grid(7, 7) and one.grid_mismatch > 0
    assert len(one.errors) == 30 and one.errors_other > 0 and len(one.vocab) > 500
    _same_aggregates(one, merged)
    assert any(g.reservoirs["score"].values.size == 40 for g in sum(one.groups, []))


def _same_aggregates(one: Aggregator, other: Aggregator) -> None:
    """Exactly the same counts, samples and pairs to review; moments and sums to 1e-12."""
    for name in ("rows", "status", "errors", "errors_other", "truncated", "skipped_tokens",
                 "overlap", "map_n", "space_n", "grid", "grid_mismatch"):
        assert getattr(one, name) == getattr(other, name), name
    assert (one.hist == other.hist).all() and (one.top_counts == other.top_counts).all()
    for name in ("score", "cls_share", "eot_share", "border", "corner"):
        _same_moments(getattr(one, name), getattr(other, name))
    for m in aggregate.METRICS:
        _same_moments(one.metrics[m], other.metrics[m])
    assert np.allclose(one.map_sum, other.map_sum, rtol=1e-12, atol=0)
    assert np.allclose(one.pos_sum, other.pos_sum, rtol=1e-12, atol=0)
    assert one.vocab.texts().to_pylist() == other.vocab.texts().to_pylist()
    for f in ("count", "pairs", "negative"):
        assert (one.vocab.sums[f] == other.vocab.sums[f]).all(), f
    for f in ("attr_sum", "share_sum", "attr_sq", "share_sq"):
        assert np.allclose(one.vocab.sums[f], other.vocab.sums[f], rtol=1e-12, atol=1e-15), f
    for top in ("lowest", "negative"):
        a, b = getattr(one, top), getattr(other, top)
        assert a.pointers() == b.pointers() and len(a.pointers()) == 5
    for ga, gb in zip(sum(one.groups, []), sum(other.groups, [])):
        assert ga.pairs == gb.pairs and (ga.hist == gb.hist).all() and ga.map_n == gb.map_n
        for m in aggregate.GROUP_METRICS:
            _same_moments(ga.moments[m], gb.moments[m])
            ra, rb = ga.reservoirs[m], gb.reservoirs[m]
            assert (ra.keys == rb.keys).all() and (ra.values == rb.values).all()


@pytest.mark.parametrize("chunk_rows", [1000, 100])
def test_parts_worked_on_together_give_what_they_give_one_by_one(tables, monkeypatch,
                                                                 chunk_rows):
    """Consecutive parts joined into chunks (``passes.chunks``: what a worker does with small
    parts), or large parts cut into slices, aggregate and map as they do one whole part at a
    time."""
    monkeypatch.setattr(passes, "CHUNK_ROWS", chunk_rows)  # 4 parts of 300 rows; 3 slices
    s = _settings()
    one = Aggregator(s, s.families()).consume(tables)
    joined, none = passes.FirstPass(s).run(enumerate(tables))
    assert joined.grid == one.grid and none is None
    _same_aggregates(one, joined)
    words = [w for w, n in zip(one.vocab.texts().to_pylist(), one.vocab.sums["pairs"]) if n >= 5][:200]
    ws = WordSpace(words, one.grid, seed=s.seed, examples=4).consume(tables)
    jws, _ = passes.SpacePass(one.grid, s.seed, 4, words, []).run(enumerate(tables))
    # the first pass maps guessed words from what it read (one unknown word among them)
    _, fws = passes.FirstPass(s, guess=["no-such-word", *words[::-1]], examples=4).run(
        enumerate(tables))
    fws = WordSpace.gather(words, [fws], 4)
    for got in (jws, fws):
        assert (ws.top == got.top).all() and (ws.n == got.n).all()
        assert np.allclose(ws.pos_sum, got.pos_sum, rtol=1e-12, atol=1e-15)
        assert all((ws.ex[k] == got.ex[k]).all() for k in ws.ex)
    got = [(c.part.tolist()[::100], c.pos.tolist()[::100])
           for c in passes.chunks(enumerate(tables))]
    if chunk_rows == 1000:
        assert [p[::3] for p, _ in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
        assert all(pos == [0, 100, 200] * 4 for _, pos in got)
    else:
        assert got == [([p], [a]) for p in range(12) for a in (0, 100, 200)]


def test_a_run_that_starts_on_another_grid_is_aggregated_again(tables):
    """A run whose first map is on another grid cannot merge: aggregated again under the
    results' grid, it gives what one stream gives."""
    s = _settings()
    first = _regrid(tables[4], list(range(0, 300, 2)), 5, 5)  # its first map is 5 x 5
    parts = [tables[1], first, tables[5]]
    one = Aggregator(s, s.families()).consume(parts)
    merged = Aggregator(s, s.families())
    merged.merge(Aggregator(s, s.families(), capped=False).consume(parts[:1]))
    late = Aggregator(s, s.families(), capped=False).consume(parts[1:], 1)
    assert late.grid == Grid(5, 5)
    with pytest.raises(GridConflict):
        merged.merge(late)
    merged.merge(Aggregator(s, s.families(), merged.grid, capped=False).consume(parts[1:], 1))
    assert merged.grid == one.grid and merged.grid_mismatch == one.grid_mismatch > 0
    assert (merged.top_counts == one.top_counts).all() and merged.space_n == one.space_n


def test_word_maps_and_co_occurrences_merge_exactly(tables):
    s = _settings()
    one = Aggregator(s, s.families()).consume(tables)
    words = [w for w, n in zip(one.vocab.texts().to_pylist(), one.vocab.sums["pairs"]) if n >= 5][:300]
    grid = one.grid
    ws = WordSpace(words, grid, seed=2, examples=4).consume(tables)
    co = CoOccurrence(["a", "photo", "of", "vintage", "woman"], grid).consume(tables)
    ws_merged, co_merged = WordSpace(words, grid, seed=2, examples=4), CoOccurrence(co.words, grid)
    for a, b in RUNS:
        ws_merged.merge(WordSpace(words, grid, seed=2, examples=4).consume(tables[a:b], a))
        co_merged.merge(CoOccurrence(co.words, grid).consume(tables[a:b]))
    assert (ws.top == ws_merged.top).all() and (ws.n == ws_merged.n).all()
    assert np.allclose(ws.pos_sum, ws_merged.pos_sum, rtol=1e-12, atol=1e-15)
    for k in ws.ex:
        assert (ws.ex[k] == ws_merged.ex[k]).all(), k
    assert ws.ex["word"].size == 4 * len(words)
    assert co.counts.keys() == co_merged.counts.keys()
    assert all((co.counts[k] == co_merged.counts[k]).all() for k in co.counts)


# ------------------------------------------------------------ the whole report
@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """100,000 synthetic rows in 100 parts, and their report from one process with the
    parts cut into 13 tasks."""
    d = tmp_path_factory.mktemp("spread")
    bench.make_results(str(d / "res"), 100_000, 100, tail=5_000)
    mp = pytest.MonkeyPatch()
    mp.setattr(passes, "TASK_ROWS", 8_000)
    mp.setattr(passes, "TASK_PARTS", 4)
    assert len(passes.cut(read_manifest(str(d / "res"))["parts"])) == 13
    ex, stats = _Counted(), {}
    build_report(str(d / "res"), str(d / "one"), dataclasses.replace(SETTINGS, workers=1),
                 executor=ex, stats=stats)
    (d / "one.stats.json").write_text(json.dumps({**stats, "maps": ex.maps}))
    yield d
    mp.undo()


class _Counted(InProcess):
    """In this process, counting the tasks of each map (the passes', then the sections')."""

    def __init__(self) -> None:
        self.maps: list[int] = []

    def map(self, fn, tasks, ahead=None):
        self.maps.append(len(tasks))
        return super().map(fn, tasks, ahead)


SETTINGS = ReportSettings(groups=FAMILIES, words_min_count=5)
_SPACE_PASS = passes.space_pass


def _files(out) -> dict[str, object]:
    return {"report.json": (out / "report.json").read_bytes(),
            **{str(p.relative_to(out)): pq.read_table(p) for p in out.rglob("*.parquet")}}


def test_the_curation_list_holds_the_lowest_scores_of_every_row(big):
    """flags.parquet against a naive sort of all 100,000 rows."""
    rows = read_results(str(big / "res"), columns=["id", "status", "score"]).to_pylist()
    ok = [(r["score"], i, r["id"]) for i, r in enumerate(rows) if r["status"] == "ok"]
    k = math.ceil(0.01 * len(ok))
    lowest = [rid for _, _, rid in sorted(ok)[:k]]  # ties by input position
    flags = pq.read_table(big / "one" / "flags.parquet").to_pylist()
    low = sorted((f for f in flags if "low_score" in f["reasons"]), key=lambda f: f["score_rank"])
    assert [f["id"] for f in low] == lowest and [f["score_rank"] for f in low] == list(range(1, k + 1))
    assert {f["id"] for f in flags if f["reasons"] == ["not_ok"]} == \
        {r["id"] for r in rows if r["status"] != "ok"}
    order = {r["id"]: i for i, r in enumerate(rows)}
    assert [order[f["id"]] for f in flags] == sorted(order[f["id"]] for f in flags)


def test_the_report_tells_each_steps_cpu_and_the_tasks_of_a_pass(big):
    """``stats``: this process's CPU seconds for every step it timed, and the tasks of a
    pass, as many as the executor was given for the first pass."""
    stats = json.loads((big / "one.stats.json").read_text())
    assert stats["cpu_seconds"].keys() == stats["seconds"].keys() >= {
        "sample", "first_pass", "last_pass", "render", "write"}
    assert all(v >= 0 for v in stats["cpu_seconds"].values())
    assert stats["cpu_seconds"]["first_pass"] > 0  # the tasks ran here
    assert stats["tasks_a_pass"] == stats["maps"][0] == 13


def _same(x, y, where="") -> None:
    """The same JSON but for rounding (1e-9 relative: after the bootstrap)."""
    if isinstance(x, float) and isinstance(y, float):
        assert math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12), where  # after the bootstrap
    elif isinstance(x, dict):
        assert x.keys() == y.keys(), where
        for k in x:
            _same(x[k], y[k], f"{where}.{k}")
    elif isinstance(x, list):
        assert len(x) == len(y), where
        for i, (p, q) in enumerate(zip(x, y)):
            _same(p, q, f"{where}[{i}]")
    else:
        assert x == y, where



def test_one_task_or_many_differ_only_in_rounding(big, monkeypatch):
    """The merge of 13 tasks' aggregates against one task reading every part in turn: the
    same report to 1e-12 (moments and sums merge in another order), the same lists."""
    monkeypatch.setattr(passes, "TASK_ROWS", 10**9)
    _same_as_one(big, "whole")


def _same_as_one(big, name: str) -> None:
    """The report of one process, made again into ``big / name``: the same but for rounding,
    the same curation list."""
    build_report(str(big / "res"), str(big / name), dataclasses.replace(SETTINGS, workers=1))
    a = json.loads((big / "one" / "report.json").read_text())
    b = json.loads((big / name / "report.json").read_text())
    _same(a, b)
    assert pq.read_table(big / "one" / "flags.parquet").equals(
        pq.read_table(big / name / "flags.parquet"))


def test_large_parts_worked_on_in_slices_give_the_same_report(big, monkeypatch):
    """Parts of 1,000 rows each worked on in 3 slices (as an audit's 65,536-row parts are in
    8) against the same parts joined 8 at a time: the same report but for rounding, the same
    samples, examples and curation list (a row's sample key comes from its place in its
    part, not from its place in what was worked on together)."""
    monkeypatch.setattr(passes, "CHUNK_ROWS", 300)
    got = [(c.part[0], c.pos[0], c.pos.size) for c in passes.chunks(enumerate(
        bench.make_part(1_000, p, *bench._vocab(50, 1), seed=1) for p in range(2)))]
    assert got == [(0, 0, 333), (0, 333, 333), (0, 666, 334), (1, 0, 333), (1, 333, 333),
                   (1, 666, 334)]
    _same_as_one(big, "sliced")


def _die_on_task(marker: str, fn, task):
    """Kill this worker the first time the task holding part 24 runs (the executor also
    draws the report's bootstrap samples and figures: those jobs pass)."""
    if hasattr(task, "entries") and task.first <= 24 < task.first + len(task.entries):
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            os.kill(os.getpid(), signal.SIGKILL)
        except FileExistsError:
            pass
    return fn(task)


class DyingPool(LocalPool):
    """Two workers, one of which is killed once on its way through the first pass."""

    def __init__(self, marker: str) -> None:
        super().__init__(2)
        self.marker = marker

    def map(self, fn, tasks, ahead=None):
        return super().map(functools.partial(_die_on_task, self.marker, fn), tasks, ahead)


def test_the_report_of_two_workers_one_killed_on_its_way_is_the_report_of_one(big):
    with DyingPool(str(big / "killed")) as pool:
        build_report(str(big / "res"), str(big / "two"), SETTINGS, executor=pool)
        assert pool.replaced == 1 and pool.workers == 2
    one, two = _files(big / "one"), _files(big / "two")
    assert one.keys() == two.keys() and len(one) == 6
    for name in one:
        assert one[name] == two[name] if name == "report.json" else one[name].equals(two[name]), name
    # the bootstrap samples and the figures were drawn by the workers: the same bytes
    assert (big / "one" / "report.html").read_bytes() == (big / "two" / "report.html").read_bytes()
    report = json.loads(one["report.json"])
    assert report["overview"]["rows"] == 100_000 and report["space"]["suspects"][0]["word"] == "vintage"


def test_words_the_guess_missed_are_mapped_by_a_pass_of_their_own(big, monkeypatch):
    """The first pass maps the words guessed from a sample; a tracked word it missed is
    mapped by the spatial pass over every part: the same report either way."""
    guess = passes.guess_words
    one = read_manifest(str(big / "res"))["parts"]
    agg, _ = passes.first_pass(InProcess(), str(big / "res"), StorageSettings(), one, SETTINGS)
    tracked = build.tracked_words(agg, SETTINGS)
    assert len(tracked) > 300  # every part is the sample here: the guess holds them all
    assert set(tracked) <= set(guess(str(big / "res"), StorageSettings(), one, SETTINGS))
    dropped = set(tracked[1::2])
    monkeypatch.setattr(passes, "guess_words",
                        lambda *a: [w for w in guess(*a) if w not in dropped])
    ran = []
    monkeypatch.setattr(passes, "space_pass",
                        lambda *a, **k: ran.append(a[4].words) or _SPACE_PASS(*a, **k))
    build_report(str(big / "res"), str(big / "missed"), dataclasses.replace(SETTINGS, workers=1))
    assert [set(w) for w in ran] == [dropped]
    _same(json.loads((big / "one" / "report.json").read_text()),
          json.loads((big / "missed" / "report.json").read_text()))
    assert pq.read_table(big / "one" / "flags.parquet").equals(
        pq.read_table(big / "missed" / "flags.parquet"))


def test_the_sample_spreads_over_the_manifest_and_is_every_part_when_small(monkeypatch):
    entries = [{"rows": 1000} for _ in range(1000)]
    assert passes.sample_parts(entries[:150]) == list(range(150))  # 150,000 rows: all
    picked = passes.sample_parts(entries)
    assert len(picked) == passes.SAMPLE_PARTS and picked[0] == 0 and picked[-1] == 999
    gaps = np.diff(picked)
    assert gaps.min() >= 7 and gaps.max() <= 8  # evenly spread
    monkeypatch.setattr(passes, "SAMPLE_ROWS", 20_000)
    assert passes.sample_parts(entries) == [round(i * 999 / 19) for i in range(20)]
