"""The report's figures: every axis labelled, signed maps on a zero-centred diverging scale.

The figures are inspected as matplotlib objects (the norm each image was drawn
with, its colour bar, the axis labels), not as pixels.
"""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.figure import Figure

from pipeline.report import ReportSettings, build_report, render
from tests.report.builders import random_rows, write_input, write_results


def _images(fig: Figure) -> list:
    return [im for ax in fig.axes for im in ax.get_images()]


def _colourbar_axes(fig: Figure) -> list:
    return [im.colorbar.ax for im in _images(fig) if im.colorbar is not None]


def assert_labelled(fig: Figure) -> None:
    """Every plot Axes has x and y labels; every colour bar names its quantity."""
    bars = _colourbar_axes(fig)
    for ax in fig.axes:
        if ax in bars:
            assert ax.get_ylabel().strip(), "colour bar without a label"
        else:
            assert ax.get_xlabel().strip() and ax.get_ylabel().strip(), ax.get_title()


def test_signed_maps_are_centred_at_zero_with_a_colour_bar():
    a = [0.0, 0.5, 2.0, 0.1]  # all positive: the scale must still be centred at 0
    b = [-3.0, 0.2, 0.0, 1.0]
    fig = render.map_figure([("a", a), ("b", b)], (2, 2), signed=True)
    images = _images(fig)
    assert len(images) == 2
    for im, values in zip(images, (a, b)):
        lo, hi = im.get_clim()
        assert lo == -hi and hi == pytest.approx(np.abs(values).max())
        assert im.norm(0.0) == pytest.approx(0.5)  # zero is the colormap's middle (white)
        assert im.get_cmap().name == "RdBu_r" and im.colorbar is not None
    assert_labelled(fig)
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("patch column", "patch row")


def test_shared_scale_and_unsigned_shares():
    shared = render.map_figure([("a", [1.0, 0, 0, 0]), ("b", [0, -4.0, 0, 0])], (2, 2),
                               shared=True)
    assert {im.get_clim() for im in _images(shared)} == {(-4.0, 4.0)}
    shares = render.map_figure([("p", [0.1, 0.2, 0.3, 0.4]), ("t", [0.0, 0.0, 1.0, 0.0])],
                               (2, 2), signed=False, label=("share of x", "share of y"))
    clims = [im.get_clim() for im in _images(shares)]
    assert clims == [(0.0, pytest.approx(0.4)), (0.0, 1.0)]
    assert [im.get_cmap().name for im in _images(shares)] == ["Reds", "Reds"]
    assert [ax.get_ylabel() for ax in _colourbar_axes(shares)] == ["share of x", "share of y"]
    assert_labelled(shares)
    assert render.map_figure([("none", None)], (2, 2)) is None


def test_histograms_have_labelled_axes():
    fig = render.score_figure([1, 4, 2], 0.2, 0.005)
    assert_labelled(fig)
    assert "CLIP score" in fig.axes[0].get_xlabel()
    groups = [{"name": "a", "pairs": 3, "score_hist": [0] * 200 + [1, 2] + [0] * 198},
              {"name": "b", "pairs": 0, "score_hist": [0] * 400}]
    assert_labelled(render.group_score_figure(groups, -1.0, 0.005))
    assert render.score_figure([], 0.0, 0.005) is None


def test_every_figure_of_a_report_is_labelled(tmp_path, monkeypatch):
    src = str(tmp_path / "input.parquet")
    write_input(src, 80)
    rows = random_rows(80, seed=3, bad_every=9)
    write_results(str(tmp_path / "res"), [rows[:40], rows[40:]], src)
    report = build_report(str(tmp_path / "res"), str(tmp_path / "out"), ReportSettings(
        words_min_count=2, groups={"g": {"groups": {"f": ["woman", "girl"], "m": ["man", "boy"]},
                                         "rest": "other"}}))
    figures: list[Figure] = []
    real = render._png
    monkeypatch.setattr(render, "_png", lambda fig: (figures.append(fig), real(fig))[1]
                        if fig is not None else None)
    render.plots(report)
    assert len(figures) >= 4  # scores, group scores, group maps, dataset maps and shares
    for fig in figures:
        assert_labelled(fig)
        for im in _images(fig):
            lo, hi = im.get_clim()
            assert lo == -hi or lo == 0.0, (lo, hi)
            if lo < 0:
                assert im.get_cmap().name == "RdBu_r"
