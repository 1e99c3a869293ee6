"""Results with nothing to report: every row failed, no parts, parts without rows.

Each still gives a report (exit code 0 through the CLI), says so in plain words
at the top of the page and in the findings, and writes strict JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir

from pipeline.cli.report import CONF_DIR, run_from_config
from pipeline.report import ReportSettings, build_report
from tests.report.builders import Row, write_input, write_results

STATUSES = ["bad_image", "bad_caption", "error"]
GROUPS = {"gender": {"groups": {"f": ["woman"], "m": ["man"]}, "rest": "none"}}


def _strict(text: str) -> dict:
    """JSON that refuses NaN and infinities (what a strict parser does)."""
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")
    return json.loads(text, parse_constant=refuse)


def _failed_rows(n: int) -> list[Row]:
    return [Row(f"f{i}", [], [], 0.0, None, status=STATUSES[i % 3],
                error=f"{STATUSES[i % 3]} number {i}") for i in range(n)]


def _check(out: Path, expect_rows: int) -> dict:
    report = _strict((out / "report.json").read_text())
    html = (out / "report.html").read_text()
    ov = report["overview"]
    assert ov["rows"] == expect_rows and ov["rows_ok"] == 0
    assert ov["notice"] and ov["notice"] in html.replace("&#39;", "'")
    assert report["findings"][0]["text"] == ov["notice"]
    assert f'id="{report["findings"][0]["anchor"]}"' in html
    assert report["words"]["distinct"] == 0 and report["space"]["grid"] is None
    for name in ("words", "groups", "group_effects", "regions"):
        pq.read_table(out / "aggregates" / f"{name}.parquet")  # readable, maybe empty
    assert pq.read_table(out / "aggregates" / "words.parquet").num_rows == 0
    return report


def test_every_row_failed(tmp_path):
    src = str(tmp_path / "input.parquet")
    write_input(src, 12)
    rows = _failed_rows(12)
    write_results(str(tmp_path / "res"), [rows[:5], rows[5:]], src)
    report = build_report(str(tmp_path / "res"), str(tmp_path / "out"),
                          ReportSettings(groups=GROUPS))
    report = _check(tmp_path / "out", 12)
    ov = report["overview"]
    assert ov["content"] == "no_attributions"
    assert "No row was attributed" in ov["notice"] and "all 12 rows failed" in ov["notice"]
    assert {s["status"]: s["count"] for s in ov["status"]} == {s: 4 for s in STATUSES}
    assert {e["kind"]: e["count"] for e in ov["errors"]} == {f"{s} number #": 4 for s in STATUSES}
    for g in report["groups"][0]["groups"]:
        assert g["pairs"] == 0 and g["score"]["mean"] is None
    assert report["groups"][0]["effects"] == []
    assert report["review"]["lowest_score"] == [] and report["review"]["suspects"] == []
    html = (tmp_path / "out" / "report.html").read_text()
    assert "No scores: no row was attributed." in html
    assert "No caption words: no row was attributed." in html


@pytest.mark.parametrize("parts", [0, 2])
def test_empty_results(tmp_path, parts):
    write_results(str(tmp_path / "res"), [[] for _ in range(parts)], str(tmp_path / "in.parquet"))
    build_report(str(tmp_path / "res"), str(tmp_path / "out"), ReportSettings(groups=GROUPS))
    report = _check(tmp_path / "out", 0)
    ov = report["overview"]
    assert ov["content"] == "empty" and ov["status"] == [] and ov["score"]["n"] == 0
    assert "These results are empty" in ov["notice"]
    assert ("no parts" if parts == 0 else f"{parts} parts hold no rows") in ov["notice"]
    assert report["run"]["parts"] == parts
    assert [f["kind"] for f in report["findings"]] == ["empty"]


def test_the_command_exits_0_on_failed_and_empty_results(tmp_path, capsys):
    write_results(str(tmp_path / "empty"), [], str(tmp_path / "in.parquet"))
    write_results(str(tmp_path / "failed"), [_failed_rows(4)], str(tmp_path / "in.parquet"))
    for name in ("empty", "failed"):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="report", overrides=[
                f"results={tmp_path / name}", f"output={tmp_path / name}-report"])
        assert run_from_config(cfg) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["notice"] and summary["findings"][0] == summary["notice"]
        assert summary["peak_rss_mb"] > 0
        _strict((tmp_path / f"{name}-report" / "report.json").read_text())
