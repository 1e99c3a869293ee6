"""``python -m pipeline.devtools.screenshot``: the demo report in headless Chromium.

The rendering test runs only where Chromium is installed (``apt-get install
chromium``; ``make install`` does not install it); the missing-browser path
always runs.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.devtools import screenshot
from tests.report.demo import build_demo

needs_chromium = pytest.mark.skipif(screenshot.find_chromium() is None,
                                    reason="Chromium not installed (apt-get install chromium)")


@needs_chromium
def test_the_demo_report_renders(tmp_path):
    report = build_demo(tmp_path / "demo")
    out = tmp_path / "shot" / "report.png"
    # the window kept whole: where a blank band falls depends on the fonts the runner has
    assert screenshot.main([str(report / "report.html"), str(out), "--height", "2400",
                            "--no-trim"]) == 0
    img = Image.open(out).convert("RGB")
    assert img.size == (1280, 2400)
    px = np.asarray(img, dtype=np.int32)
    assert (px.sum(axis=2) < 300).mean() > 0.005  # dark text and plots, not a blank page
    r, g, b = px[:600, :, 0], px[:600, :, 1], px[:600, :, 2]
    assert ((b > 150) & (r < 80) & (g < 80)).sum() > 200  # the findings: blue links


@needs_chromium
def test_the_comparison_page_and_an_enlarged_pair_render(tmp_path):
    import json

    build_demo(tmp_path / "demo", compare=True)
    page = tmp_path / "demo" / "compare" / "report.html"
    out = tmp_path / "shot" / "compare.png"
    assert screenshot.main([str(page), str(out), "--height", "1600"]) == 0
    px = np.asarray(Image.open(out).convert("RGB"), dtype=np.int32)
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    # the changes section comes first: its blue frame (#4a6fa5) starts near the top
    frame = np.flatnonzero(((abs(r - 74) < 12) & (abs(g - 111) < 12) & (abs(b - 165) < 12))
                           .sum(axis=1) > 600)
    assert frame.size and frame[0] < 250
    assert ((b > 150) & (r < 80) & (g < 80))[:900].sum() > 200  # its findings: blue links
    report = json.loads((tmp_path / "demo" / "compare" / "report.json").read_text())
    key = report["review"]["lowest_score"][0]["thumb"]
    zoom = tmp_path / "shot" / "zoom.png"
    assert screenshot.main([str(page), str(zoom), "--height", "900", "--no-trim",
                            "--fragment", f"zoom-{key}"]) == 0
    z = np.asarray(Image.open(zoom).convert("RGB"), dtype=np.int32)
    # the page behind the dialog dimmed (white under 60% of rgb(20,20,20): about 114 grey)
    dim = ((abs(z - 114) < 12).all(axis=2)).mean()
    white = (z.min(axis=2) > 245).mean()  # the dialog's white box
    assert dim > 0.1 and white > 0.15
    zr, zb = z[..., 0], z[..., 2]
    assert ((zr > 150) & (zb < 90)).sum() > 400 and ((zb > 150) & (zr < 90)).sum() > 400


def test_a_missing_browser_is_a_clear_error(tmp_path, monkeypatch, capsys):
    page = tmp_path / "p.html"
    page.write_text("<p>hi</p>")
    monkeypatch.setenv("NIBT_CHROMIUM", str(tmp_path / "no-such-chromium"))
    assert screenshot.find_chromium() is None
    with pytest.raises(screenshot.ScreenshotError, match="apt-get install -y chromium"):
        screenshot.screenshot(page, tmp_path / "x.png")
    assert screenshot.main([str(page), str(tmp_path / "x.png")]) == 2
    assert "Chromium not found" in capsys.readouterr().err
    assert screenshot.main([str(tmp_path / "missing.html"), str(tmp_path / "x.png")]) == 2


def test_the_blank_band_below_the_page_is_cut(tmp_path):
    img = Image.new("RGB", (50, 400), (255, 255, 255))
    img.paste((10, 10, 10), (5, 20, 45, 100))  # content ends at row 99
    path = tmp_path / "tall.png"
    img.save(path)
    screenshot.trim_bottom(path, margin=10)
    assert Image.open(path).size == (50, 110)
    screenshot.trim_bottom(path, margin=10)  # nothing more to cut
    assert Image.open(path).size == (50, 110)
