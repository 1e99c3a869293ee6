"""flags.parquet, the curation list: the right pairs with their reasons, joinable with the input.

The oracle is a naive loop over the hand-built rows; the join is the DuckDB query
docs/report.md shows, run by DuckDB itself.
"""

from __future__ import annotations

import json
import math

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.report import ReportSettings, build_report
from tests.report.builders import Row, png, write_results

GRID = (4, 4)
CORNER = 15
SHARE = 0.05


def rows(n: int = 240, seed: int = 3) -> list[Row]:
    """Captions of shapes; a third carry "vintage", whose maps peak in the corner 70% of
    the time; every 30th row failed."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if i % 30 == 29:
            out.append(Row(f"id-{i:03d}", [], [], 0.0, None, GRID,
                           "bad_image" if i % 60 == 59 else "bad_caption", f"row {i} is bad"))
            continue
        words = [str(w) for w in rng.choice(["a", "red", "blue", "circle", "square"], size=3)]
        peak = int(rng.integers(16))
        if rng.random() < 1 / 3:
            words = ["vintage", *words]
            if rng.random() < 0.7:
                peak = CORNER
        m = rng.normal(0, 0.004, 16)
        m[peak] += 0.03
        attrs = [float(x) for x in rng.normal(0.01, 0.005, len(words))]
        out.append(Row(f"id-{i:03d}", words, attrs, float(rng.normal(0.3, 0.05)), list(m), GRID))
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("flags")
    rs = rows()
    src = str(d / "input.parquet")
    # the input: an id column the audit reads as data.id_column, images, captions
    pq.write_table(pa.table({"id": [r.id for r in rs],
                             "image": pa.array([png((i % 250, 40, 90)) for i in range(len(rs))],
                                               pa.binary()),
                             "caption": [" ".join(r.words) for r in rs]}), src,
                   row_group_size=50)
    write_results(str(d / "res"), [rs[:100], rs[100:]], src)
    report = build_report(str(d / "res"), str(d / "out"),
                          ReportSettings(words_min_count=5, flags_low_score_share=SHARE))
    return d, rs, report


def test_flags_hold_the_suspects_pairs_the_lowest_scores_and_failed_rows(built):
    d, rs, report = built
    assert [p["word"] for p in report["space"]["suspects"]] == ["vintage"]
    assert report["space"]["suspects"][0]["modal_cell"] == CORNER
    ok = [r for r in rs if r.status == "ok"]
    shortcut = {r.id for r in ok if "vintage" in r.words and int(np.argmax(r.image)) == CORNER}
    k = math.ceil(SHARE * len(ok))
    low = [r.id for r in sorted(ok, key=lambda r: (r.score, rs.index(r)))[:k]]
    bad = {r.id: r for r in rs if r.status != "ok"}
    table = pq.read_table(d / "out" / "flags.parquet")
    got = {r["id"]: r for r in table.to_pylist()}
    assert set(got) == shortcut | set(low) | set(bad)
    assert [r["id"] for r in table.to_pylist()] == sorted(got)  # input order
    for i, r in got.items():
        want = [n for n, hit in (("shortcut", i in shortcut), ("low_score", i in low),
                                 ("not_ok", i in bad)) if hit]
        assert r["reasons"] == want, i
        assert len(r["evidence"]) == len(want) and all(r["evidence"])
        assert r["source"] == str(d / "input.parquet") and r["row"] == int(i[3:])
    for rank, i in enumerate(low, 1):
        assert got[i]["score_rank"] == rank
        assert got[i]["score"] == pytest.approx(next(r.score for r in ok if r.id == i), rel=1e-6)
        assert f"rank {rank} of {len(ok)}" in got[i]["evidence"][got[i]["reasons"].index("low_score")]
    for i in shortcut:
        assert got[i]["suspect_words"] == ["vintage"] and got[i]["top_cell"] == CORNER
        assert "r3 c3 corner (bottom-right)" in got[i]["evidence"][0]
    for i, r in bad.items():
        assert got[i]["status"] == r.status and got[i]["error"] == r.error
        assert got[i]["evidence"] == [f"status {r.status}: {r.error}"]
    assert report["flags"]["by_reason"] == {"shortcut": len(shortcut), "low_score": k,
                                            "not_ok": len(bad)}
    made = json.loads(table.schema.metadata[b"nibt.flags"])
    assert made["results"] == str(d / "res") and made["fingerprint"] == "f00d"
    assert made["settings"]["flags_low_score_share"] == SHARE and made["suspects"] == ["vintage"]


def test_duckdb_filters_the_input_with_the_flags(built):
    """The query of docs/report.md: the input without the flagged pairs, by id, and by
    file and row for an input without ids."""
    d, rs, _ = built
    flags = str(d / "out" / "flags.parquet")
    src = str(d / "input.parquet")
    flagged = set(pq.read_table(flags, columns=["id"]).column("id").to_pylist())
    con = duckdb.connect()
    kept = con.execute(f"""
        SELECT i.id, i.caption
        FROM read_parquet('{src}') AS i
        ANTI JOIN read_parquet('{flags}') AS f ON CAST(i.id AS VARCHAR) = f.id
        ORDER BY i.id""").fetchall()
    assert [k[0] for k in kept] == [r.id for r in rs if r.id not in flagged]
    assert len(kept) == len(rs) - len(flagged) > 0
    by_row = con.execute(f"""
        SELECT i.caption
        FROM read_parquet('{src}', filename = true, file_row_number = true) AS i
        ANTI JOIN read_parquet('{flags}') AS f
          ON f.source = i.filename AND f.row = i.file_row_number
        ORDER BY i.file_row_number""").fetchall()
    assert [c[0] for c in by_row] == [k[1] for k in kept]
    shortcut = con.execute(f"""
        SELECT count(*) FROM read_parquet('{flags}')
        WHERE list_contains(reasons, 'shortcut')""").fetchone()[0]
    assert shortcut == sum(1 for r in rs if r.status == "ok" and "vintage" in r.words
                           and int(np.argmax(r.image)) == CORNER)


def test_no_suspects_and_nothing_failed_flags_only_low_scores(tmp_path):
    rs = [Row(f"x{i}", ["a", "dog"], [0.01, 0.02], 0.2 + i / 1000, list(np.eye(16)[i % 16]), GRID)
          for i in range(50)]
    write_results(str(tmp_path / "res"), [rs], str(tmp_path / "in.parquet"))
    report = build_report(str(tmp_path / "res"), str(tmp_path / "out"),
                          ReportSettings(flags_low_score_share=0.1))
    table = pq.read_table(tmp_path / "out" / "flags.parquet").to_pylist()
    assert [r["id"] for r in table] == [f"x{i}" for i in range(5)]
    assert report["flags"]["by_reason"] == {"shortcut": 0, "low_score": 5, "not_ok": 0}
    none = build_report(str(tmp_path / "res"), str(tmp_path / "out0"),
                        ReportSettings(flags_low_score_share=0.0))
    assert none["flags"]["rows"] == 0
    assert pq.read_table(tmp_path / "out0" / "flags.parquet").num_rows == 0


def test_flag_list_rows_with_several_suspects_match_a_naive_loop(tmp_path):
    """``FlagList`` over hand-built staged rows (several candidates a row, kept and not,
    failed rows, low-score candidates), batched writes included, against a loop that
    applies the documented rules row by row."""
    from pipeline.report.flags import STAGE, FlagList
    from pipeline.report.regions import Grid

    rng = np.random.default_rng(5)
    grid, k = Grid(4, 4), 7
    cands = ["vintage", "photo", "stock", "old"]
    suspects = [{"word": w, "modal_cell": c, "consistency": 0.8, "pairs": 40, "baseline": 0.1}
                for w, c in (("vintage", 15), ("stock", 0), ("old", 3))]
    flag_list = FlagList(k)
    rows_ok, staged = 0, []
    for part in range(3):
        n = 50
        status = np.where(rng.random(n) < 0.1, "bad_image", "ok")
        score = rng.normal(0.3, 0.05, n)
        rows_ok += int((status == "ok").sum())
        has = [sorted(rng.choice(4, size=int(rng.integers(0, 3)), replace=False).tolist())
               for _ in range(n)]
        table = pa.table({
            "part": np.full(n, part), "pos": np.arange(n), "id": [f"p{part}-{i}" for i in range(n)],
            "source": ["in.parquet"] * n, "row": np.arange(n) + 100 * part, "status": status,
            "error": [None if s == "ok" else f"broken {i}" for i, s in enumerate(status)],
            "score": pa.array(score, mask=status != "ok"),
            "top_cell": pa.array(rng.integers(0, 16, n).astype(np.int32)),
            "cands": pa.array(has, pa.list_(pa.int32())),
            "low": (status == "ok") & (rng.random(n) < 0.3)}, schema=STAGE)
        staged.append(table)
        flag_list.add(table)
    summary = flag_list.summary(suspects, {w: i for i, w in enumerate(cands)}, grid, rows_ok)
    flag_list.write(str(tmp_path / "flags.parquet"))
    flag_list.close()
    got = pq.read_table(tmp_path / "flags.parquet").to_pylist()

    every = [r for t in staged for r in t.to_pylist()]
    lows = sorted((r["score"], r["part"], r["pos"]) for r in every if r["low"])[:k]
    rank = {(p, q): i + 1 for i, (_, p, q) in enumerate(lows)}
    kept = {cands.index(x["word"]): x["word"] for x in suspects}
    want = []
    for r in every:
        if r["status"] != "ok":
            want.append((r["id"], ["not_ok"], [f"status {r['status']}: {r['error']}"], [], None))
            continue
        mine = [kept[c] for c in r["cands"] if c in kept]
        rk = rank.get((r["part"], r["pos"]))
        reasons = ["shortcut"] * bool(mine) + ["low_score"] * (rk is not None)
        if reasons:
            want.append((r["id"], reasons, None, mine, rk))
    assert [g["id"] for g in got] == [w[0] for w in want]
    for g, (_, reasons, evidence, words, rk) in zip(got, want):
        assert g["reasons"] == reasons and g["suspect_words"] == words and g["score_rank"] == rk
        assert len(g["evidence"]) == len(reasons)
        if evidence is not None:
            assert g["evidence"] == evidence
        if words:
            assert g["evidence"][0].count("caption has shortcut suspect") == len(words)
            assert all(f"\u201c{w}\u201d" in g["evidence"][0] for w in words)
        if rk is not None:
            assert f": rank {rk} of {rows_ok} attributed pairs" in g["evidence"][-1]
    assert any(len(w[3]) > 1 for w in want)  # rows with two suspects were checked
    assert summary["by_reason"] == {
        "shortcut": sum(1 for w in want if w[3]), "low_score": k,
        "not_ok": sum(1 for w in want if w[1] == ["not_ok"])}
