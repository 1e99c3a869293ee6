"""Pictures a person can read: the map's sign shows whatever the image's colours, images at a
readable size, the map alone beside them, and the report's enlarged view of a pair."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from pipeline.report.heatmap import overlay
from pipeline.report.pairview import pair_figure, readable_size, zoom_images

COLOURS = {"red": (210, 40, 40), "blue": (40, 60, 210), "green": (40, 170, 60),
           "black": (0, 0, 0), "white": (255, 255, 255)}


@pytest.mark.parametrize("on_grey", [True, False])
def test_the_maps_sign_shows_over_any_colour(on_grey):
    """A red map over a red object and a blue map over a blue object must look different:
    on grey, red always dominates where the map is positive and blue where negative."""
    values = np.linspace(-1, 1, 16).reshape(4, 4)
    wrong = 0
    for rgb in COLOURS.values():
        img = Image.new("RGB", (64, 64), rgb)
        px = np.asarray(overlay(img, values, on_grey=on_grey), dtype=np.int32)
        up = np.repeat(np.repeat(values, 16, axis=0), 16, axis=1)  # each patch's own value
        centre = np.zeros((64, 64), bool)
        centre[8::16, 8::16] = True  # patch centres: the upsampled value is the patch's
        strong = centre & (np.abs(up) > 0.1)
        sign = np.sign(px[..., 0] - px[..., 2])[strong]
        wrong += int((sign != np.sign(up[strong])).sum())
    if on_grey:
        assert wrong == 0
    else:  # over the image's own colours the sign is lost somewhere: why the overlay is grey
        assert wrong > 0


def test_images_are_shown_at_a_readable_size():
    assert readable_size((64, 64)) == (384, 384)
    assert readable_size((64, 32)) == (384, 192)
    assert readable_size((800, 600)) == (800, 600)  # the original when larger
    assert readable_size((4000, 3000)) == (1024, 768)  # up to max_px
    assert readable_size((500, 400), 384, 300) == (384, 307)


def test_the_pair_figure_has_image_map_with_colour_bar_overlay_and_caption():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    values = np.zeros((8, 8))
    values[2, 3], values[6, 6] = 1.0, -0.5
    png = pair_figure(img, values, [("a", 0.01), ("red", 0.2), ("circle", -0.1)], "title")
    fig = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int32)
    # the image at 384 x 288 (long side 384), the centre square 288 x 288 for the map alone
    # and the overlay: wider than all three side by side
    assert fig.shape[1] >= 384 + 2 * 288 and fig.shape[0] >= 288
    red = (fig[..., 0] > 150) & (fig[..., 1] < 60) & (fig[..., 2] < 80)
    blue = (fig[..., 2] > 130) & (fig[..., 0] < 80)
    assert red.sum() > 288 * 288 / 64  # at least the positive patch, drawn alone
    assert blue.sum() > 0


def test_the_enlarged_view_has_its_pieces(tmp_path):
    img = Image.new("RGB", (96, 128), (30, 200, 30))
    z = zoom_images(img, list(np.linspace(-2, 1, 16)), (4, 4), 384, 768)
    assert z["scale"] == pytest.approx(2.0)
    shown = Image.open(io.BytesIO(z["image"]))
    assert shown.size == (288, 384) and z["crop_px"] == 288
    assert Image.open(io.BytesIO(z["overlay"])).size == (288, 288)
    m = np.asarray(Image.open(io.BytesIO(z["map"])).convert("RGB"))
    assert m.shape == (4, 4, 3)  # one pixel per patch, enlarged by the page
    assert m[0, 0, 2] > m[0, 0, 0]  # -2: the scale's blue end
    assert (m[2, 2] == 255).all()  # 0: white
    none = zoom_images(None, None, (0, 0))
    assert none["image"] is None and none["map"] is None


def test_the_report_enlarges_each_pair_on_click(tmp_path):
    from tests.report.demo import build_demo

    report = build_demo(tmp_path / "demo")
    html = (report / "report.html").read_text()
    import json

    r = json.loads((report / "report.json").read_text())
    keys = {p["thumb"] for name in ("lowest_score", "most_negative") for p in r["review"][name]}
    keys |= {p["thumb"] for s in r["review"]["suspects"] for p in s["pairs"]}
    assert keys
    for k in keys:
        assert html.count(f'id="zoom-{k}"') == 1 and f'href="#zoom-{k}"' in html
    blocks = re.findall(r'<div class="zoom" id="zoom-[^"]+".*?</div>\n</div>', html, re.S)
    assert len(blocks) == len(keys)
    assert all("data:image/jpeg" in b and 'class="map"' in b and "vbar" in b for b in blocks)
