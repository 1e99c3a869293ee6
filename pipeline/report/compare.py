"""Two audits compared: what changed from a baseline audit to the current one.

Both audits are aggregated with the same report settings (the same caption
groups, seeds and thresholds), each through its own manifest, part by part, so
the comparison is as streaming as the report: it differences aggregates, never
rows. What it reports, each with a 95% interval (``report.confidence``):

* the settings that differ (model, weights, layers, steps, schedule, precision,
  engine results and library versions, data columns) and whether the input is the same, with what
  each difference means for the numbers below (``caveats``);
* the CLIP-score shift: difference of means (Welch's interval from exact
  moments), Cohen's d, and two distribution distances from the fixed score
  histograms (Wasserstein-1 and Kolmogorov-Smirnov, each within one 0.005 bin);
* the status mix: each status's share of rows, its change (Newcombe's hybrid
  score interval) and error kinds not seen in the baseline;
* words whose mean attribution or mean share moved most (Welch intervals from
  per-word sums of squares; both sides need ``compare_min_count`` uses), words
  new or gone;
* shortcut suspects that appeared, vanished, strengthened, weakened or moved:
  the share of a word's pairs whose top patch is in its cell, on both sides;
* caption-group gaps that opened, closed, widened, narrowed or reversed (the
  change of the difference, with a bootstrap interval), and group shares.

A change is a finding when its interval excludes 0 and its size passes the
setting for its kind; findings are ranked like the report's: shortcuts, group
gaps, failed rows, the score, group shares, words.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import StorageSettings
from pipeline.io.storage import filesystem, join
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
    proportion_diff,
    z_value,
)
from pipeline.report.summary import GROUP_METRIC_LABELS, alnum_mask, finite_or_none, top_by

#: What a setting can change: CLIP scores, row statuses, attributions (maps and words).
SCORE, STATUS, ATTR = "score", "status", "attributions"
EVERYTHING = (SCORE, STATUS, ATTR)
#: Settings compared between the audits: key, label, what a difference confounds.
SETTINGS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("model", "model", EVERYTHING),
    ("weights", "weights", EVERYTHING),
    ("precision", "precision", (SCORE, ATTR)),
    ("image_layer", "image layer", (ATTR,)),
    ("text_layer", "text layer", (ATTR,)),
    ("steps", "steps", (ATTR,)),
    ("schedule", "schedule", (ATTR,)),
    ("engine_results_version", "engine results version", EVERYTHING),
    ("torch", "torch version", (SCORE, ATTR)),
    ("open_clip", "open_clip version", (SCORE, ATTR)),
    ("torchvision", "torchvision version", (SCORE, ATTR)),
    ("pillow", "Pillow version", EVERYTHING),
    ("data", "data columns and limits", EVERYTHING),
)
#: The part of the result settings that decides which rows fail and what a caption is.
DATA_KEYS = ("image_column", "caption_column", "id_column", "max_pixels", "max_caption_chars",
             "decode")
#: Which numbers each kind of finding rests on (for its caveat).
KIND_RESTS_ON = {"shortcut": ATTR, "group_gap": None, "status": STATUS, "score": SCORE,
                 "group_share": STATUS, "word": ATTR}
#: Findings in this order (each kind by size).
KIND_ORDER = ("shortcut", "group_gap", "status", "score", "group_share", "word")
_DATE = re.compile(r"(?:^|/)dt=(\d{4}-\d{2}-\d{2})$")


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


# ------------------------------------------------------------------ settings
def _model_setting(manifest: dict[str, Any], key: str) -> Any:
    meta = manifest.get("metadata") or {}
    model = (manifest.get("settings") or {}).get("model") or {}
    if key in meta:
        return meta[key]
    if key in ("image_layer", "text_layer"):
        value = model.get(key)
        return model.get("layer") if value is None else value
    if key == "model":
        return model.get("name")
    return model.get(key)


def setting_values(manifest: dict[str, Any]) -> dict[str, Any]:
    """The settings that decide results, as this audit's manifest records them."""
    out = {key: _model_setting(manifest, key) for key, _, _ in SETTINGS if key != "data"}
    data = (manifest.get("settings") or {}).get("data") or {}
    out["data"] = {k: data.get(k) for k in DATA_KEYS if k in data}
    return out


def _show(value: Any) -> str:
    if value is None:
        return "default"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_show(v)}" for k, v in value.items()) or "n/a"
    return str(value)


def _files(manifest: dict[str, Any]) -> dict[str, int] | None:
    """Input file (uri|size|version) -> rows covered; None when the manifest cannot tell."""
    out: dict[str, int] = {}
    for p in manifest.get("parts") or []:
        fp = str(p.get("input_fingerprint") or "")
        if fp.count("|") < 3:
            return None
        out[fp.rsplit("|", 1)[0]] = out.get(fp.rsplit("|", 1)[0], 0) + int(p.get("rows") or 0)
    return out


def input_relation(cur: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Whether the two audits read the same input: the same files (URI, size and version)
    with the same rows."""
    a, b = _files(cur), _files(base)
    if a is None or b is None:
        return {"same": None, "shared_files": None, "text": "The manifests do not say which "
                "input files the audits read, so whether the data is the same is unknown."}
    shared = [f for f in a if f in b and a[f] == b[f]]
    same = bool(a) and len(shared) == len(a) == len(b)
    if same:
        text = f"Same input: the same {len(a)} file{'s' if len(a) != 1 else ''} (same size and version)."
    elif shared:
        text = (f"Partly the same input: {len(shared)} of {len(a)} current and {len(b)} baseline "
                "files are the same (same size and version).")
    else:
        text = f"Different input: none of the {len(a)} current files is among the baseline's {len(b)}."
    return {"same": same, "shared_files": len(shared), "current_files": len(a),
            "baseline_files": len(b), "text": text}


def settings_section(cur: Audit, base: Audit) -> dict[str, Any]:
    """The settings that differ, what they confound, and sentences saying so."""
    a, b = setting_values(cur.manifest), setting_values(base.manifest)
    diffs = [{"setting": key, "label": label, "current": _show(a[key]), "baseline": _show(b[key]),
              "affects": list(affects)}
             for key, label, affects in SETTINGS if a[key] != b[key]]
    grids = [None if x.agg.grid is None else [x.agg.grid.h, x.agg.grid.w] for x in (cur, base)]
    data = input_relation(cur.manifest, base.manifest)
    confounds = sorted({s for d in diffs for s in d["affects"]}, key=EVERYTHING.index)
    caveats = [data["text"]]
    labels = ", ".join(d["label"] for d in diffs)
    if not diffs:
        caveats.append("Same settings: the differences below come from the data "
                       "(the intervals account for sampling).")
    elif data["same"]:
        caveats.append(f"The settings differ ({labels}) on the same input: every difference "
                       "below comes from the settings, none from the data.")
    else:
        kinds = " and ".join(confounds) if set(confounds) != set(EVERYTHING) \
            else "every number"
        caveats.append(f"The settings differ ({labels}): differences in {kinds} cannot be "
                       "attributed to the data; the others can.")
        if ATTR in confounds and SCORE not in confounds:
            caveats.append("Layers, steps and schedule change attributions only: CLIP scores "
                           "and statuses still compare as a change in the data.")
    if any(d["setting"] in ("model", "weights") for d in diffs):
        caveats.append("Raw attribution values are on each model's own scale: compare word "
                       "shares and shortcut consistency, not mean attributions.")
    if grids[0] and grids[1] and grids[0] != grids[1]:
        caveats.append(f"Patch grids differ ({grids[0][0]}x{grids[0][1]} and "
                       f"{grids[1][0]}x{grids[1][1]}): shortcut cells are compared by word only.")
    for who, x in (("current", cur), ("baseline", base)):
        if x.complete is False:
            caveats.append(f"The {who} audit is partial (no _SUCCESS): it covers only the parts "
                           "its manifest lists.")
    return {"same": not diffs, "differences": diffs, "confounds": confounds, "input": data,
            "grids": grids, "caveats": caveats,
            "current": {k: _show(v) for k, v in a.items()},
            "baseline": {k: _show(v) for k, v in b.items()}}


# ----------------------------------------------------------------- the score
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


# ---------------------------------------------------------------- the status
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


# -------------------------------------------------------------------- words
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


def word_section(cur: Aggregator, base: Aggregator, s: ReportSettings,
                 basis: str = "attr") -> tuple[dict[str, Any], pa.Table]:
    """Words whose mean attribution (``basis="attr"``) or mean share (``"share"``) moved:
    a discovery at false discovery rate ``compare_fdr`` across the words compared
    (Benjamini-Hochberg on Welch's z) and |d| at least ``compare_min_effect``, ranked
    by |d|; words new and gone. Both measures are reported for every word.

    Attribution is the basis when the two audits attribute alike: a share is relative
    to its caption, so one word rising lowers every other word's share. When the
    settings that scale attributions differ (model, weights, layers, steps,
    schedule, precision), raw values do not compare and the share is the basis.
    """
    z = z_value(s.confidence)
    keep, ic, ib = _word_union(cur, base, s.words_skip_punctuation)
    a, b = _word_stats(cur, ic), _word_stats(base, ib)
    m = max(s.compare_min_count, 2)
    both = (a["n"] >= m) & (b["n"] >= m)
    cols: dict[str, Any] = {"word": keep, "count": a["n"].astype(np.int64),
                            "baseline_count": b["n"].astype(np.int64)}
    moved, rank = np.zeros(len(keep), bool), np.zeros(len(keep))
    with np.errstate(invalid="ignore", divide="ignore"):
        for key in ("attr", "share"):
            diff = a[f"{key}_mean"] - b[f"{key}_mean"]
            se = np.sqrt(a[f"{key}_var"] / a["n"] + b[f"{key}_var"] / b["n"])
            pooled = np.sqrt(((a["n"] - 1) * a[f"{key}_var"] + (b["n"] - 1) * b[f"{key}_var"])
                             / (a["n"] + b["n"] - 2))
            d = np.where(pooled > 0, diff / pooled, np.where(diff == 0, 0.0, np.inf * np.sign(diff)))
            lo, hi = diff - z * se, diff + z * se
            if key == basis:
                # thousands of words are tested at once: the false discovery rate is
                # controlled across them (Benjamini-Hochberg) before the effect size counts
                p = normal_p(np.where(both & (se > 0), diff / se, np.nan))
                moved = both & benjamini_hochberg(p, s.compare_fdr) & \
                    (np.abs(d) >= s.compare_min_effect)
                rank = np.where(moved, np.abs(d), 0.0)
                cols["p_value"] = p
            nan = ~both
            cols[f"mean_{key}"] = np.where(a["n"] > 0, a[f"{key}_mean"], np.nan)
            cols[f"baseline_mean_{key}"] = np.where(b["n"] > 0, b[f"{key}_mean"], np.nan)
            cols[f"{key}_diff"] = np.where(nan, np.nan, diff)
            cols[f"{key}_ci_low"] = np.where(nan, np.nan, lo)
            cols[f"{key}_ci_high"] = np.where(nan, np.nan, hi)
            cols[f"{key}_d"] = np.where(nan, np.nan, d)
    cols["moved"] = moved
    cols.setdefault("p_value", np.full(len(keep), np.nan))
    table = pa.table({k: v if isinstance(v, pa.Array) else pa.array(v) for k, v in cols.items()})
    name = _namer(keep)
    order = top_by(np.flatnonzero(moved), -rank, name, s.compare_words_top)

    def entry(i: int) -> dict[str, Any]:
        return {"word": name(i), "count": int(a["n"][i]), "baseline_count": int(b["n"][i]),
                "p_value": finite_or_none(cols["p_value"][i]),
                **{f"{p}{key}{q}": finite_or_none(cols[f"{p}{key}{q}"][i])
                   for key in ("attr", "share")
                   for p, q in (("mean_", ""), ("baseline_mean_", ""), ("", "_diff"),
                                ("", "_ci_low"), ("", "_ci_high"), ("", "_d"))}}

    is_new = np.flatnonzero((a["n"] >= m) & (b["n"] == 0))
    is_gone = np.flatnonzero((b["n"] >= m) & (a["n"] == 0))
    new = top_by(is_new, -a["n"], name, s.compare_words_top)
    gone = top_by(is_gone, -b["n"], name, s.compare_words_top)
    return {"min_count": m, "basis": basis, "compared": int(both.sum()),
            "moved_count": int(moved.sum()),
            "moved": [entry(i) for i in order],
            "new": [{"word": name(i), "count": int(a["n"][i])} for i in new],
            "new_count": int(is_new.size),
            "gone": [{"word": name(i), "baseline_count": int(b["n"][i])} for i in gone],
            "gone_count": int(is_gone.size)}, table


def _word_union(cur: Aggregator, base: Aggregator,
                skip_punctuation: bool) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Every word of either vocabulary in code-point order (without punctuation-only words
    when ``skip_punctuation``), and its index in each (-1: absent). By column: the
    vocabularies grow with the rows."""
    cw = pa.array(cur.vocab.words, pa.string())
    bw = pa.array(base.vocab.words, pa.string())
    words = pc.unique(pa.concat_arrays([cw, bw]))
    words = words.take(pc.sort_indices(words))  # UTF-8 byte order is code-point order
    if skip_punctuation and len(words):
        words = words.filter(pa.array(alnum_mask(words)))

    def index(vocab: pa.Array) -> np.ndarray:
        return pc.index_in(words, value_set=vocab).fill_null(-1).to_numpy(
            zero_copy_only=False).astype(np.int64)

    return words, index(cw), index(bw)


def _namer(words: pa.Array) -> Callable[[int], str]:
    """``i -> words[i]`` as str."""
    return lambda i: words[int(i)].as_py()


# ---------------------------------------------------------------- shortcuts
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


# ------------------------------------------------------------------- groups
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


# ----------------------------------------------------------------- findings
def _g(x: float | None, spec: str = ".3g") -> str:
    return "n/a" if x is None else format(x, spec)


def _pts(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f}"


def findings(c: dict[str, Any], s: ReportSettings) -> list[dict[str, Any]]:
    """The comparison's findings, ranked: shortcuts, group gaps, failed rows, the score,
    group shares, words; each kind by size. A finding resting on numbers that a
    differing setting also changes says so."""
    st = c["settings"]
    out: list[tuple[str, float, dict[str, Any]]] = []

    def add(kind: str, size: float, change: str, anchor: str, text: str,
            rests_on: str | None) -> None:
        conf = [d["label"] for d in st["differences"] if rests_on in d["affects"]]
        if conf:
            text += (f" Same input, so this comes from the settings ({', '.join(conf)})."
                     if st["input"]["same"] else
                     f" The settings differ too ({', '.join(conf)}): not attributable to the data alone.")
        out.append((kind, size, {"kind": kind, "change": change, "anchor": anchor, "text": text,
                                 "confounded_by": conf}))

    for i, e in enumerate(c["shortcuts"]["words"]):
        if e["change"] == "unchanged":
            continue
        w, cell = e["word"], e["cell_name"]
        was = (f"baseline: {_g(e['baseline_share'], '.0%')} of its {e['baseline_pairs']} pairs"
               if e["baseline_pairs"] else "the baseline has no pairs with it")
        now = (f"{_g(e['share'], '.0%')} of its {e['pairs']} pairs" if e["pairs"]
               else "no pairs with it now")
        ci = (f"; {_pts(e['diff'])} points [{_pts(e['ci_low'])}, {_pts(e['ci_high'])}]"
              if e["diff"] is not None else "")
        text = {
            "appeared": f"New shortcut suspect \u201c{w}\u201d: the top patch of {now} is in "
                        f"cell {cell} ({was}{ci}).",
            "vanished": f"Shortcut suspect \u201c{w}\u201d vanished: the top patch is in cell "
                        f"{cell} for {now} ({was}{ci}).",
            "strengthened": f"Shortcut suspect \u201c{w}\u201d strengthened: top patch in cell "
                            f"{cell} for {now} ({was}{ci}).",
            "weakened": f"Shortcut suspect \u201c{w}\u201d weakened: top patch in cell {cell} "
                        f"for {now} ({was}{ci}).",
            "moved": f"Shortcut suspect \u201c{w}\u201d moved from cell "
                     f"{e.get('baseline_cell_name')} to {cell}.",
        }[e["change"]]
        add("shortcut", abs(e["diff"] or 1.0), e["change"], f"cmp-shortcut-{i}", text, ATTR)
    for fi, fam in enumerate(c["groups"]):
        for e in fam["gaps"]:
            if e["what"] == "unchanged":
                continue
            text = (f"{fam['name']}: the gap in {e['label']} between \u201c{e['a']}\u201d and "
                    f"\u201c{e['b']}\u201d {e['what']}: difference {_g(e['diff'])} "
                    f"[{_g(e['ci_low'])}, {_g(e['ci_high'])}], Cohen's d {_g(e['cohens_d'], '.2f')} "
                    f"(baseline {_g(e['baseline_diff'])} [{_g(e['baseline_ci_low'])}, "
                    f"{_g(e['baseline_ci_high'])}], d {_g(e['baseline_cohens_d'], '.2f')}); "
                    f"change {_g(e['change'])} [{_g(e['change_ci_low'])}, "
                    f"{_g(e['change_ci_high'])}].")
            add("group_gap", abs(e["d_change"] or 0.0), e["what"], f"cmp-group-{fi}", text,
                SCORE if e["metric"] == "score" else ATTR)
    no = c["status"]["not_ok"]
    if no["changed"]:
        verb = "rose" if no["diff"] > 0 else "fell"
        detail = [f"{r['status']} {r['baseline']} \u2192 {r['current']}"
                  for r in c["status"]["statuses"] if r["status"] != "ok" and r["changed"]]
        text = (f"Rows not attributed {verb} from {_g(no['baseline_share'], '.1%')} to "
                f"{_g(no['current_share'], '.1%')} ({_pts(no['diff'])} points "
                f"[{_pts(no['ci_low'])}, {_pts(no['ci_high'])}])"
                + (f"; {', '.join(detail)}" if detail else "") + ".")
        add("status", abs(no["diff"]), verb, "cmp-status", text, STATUS)
    sc = c["score"]
    if sc["shifted"]:
        verb = "rose" if sc["diff"] > 0 else "fell"
        text = (f"The mean CLIP score {verb} from {_g(sc['baseline']['mean'])} to "
                f"{_g(sc['current']['mean'])} (difference {_g(sc['diff'])} "
                f"[{_g(sc['ci_low'])}, {_g(sc['ci_high'])}], Cohen's d {_g(sc['cohens_d'], '.2f')}; "
                f"Wasserstein distance {_g(sc['wasserstein'])}).")
        add("score", abs(sc["cohens_d"] or 0.0), verb, "cmp-score", text, SCORE)
    for fi, fam in enumerate(c["groups"]):
        for g in fam["shares"]:
            if g["changed"]:
                verb = "grew" if g["diff"] > 0 else "shrank"
                text = (f"{fam['name']}: group \u201c{g['group']}\u201d {verb} from "
                        f"{_g(g['baseline_share'], '.1%')} to {_g(g['share'], '.1%')} of the "
                        f"attributed pairs ({_pts(g['diff'])} points [{_pts(g['ci_low'])}, "
                        f"{_pts(g['ci_high'])}]).")
                add("group_share", abs(g["diff"]), verb, f"cmp-group-{fi}", text, STATUS)
    key = c["words"]["basis"]
    for w in c["words"]["moved"][: s.compare_word_findings]:
        name = "mean attribution" if key == "attr" else "mean share of its caption's attribution"
        verb = "rose" if (w[f"{key}_diff"] or 0.0) > 0 else "fell"
        text = (f"\u201c{w['word']}\u201d: {name} {verb} from {_g(w[f'baseline_mean_{key}'])} to "
                f"{_g(w[f'mean_{key}'])} ({_g(w[f'{key}_diff'])} [{_g(w[f'{key}_ci_low'])}, "
                f"{_g(w[f'{key}_ci_high'])}], d {_g(w[f'{key}_d'], '.2f')}; "
                f"{w['count']} uses, baseline {w['baseline_count']}).")
        add("word", abs(w[f"{key}_d"] or 0.0), verb, "cmp-words", text, ATTR)
    out.sort(key=lambda t: (KIND_ORDER.index(t[0]), -t[1]))
    return [f for _, _, f in out]


# ------------------------------------------------------------------ assembly
def compare(cur: Audit, base: Audit, s: ReportSettings) -> tuple[dict[str, Any], pa.Table]:
    """The comparison object of ``report.json`` and the per-word comparison table."""
    st = settings_section(cur, base)
    basis = "share" if ATTR in st["confounds"] else "attr"
    words, table = word_section(cur.agg, base.agg, s, basis)
    c: dict[str, Any] = {
        "current": cur.results, "baseline": base.results,
        "settings": st,
        "score": score_section(cur.agg, base.agg, s),
        "status": status_section(cur.agg, base.agg, s),
        "words": words,
        "shortcuts": shortcut_section(cur, base, s),
        "groups": group_section(cur, base, s),
    }
    c["findings"] = findings(c, s)
    return c, table


# ------------------------------------------------------- the previous date
def dated(results: str) -> str | None:
    """The run date of a dated output (``.../dt=YYYY-MM-DD``), else None."""
    m = _DATE.search(str(results).rstrip("/"))
    return m.group(1) if m else None


def previous_success(results: str, storage: StorageSettings) -> str | None:
    """The latest dated sibling of ``results`` (``<root>/dt=<date>``) earlier than its own
    date whose audit committed every task (``_SUCCESS``); None when there is none.

    Raises ``ValueError`` when ``results`` is not a dated output.
    """
    results = str(results).rstrip("/")
    date = dated(results)
    if date is None:
        raise ValueError(f"{results} is not a dated output (<root>/dt=YYYY-MM-DD)")
    root = results[: -len(f"dt={date}")].rstrip("/")
    fs, path = filesystem(root or ".", storage)
    try:
        names = sorted(str(p).rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    except FileNotFoundError:
        return None
    earlier = sorted((n[3:] for n in names if _DATE.search(n) and n[3:] < date), reverse=True)
    for d in earlier:
        if fs.exists(join(path, f"dt={d}", "_SUCCESS")):
            return f"{root}/dt={d}"
    return None


def has_success(results: str, storage: StorageSettings) -> bool | None:
    """Whether an audit output holds ``_SUCCESS`` (None when that cannot be checked)."""
    try:
        fs, path = filesystem(results, storage)
        return bool(fs.exists(join(path, "_SUCCESS")))
    except Exception:
        return None


__all__ = ["Audit", "compare", "dated", "has_success", "previous_success", "setting_values"]
