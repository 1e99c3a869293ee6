"""The written report: untrusted text escaped, same bytes every run, thumbnails from the input."""

from __future__ import annotations

import io
import json
import os
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import ConfigError, StorageSettings
from pipeline.report import ReportSettings, build_report
from pipeline.report.thumbs import read_images, thumbnail
from tests.report.builders import Row, random_rows, write_input, write_results

PAYLOADS = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>",
            '"><svg onload=alert(2)>', "javascript:alert(3)"]


class Tags(HTMLParser):
    """Every start tag with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))


def _hostile_rows() -> list[Row]:
    rows = random_rows(30, seed=5)
    rows[0] = Row(PAYLOADS[2], ["a", PAYLOADS[0], "dog", PAYLOADS[1]], [0.01, -0.5, 0.02, 0.3],
                  0.01, list(np.linspace(-1, 1, 16)))
    rows[1] = Row(PAYLOADS[0], [PAYLOADS[3]], [-0.9], 0.02, list(np.linspace(1, -1, 16)))
    rows[2] = Row(PAYLOADS[1], [], [], 0.0, None, status="error", error=PAYLOADS[1])
    return rows


def test_captions_ids_and_errors_are_escaped(tmp_path):
    src = str(tmp_path / "input.parquet")
    write_input(src, 30)
    write_results(str(tmp_path / "res"), [_hostile_rows()], src)
    groups = {PAYLOADS[0]: {"description": PAYLOADS[1],
                            "groups": {PAYLOADS[1]: ["dog"], "other": ["a"]}}}
    build_report(str(tmp_path / "res"), str(tmp_path / "out"),
                 ReportSettings(words_min_count=1, groups=groups))
    html = (tmp_path / "out" / "report.html").read_text()
    parser = Tags()
    parser.feed(html)
    names = [t for t, _ in parser.tags]
    assert "script" not in names and "svg" not in names
    for tag, attrs in parser.tags:
        for name, value in attrs:
            assert not name.startswith("on"), (tag, name)
            if name == "src":
                assert value.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")), \
                    value[:40]
            if name == "href":
                assert value.startswith("#"), value
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["review"]["lowest_score"][0]["id"] == PAYLOADS[2]  # shown, as text


def _build(tmp_path: Path, out: str) -> Path:
    if not (tmp_path / "res").exists():
        src = str(tmp_path / "input.parquet")
        write_input(src, 90)
        rows = random_rows(90, seed=8, bad_every=11)
        write_results(str(tmp_path / "res"), [rows[:40], rows[40:]], src)
    s = ReportSettings(words_min_count=2, shortcut_min_count=2, groups={
        "gender": {"groups": {"f": ["woman", "girl"], "m": ["man", "boy"]}, "rest": "none"}})
    build_report(str(tmp_path / "res"), str(tmp_path / out), s)
    return tmp_path / out


def test_same_results_give_the_same_bytes(tmp_path):
    a, b = _build(tmp_path, "out1"), _build(tmp_path, "out2")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert {str(f) for f in files} >= {"report.html", "report.json", "aggregates/words.parquet",
                                       "aggregates/groups.parquet", "aggregates/regions.parquet",
                                       "aggregates/group_effects.parquet"}
    assert not [p for p in a.rglob("*") if p.name.startswith((".tmp-", "_tmp"))]
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert pq.read_table(a / "aggregates" / "groups.parquet").num_rows == 9  # 3 groups x 3


def test_report_json_holds_the_numbers_and_no_nan(tmp_path):
    out = _build(tmp_path, "out")
    text = (out / "report.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    report = json.loads(text)
    assert report["overview"]["rows"] == 90 and report["overview"]["rows_ok"] == 82
    assert report["run"]["model"] == "nibt-demo" and report["run"]["image_layer"] == 1
    assert [m["paper"]["Conceptual Captions"] for m in report["overview"]["metrics"]] == \
        [0.9439, 42.5, 0.2705, 43.95]
    assert report["overview"]["errors"][0]["kind"] == "image is #x# pixels, too small"
    html = (out / "report.html").read_text()
    for f in report["findings"]:
        assert f'id="{f["anchor"]}"' in html


def test_thumbnails_come_from_the_right_input_rows(tmp_path):
    src = str(tmp_path / "input.parquet")
    colours = write_input(src, 30, row_group_size=7)
    got = read_images([(src, 0), (src, 8), (src, 29), (src, 99)], "image", StorageSettings())
    for row in (0, 8, 29):
        assert got[(src, row)].getpixel((5, 5)) == colours[row]
    assert isinstance(got[(src, 99)], str)
    gone = read_images([(str(tmp_path / "gone.parquet"), 3)], "image", StorageSettings())
    assert isinstance(gone[(str(tmp_path / "gone.parquet"), 3)], str)
    # a map over the image, or alone
    img = Image.open(io.BytesIO(thumbnail(got[(src, 8)], [0.0] * 16, (4, 4), 32)))
    # no map: the image in grey (ITU-R 601 luma, lightened to 0.3..0.92 of white)
    luma = (0.299 * colours[8][0] + 0.587 * colours[8][1] + 0.114 * colours[8][2]) / 255
    assert img.size == (32, 32) and img.getpixel((16, 16)) == (round(255 * (0.3 + 0.62 * luma)),) * 3
    alone = Image.open(io.BytesIO(thumbnail(None, [1.0] + [0.0] * 15, (4, 4), 32)))
    assert alone.getpixel((31, 31)) == (255, 255, 255) and alone.getpixel((0, 0)) != (255, 255, 255)


def test_a_missing_input_still_gives_a_report(tmp_path):
    out = _build(tmp_path, "out")
    os.remove(tmp_path / "input.parquet")
    report = build_report(str(tmp_path / "res"), str(tmp_path / "out2"),
                          ReportSettings(words_min_count=2))
    pairs = report["review"]["lowest_score"]
    assert pairs and all(p["image"] != "ok" for p in pairs)
    before = json.loads((out / "report.json").read_text())["review"]["lowest_score"]
    assert all(p["image"] == "ok" for p in before)


def test_bad_settings_and_results_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="report.groups.x"):
        ReportSettings(groups={"x": {"groups": {"only": ["a"]}}})
    with pytest.raises(ConfigError, match="report.bootstrap_samples"):
        ReportSettings(bootstrap_samples=0)
    with pytest.raises(ConfigError, match="_manifest.json"):
        build_report(str(tmp_path / "nothing"), str(tmp_path / "out"))


def test_thumbnails_of_webdataset_rows_come_from_their_samples(tmp_path):
    from pipeline.config import DataSettings
    from tests.data import tar_bytes

    colours = [(10 * i, 255 - 10 * i, 7 * i) for i in range(6)]
    members = []
    for i, c in enumerate(colours):
        buf = io.BytesIO()
        Image.new("RGB", (12, 12), c).save(buf, format="PNG")
        members += [(f"k{i}.txt", b"a square"), (f"k{i}.png", buf.getvalue())]
    src = tmp_path / "00000.tar"
    src.write_bytes(tar_bytes(members))
    got = read_images([(str(src), 1), (str(src), 4), (str(src), 9)], "image", StorageSettings(),
                      data=DataSettings(format="webdataset"))
    for row in (1, 4):
        assert got[(str(src), row)].getpixel((5, 5)) == colours[row]
    assert got[(str(src), 9)] == "row not found in the input"
