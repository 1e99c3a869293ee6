"""``report.json``'s dict -> one self-contained ``report.html``.

Plots are matplotlib figures saved as PNG without metadata and embedded as
``data:`` URIs, so the page makes no request and the same report gives the
same bytes. Captions, ids, errors and paths are untrusted: the template is
rendered with autoescaping and no value is ever marked safe; the only
attribute values built here are numbers (colours) and base64 data URIs.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from typing import Any

import jinja2
import numpy as np
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from pipeline.report.aggregate import SCORE_EDGES
from pipeline.report.formats import fmt, pct, pts
from pipeline.report.pool import MapFn

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("pipeline.report", "templates"),
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
)
SCORE_LABEL = "CLIP score (cosine similarity, -1 to 1)"
DPI = 96
SHARE_LABELS = ("share of positive attribution", "share of pairs")
RED = np.array([178, 24, 43])
BLUE = np.array([33, 102, 172])
#: The report's fixed score bins (``aggregate.SCORE_EDGES``): where they start, how many.
SCORE_EDGES_START, SCORE_BINS = float(SCORE_EDGES[0]), SCORE_EDGES.size - 1


def data_uri(data: bytes, mime: str = "image/png") -> str:
    """``data`` as a ``data:`` URI (the page makes no request)."""
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def _png(fig: Figure | None) -> str | None:
    """A figure as a PNG data URI (no metadata: same figure, same bytes); None for None."""
    if fig is None:
        return None
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return data_uri(buf.getvalue())


def score_figure(counts: Sequence[int], start: float, width: float) -> Figure | None:
    """Histogram of CLIP scores from the report's fixed bins."""
    if not counts:
        return None
    fig = Figure(figsize=(6, 2.6))
    ax = fig.add_subplot()
    x = start + width * np.arange(len(counts))
    ax.bar(x, counts, width=width, align="edge", color="#4a6fa5")
    ax.set_xlabel(SCORE_LABEL)
    ax.set_ylabel("pairs")
    fig.tight_layout()
    return fig


def group_score_figure(groups: list[dict[str, Any]], start: float, width: float,
                       ylabel: str = "share of the group's pairs") -> Figure | None:
    """Each group's score distribution (share of its pairs per bin, 4 report bins wide)."""
    shown = [g for g in groups if g["pairs"] > 0]
    if not shown:
        return None
    fig = Figure(figsize=(6, 2.6))
    ax = fig.add_subplot()
    for g in shown:
        h = np.asarray(g["score_hist"], dtype=np.float64)
        h = h[: h.size // 4 * 4].reshape(-1, 4).sum(axis=1)
        nz = np.flatnonzero(h)
        if nz.size == 0:
            continue
        lo, hi = max(nz[0] - 1, 0), min(nz[-1] + 2, h.size)
        x = start + 4 * width * np.arange(lo, hi + 1)
        y = h[lo:hi] / h.sum()
        ax.stairs(y, x, label=f"{g['name']} (n={g['pairs']})")
    ax.set_xlabel(SCORE_LABEL)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def map_figure(maps: list[tuple[str, Sequence[float] | None]], grid: Sequence[int],
               signed: bool = True, label: str | Sequence[str] = "mean attribution",
               shared: bool = False) -> Figure | None:
    """Small multiples of grid maps, each with a labelled colour bar.

    Signed maps use a diverging colormap whose norm is centred at zero with
    symmetric limits (white = 0); shares (non-negative) go white to red from 0.
    ``shared`` puts every panel on one scale (for comparing groups); ``label``
    names the colour bars' quantity (one for all panels, or one per panel).
    """
    maps = [(t, m) for t, m in maps if m is not None]
    if not maps or not grid:
        return None
    h, w = grid
    labels = [label] * len(maps) if isinstance(label, str) else list(label)
    arrays = [np.nan_to_num(np.asarray(m, dtype=np.float64)).reshape(h, w) for _, m in maps]
    common = max(float(np.abs(a).max()) for a in arrays) or 1.0
    fig = Figure(figsize=(3.0 * len(maps) + 0.3, 3.0))
    for i, ((title, _), a, cb_label) in enumerate(zip(maps, arrays, labels)):
        ax = fig.add_subplot(1, len(maps), i + 1)
        top = common if shared else (float(np.abs(a).max()) or 1.0)
        norm = TwoSlopeNorm(vcenter=0.0, vmin=-top, vmax=top) if signed \
            else Normalize(vmin=0.0, vmax=top)
        im = ax.imshow(a, cmap="RdBu_r" if signed else "Reds", norm=norm, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("patch column", fontsize=8)
        ax.set_ylabel("patch row", fontsize=8)
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MaxNLocator(nbins=4, integer=True))
        ax.tick_params(labelsize=7)
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04,
                          format=FuncFormatter(lambda v, _: f"{v:.2g}"))
        cb.ax.tick_params(labelsize=7)
        cb.set_label(cb_label, fontsize=8)
    fig.tight_layout()
    return fig


def score_plot(counts: Sequence[int], start: float, width: float) -> str | None:
    """``score_figure`` as a data URI."""
    return _png(score_figure(counts, start, width))


def group_score_plot(groups: list[dict[str, Any]], start: float, width: float) -> str | None:
    """``group_score_figure`` as a data URI."""
    return _png(group_score_figure(groups, start, width))


def map_plot(maps: list[tuple[str, Sequence[float] | None]], grid: Sequence[int],
             signed: bool = True, label: str | Sequence[str] = "mean attribution",
             shared: bool = False) -> str | None:
    """``map_figure`` as a data URI."""
    return _png(map_figure(maps, grid, signed, label, shared))


def word_colour(value: float, scale: float) -> str:
    """Background for a caption word: red raises the alignment, blue lowers it."""
    t = 0.0 if scale <= 0 else max(-1.0, min(1.0, float(value) / scale))
    c = 255 + abs(t) * ((RED if t >= 0 else BLUE) - 255) * 0.75
    r, g, b = (int(round(x)) for x in c)
    return f"rgb({r},{g},{b})"


def caption(words: list[dict[str, Any]]) -> list[dict[str, Any]]:
    scale = max((abs(w["attr"] or 0.0) for w in words), default=0.0)
    return [{"word": w["word"], "attr": w["attr"], "bg": word_colour(w["attr"] or 0.0, scale)}
            for w in words]


def comparison_score_figure(c: dict[str, Any]) -> Figure | None:
    """The two audits' score distributions on one axis (share of each one's pairs)."""
    sc = c["score"]
    width = sc["hist_bin"]
    offset = int(round((sc["hist_from"] - SCORE_EDGES_START) / width))
    sides = []
    for name, key, n in (("baseline", "baseline_hist", sc["baseline"]["n"]),
                         ("current", "current_hist", sc["current"]["n"])):
        full = np.zeros(SCORE_BINS, np.int64)
        h = np.asarray(sc[key], np.int64)
        full[offset : offset + h.size] = h
        sides.append({"name": name, "pairs": n, "score_hist": full})
    return group_score_figure(sides, SCORE_EDGES_START, width, "share of the audit's pairs")


def comparison_score_plot(c: dict[str, Any]) -> str | None:
    """``comparison_score_figure`` as a data URI."""
    return _png(comparison_score_figure(c))


#: The figures ``draw`` makes, by name.
PLOTS: dict[str, Callable[..., str | None]] = {
    "scores": score_plot, "group_scores": group_score_plot, "maps": map_plot,
    "comparison_scores": comparison_score_plot,
}
#: A figure to draw: a ``PLOTS`` name, its arguments and keyword arguments.
Job = tuple[str, tuple[Any, ...], dict[str, Any]]


def draw(job: Job) -> str | None:
    """One figure as a data URI (a worker process may draw it: it needs nothing else)."""
    name, args, kwargs = job
    return PLOTS[name](*args, **kwargs)


def figure_jobs(report: dict[str, Any]) -> list[tuple[tuple[str, int | None], Job]]:
    """Every figure of the page as ``((slot, index in the slot's list or None), job)``."""
    ov, sp = report["overview"], report["space"]
    bin_width = ov["score"]["hist_bin"]
    jobs: list[tuple[tuple[str, int | None], Job]] = [
        (("scores", None), ("scores", (ov["score"]["hist_counts"], ov["score"]["hist_from"],
                                      bin_width), {}))]
    grid = sp.get("grid")
    for i, fam in enumerate(report["groups"]):
        jobs.append((("groups", i), ("group_scores", (fam["groups"], SCORE_EDGES_START,
                                                      bin_width), {})))
        if grid:
            jobs.append((("group_maps", i), ("maps", ([(g["name"], g["mean_map"])
                                                       for g in fam["groups"]], grid),
                                             {"shared": True})))
    if grid:
        jobs.append((("dataset_maps", None), ("maps", ([("mean signed map", sp["mean_map"])],
                                                       grid), {})))
        jobs.append((("dataset_shares", None), ("maps", (
            [("mean positive share", sp["positive_mean_map"]), ("top-patch share",
                                                             sp["top_share"])], grid),
            {"signed": False, "label": SHARE_LABELS})))
        for i, m in enumerate(sp.get("suspect_maps", [])):
            jobs.append((("suspects", i), ("maps", (
                [(f"{m['word']}: positive share", m["positive_mean_map"]),
                 ("top-patch share", m["top_share"])], grid),
                {"signed": False, "label": ("share of positive attribution",
                                            "share of the word's pairs")})))
    if report.get("comparison"):
        jobs.append((("comparison_scores", None), ("comparison_scores", (report["comparison"],),
                                                   {})))
    return jobs


def plots(report: dict[str, Any], run: MapFn | None = None) -> dict[str, Any]:
    """Every figure of the page as a data URI (None when there is nothing to draw); ``run``
    draws them side by side (the report's workers), default one after the other."""
    jobs = figure_jobs(report)
    n_fam = len(report["groups"])
    out: dict[str, Any] = {"groups": [None] * n_fam, "group_maps": [None] * n_fam,
                           "suspects": [None] * sum(slot == "suspects" for (slot, _), _ in jobs)}
    for ((slot, i), _), uri in zip(jobs, list((run or map)(draw, [job for _, job in jobs]))):
        if i is None:
            out[slot] = uri
        else:
            out[slot][i] = uri
    return out


def zoom_uris(zooms: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each enlarged view's images as data URIs (JPEG photos, PNG maps)."""
    out = {}
    for key, z in zooms.items():
        out[key] = {"scale": z.get("scale"), "crop_px": z.get("crop_px"),
                    "size": z.get("size"),
                    "image": data_uri(z["image"], "image/jpeg") if z.get("image") else None,
                    "overlay": data_uri(z["overlay"], "image/jpeg") if z.get("overlay") else None,
                    "map": data_uri(z["map"]) if z.get("map") else None}
    return out


def render_html(report: dict[str, Any], thumbs: dict[str, bytes],
                zooms: dict[str, dict[str, Any]] | None = None, run: MapFn | None = None) -> str:
    """The page: the comparison (with a baseline), findings, then overview, words, groups,
    space, pairs to review (each enlarged on click); ``run``: see ``plots``."""
    return _ENV.get_template("report.html.j2").render(
        r=report, plots=plots(report, run), thumbs={k: data_uri(v) for k, v in thumbs.items()},
        zooms=zoom_uris(zooms or {}), caption=caption, fmt=fmt, pct=pct, pts=pts,
    )
