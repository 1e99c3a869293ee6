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
from collections.abc import Sequence
from typing import Any

import jinja2
import numpy as np
from matplotlib.figure import Figure

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("pipeline.report", "templates"),
    autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
)
RED = np.array([178, 24, 43])
BLUE = np.array([33, 102, 172])


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
    return data_uri(buf.getvalue())


def score_plot(counts: Sequence[int], start: float, width: float) -> str | None:
    """Histogram of CLIP scores from the report's fixed bins."""
    if not counts:
        return None
    fig = Figure(figsize=(6, 2.6))
    ax = fig.add_subplot()
    x = start + width * np.arange(len(counts))
    ax.bar(x, counts, width=width, align="edge", color="#4a6fa5")
    ax.set_xlabel("CLIP score (cosine)")
    ax.set_ylabel("pairs")
    fig.tight_layout()
    return _png(fig)


def group_score_plot(groups: list[dict[str, Any]], start: float, width: float) -> str | None:
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
        x = -1.0 + 4 * width * np.arange(lo, hi + 1)
        y = h[lo:hi] / h.sum()
        ax.stairs(y, x, label=f"{g['name']} (n={g['pairs']})")
    ax.set_xlabel("CLIP score (cosine)")
    ax.set_ylabel("share of group")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def map_plot(maps: list[tuple[str, Sequence[float] | None]], grid: Sequence[int],
             signed: bool = True) -> str | None:
    """Small multiples of grid maps: signed (blue-white-red, symmetric) or shares (white-red)."""
    maps = [(t, m) for t, m in maps if m is not None]
    if not maps or not grid:
        return None
    h, w = grid
    fig = Figure(figsize=(2.3 * len(maps) + 0.4, 2.5))
    for i, (title, m) in enumerate(maps):
        ax = fig.add_subplot(1, len(maps), i + 1)
        a = np.asarray(m, dtype=np.float64).reshape(h, w)
        top = float(np.abs(a).max()) or 1.0
        im = ax.imshow(a, cmap="RdBu_r" if signed else "Reds", vmin=-top if signed else 0,
                       vmax=top, interpolation="nearest")
        ax.set_title(title, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=6)
    fig.tight_layout()
    return _png(fig)


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


def fmt(x: Any, spec: str = ".3g") -> str:
    """A number for display ('n/a' for None)."""
    if x is None:
        return "n/a"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    return format(x, spec)


def pct(x: Any, spec: str = ".1%") -> str:
    return "n/a" if x is None else format(x, spec)


def plots(report: dict[str, Any]) -> dict[str, Any]:
    """Every figure of the page as a data URI (None when there is nothing to draw)."""
    ov, sp = report["overview"], report["space"]
    out: dict[str, Any] = {
        "scores": score_plot(ov["score"]["hist_counts"], ov["score"]["hist_from"],
                             ov["score"]["hist_bin"]),
        "groups": [], "group_maps": [], "suspects": [],
    }
    grid = sp.get("grid")
    for fam in report["groups"]:
        out["groups"].append(group_score_plot(fam["groups"], -1.0, ov["score"]["hist_bin"]))
        out["group_maps"].append(map_plot([(g["name"], g["mean_map"]) for g in fam["groups"]],
                                          grid) if grid else None)
    if grid:
        out["dataset_maps"] = map_plot([("mean signed map", sp["mean_map"])], grid)
        out["dataset_shares"] = map_plot([("mean positive share", sp["positive_mean_map"]),
                                          ("top-patch share", sp["top_share"])], grid, signed=False)
        out["suspects"] = [map_plot([(f"{m['word']}: positive share", m["positive_mean_map"]),
                                     ("top-patch share", m["top_share"])], grid, signed=False)
                           for m in sp.get("suspect_maps", [])]
    return out


def render_html(report: dict[str, Any], thumbs: dict[str, bytes]) -> str:
    """The page: findings first, then overview, words, groups, space, pairs to review."""
    return _ENV.get_template("report.html.j2").render(
        r=report, plots=plots(report), thumbs={k: data_uri(v) for k, v in thumbs.items()},
        caption=caption, fmt=fmt, pct=pct,
    )
