"""`nibt-report` as a scheduler runs it: exit codes, local and s3:// outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from pipeline.cli.report import CONF_DIR, run_from_config
from pipeline.config import StorageSettings
from tests.report.builders import random_rows, write_input, write_results


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    src = str(d / "input.parquet")
    write_input(src, 60)
    rows = random_rows(60, seed=21, bad_every=10)
    write_results(str(d / "res"), [rows[:30], rows[30:]], src)
    return d


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="report", overrides=list(overrides))


def _report(*args: str, tmp) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli.report", *args],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NIBT_LOG_DIR": str(tmp / "logs")})


def test_the_command_writes_the_report_locally(results, tmp_path):
    out = tmp_path / "report"
    r = _report(f"results={results / 'res'}", f"output={out}", "report.words_min_count=2",
                "report/groups=[gender,people]", tmp=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["rows"] == 60 and summary["rows_ok"] == 54
    for name in ("report.html", "report.json", "flags.parquet", "aggregates/words.parquet",
                 "aggregates/groups.parquet", "aggregates/group_effects.parquet",
                 "aggregates/regions.parquet"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert [g["name"] for g in report["groups"]] == ["gender", "people"]
    assert list(tmp_path.joinpath("logs").rglob("nibt-report.log"))


def test_bad_override_is_exit_2(results, tmp_path, monkeypatch):
    """Hydra refuses the override before the app runs (in-process: no logging set up)."""
    from pipeline.cli import report as cli

    monkeypatch.setattr(sys, "argv", ["nibt-report", f"results={results / 'res'}",
                                      f"output={tmp_path}/o", "report.colour=red"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2


def test_date_partitioned_paths_need_no_quotes(results, tmp_path):
    """``results=<root>/dt=2026-12-01`` as a user types it (Hydra alone refuses the bare
    ``=`` in the value): the report is read from and written to those very paths."""
    import shutil

    dated = tmp_path / "audits" / "dt=2026-12-01"
    shutil.copytree(results / "res", dated)
    out = tmp_path / "reports" / "dt=2026-12-01"
    r = _report(f"results={dated}", f"output={out}", "report.words_min_count=2", tmp=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["rows"] == 60
    assert (out / "report.html").is_file() and (out / "report.json").is_file()


def test_hydra_answering_by_itself_is_exit_0(tmp_path, monkeypatch, capsys):
    """``--cfg job`` prints the composed settings (the dated path quoted for Hydra) and
    exits 0, not 1."""
    from pipeline.cli import report as cli

    monkeypatch.setattr(sys, "argv", ["nibt-report", "results=s3://b/a/dt=2026-12-01",
                                      f"output={tmp_path}/o", "--cfg", "job"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 0
    assert "results: s3://b/a/dt=2026-12-01" in capsys.readouterr().out


def test_config_errors_are_exit_2(results, tmp_path):
    assert run_from_config(_compose(f"results={tmp_path}/none", f"output={tmp_path}/o")) == 2
    assert run_from_config(_compose(f"output={tmp_path}/o")) == 2
    bad_groups = "+report.groups.solo={groups:{a:[x]}}"
    assert run_from_config(_compose(f"results={results / 'res'}", f"output={tmp_path}/o",
                                    bad_groups)) == 2
    assert not (tmp_path / "o").exists()


def test_the_default_groups_compose():
    cfg = _compose("results=/r", "output=/o")
    assert list(cfg.report.groups) == ["gender", "age", "people"]
    assert cfg.report.groups.people.rest == "no_people"


def test_results_and_report_on_s3(results, tmp_path, s3_endpoint):
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("nibt-report-test")
    storage = StorageSettings(endpoint_url=s3_endpoint)
    rows = random_rows(40, seed=22)
    write_results("s3://nibt-report-test/res", [rows[:25], rows[25:]],
                  str(results / "input.parquet"), storage)
    code = run_from_config(_compose("results=s3://nibt-report-test/res",
                                    "output=s3://nibt-report-test/report",
                                    f"storage.endpoint_url={s3_endpoint}",
                                    "report.words_min_count=2"))
    assert code == 0
    fs.invalidate_cache()
    names = {p.split("/report/", 1)[1] for p in fs.find("nibt-report-test/report")}
    assert names == {"report.html", "report.json", "flags.parquet", "aggregates/words.parquet",
                     "aggregates/groups.parquet", "aggregates/group_effects.parquet",
                     "aggregates/regions.parquet"}
    report = json.loads(fs.cat_file("nibt-report-test/report/report.json"))
    assert report["overview"]["rows"] == 40
    assert all(p["image"] == "ok" for p in report["review"]["lowest_score"])


def test_the_report_imports_neither_torch_nor_ray():
    """The report is aggregation over Parquet: importing torch alone costs ~450 MB of
    RSS (it did, through the image decoding module, and doubled the report's peak)."""
    import subprocess
    import sys

    code = ("import sys, pipeline.cli.report, pipeline.report.build; "
            "print(sorted(m for m in ('torch', 'ray', 'open_clip') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
