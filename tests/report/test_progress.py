"""A pass's progress: lines in the log every so often and at its end, a bar on a terminal.

Oracles: counts and rates worked out by hand from a fake clock, and the parts' own row
counts read from their Parquet footers.
"""

from __future__ import annotations

import io
import logging
import re
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from benchmarks import report as bench
from pipeline.config import ConfigError
from pipeline.io.manifest import read_manifest
from pipeline.report import ReportSettings, build_report, passes, progress
from pipeline.report.progress import PassProgress, watched


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _entries(*rows: int) -> list[dict]:
    return [{"rows": r, "path": f"parts/p{i}.parquet"} for i, r in enumerate(rows)]


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "nibt-report"]


def test_a_line_every_interval_with_rate_and_time_left_then_one_at_the_end(caplog):
    caplog.set_level(logging.INFO, "nibt-report")
    clock = Clock()
    p = PassProgress("first pass over s3://b/a", _entries(1000, 1000, 2000, 4000), every_s=30,
                     bar=False, clock=clock)
    clock.now += 10
    p.add(_entries(1000))  # 10 s: under the interval, no line
    assert _lines(caplog) == []
    clock.now += 30
    p.add(_entries(1000, 2000))  # 40 s since the start: 4,000 of 8,000 rows
    # 4,000 rows over the last 40 s: 100 rows/s; 4,000 rows left: 40 s
    assert _lines(caplog) == [
        "report: first pass over s3://b/a: 3 of 4 parts (50.0%), 4,000 of 8,000 rows; "
        "100 rows/s over the last 40 s, about 40 s left"]
    clock.now += 4.25
    p.add(_entries(4000))  # the last task: the end line says it, not a progress line
    p.close()
    assert _lines(caplog)[1:] == [
        "report: first pass over s3://b/a: done, 4 parts, 8,000 rows in 44 s (181 rows/s)"]


def test_the_rate_is_of_the_last_interval_and_long_waits_read_in_minutes_and_hours(caplog):
    caplog.set_level(logging.INFO, "nibt-report")
    clock = Clock()
    p = PassProgress("last pass over x", _entries(*[1_000_000] * 1000), every_s=60, bar=False,
                     clock=clock)
    clock.now += 100
    p.add(_entries(*[1_000_000] * 10))  # 10M rows in 100 s
    clock.now += 200
    p.add(_entries(1_000_000))  # 1M rows in the next 200 s: 5,000 rows/s
    lines = _lines(caplog)
    assert lines[0].endswith("100,000 rows/s over the last 1 min 40 s, about 2 h 45 min left")
    # 989M rows left at 5,000 rows/s: 197,800 s = 54 h 56 min 40 s
    assert lines[1] == ("report: last pass over x: 11 of 1000 parts (1.1%), 11,000,000 of "
                        "1,000,000,000 rows; 5,000 rows/s over the last 3 min 20 s, "
                        "about 54 h 56 min left")


def test_a_pass_that_ends_early_logs_no_end_line(caplog):
    caplog.set_level(logging.INFO, "nibt-report")
    tasks = [SimpleNamespace(entries=_entries(10, 10)), SimpleNamespace(entries=_entries(5))]

    def results():
        yield "a"
        raise OSError("part 2 gone")

    with pytest.raises(OSError):
        for _ in watched("first pass over x", tasks, results(), every_s=1e-9, bar=False):
            pass
    assert not [line for line in _lines(caplog) if "done" in line]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty, bar", [(True, True), (False, True), (True, False)])
def test_the_bar_is_drawn_on_a_terminal_only_and_only_when_asked(monkeypatch, tty, bar):
    err = Terminal() if tty else io.StringIO()
    monkeypatch.setattr(progress.sys, "stderr", err)
    p = PassProgress("first pass over x", _entries(1500, 500, 2000), bar=bar)
    p.add(_entries(1500, 500))
    if tty and bar:
        assert (p.tqdm.n, p.tqdm.total) == (2000, 4000)
        assert "nibt-report first pass over x" in err.getvalue()
    else:
        assert p.tqdm is None
    p.add(_entries(2000))
    p.close()
    assert p.tqdm is None
    if not (tty and bar):
        assert err.getvalue() == ""


def test_log_every_s_must_be_positive():
    with pytest.raises(ConfigError, match="report.log_every_s"):
        ReportSettings(log_every_s=0)


def test_a_report_tells_each_pass_by_parts_and_rows_and_records_no_progress_setting(
        tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, "nibt-report")
    monkeypatch.setattr(passes, "TASK_ROWS", 800)  # 4 tasks of 2 parts (the last 1)
    monkeypatch.setattr(passes, "TASK_PARTS", 2)
    res = bench.make_results(str(tmp_path / "res"), 3_000, 7)
    parts = [e["path"] for e in read_manifest(res)["parts"]]
    rows = [pq.ParquetFile(tmp_path / "res" / p).metadata.num_rows for p in parts]
    s = ReportSettings(words_min_count=5, workers=1, log_every_s=1e-9, progress=False)
    build_report(res, str(tmp_path / "out"), s)
    lines = _lines(caplog)
    for name in ("first pass", "last pass"):
        assert f"report: {name} over {res}: done, 7 parts, {sum(rows):,} rows in" in \
            "\n".join(lines)
        # every line on the way counts whole parts, their rows those of the parts' footers
        on_way = [re.match(rf"report: {name} over .*: (\d+) of 7 parts .*, ([\d,]+) of "
                           rf"{sum(rows):,} rows", line) for line in lines]
        done = [(int(m[1]), int(m[2].replace(",", ""))) for m in on_way if m]
        assert [k for k, _ in done] == [2, 4, 6]
        assert [rws for _, rws in done] == [sum(rows[:k]) for k in (2, 4, 6)]
    settings = (tmp_path / "out" / "report.json").read_text()
    assert '"log_every_s"' not in settings and '"progress"' not in settings
    # the settings that made the numbers are still there
    assert '"words_min_count": 5' in settings
