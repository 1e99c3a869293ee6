"""Every result records the resolved values that produced it (parts, manifest, summary,
report); a file of unusable rows is named; a failed report after a complete audit is
exit 4. One `nibt-audit` run of the shipped demo model, then a rerun of the same output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pyarrow.parquet as pq
import pytest
import torch

from pipeline.io.manifest import read_manifest
from tests.data import pairs_table, write_table

FACTS = Path(__file__).resolve().parents[2] / "pipeline" / "engine" / "weights" / "nibt-demo.json"
GOOD, BAD = 6, 4
STEPS = 2


def audit(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", f"input={tmp}/in", f"output={tmp}/out", "model=demo",
         f"model.steps={STEPS}", "run.progress=false", "report.enabled=true", *args],
        capture_output=True, text=True, timeout=600, cwd=tmp,
        env={**os.environ, "NIBT_LOG_DIR": str(tmp / "logs")},
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("provenance")
    (tmp / "in").mkdir()
    write_table(pairs_table(GOOD, seed=21), str(tmp / "in" / "good.parquet"))
    # binary cells that are no image: every row bad_image, the file named in the summary
    write_table(pairs_table(BAD, seed=22, images=[b"GIF89a truncated"] * BAD),
                str(tmp / "in" / "junk.parquet"))
    r = audit(tmp)
    assert r.returncode == 0, r.stderr[-4000:]
    return tmp, json.loads(r.stdout), r.stderr


def expected() -> dict:
    """What the shipped demo model resolves to, from its facts file and the libraries."""
    import PIL
    import torchvision

    facts = json.loads(FACTS.read_text())
    return {"model": "nibt-demo", "weights": f"sha256:{facts['weights_sha256']}",
            "image_layer": facts["image_layer"], "text_layer": facts["text_layer"],
            "steps": STEPS, "schedule": "uniform",
            "precision": "bf16" if torch.cuda.is_available() else "fp32",
            "torch": torch.__version__, "open_clip": open_clip.__version__,
            "torchvision": torchvision.__version__, "pillow": PIL.__version__,
            "decode": "fast"}  # data.decode's default


def test_parts_manifest_and_summary_record_the_resolved_values(run):
    tmp, summary, _ = run
    want = expected()
    manifest = read_manifest(str(tmp / "out"))
    assert len(manifest["parts"]) == 2
    for entry in manifest["parts"]:
        meta = pq.read_schema(tmp / "out" / entry["path"]).metadata
        part = {k.decode()[len("nibt."):]: v.decode() for k, v in meta.items()
                if k.startswith(b"nibt.")}
        for key, value in want.items():
            assert part[key] == (value if isinstance(value, str) else json.dumps(value)), key
        assert int(part["batch_size"]) == entry["batch_size"] >= 1
        assert part["fingerprint"] == manifest["fingerprint"] == summary["fingerprint"]
    for recorded in (manifest["metadata"], summary["provenance"]):
        assert {k: recorded[k] for k in want} == want
        assert recorded["batch_size"] == max(e["batch_size"] for e in manifest["parts"])
        assert recorded["engine_results_version"] >= 1
    # the settings as given stay beside them: null layers, precision auto
    assert summary["settings"]["model"]["image_layer"] is None
    assert summary["settings"]["model"]["precision"] == "auto"


def test_the_report_overview_shows_them(run):
    tmp, summary, _ = run
    report = json.loads((tmp / "out" / "report" / "report.json").read_text())
    for key, value in expected().items():
        assert report["run"][key] == value, key
    html = (tmp / "out" / "report" / "report.html").read_text()
    assert "engine results version" in html and open_clip.__version__ in html
    assert "<th>image layer</th><td>2</td><th>text layer</th><td>0</td>" in html


def test_a_file_of_unusable_rows_is_named_with_its_commonest_error(run):
    tmp, summary, log = run
    assert summary["status"] == "succeeded" and summary["status_counts"] == {
        "bad_image": BAD, "ok": GOOD}
    (bad,) = summary["bad_files"]
    assert bad["source"].endswith("junk.parquet") and bad["rows"] == BAD
    assert bad["status"] == "bad_image" and bad["commonest_error_rows"] == BAD
    assert "cannot decode image" in bad["commonest_error"] or "not an image" in bad["commonest_error"]
    assert "junk.parquet: all 4 rows are bad_image" in log  # a warning in the log


def test_a_failed_report_after_a_complete_audit_exits_4(run):
    tmp, first, _ = run
    report = tmp / "out" / "report"
    for p in report.rglob("*"):
        if p.is_file():
            p.unlink()
    for p in sorted(report.rglob("*"), reverse=True):
        p.rmdir()
    report.rmdir()
    report.write_text("a file where the report's folder goes")  # the report cannot be written
    r = audit(tmp)
    assert r.returncode == 4, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["exit_code"] == 4 and "error" in summary["report"]
    assert summary["tasks_skipped"] == 2 and summary["tasks_failed"] == 0
    assert (tmp / "out" / "_SUCCESS").exists()  # the audit itself is complete
    # the rerun read the skipped parts' footers: the same provenance
    assert summary["provenance"] == first["provenance"]
    assert summary["bad_files"] == first["bad_files"]
    assert json.loads((tmp / "out" / "_summary.json").read_text())["exit_code"] == 4
