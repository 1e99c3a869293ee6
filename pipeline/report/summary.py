"""Aggregates -> the report's sections (plain JSON-ready dicts) and its Parquet tables.

Every number the HTML shows comes from these dicts (they are ``report.json``).
Group comparisons: exact means, standard deviations and Cohen's d from the
streamed moments; bootstrap intervals and Cliff's delta from the seeded
reservoirs (see ``stats``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import combinations
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.report.aggregate import GROUP_METRICS, METRICS, SCORE_EDGES, Aggregator
from pipeline.report.pool import MapFn
from pipeline.report.settings import ReportSettings
from pipeline.report.space import WORD_ID, WordSpace
from pipeline.report.stats import (
    Moments,
    boot_deviations,
    cliffs_delta,
    cohens_d,
    interval,
    stable_seed,
)

#: The paper's NIB rows (CLIP ViT-B/32, OpenAI weights, L = 9, n = 10; docs/engine.md).
PAPER = {
    "Conceptual Captions": {"img_conf_drop": 0.9439, "img_conf_incr": 42.5,
                            "txt_conf_drop": 0.2705, "txt_conf_incr": 43.95},
    "ImageNet (tiny val)": {"img_conf_drop": 0.9012, "img_conf_incr": 53.1,
                            "txt_conf_drop": 0.4193, "txt_conf_incr": 56.1},
    "Flickr8k": {"img_conf_drop": 1.4495, "img_conf_incr": 28.1,
                 "txt_conf_drop": 0.4562, "txt_conf_incr": 55.3},
}
METRIC_LABELS = {
    "img_conf_drop": ("image confidence drop", "lower is better"),
    "img_conf_incr": ("image confidence increase (% of pairs)", "higher is better"),
    "txt_conf_drop": ("text confidence drop", "lower is better"),
    "txt_conf_incr": ("text confidence increase (% of pairs)", "higher is better"),
}
GROUP_METRIC_LABELS = {"score": "CLIP score", "term_attr": "term attribution",
                       "term_share": "term share of caption attribution"}


def finite_or_none(x: Any) -> float | None:
    """A finite float, or None (JSON has no NaN)."""
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def has_alnum(word: str) -> bool:
    """Whether ``word`` has a letter or digit (punctuation-only words are left out)."""
    return any(ch.isalnum() for ch in word)


def alnum_mask(words: list[str] | pa.Array) -> np.ndarray:
    """``has_alnum`` of each word: by a regular expression over the ASCII ones (nearly all),
    one by one over the others."""
    arr = words if isinstance(words, pa.Array) else pa.array(words, pa.string())
    if len(arr) == 0:
        return np.zeros(0, bool)
    out = pc.match_substring_regex(arr, "[A-Za-z0-9]").to_numpy(zero_copy_only=False).copy()
    other = np.flatnonzero(~pc.string_is_ascii(arr).to_numpy(zero_copy_only=False))
    out[other] = [has_alnum(arr[int(i)].as_py()) for i in other]
    return out


def top_by(idx: np.ndarray, key: np.ndarray, name: Callable[[int], str], k: int) -> list[int]:
    """The ``k`` of ``idx`` with the smallest ``key``, ties by ``name(i)``."""
    if idx.size > 4 * k > 0:  # keep the k smallest keys and their ties before sorting
        idx = idx[key[idx] <= np.partition(key[idx], k - 1)[k - 1]]
    return sorted(idx.tolist(), key=lambda i: (key[i], name(i)))[:k]


#: What ``run_info`` takes from the manifest's metadata: the resolved values that
#: produced the results (see docs/output.md).
RUN_KEYS = ("model", "weights", "image_layer", "text_layer", "steps", "schedule", "precision",
            "batch_size", "decode", "torch", "torchvision", "open_clip", "pillow",
            "engine_results_version", "schema_version")


def run_info(manifest: dict[str, Any]) -> dict[str, Any]:
    """The resolved values that produced the results (model, weights, layers as
    used, steps, schedule, precision, batch size, library versions), from the
    manifest's metadata; layers fall back to the settings for manifests written
    before the metadata held them."""
    meta = manifest.get("metadata") or {}
    settings = manifest.get("settings") or {}
    model = settings.get("model") or {}
    info = {k: meta.get(k) for k in RUN_KEYS}
    for tower in ("image_layer", "text_layer"):
        if info[tower] is None:
            info[tower] = model.get(tower) if model.get(tower) is not None else model.get("layer")
    info.update(fingerprint=manifest.get("fingerprint") or meta.get("fingerprint"),
                input=settings.get("input"), parts=len(manifest.get("parts") or []))
    return info


def notice(rows: int, rows_ok: int, parts: int, status: dict[str, int]) -> tuple[str, str | None]:
    """What the results hold ('empty', 'no_attributions' or 'ok') and a plain sentence
    saying so when there is nothing (or nothing attributed) to report."""
    if rows == 0:
        where = "the manifest lists no parts" if parts == 0 else \
            f"the manifest's {parts} part{'s' if parts != 1 else ''} hold no rows"
        return "empty", f"These results are empty: {where}, so there is nothing to report."
    if rows_ok == 0:
        order = sorted(status.items(), key=lambda kv: (-kv[1], kv[0]))
        counts = ", ".join(f"{v} {k}" for k, v in order)
        return "no_attributions", (f"No row was attributed: all {rows} rows failed ({counts}), "
                                   "so there are no attributions to aggregate; see Errors.")
    return "ok", None


def overview(agg: Aggregator, s: ReportSettings, parts: int | None = None) -> dict[str, Any]:
    """Row counts, statuses, errors, the score histogram and the paper's metrics."""
    rows = agg.rows
    content, note = notice(rows, int(agg.status.get("ok", 0)), parts or 0, dict(agg.status))
    status = [{"status": k, "count": int(v), "share": v / rows if rows else 0.0}
              for k, v in sorted(agg.status.items(), key=lambda kv: (-kv[1], kv[0]))]
    errors = sorted(agg.errors.items(), key=lambda kv: (-kv[1][0], kv[0]))[: s.errors_top]
    hist = agg.hist
    nz = np.flatnonzero(hist)
    lo, hi = (int(nz[0]), int(nz[-1]) + 1) if nz.size else (0, 0)
    return {
        "rows": rows,
        "rows_ok": int(agg.status.get("ok", 0)),
        "content": content, "notice": note,
        "status": status,
        "errors": [{"kind": k, "count": c, "examples": ex} for k, (c, ex) in errors],
        "error_kinds": len(agg.errors),
        "errors_other": agg.errors_other,
        "score": {"n": agg.score.n, "mean": finite_or_none(agg.score.mean if agg.score.n else None),
                  "std": finite_or_none(agg.score.std),
                  "hist_from": float(SCORE_EDGES[lo]), "hist_to": float(SCORE_EDGES[hi]),
                  "hist_bin": float(SCORE_EDGES[1] - SCORE_EDGES[0]),
                  "hist_counts": [int(c) for c in hist[lo:hi]]},
        "metrics": [{"name": m, "label": METRIC_LABELS[m][0], "better": METRIC_LABELS[m][1],
                     "n": agg.metrics[m].n,
                     "mean": finite_or_none(agg.metrics[m].mean if agg.metrics[m].n else None),
                     "paper": {d: v[m] for d, v in PAPER.items()}} for m in METRICS],
        "paper_datasets": list(PAPER),
        "image_cls_share": finite_or_none(agg.cls_share.mean if agg.cls_share.n else None),
        "text_eot_share": finite_or_none(agg.eot_share.mean if agg.eot_share.n else None),
        "captions_truncated": agg.truncated,
        "tokens_unusable": agg.skipped_tokens,
    }


#: Per-profile columns of ``aggregates/words.parquet`` (profile key, column, type).
PROFILE_COLUMNS = (("pairs", "space_pairs", pa.int64()), ("modal_cell", "modal_cell", pa.int32()),
                   ("consistency", "consistency", pa.float64()),
                   ("baseline", "baseline", pa.float64()),
                   ("score", "shortcut_score", pa.float64()),
                   ("concentration", "concentration", pa.float64()), ("kl", "kl", pa.float64()))


#: Words a slice of ``aggregates/words.parquet`` (one row group each).
WORD_ROWS = 1 << 20


def word_tables(agg: Aggregator, profiles: list[dict], rows: int | None = None
                ) -> Iterator[pa.Table]:
    """Every word with its sums turned into means, plus its spatial profile when it has one
    (``aggregates/words.parquet``), ``rows`` words a table, in id order, at least one table.
    Built by column a slice at a time: the vocabulary grows with the rows, and a table of all
    of it at once would hold as much again."""
    rows = rows or WORD_ROWS
    v, sums = agg.vocab, agg.vocab.sums
    texts = v.texts()
    at = v.find([p["word"] for p in profiles])
    given = {key: np.array([np.nan if finite_or_none(p[key]) is None else p[key]
                            for p in profiles], np.float64) for key, _, _ in PROFILE_COLUMNS}
    for a in range(0, max(len(v), 1), rows):
        b = min(a + rows, len(v))
        count = sums["count"][a:b]
        with np.errstate(invalid="ignore", divide="ignore"):
            means = {"mean_attr": sums["attr_sum"][a:b] / count,
                     "share_negative": sums["negative"][a:b] / count,
                     "mean_share": sums["share_sum"][a:b] / count}
        cols: dict[str, pa.Array] = {
            "word": texts.slice(a, b - a).cast(pa.string()),
            "count": pa.array(count.astype(np.int64)),
            "pairs": pa.array(sums["pairs"][a:b].astype(np.int64)),
            **{k: pa.array(x, mask=~np.isfinite(x)) for k, x in means.items()}}
        inside = (at >= a) & (at < b)
        for key, name, typ in PROFILE_COLUMNS:
            vals = np.full(b - a, np.nan)
            vals[at[inside] - a] = given[key][inside]
            ok = np.isfinite(vals)
            cols[name] = pa.array(np.where(ok, vals, 0).astype(typ.to_pandas_dtype()), typ,
                                  mask=~ok)
        yield pa.table(cols)


def words_section(agg: Aggregator, s: ReportSettings) -> dict[str, Any]:
    """The words that raise and lower the alignment most, among those used often enough."""
    v, sums = agg.vocab, agg.vocab.sums
    count = sums["count"]
    mean = sums["attr_sum"] / np.maximum(count, 1)
    ok = count >= s.words_min_count
    if s.words_skip_punctuation:
        ok &= alnum_mask(v.texts())

    def row(i: int) -> dict[str, Any]:
        return {"word": v.word(i), "count": int(count[i]), "mean_attr": float(mean[i]),
                "share_negative": float(sums["negative"][i] / count[i]),
                "mean_share": float(sums["share_sum"][i] / count[i])}

    # a word lowering the alignment on average is never listed as raising it, and vice versa
    helps = top_by(np.flatnonzero(ok & (mean > 0)), -mean, v.word, s.words_top)
    hurts = top_by(np.flatnonzero(ok & (mean < 0)), mean, v.word, s.words_top)
    return {"distinct": len(v), "occurrences": int(count.sum()),
            "min_count": s.words_min_count, "eligible": int(ok.sum()),
            "helps": [row(i) for i in helps], "hurts": [row(i) for i in hurts]}


def _stat(m: Moments, dev: np.ndarray, confidence: float) -> dict[str, Any]:
    mean = m.mean if m.n else float("nan")
    lo, hi = interval(mean, dev, confidence)
    return {"n": m.n, "mean": finite_or_none(mean), "std": finite_or_none(m.std), "ci_low": finite_or_none(lo), "ci_high": finite_or_none(hi)}


def group_deviations(agg: Aggregator, s: ReportSettings, run: MapFn | None = None
                     ) -> dict[tuple[int, int, str], np.ndarray]:
    """Bootstrap deviations of each group's mean, by (family, group, metric) index.

    Seeded by names, so two audits aggregated with the same settings draw the
    same resamples' indices (a comparison differences them per resample).
    ``run`` draws them side by side (the report's workers; each draw depends on
    its own seed alone, so the result is the same), default one after the other.
    """
    keys, jobs = [], []
    for fi, fam in enumerate(agg.families):
        accs = agg.groups[fi]
        for gi, name in enumerate(fam.names):
            for m in GROUP_METRICS:
                keys.append((fi, gi, m))
                jobs.append((accs[gi].reservoirs[m].values, accs[gi].moments[m].n,
                             s.bootstrap_samples, stable_seed(s.seed, "bootstrap", fam.name,
                                                              name, m)))
    return dict(zip(keys, list((run or map)(deviations, jobs))))


def deviations(job: tuple[np.ndarray, int, int, list[int]]) -> np.ndarray:
    """One ``group_deviations`` draw: ``(values, n_total, samples, seed)`` (a worker may run
    it)."""
    values, n_total, samples, seed = job
    return boot_deviations(values, n_total, samples, np.random.default_rng(seed))


def groups_section(agg: Aggregator, s: ReportSettings,
                   all_devs: dict[tuple[int, int, str], np.ndarray] | None = None
                   ) -> list[dict[str, Any]]:
    """Per family: per-group statistics with bootstrap intervals, and pairwise effects."""
    all_devs = all_devs if all_devs is not None else group_deviations(agg, s)
    out = []
    for fi, fam in enumerate(agg.families):
        accs = agg.groups[fi]
        devs = {(gi, m): all_devs[fi, gi, m] for gi in range(len(fam.names)) for m in GROUP_METRICS}
        groups = []
        for gi, name in enumerate(fam.names):
            g = accs[gi]
            terms = [" ".join(t) for t in fam.groups.get(name, ())]
            hist = g.hist
            groups.append({
                "name": name, "terms": terms, "rest": name == fam.rest, "pairs": g.pairs,
                **{m: _stat(g.moments[m], devs[gi, m], s.confidence) for m in GROUP_METRICS},
                "border_share": finite_or_none(g.border.mean if g.border.n else None),
                "corner_share": finite_or_none(g.corner.mean if g.corner.n else None),
                "map_pairs": g.map_n,
                "mean_map": None if g.map_sum is None else [float(x) for x in g.map_sum / g.map_n],
                "score_hist": [int(c) for c in hist],
            })
        effects = []
        for (ia, a), (ib, b) in combinations(enumerate(fam.names), 2):
            for m in GROUP_METRICS:
                ma, mb = accs[ia].moments[m], accs[ib].moments[m]
                if ma.n < 2 or mb.n < 2:
                    continue
                diff = ma.mean - mb.mean
                da, db = devs[ia, m], devs[ib, m]
                lo, hi = interval(diff, da - db, s.confidence) if da.size and db.size else (np.nan,) * 2
                d = cohens_d(ma, mb)
                cliff = cliffs_delta(accs[ia].reservoirs[m].values, accs[ib].reservoirs[m].values)
                gap = bool(min(ma.n, mb.n) >= s.groups_min_pairs and np.isfinite(d)
                           and abs(d) >= s.groups_min_effect and (lo > 0 or hi < 0))
                effects.append({"a": a, "b": b, "metric": m, "label": GROUP_METRIC_LABELS[m],
                                "n_a": ma.n, "n_b": mb.n, "mean_a": finite_or_none(ma.mean),
                                "mean_b": finite_or_none(mb.mean), "diff": finite_or_none(diff), "ci_low": finite_or_none(lo),
                                "ci_high": finite_or_none(hi), "cohens_d": finite_or_none(d), "cliffs_delta": finite_or_none(cliff),
                                "gap": gap})
        out.append({"name": fam.name, "description": fam.description, "rest": fam.rest,
                    "overlap": agg.overlap[fi], "groups": groups, "effects": effects})
    return out


def space_section(agg: Aggregator, profiles: list[dict], suspects: list[dict],
                  explained: list[dict], s: ReportSettings) -> dict[str, Any]:
    grid = agg.grid
    if grid is None or agg.map_n == 0:
        return {"grid": None, "map_pairs": 0, "suspects": [], "explained": [],
                "profiled_words": 0}
    cells = grid.cells
    top_share = agg.top_counts / max(agg.space_n, 1)
    hot = int(np.argmax(top_share))
    suspects = [{k: v for k, v in p.items() if k != WORD_ID} for p in suspects]
    return {
        "grid": [grid.h, grid.w], "map_pairs": agg.map_n, "space_pairs": agg.space_n,
        "grid_mismatch": agg.grid_mismatch,
        "mean_map": [float(x) for x in agg.map_sum / agg.map_n],
        "positive_mean_map": [float(x) for x in agg.pos_sum / max(agg.space_n, 1)],
        "top_share": [float(x) for x in top_share],
        "hotspot": {"cell": hot, "name": grid.name(hot), "share": float(top_share[hot]),
                    "uniform": 1.0 / cells},
        "border_share": {"mean": finite_or_none(agg.border.mean if agg.border.n else None),
                         "uniform": float(grid.border().sum() / cells)},
        "corner_share": {"mean": finite_or_none(agg.corner.mean if agg.corner.n else None),
                         "uniform": float(grid.corners().sum() / cells)},
        "profiled_words": len(profiles), "min_count": s.shortcut_min_count,
        "min_score": s.shortcut_min_excess, "suspects": suspects, "explained": explained,
    }


def regions_table(space: dict, groups: list[dict], ws: WordSpace | None,
                  profiles: list[dict]) -> pa.Table:
    """Per cell: dataset, group and word maps (long format; null where a value does not apply)."""
    types = {"scope": pa.string(), "family": pa.string(), "name": pa.string(), "cell": pa.int32(),
             "cell_row": pa.int32(), "cell_col": pa.int32(), "mean_attr": pa.float64(),
             "positive_share": pa.float64(), "top_share": pa.float64()}
    schema = pa.schema(list(types.items()))
    if not space.get("grid"):
        return schema.empty_table()
    h, w = space["grid"]
    cells = h * w
    # one entry per map (scope, family, name, then its three value lists or None), built
    # column by column: a word table holds thousands of maps
    entries: list[tuple[str, str | None, str, Any, Any, Any]] = [
        ("dataset", None, "all", space["mean_map"], space["positive_mean_map"],
         space["top_share"])]
    entries += [("group", fam["name"], g["name"], g["mean_map"], None, None)
                for fam in groups for g in fam["groups"] if g["mean_map"] is not None]
    if ws is not None and profiles:
        wid = np.array([p[WORD_ID] for p in profiles], np.int64)
        pos, top = ws.mean_map(wid), ws.top_share(wid)
        entries += [("word", None, p["word"], None, pos[i], top[i])
                    for i, p in enumerate(profiles)]
    each = np.repeat(np.arange(len(entries)), cells)
    cell = np.tile(np.arange(cells, dtype=np.int32), len(entries))
    cols: dict[str, pa.Array] = {
        k: pa.array([e[i] for e in entries], types[k]).take(pa.array(each))
        for i, k in enumerate(("scope", "family", "name"))}
    cols.update(cell=pa.array(cell), cell_row=pa.array(cell // w), cell_col=pa.array(cell % w))
    for i, k in enumerate(("mean_attr", "positive_share", "top_share"), 3):
        missing = np.array([e[i] is None for e in entries])
        values = np.zeros((len(entries), cells))
        for j in np.flatnonzero(~missing):
            values[j] = entries[j][i]
        cols[k] = pa.array(values.ravel(), pa.float64(), mask=np.repeat(missing, cells))
    return pa.table(cols, schema=schema)
