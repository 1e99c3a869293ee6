"""The statistics of two compared audits, section by section: the CLIP score, the status
mix, words, shortcut suspects and caption groups, each change with its interval
(``report.confidence``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.report import summary
from pipeline.report.aggregate import SCORE_EDGES, Aggregator
from pipeline.report.regions import Grid
from pipeline.report.settings import ReportSettings
from pipeline.report.space import WordSpace
from pipeline.report.stats import (
    benjamini_hochberg,
    cohens_d,
    hist_distances,
    interval,
    mean_diff,
    normal_p,
    pooled_d,
    proportion_diff,
    welch_se,
    z_value,
)
from pipeline.report.summary import GROUP_METRIC_LABELS, alnum_mask, finite_or_none, top_by


@dataclass
class Audit:
    """One audit as the comparison reads it: its manifest and aggregates."""

    results: str
    manifest: dict[str, Any]
    agg: Aggregator
    spaces: list[WordSpace] = field(default_factory=list)  # own tracked words, then extra
    suspects: list[dict] = field(default_factory=list)
    groups: list[dict] = field(default_factory=list)  # summary.groups_section
    devs: dict = field(default_factory=dict)  # summary.group_deviations
    complete: bool | None = None  # _SUCCESS present

    def word_cells(self, word: str) -> tuple[int, np.ndarray | None]:
        """(pairs with a usable map whose caption has ``word``, their top-patch cell counts)."""
        for ws in self.spaces:
            i = ws.index.get(word)
            if i is not None:
                return int(ws.n[i]), ws.top[i]
        return 0, None


def score_section(cur: Aggregator, base: Aggregator, s: ReportSettings) -> dict[str, Any]:
    """Difference of mean CLIP scores with its interval; distribution distances."""
    z = z_value(s.confidence)
    d, lo, hi = mean_diff(cur.score, base.score, z)
    effect = cohens_d(cur.score, base.score)
    width = float(SCORE_EDGES[1] - SCORE_EDGES[0])
    w1, ks = hist_distances(cur.hist, base.hist, width)
    both = cur.hist + base.hist
    nz = np.flatnonzero(both)
    a, b = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 0)
    shifted = bool(np.isfinite(d) and (lo > 0 or hi < 0) and np.isfinite(effect)
                   and abs(effect) >= s.compare_min_effect)
    side = [{"n": m.n, "mean": finite_or_none(m.mean if m.n else None),
             "std": finite_or_none(m.std)} for m in (cur.score, base.score)]
    return {"current": side[0], "baseline": side[1], "diff": finite_or_none(d),
            "ci_low": finite_or_none(lo), "ci_high": finite_or_none(hi),
            "cohens_d": finite_or_none(effect), "wasserstein": finite_or_none(w1),
            "ks": finite_or_none(ks), "shifted": shifted,
            "hist_from": float(SCORE_EDGES[a]), "hist_bin": width,
            "current_hist": [int(x) for x in cur.hist[a:b]],
            "baseline_hist": [int(x) for x in base.hist[a:b]]}


def status_section(cur: Aggregator, base: Aggregator, s: ReportSettings) -> dict[str, Any]:
    """Each status's share of rows on both sides, its change with an interval, and the
    share of rows not attributed; error kinds new in the current audit."""
    z = z_value(s.confidence)
    names = sorted(set(cur.status) | set(base.status), key=lambda k: (k != "ok", k))

    def row(name: str, x1: int, x0: int) -> dict[str, Any]:
        d, lo, hi = proportion_diff(x1, cur.rows, x0, base.rows, z)
        changed = bool(np.isfinite(d) and (lo > 0 or hi < 0)
                       and abs(d) >= s.compare_min_status_change)
        return {"status": name, "current": x1, "baseline": x0,
                "current_share": x1 / cur.rows if cur.rows else None,
                "baseline_share": x0 / base.rows if base.rows else None,
                "diff": finite_or_none(d), "ci_low": finite_or_none(lo),
                "ci_high": finite_or_none(hi), "changed": changed}

    rows = [row(n, int(cur.status.get(n, 0)), int(base.status.get(n, 0))) for n in names]
    not_ok = row("not ok", cur.rows - int(cur.status.get("ok", 0)),
                 base.rows - int(base.status.get("ok", 0)))
    new = sorted(((k, v) for k, v in cur.errors.items() if k not in base.errors),
                 key=lambda kv: (-kv[1][0], kv[0]))[: s.errors_top]
    return {"rows": [cur.rows, base.rows], "statuses": rows, "not_ok": not_ok,
            "new_error_kinds": [{"kind": k, "count": c, "examples": ex} for k, (c, ex) in new]}


def _word_stats(agg: Aggregator, index: np.ndarray) -> dict[str, np.ndarray]:
    """Per word (``index`` into the vocabulary, -1 = absent): n, means and variances."""
    sums = agg.vocab.sums
    ok = index >= 0
    i = np.where(ok, index, 0)

    def take(f: str) -> np.ndarray:
        return np.where(ok, sums[f][i] if sums[f].size else 0.0, 0.0)

    n = take("count")
    out = {"n": n, "pairs": take("pairs")}
    safe = np.maximum(n, 1)
    for key in ("attr", "share"):
        total, sq = take(f"{key}_sum"), take(f"{key}_sq")
        mean = total / safe
        var = np.where(n > 1, np.maximum(sq - total * mean, 0.0) / np.maximum(n - 1, 1), np.nan)
        out[f"{key}_mean"], out[f"{key}_var"] = mean, var
    return out


_MEASURES = (("mean_", ""), ("baseline_mean_", ""), ("", "_diff"), ("", "_ci_low"),
             ("", "_ci_high"), ("", "_d"))


def _word_columns(cur: Aggregator, base: Aggregator, ic: np.ndarray, ib: np.ndarray,
                  z: float, m: int, basis: str) -> dict[str, np.ndarray]:
    """The comparison's columns for the union's words whose indices are ``ic`` / ``ib``
    (``_word_union``), all but ``word`` and ``moved``; ``both`` (compared) and ``abs_d``
    (|d| of the basis) beside them."""
    a, b = _word_stats(cur, ic), _word_stats(base, ib)
    both = (a["n"] >= m) & (b["n"] >= m)
    cols: dict[str, np.ndarray] = {"count": a["n"].astype(np.int64),
                                   "baseline_count": b["n"].astype(np.int64), "both": both}
    with np.errstate(invalid="ignore", divide="ignore"):
        for key in ("attr", "share"):
            diff = a[f"{key}_mean"] - b[f"{key}_mean"]
            se = welch_se(a[f"{key}_var"], a["n"], b[f"{key}_var"], b["n"])
            d = pooled_d(diff, a[f"{key}_var"], a["n"], b[f"{key}_var"], b["n"])
            lo, hi = diff - z * se, diff + z * se
            if key == basis:
                cols["p_value"] = normal_p(np.where(both & (se > 0), diff / se, np.nan))
                cols["abs_d"] = np.abs(d)
            nan = ~both
            cols[f"mean_{key}"] = np.where(a["n"] > 0, a[f"{key}_mean"], np.nan)
            cols[f"baseline_mean_{key}"] = np.where(b["n"] > 0, b[f"{key}_mean"], np.nan)
            cols[f"{key}_diff"] = np.where(nan, np.nan, diff)
            cols[f"{key}_ci_low"] = np.where(nan, np.nan, lo)
            cols[f"{key}_ci_high"] = np.where(nan, np.nan, hi)
            cols[f"{key}_d"] = np.where(nan, np.nan, d)
    cols.setdefault("p_value", np.full(ic.size, np.nan))
    cols.setdefault("abs_d", np.zeros(ic.size))
    return cols


def _table_columns(basis: str) -> list[str]:
    """The word table's columns after ``word``, in order: the p-value before the basis's
    measures, ``moved`` last."""
    out = ["count", "baseline_count"]
    for key in ("attr", "share"):
        out += ["p_value"] * (key == basis) + [f"{p}{key}{q}" for p, q in _MEASURES]
    return out + ["moved"] + ["p_value"] * (basis not in ("attr", "share"))


def word_section(cur: Aggregator, base: Aggregator, s: ReportSettings,
                 basis: str = "attr") -> tuple[dict[str, Any], Iterator[pa.Table]]:
    """Words whose mean attribution (``basis="attr"``) or mean share (``"share"``) moved:
    a discovery at false discovery rate ``compare_fdr`` across the words compared
    (Benjamini-Hochberg on Welch's z) and |d| at least ``compare_min_effect``, ranked
    by |d|; words new and gone. Both measures are reported for every word, in the table
    (yielded ``summary.WORD_ROWS`` words at a time, as ``words.parquet``, in code-point
    order).

    Attribution is the basis when the two audits attribute alike: a share is relative
    to its caption, so one word rising lowers every other word's share. When the
    settings that scale attributions differ (model, weights, layers, steps,
    schedule, precision), raw values do not compare and the share is the basis.

    The union of two vocabularies grows with the rows: its statistics are worked out a
    slice at a time, keeping of every word only its counts, its p-value and its |d|.
    """
    z = z_value(s.confidence)
    keep, ic, ib = _word_union(cur, base, s.words_skip_punctuation)
    m = max(s.compare_min_count, 2)
    n = len(keep)
    step = summary.WORD_ROWS
    kept = {k: np.empty(n, t) for k, t in (("count", np.int64), ("baseline_count", np.int64),
                                          ("both", bool), ("p_value", np.float64),
                                          ("abs_d", np.float64))}
    for lo in range(0, n, step):
        cols = _word_columns(cur, base, ic[lo: lo + step], ib[lo: lo + step], z, m, basis)
        for k, arr in kept.items():
            arr[lo: lo + step] = cols[k]
    count, base_count, both = kept["count"], kept["baseline_count"], kept["both"]
    # thousands of words are tested at once: the false discovery rate is controlled across
    # them (Benjamini-Hochberg) before the effect size counts
    moved = both & benjamini_hochberg(kept["p_value"], s.compare_fdr) & \
        (kept["abs_d"] >= s.compare_min_effect)
    rank = np.where(moved, kept["abs_d"], 0.0)
    del kept
    name = _namer(keep)
    order = top_by(np.flatnonzero(moved), -rank, name, s.compare_words_top)

    def entry(i: int) -> dict[str, Any]:
        c = _word_columns(cur, base, ic[i: i + 1], ib[i: i + 1], z, m, basis)
        return {"word": name(i), "count": int(count[i]), "baseline_count": int(base_count[i]),
                "p_value": finite_or_none(c["p_value"][0]),
                **{f"{p}{key}{q}": finite_or_none(c[f"{p}{key}{q}"][0])
                   for key in ("attr", "share") for p, q in _MEASURES}}

    def tables() -> Iterator[pa.Table]:
        for lo in range(0, max(n, 1), step):
            cols = _word_columns(cur, base, ic[lo: lo + step], ib[lo: lo + step], z, m, basis)
            cols["moved"] = moved[lo: lo + step]
            yield pa.table({"word": keep.slice(lo, step).cast(pa.string()),
                            **{k: pa.array(cols[k]) for k in _table_columns(basis)}})

    is_new = np.flatnonzero((count >= m) & (base_count == 0))
    is_gone = np.flatnonzero((base_count >= m) & (count == 0))
    new = top_by(is_new, -count, name, s.compare_words_top)
    gone = top_by(is_gone, -base_count, name, s.compare_words_top)
    return {"min_count": m, "basis": basis, "compared": int(both.sum()),
            "moved_count": int(moved.sum()),
            "moved": [entry(i) for i in order],
            "new": [{"word": name(i), "count": int(count[i])} for i in new],
            "new_count": int(is_new.size),
            "gone": [{"word": name(i), "baseline_count": int(base_count[i])} for i in gone],
            "gone_count": int(is_gone.size)}, tables()


def _word_union(cur: Aggregator, base: Aggregator,
                skip_punctuation: bool) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Every word of either vocabulary in code-point order (large strings; without
    punctuation-only words when ``skip_punctuation``), and its index in each (-1: absent).
    By column: the vocabularies grow with the rows. Each side's words are looked up in the
    other's table of ids (``ids_of``), so only the union's order takes a sort."""
    cv, bv = cur.vocab, base.vocab
    in_base, in_cur = bv.ids_of(cv), cv.ids_of(bv)
    only = np.flatnonzero(in_cur < 0)  # the baseline's words the current audit lacks
    words = pa.concat_arrays([cv.texts(), bv.texts().take(pa.array(only))])
    ic = np.r_[np.arange(len(cv)), np.full(only.size, -1)]
    ib = np.r_[in_base, only]
    order = pc.sort_indices(words).to_numpy()  # UTF-8 byte order is code-point order
    if skip_punctuation and len(words):  # dropped from the order: one copy of the words
        order = order[alnum_mask(words)[order]]
    return words.take(pa.array(order)), ic[order], ib[order]


def _namer(words: pa.Array) -> Callable[[int], str]:
    """``i -> words[i]`` as str."""
    return lambda i: words[int(i)].as_py()


def shortcut_section(cur: Audit, base: Audit, s: ReportSettings) -> dict[str, Any]:
    """Each word that is a suspect on either side: the share of its pairs whose top patch
    is in its cell, on both sides, and what became of it."""
    z = z_value(s.confidence)
    grid: Grid | None = cur.agg.grid
    same_grid = grid is not None and base.agg.grid == grid
    now = {p["word"]: p for p in cur.suspects}
    before = {p["word"]: p for p in base.suspects}
    out = []
    for word in list(now) + [w for w in before if w not in now]:
        p_now, p_before = now.get(word), before.get(word)
        n1, top1 = cur.word_cells(word)
        n0, top0 = base.word_cells(word)
        ref = p_now or p_before
        cell = ref["modal_cell"]
        e: dict[str, Any] = {"word": word, "suspect_now": p_now is not None,
                             "suspect_before": p_before is not None, "pairs": n1,
                             "baseline_pairs": n0, "cell": cell, "cell_name": ref["modal_cell_name"],
                             "baseline_cell": None, "baseline_cell_name": None,
                             "share": None, "baseline_share": None, "diff": None,
                             "ci_low": None, "ci_high": None}
        if not same_grid:  # cells of different grids do not compare: by word only
            e["change"] = ("appeared" if p_now and not p_before else
                           "vanished" if p_before and not p_now else "unchanged")
            out.append(e)
            continue
        h1 = int(top1[cell]) if top1 is not None else 0
        h0 = int(top0[cell]) if top0 is not None else 0
        d, lo, hi = proportion_diff(h1, n1, h0, n0, z)
        e.update(share=h1 / n1 if n1 else None, baseline_share=h0 / n0 if n0 else None,
                 diff=finite_or_none(d), ci_low=finite_or_none(lo), ci_high=finite_or_none(hi))
        big = bool(np.isfinite(d) and abs(d) >= s.compare_min_shortcut_change)
        up, down = big and lo > 0, big and hi < 0
        few = max(s.shortcut_min_count, 1)
        if p_now and p_before and p_now["modal_cell"] != p_before["modal_cell"]:
            e.update(baseline_cell=p_before["modal_cell"],
                     baseline_cell_name=p_before["modal_cell_name"])
            change = "moved"
        elif p_now and not p_before:
            change = "appeared" if n0 < few or up else "unchanged"
        elif p_before and not p_now:
            change = "vanished" if n1 < few or down else "unchanged"
        else:
            change = "strengthened" if up else "weakened" if down else "unchanged"
        e["change"] = change
        out.append(e)
    return {"same_grid": same_grid, "words": out,
            "min_change": s.compare_min_shortcut_change}


def group_section(cur: Audit, base: Audit, s: ReportSettings) -> list[dict[str, Any]]:
    """Per family: each pair of groups' gap on both sides and its change (bootstrap
    interval of the change), and each group's share of the attributed pairs."""
    z = z_value(s.confidence)
    out = []
    ok1, ok0 = int(cur.agg.status.get("ok", 0)), int(base.agg.status.get("ok", 0))
    for fi, (fam1, fam0) in enumerate(zip(cur.groups, base.groups)):
        names = [g["name"] for g in fam1["groups"]]
        by0 = {(e["a"], e["b"], e["metric"]): e for e in fam0["effects"]}
        gaps = []
        for e1 in fam1["effects"]:
            e0 = by0.get((e1["a"], e1["b"], e1["metric"]))
            if e0 is None or e1["diff"] is None or e0["diff"] is None:
                continue
            ia, ib, m = names.index(e1["a"]), names.index(e1["b"]), e1["metric"]
            dev1 = _dev(cur.devs, fi, ia, ib, m)
            dev0 = _dev(base.devs, fi, ia, ib, m)
            change = e1["diff"] - e0["diff"]
            lo, hi = interval(change, dev1 - dev0, s.confidence) \
                if dev1.size and dev0.size and dev1.size == dev0.size else (np.nan, np.nan)
            sig = bool(np.isfinite(lo) and (lo > 0 or hi < 0))
            d1, d0 = e1["cohens_d"], e0["cohens_d"]
            dd = (d1 - d0) if d1 is not None and d0 is not None else None
            if e1["gap"] and not e0["gap"]:
                what = "opened" if sig else "unchanged"
            elif e0["gap"] and not e1["gap"]:
                what = "closed" if sig else "unchanged"
            elif e1["gap"] and e0["gap"] and sig and np.sign(e1["diff"]) != np.sign(e0["diff"]):
                what = "reversed"
            elif e1["gap"] and e0["gap"] and sig and dd is not None \
                    and abs(dd) >= s.compare_min_effect:
                what = "widened" if abs(e1["diff"]) > abs(e0["diff"]) else "narrowed"
            else:
                what = "unchanged"
            gaps.append({"a": e1["a"], "b": e1["b"], "metric": m,
                         "label": GROUP_METRIC_LABELS[m], "diff": e1["diff"],
                         "ci_low": e1["ci_low"], "ci_high": e1["ci_high"], "cohens_d": d1,
                         "gap": e1["gap"], "baseline_diff": e0["diff"],
                         "baseline_ci_low": e0["ci_low"], "baseline_ci_high": e0["ci_high"],
                         "baseline_cohens_d": d0, "baseline_gap": e0["gap"],
                         "change": finite_or_none(change), "change_ci_low": finite_or_none(lo),
                         "change_ci_high": finite_or_none(hi), "d_change": finite_or_none(dd),
                         "what": what})
        shares = []
        for g1, g0 in zip(fam1["groups"], fam0["groups"]):
            d, lo, hi = proportion_diff(g1["pairs"], ok1, g0["pairs"], ok0, z)
            changed = bool(np.isfinite(d) and (lo > 0 or hi < 0)
                           and abs(d) >= s.compare_min_share_change)
            shares.append({"group": g1["name"], "pairs": g1["pairs"], "baseline_pairs": g0["pairs"],
                           "share": g1["pairs"] / ok1 if ok1 else None,
                           "baseline_share": g0["pairs"] / ok0 if ok0 else None,
                           "diff": finite_or_none(d), "ci_low": finite_or_none(lo),
                           "ci_high": finite_or_none(hi), "changed": changed})
        out.append({"name": fam1["name"], "gaps": gaps, "shares": shares})
    return out


def _dev(devs: dict, fi: int, ia: int, ib: int, m: str) -> np.ndarray:
    a, b = devs.get((fi, ia, m)), devs.get((fi, ib, m))
    if a is None or b is None or not a.size or a.size != b.size:
        return np.empty(0)
    return a - b



__all__ = ["Audit", "group_section", "score_section", "shortcut_section", "status_section",
           "word_section"]
