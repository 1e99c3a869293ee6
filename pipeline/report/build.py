"""``build_report``: audit results -> ``report.html``, ``report.json``, ``flags.parquet``,
``aggregates/*.parquet``; with a baseline audit, a comparison of the two.

Streaming passes over the parts that one read of the manifest lists (so all
passes see the same parts even if an audit commits more meanwhile): the first
aggregates everything but the per-word maps; the second the maps of the words
frequent enough to be shortcut suspects; a third, only when two or more words
qualify, checks each candidate without the better ones it appears with; the
last collects the curation list. Then the few pairs to review are read back by
pointer, with their input images. A baseline goes through the same passes
(not the last), with the words either side tracks, so the comparison
differences aggregates (``compare``). Same results and settings in, same bytes
out: every sample is seeded and nothing reads the clock.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import (
    ConfigError,
    DataSettings,
    StorageSettings,
    check_no_credentials,
    public,
)
from pipeline.engine.words import merge_words
from pipeline.io.images import DEFAULT_MAX_PIXELS
from pipeline.io.manifest import read_manifest
from pipeline.io.results import iter_parts
from pipeline.io.storage import filesystem, join, put_atomic
from pipeline.report import aggregate, flags, space, summary
from pipeline.report.aggregate import Aggregator
from pipeline.report.compare import Audit, compare, has_success
from pipeline.report.findings import findings
from pipeline.report.flags import Flagger
from pipeline.report.pairview import zoom_images
from pipeline.report.settings import ReportSettings
from pipeline.report.space import WordSpace
from pipeline.report.thumbs import fetch_rows, read_images, thumbnail

log = logging.getLogger("nibt-report")
REPORT_VERSION = 1


def load_manifest(results: str, storage: StorageSettings,
                  setting: str = "results") -> dict[str, Any]:
    """The results' manifest; ``ConfigError`` (naming ``setting``) when it is missing or not
    a manifest."""
    try:
        manifest = read_manifest(results, storage)
    except Exception as e:
        raise ConfigError(f"{setting}: cannot read {results}/_manifest.json "
                          f"({type(e).__name__}: {e}); is it an nibt-audit output?") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("parts"), list):
        raise ConfigError(f"{setting}: {results}/_manifest.json lists no parts")
    return manifest


def iter_results(results: str, manifest: dict[str, Any], storage: StorageSettings,
                 columns: Sequence[str], setting: str = "results") -> Iterator[pa.Table]:
    """The manifest's parts, one table at a time; an unreadable part is a ConfigError."""
    parts = iter_parts(results, storage, columns, manifest=manifest)
    while True:
        try:
            table = next(parts)
        except StopIteration:
            return
        except Exception as e:
            raise ConfigError(f"{setting}: cannot read a part of {results} "
                              f"({type(e).__name__}: {e})") from None
        yield table


def _clean(obj: Any) -> Any:
    """JSON-ready: numpy scalars to Python, NaN and infinities to None, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return summary.finite_or_none(obj)
    return obj


def tracked_words(agg: Aggregator, s: ReportSettings) -> list[str]:
    """Words frequent enough for the spatial pass, most frequent first (capped)."""
    pairs = agg.vocab.sums["pairs"]
    cands = [(int(pairs[i]), w) for i, w in enumerate(agg.vocab.words)
             if pairs[i] >= max(s.shortcut_min_count, 1)
             and (not s.words_skip_punctuation or summary.has_alnum(w))]
    cands.sort(key=lambda c: (-c[0], c[1]))
    return [w for _, w in cands[: s.shortcut_max_words]]


def word_spaces(results: str, manifest: dict[str, Any], agg: Aggregator, words: list[str],
                extra: list[str], s: ReportSettings, storage: StorageSettings,
                setting: str = "results") -> tuple[WordSpace | None, WordSpace | None, list[dict]]:
    """The spatial pass: maps of the tracked ``words`` (profiled) and of ``extra`` words
    (counted for a comparison only), in one read; returns both and the profiles."""
    if agg.grid is None or not agg.space_n or not (words or extra):
        return None, None, []
    log.info("report: spatial pass over %d words of %s", len(words) + len(extra), results)
    ws = WordSpace(words, agg.grid, s.seed, 4 * max(s.review_suspect_examples, 1)) \
        if words else None
    wx = WordSpace(extra, agg.grid, s.seed, 1) if extra else None
    for part, table in enumerate(iter_results(results, manifest, storage, space.COLUMNS,
                                              setting)):
        for w in (ws, wx):
            if w is not None:
                w.add(table, part)
    profiles = ws.profiles(agg.pos_sum / agg.space_n, agg.top_counts / agg.space_n,
                           s.shortcut_min_count) if ws is not None else []
    return ws, wx, profiles


def shortcut_suspects(results: str, manifest: dict[str, Any], agg: Aggregator,
                      profiles: list[dict], s: ReportSettings,
                      storage: StorageSettings) -> tuple[list[dict], list[dict]]:
    """Candidates over the threshold, less those explained by a better one they appear with.

    With two or more candidates, one more pass (``space.CoOccurrence``) checks
    each against the pairs without the candidates already kept.
    """
    cands = [p for p in profiles if p["score"] >= s.shortcut_min_excess]
    cands = cands[: 2 * max(s.shortcut_listed, 1)]
    if len(cands) < 2 or agg.grid is None:
        return [dict(p, alone_pairs=p["pairs"], alone_score=p["score"]) for p in cands][
            : s.shortcut_listed], []
    co = space.CoOccurrence([p["word"] for p in cands], agg.grid).consume(
        iter_results(results, manifest, storage, space.COLUMNS))
    kept, expl = co.resolve(agg.top_counts / agg.space_n, s.shortcut_min_count,
                            s.shortcut_min_excess)
    suspects = [dict(cands[k["index"]], alone_pairs=k["alone_pairs"], alone_score=k["alone_score"])
                for k in kept]
    explained = [{"word": cands[e["index"]]["word"], "pairs": cands[e["index"]]["pairs"],
                  "score": cands[e["index"]]["score"], "alone_pairs": e["alone_pairs"],
                  "alone_score": e["alone_score"], "by": e["by"]} for e in expl]
    return suspects[: s.shortcut_listed], explained


def _pair(row: dict[str, Any], key: str, value: float) -> dict[str, Any]:
    tokens, attrs = row.get("tokens") or [], row.get("text_attr") or []
    words = merge_words(tokens, [0.0 if a is None else a for a in attrs]) \
        if len(tokens) == len(attrs) else []
    return {"id": row["id"], "source": row["source"], "row": row["row"], "score": row["score"],
            "key": key, "value": value, "words": [{"word": w, "attr": a} for w, a in words],
            "grid": [row.get("grid_h") or 0, row.get("grid_w") or 0],
            "map": row.get("image_attr")}


def _shards(data: dict[str, Any]) -> DataSettings | None:
    """The data settings of an audit of WebDataset shards (what its images are read by),
    from its manifest; None for Parquet."""
    if data.get("format") != "webdataset":
        return None
    keys = ("image_extensions", "caption_extension", "caption_json_field")
    return DataSettings(format="webdataset", **{k: data[k] for k in keys if k in data})


def review_section(results: str, manifest: dict[str, Any], agg: Aggregator,
                   ws: WordSpace | None, suspects: list[dict], s: ReportSettings,
                   storage: StorageSettings
                   ) -> tuple[dict[str, Any], dict[str, bytes], dict[str, dict[str, Any]]]:
    """The pairs to review (JSON), their thumbnails (PNG bytes by ``thumb`` key) and their
    enlarged views (``pairview.zoom_images`` by the same key)."""
    lists: list[tuple[str, str, list[tuple[int, int, float]]]] = [
        ("lowest_score", "score", agg.lowest.pointers()),
        ("most_negative", "min_word_attr", agg.negative.pointers()),
    ]
    by_word = []
    for p in suspects[: s.review_suspects] if ws is not None else []:
        ptrs = ws.example_pointers(p["_wid"], p["modal_cell"], s.review_suspect_examples)
        by_word.append((p["word"], [(a, b, float("nan")) for a, b in ptrs]))
    wanted = [(p, r) for _, _, ptrs in lists for p, r, _ in ptrs]
    wanted += [(p, r) for _, ptrs in by_word for p, r, _ in ptrs]
    rows = fetch_rows(results, manifest, wanted, storage) if wanted else {}
    data = (manifest.get("settings") or {}).get("data") or {}
    images = read_images(sorted({(r["source"], r["row"]) for r in rows.values()}),
                         data.get("image_column") or "image", storage,
                         int(data.get("max_pixels") or DEFAULT_MAX_PIXELS), _shards(data))
    thumbs: dict[str, bytes] = {}
    zooms: dict[str, dict[str, Any]] = {}

    def entry(ptr: tuple[int, int, float], key: str) -> dict[str, Any]:
        row = rows[ptr[0], ptr[1]]
        img = images.get((row["source"], row["row"]))
        tkey = f"p{ptr[0]}r{ptr[1]}"
        if tkey not in thumbs:
            thumbs[tkey] = thumbnail(img if not isinstance(img, str) else None,
                                     row.get("image_attr"),
                                     (row.get("grid_h") or 0, row.get("grid_w") or 0),
                                     s.thumbnail_px)
            zooms[tkey] = zoom_images(img if not isinstance(img, str) else None,
                                      row.get("image_attr"),
                                      (row.get("grid_h") or 0, row.get("grid_w") or 0),
                                      s.zoom_px, 2 * s.zoom_px)
        out = _pair(row, key, ptr[2])
        out.update(thumb=tkey, image="ok" if img is not None and not isinstance(img, str)
                   else (img or "image not read"))
        return out

    review: dict[str, Any] = {name: [entry(p, key) for p in ptrs] for name, key, ptrs in lists}
    review["suspects"] = [{"word": w, "pairs": [entry(p, "example") for p in ptrs]}
                          for w, ptrs in by_word]
    return review, thumbs, zooms


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _tables(report: dict[str, Any], word_rows: list[dict], ws: WordSpace | None,
            profiles: list[dict]) -> dict[str, pa.Table]:
    words = pa.Table.from_pylist(_clean(word_rows), schema=pa.schema([
        ("word", pa.string()), ("count", pa.int64()), ("pairs", pa.int64()),
        ("mean_attr", pa.float64()), ("share_negative", pa.float64()),
        ("mean_share", pa.float64()), ("space_pairs", pa.int64()), ("modal_cell", pa.int32()),
        ("consistency", pa.float64()), ("baseline", pa.float64()),
        ("shortcut_score", pa.float64()), ("concentration", pa.float64()), ("kl", pa.float64())]))
    grows, erows = [], []
    for fam in report["groups"]:
        for g in fam["groups"]:
            for m in aggregate.GROUP_METRICS:
                grows.append({"family": fam["name"], "group": g["name"], "rest": g["rest"],
                              "pairs": g["pairs"], "metric": m, **g[m],
                              "border_share": g["border_share"], "corner_share": g["corner_share"]})
        erows += [{"family": fam["name"], **{k: v for k, v in e.items() if k != "label"}}
                  for e in fam["effects"]]
    num = pa.float64()
    groups = pa.Table.from_pylist(grows, schema=pa.schema([
        ("family", pa.string()), ("group", pa.string()), ("rest", pa.bool_()),
        ("pairs", pa.int64()), ("metric", pa.string()), ("n", pa.int64()), ("mean", num),
        ("std", num), ("ci_low", num), ("ci_high", num), ("border_share", num),
        ("corner_share", num)]))
    effects = pa.Table.from_pylist(erows, schema=pa.schema([
        ("family", pa.string()), ("a", pa.string()), ("b", pa.string()), ("metric", pa.string()),
        ("n_a", pa.int64()), ("n_b", pa.int64()), ("mean_a", num), ("mean_b", num),
        ("diff", num), ("ci_low", num), ("ci_high", num), ("cohens_d", num),
        ("cliffs_delta", num), ("gap", pa.bool_())]))
    regions = summary.regions_table(report["space"], report["groups"], ws, profiles)
    return {"words": words, "groups": groups, "group_effects": effects, "regions": regions}


def _aggregate(results: str, manifest: dict[str, Any], s: ReportSettings,
               families: list, storage: StorageSettings, setting: str) -> Aggregator:
    log.info("report: %d parts in %s", len(manifest["parts"]), results)
    return Aggregator(s, families).consume(
        iter_results(results, manifest, storage, aggregate.COLUMNS, setting))


def build_report(results: str, output: str, settings: ReportSettings | None = None,
                 storage: StorageSettings | None = None,
                 baseline: str | None = None) -> dict[str, Any]:
    """Build the report of the audit ``results`` into ``output``; returns ``report.json``'s dict.

    With ``baseline`` (an earlier audit, or the same data under other settings),
    the report also compares the two (``comparison``). Raises ``ConfigError``
    for bad settings or unreadable results.
    """
    from pipeline.report.render import render_html

    s = settings or ReportSettings()
    storage = storage or StorageSettings()
    for name, value in (("results", results), ("output", output)):
        if not value or str(value) == "???":
            raise ConfigError(f"{name} is required: nibt-report results=... output=...")
        check_no_credentials(name, str(value))
    if baseline is not None:
        check_no_credentials("baseline", str(baseline))
        baseline = str(baseline).rstrip("/")
    results, output = str(results).rstrip("/"), str(output).rstrip("/")
    families = s.families()
    manifest = load_manifest(results, storage)
    agg = _aggregate(results, manifest, s, families, storage, "results")
    bman = load_manifest(baseline, storage, "baseline") if baseline else None
    bagg = _aggregate(baseline, bman, s, families, storage, "baseline") if baseline else None
    words = tracked_words(agg, s)
    bwords = tracked_words(bagg, s) if bagg is not None else []
    ws, wx, profiles = word_spaces(results, manifest, agg, words,
                                   [w for w in bwords if w not in set(words)], s, storage)
    suspects, explained = shortcut_suspects(results, manifest, agg, profiles, s, storage)
    word_rows = summary.word_rows(agg, profiles)
    devs = summary.group_deviations(agg, s)
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "results": results,
        "run": summary.run_info(manifest),
        "overview": summary.overview(agg, s, len(manifest["parts"])),
        "words": summary.words_section(word_rows, s),
        "groups": summary.groups_section(agg, s, devs),
        "space": summary.space_section(agg, profiles, suspects, explained, s),
    }
    if ws is not None:
        report["space"]["suspect_maps"] = [
            {"word": p["word"], "positive_mean_map": [float(x) for x in ws.mean_map(p["_wid"])],
             "top_share": [float(x) for x in ws.top_share(p["_wid"])]} for p in suspects]
    report["review"], thumbs, zooms = review_section(results, manifest, agg, ws, suspects, s,
                                                     storage)
    report["findings"] = findings(report)
    log.info("report: flags pass over %s", results)
    flagger = Flagger(report["space"]["suspects"], agg.grid, int(agg.status.get("ok", 0)),
                      s.flags_low_score_share).consume(
        iter_results(results, manifest, storage, flags.COLUMNS))
    flag_table, report["flags"] = flagger.table()
    report["flags"]["path"] = "flags.parquet"
    # the list carries what made it: the results, their fingerprint, the report's settings
    flag_table = flag_table.replace_schema_metadata({"nibt.flags": json.dumps(_clean({
        "results": results, "fingerprint": report["run"].get("fingerprint"),
        "report_version": REPORT_VERSION, **report["flags"], "settings": public(s)}))})
    compared = None
    if bagg is not None:
        bws, bwx, bprofiles = word_spaces(baseline, bman, bagg, bwords,
                                          [w for w in words if w not in set(bwords)], s, storage,
                                          "baseline")
        bsuspects, _ = shortcut_suspects(baseline, bman, bagg, bprofiles, s, storage)
        bdevs = summary.group_deviations(bagg, s)
        cur = Audit(results, manifest, agg, [w for w in (ws, wx) if w is not None], suspects,
                    report["groups"], devs, has_success(results, storage))
        base = Audit(baseline, bman, bagg, [w for w in (bws, bwx) if w is not None], bsuspects,
                     summary.groups_section(bagg, s, bdevs), bdevs, has_success(baseline, storage))
        comparison, compared = compare(cur, base, s)
        report = {"report_version": REPORT_VERSION, "results": results, "baseline": baseline,
                  "comparison": comparison, **{k: v for k, v in report.items()
                                               if k not in ("report_version", "results")}}
    report["settings"] = public(s)
    report = _clean(report)
    tables = _tables(report, word_rows, ws, profiles)
    if compared is not None:
        tables["comparison_words"] = compared
    html = render_html(report, thumbs, zooms)
    fs, root = filesystem(output, storage)
    for name, table in tables.items():
        put_atomic(fs, join(root, "aggregates", f"{name}.parquet"), _parquet(table))
    put_atomic(fs, join(root, "flags.parquet"), _parquet(flag_table))
    body = json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    put_atomic(fs, join(root, "report.json"), body.encode())
    put_atomic(fs, join(root, "report.html"), html.encode())
    if report["overview"]["notice"]:
        log.warning("report: %s", report["overview"]["notice"])
    log.info("report: %d rows, %d findings%s -> %s", agg.rows, len(report["findings"]),
             f", {len(report['comparison']['findings'])} changes" if compared is not None else "",
             output)
    return report
