"""The user guide and docs/ stay true to the code: every setting documented, every link and
`make` target real, README short, no path outside the repository."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from pipeline.config import (
    ClusterSettings,
    DataSettings,
    ModelSettings,
    RunSettings,
    StorageSettings,
)
from pipeline.report.settings import ReportSettings

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
GUIDES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *DOCS]
SETTINGS = {"model": ModelSettings, "data": DataSettings, "storage": StorageSettings,
            "cluster": ClusterSettings, "run": RunSettings, "report": ReportSettings}


def documented_keys(group: str) -> set[str]:
    """Keys in the first column of the tables under ``## `group` ...`` in configuration.md."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    section = re.split(rf"\n## `{group}`", text, maxsplit=1)[1].split("\n## ", 1)[0]
    keys = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            keys |= set(re.findall(r"`([a-z_0-9]+)`", line.split("|")[1]))
    return keys


@pytest.mark.parametrize("group", sorted(SETTINGS))
def test_every_setting_is_documented(group):
    fields = {f.name for f in dataclasses.fields(SETTINGS[group])}
    missing = fields - documented_keys(group)
    assert not missing, f"docs/configuration.md lacks {group}.{sorted(missing)}"


# conf/<group>/*.yaml for each settings group (conf/report/groups/ holds caption groups, and
# the top-level files compose groups: neither is a settings object)
SETTINGS_FILES = sorted(p for p in (ROOT / "conf").rglob("*.yaml")
                        if p.relative_to(ROOT / "conf").parts[0] in SETTINGS
                        and p.parent.name != "groups")


def test_settings_files_are_found():
    assert {p.relative_to(ROOT / "conf").parts[0] for p in SETTINGS_FILES} == set(SETTINGS)


@pytest.mark.parametrize("path", SETTINGS_FILES, ids=lambda p: str(p.relative_to(ROOT / "conf")))
def test_every_key_in_conf_is_a_setting(path):
    group = path.relative_to(ROOT / "conf").parts[0]
    keys = set(yaml.safe_load(path.read_text()) or {}) - {"_target_"}
    fields = {f.name for f in dataclasses.fields(SETTINGS[group])}
    assert keys <= fields, sorted(keys - fields)


def test_the_readme_is_a_short_user_guide():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 300, len(lines)


def test_links_point_at_files_that_exist():
    for guide in GUIDES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", guide.read_text()):
            if "://" in target:
                continue
            assert (guide.parent / target).exists(), f"{guide.name}: {target}"


def test_make_targets_named_in_the_guides_exist():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, re.M))
    for guide in GUIDES:
        named = set(re.findall(r"`make ([a-z][a-z0-9-]*)", guide.read_text()))
        assert named <= targets, f"{guide.name}: {sorted(named - targets)}"


def test_no_tracked_file_points_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    outside = re.compile(r"\.\./shared|/work/(main|shared)|\.\./\.\./\.\.")
    hits = []
    for name in files:
        path = ROOT / name
        if path.suffix in (".safetensors", ".png", ".parquet") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        hits += [f"{name}: {m.group(0)}" for m in outside.finditer(text)]
    assert not hits, hits


def test_measured_tables_match_their_json():
    """Every measured table in docs/ is what its JSON in docs/figures/ renders to (the JSON
    written by the run that measured it: `python -m benchmarks.tables` redraws them)."""
    from benchmarks.tables import BLOCK, FIGURES, PAGES, render

    names = [m.group(2) for page in PAGES for m in BLOCK.finditer(page.read_text())]
    assert {"engine", "job", "decode-224", "report", "evaluate"} <= set(names), names
    for page in PAGES:
        text = page.read_text()
        assert render(text) == text, f"{page.name}: run python -m benchmarks.tables"
    for section in {p.stem for p in FIGURES.glob("*.json")}:
        assert json.loads((FIGURES / f"{section}.json").read_text())["machine"]["date"]


def test_a_changed_figure_is_caught(tmp_path):
    """The check can fail: one number changed in a copy of the JSON changes the page."""
    from benchmarks.tables import FIGURES, PAGES, render

    data = json.loads((FIGURES / "engine.json").read_text())
    data["engine_fp32_pairs_per_s"] *= 2
    for f in FIGURES.glob("*.json"):
        (tmp_path / f.name).write_text(f.read_text())
    (tmp_path / "engine.json").write_text(json.dumps(data))
    text = PAGES[0].read_text()
    assert render(text, tmp_path) != text
