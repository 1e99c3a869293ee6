"""``build_report``: audit results -> ``report.html``, ``report.json``, ``flags.parquet``,
``aggregates/*.parquet``; with a baseline audit, a comparison of the two.

Three passes over the parts that one read of the manifest lists (so all passes
see the same parts even if an audit commits more meanwhile), each spread over
workers (``pool``; ``report.workers``) and merged in order (``passes``): the
first aggregates everything but the per-word maps and keeps the pairs to
review by score and by word attribution; the second the maps of the words
frequent enough to be shortcut suspects; the last checks each candidate
without the better ones it appears with, collects the curation list and the
rows of the suspects' example pairs. Then the input images of the few pairs to
review are read. A baseline goes through the same passes (its last one only
when two or more words are candidates), with the words either side tracks, so
the comparison differences aggregates (``compare``). Same results and settings
in, same bytes out, however many workers: every sample is seeded, the tasks
depend on the manifest alone, and nothing reads the clock. The files are
written under a temporary prefix and moved into place together (``output``).
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
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
from pipeline.io.previous import has_success
from pipeline.report import aggregate, passes, summary
from pipeline.report.aggregate import Aggregator
from pipeline.report.compare import Audit, compare
from pipeline.report.findings import findings
from pipeline.report.flags import FlagList, FlagScan, low_bin, low_score_pairs
from pipeline.report.output import Staging
from pipeline.report.pairview import zoom_images
from pipeline.report.pool import (
    Executor,
    InProcess,
    LocalPool,
    available_cores,
    release_memory,
)
from pipeline.report.settings import RUN_ONLY, ReportSettings
from pipeline.report.space import WORD_ID, CoOccurrence, WordSpace
from pipeline.report.thumbs import read_images, thumbnail

log = logging.getLogger("nibt-report")
REPORT_VERSION = 1


def load_manifest(results: str, storage: StorageSettings,
                  setting: str = "results") -> dict[str, Any]:
    """The results' manifest with its parts (``read_manifest``: the header and the parts
    table it names, or the inline parts of earlier releases); ``ConfigError`` (naming
    ``setting``) when it is missing or not a manifest."""
    try:
        manifest = read_manifest(results, storage, parts=True)
    except Exception as e:
        raise ConfigError(f"{setting}: cannot read {results}/_manifest.json or its parts table "
                          f"({type(e).__name__}: {e}); is it an nibt-audit output?") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("parts"), list):
        raise ConfigError(f"{setting}: {results}/_manifest.json lists no parts")
    return manifest


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


def default_executor(s: ReportSettings, *manifests: dict[str, Any] | None) -> Executor:
    """``report.workers`` processes (all cores when unset), no more than the largest pass has
    tasks; in this process when that is one."""
    n = max((len(passes.cut(m["parts"])) for m in manifests if m is not None), default=1)
    workers = min(s.workers or available_cores(), n)
    return LocalPool(workers) if workers > 1 else InProcess()


def tracked_words(agg: Aggregator, s: ReportSettings) -> list[str]:
    """Words frequent enough for the spatial pass, most frequent first (capped)."""
    v = agg.vocab
    pairs = v.sums["pairs"]
    cand = np.flatnonzero(pairs >= max(s.shortcut_min_count, 1))
    if s.words_skip_punctuation and cand.size:
        cand = cand[summary.alnum_mask(v.texts().take(pa.array(cand)))]
    return [v.word(i) for i in summary.top_by(cand, -pairs, v.word, s.shortcut_max_words)]


@dataclass
class Read:
    """One audit as the passes left it."""

    results: str
    manifest: dict[str, Any]
    agg: Aggregator
    ws: WordSpace | None = None  # its tracked words' maps
    wx: WordSpace | None = None  # the other side's tracked words' maps (a comparison)
    profiles: list[dict] | None = None
    suspects: list[dict] | None = None
    explained: list[dict] | None = None
    rows: dict | None = None  # the example pairs' rows, by (part, row)
    devs: dict | None = None  # summary.group_deviations
    thumbs: dict | None = None  # the pairs to review: thumbnails and enlarged views by key
    zooms: dict | None = None
    guessed: WordSpace | None = None  # the first pass's maps of the guessed words


def first(ex: Executor, results: str, manifest: dict[str, Any], s: ReportSettings,
          storage: StorageSettings, guess: Sequence[str] = ()) -> Read:
    """Pass one over an audit: its aggregates, and the maps of the ``guess`` words."""
    log.info("report: %d parts in %s", len(manifest["parts"]), results)
    agg, guessed = passes.first_pass(ex, results, storage, manifest["parts"], s, guess,
                                     _examples(s))
    return Read(results, manifest, agg, guessed=guessed)


def _examples(s: ReportSettings) -> int:
    """Example pairs kept a profiled word (more than are shown: those in its cell first)."""
    return 4 * max(s.review_suspect_examples, 1)


def spaces(ex: Executor, a: Read, words: list[str], extra: list[str], s: ReportSettings,
           storage: StorageSettings) -> None:
    """The maps of the tracked ``words`` (profiled) and of ``extra`` words (counted for a
    comparison only): from the first pass where it mapped them, else from a pass of their
    own over the parts (pass two: only when the guess missed a word)."""
    a.profiles = []
    guessed, a.guessed = a.guessed, None
    if a.agg.grid is None or not a.agg.space_n or not (words or extra):
        return
    held = guessed.index if guessed is not None else {}
    missed = [w for w in words if w not in held], [w for w in extra if w not in held]
    found: tuple[WordSpace | None, WordSpace | None] = (None, None)
    if missed[0] or missed[1]:
        log.info("report: spatial pass over %d words of %s that the first pass did not map",
                 len(missed[0]) + len(missed[1]), a.results)
        work = passes.SpacePass(a.agg.grid, s.seed, _examples(s), *missed)
        found = passes.space_pass(ex, a.results, storage, a.manifest["parts"], work, s)
    a.ws = WordSpace.gather(words, [guessed, found[0]], _examples(s))
    a.wx = WordSpace.gather(extra, [guessed, found[1]], 1)
    if a.ws is not None:
        a.profiles = a.ws.profiles(a.agg.pos_sum / a.agg.space_n,
                                   a.agg.top_counts / a.agg.space_n, s.shortcut_min_count)


def last(ex: Executor, a: Read, s: ReportSettings, storage: StorageSettings,
         flag_list: FlagList | None) -> None:
    """Pass three: shortcut candidates checked against the better ones they appear with;
    with ``flag_list``, the curation list's rows and the suspects' example rows too."""
    agg = a.agg
    cands = _cands(a, s)
    cooccur = len(cands) >= 2 and agg.grid is not None
    a.rows = {}
    if flag_list is None and not cooccur:
        a.suspects = [dict(p, alone_pairs=p["pairs"], alone_score=p["score"]) for p in cands]
        a.suspects, a.explained = a.suspects[: s.shortcut_listed], []
        return
    pointers = {ptr for p in cands for ptr in a.ws.example_pointers(
        p[WORD_ID], p["modal_cell"], s.review_suspect_examples)} if flag_list else set()
    if flag_list is not None:  # the rows of the pairs to review, shown with the report
        pointers |= {(p, r) for top in (agg.lowest, agg.negative) for p, r, _ in top.pointers()}
    scan = FlagScan([p["modal_cell"] for p in cands], agg.grid,
                    low_bin(agg.hist, flag_list.k)) if flag_list is not None else None
    work = passes.LastPass(agg.grid, [p["word"] for p in cands], cooccur, scan, pointers)
    log.info("report: last pass over %s", a.results)
    done = passes.last_pass(ex, a.results, storage, a.manifest["parts"], work, s, flag_list)
    a.rows = done.rows
    a.suspects, a.explained = resolve(agg, cands, done.co, s)


def resolve(agg: Aggregator, cands: list[dict], co: CoOccurrence | None,
            s: ReportSettings) -> tuple[list[dict], list[dict]]:
    """Candidates over the threshold, less those explained by a better one they appear with
    (``space.CoOccurrence``, counted when two or more are candidates)."""
    if co is None:
        return [dict(p, alone_pairs=p["pairs"], alone_score=p["score"]) for p in cands][
            : s.shortcut_listed], []
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


def review_section(a: Read, s: ReportSettings, storage: StorageSettings
                   ) -> tuple[dict[str, Any], dict[str, bytes], dict[str, dict[str, Any]]]:
    """The pairs to review (JSON), their thumbnails (PNG bytes by ``thumb`` key) and their
    enlarged views (``pairview.zoom_images`` by the same key)."""
    agg = a.agg
    lists: list[tuple[str, str, list[tuple[int, int, float]]]] = [
        ("lowest_score", "score", agg.lowest.pointers()),
        ("most_negative", "min_word_attr", agg.negative.pointers()),
    ]
    by_word = []
    for p in (a.suspects or [])[: s.review_suspects] if a.ws is not None else []:
        ptrs = a.ws.example_pointers(p[WORD_ID], p["modal_cell"], s.review_suspect_examples)
        by_word.append((p["word"], [(x, y, float("nan")) for x, y in ptrs]))
    rows = a.rows or {}
    data = (a.manifest.get("settings") or {}).get("data") or {}
    images = read_images(sorted({(r["source"], r["row"]) for r in rows.values()}),
                         data.get("image_column") or "image", storage,
                         int(data.get("max_pixels") or DEFAULT_MAX_PIXELS), _shards(data))
    thumbs: dict[str, bytes] = {}
    zooms: dict[str, dict[str, Any]] = {}

    def entry(ptr: tuple[int, int, float], key: str) -> dict[str, Any]:
        row = rows[ptr[0], ptr[1]]
        img = images.get((row["source"], row["row"]))
        pic = img if not isinstance(img, str) else None
        grid = (row.get("grid_h") or 0, row.get("grid_w") or 0)
        tkey = f"p{ptr[0]}r{ptr[1]}"
        if tkey not in thumbs:
            thumbs[tkey] = thumbnail(pic, row.get("image_attr"), grid, s.thumbnail_px)
            zooms[tkey] = zoom_images(pic, row.get("image_attr"), grid, s.zoom_px, 2 * s.zoom_px)
        out = _pair(row, key, ptr[2])
        out.update(thumb=tkey, image="ok" if pic is not None else (img or "image not read"))
        return out

    review: dict[str, Any] = {name: [entry(p, key) for p in ptrs] for name, key, ptrs in lists}
    review["suspects"] = [{"word": w, "pairs": [entry(p, "example") for p in ptrs]}
                          for w, ptrs in by_word]
    return review, thumbs, zooms


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _tables(report: dict[str, Any], a: Read) -> dict[str, pa.Table | Iterator[pa.Table]]:
    words = summary.word_tables(a.agg, a.profiles or [])
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
    regions = summary.regions_table(report["space"], report["groups"], a.ws,
                                     a.profiles or [])
    return {"words": words, "groups": groups, "group_effects": effects, "regions": regions}


def _checked(name: str, value: Any) -> str:
    if not value or str(value) == "???":
        raise ConfigError(f"{name} is required: nibt-report results=... output=...")
    check_no_credentials(name, str(value))
    return str(value).rstrip("/")


def build_report(results: str, output: str, settings: ReportSettings | None = None,
                 storage: StorageSettings | None = None, baseline: str | None = None,
                 executor: Executor | None = None,
                 stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the report of the audit ``results`` into ``output``; returns ``report.json``'s dict.

    With ``baseline`` (an earlier audit, or the same data under other settings),
    the report also compares the two (``comparison``). ``executor`` runs the
    passes' tasks (default: ``default_executor``); ``stats`` receives how many
    workers ran them, their summed peak memory, the seconds each step took, this
    process's CPU seconds in each and the tasks a pass (none of which goes into the
    report: it is the same either way). Raises ``ConfigError`` for bad
    settings or a missing manifest, ``io.results.PartUnreadable`` for a part that
    cannot be read; either way nothing is published.
    """
    s = settings or ReportSettings()
    storage = storage or StorageSettings()
    results, output = _checked("results", results), _checked("output", output)
    baseline = _checked("baseline", baseline) if baseline is not None else None
    manifest = load_manifest(results, storage)
    bman = load_manifest(baseline, storage, "baseline") if baseline else None
    ex = executor or default_executor(s, manifest, bman)
    staging = Staging(output, storage)
    try:
        report = _build(ex, (results, manifest), (baseline, bman), s, storage, staging,
                        stats if stats is not None else {})
        staging.publish()
    except BaseException:
        staging.discard()
        raise
    finally:
        if stats is not None:
            stats.update(workers=ex.workers,
                         workers_peak_rss_mb=round(sum(ex.peak_rss_mb().values()), 1))
        if executor is None:
            ex.close()
    return report


def _build(ex: Executor, audit: tuple[str, dict[str, Any]],
           baseline: tuple[str | None, dict[str, Any] | None], s: ReportSettings,
           storage: StorageSettings, staging: Staging, stats: dict[str, Any]) -> dict[str, Any]:
    """The passes, then every file written to ``staging``; into ``stats`` each step's wall
    seconds and this process's CPU seconds (with workers, the passes' CPU here is the
    merge: at scale it sets how many workers one report process can keep up with), and
    the tasks a pass of the audit is cut into."""
    clock, cpu = stats.setdefault("seconds", {}), stats.setdefault("cpu_seconds", {})
    stats["tasks_a_pass"] = len(passes.cut(audit[1]["parts"]))
    t, c = time.monotonic(), time.process_time()

    def lap(name: str) -> None:
        nonlocal t, c
        release_memory()  # the step's freed memory back: the next step's peak is its own
        clock[name] = round(time.monotonic() - t, 3)
        cpu[name] = round(time.process_time() - c, 3)
        t, c = time.monotonic(), time.process_time()

    guess = passes.guess_words(audit[0], storage, audit[1]["parts"], s)
    if baseline[1] is not None:  # either side's tracked words are mapped on both
        mine = set(guess)
        guess += [w for w in passes.guess_words(baseline[0], storage, baseline[1]["parts"], s)
                  if w not in mine]
    lap("sample")
    cur = first(ex, *audit, s, storage, guess)
    base = first(ex, *baseline, s, storage, guess) if baseline[1] is not None else None
    lap("first_pass")
    words = tracked_words(cur.agg, s)
    bwords = tracked_words(base.agg, s) if base is not None else []
    spaces(ex, cur, words, [w for w in bwords if w not in set(words)], s, storage)
    if base is not None:
        spaces(ex, base, bwords, [w for w in words if w not in set(bwords)], s, storage)
    lap("space_pass")
    flag_list = FlagList(low_score_pairs(int(cur.agg.status.get("ok", 0)),
                                         s.flags_low_score_share))
    try:
        last(ex, cur, s, storage, flag_list)
        if base is not None:
            last(ex, base, s, storage, None)
        lap("last_pass")
        report = _sections(cur, s, storage, ex.map)
        report["flags"] = flag_list.summary(report["space"]["suspects"],
                                            {p["word"]: i for i, p in enumerate(_cands(cur, s))},
                                            cur.agg.grid, int(cur.agg.status.get("ok", 0)))
        report["flags"]["path"] = "flags.parquet"
        # the list carries what made it: the results, their fingerprint, the report's settings
        meta = {"nibt.flags": json.dumps(_clean({
            "results": cur.results, "fingerprint": report["run"].get("fingerprint"),
            "report_version": REPORT_VERSION, **report["flags"], "settings": _settings(s)}))}
        tables = {}
        if base is not None:
            report, tables["comparison_words"] = _compared(report, cur, base, s, storage,
                                                            ex.map)
        report["settings"] = _settings(s)
        report = _clean(report)
        lap("sections")
        from pipeline.report.render import render_html

        html = render_html(report, cur.thumbs, cur.zooms, ex.map)
        lap("render")
        _write(staging, report, html, {**_tables(report, cur), **tables}, flag_list, meta)
        lap("write")
        stats["flagged"] = report["flags"]["rows"]
    finally:
        flag_list.close()
    if report["overview"]["notice"]:
        log.warning("report: %s", report["overview"]["notice"])
    log.info("report: %d rows, %d findings%s -> %s", cur.agg.rows, len(report["findings"]),
             f", {len(report['comparison']['findings'])} changes" if base is not None else "",
             staging.root)
    return report


def _settings(s: ReportSettings) -> dict[str, Any]:
    """The settings that made the report (not where it ran nor how it told its progress:
    same numbers either way)."""
    return {k: v for k, v in public(s).items() if k not in RUN_ONLY}


def _cands(a: Read, s: ReportSettings) -> list[dict]:
    """The shortcut candidates of ``last`` (in its order: flag rows name them by index)."""
    return [p for p in a.profiles or [] if p["score"] >= s.shortcut_min_excess][
        : 2 * max(s.shortcut_listed, 1)]


def _sections(a: Read, s: ReportSettings, storage: StorageSettings,
              run: summary.MapFn | None = None) -> dict[str, Any]:
    """The report's own sections (no comparison, no flags); ``run`` draws the bootstrap
    samples (``summary.group_deviations``)."""
    agg = a.agg
    a.devs = summary.group_deviations(agg, s, run)
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "results": a.results,
        "run": summary.run_info(a.manifest),
        "overview": summary.overview(agg, s, len(a.manifest["parts"])),
        "words": summary.words_section(agg, s),
        "groups": summary.groups_section(agg, s, a.devs),
        "space": summary.space_section(agg, a.profiles or [], a.suspects or [],
                                       a.explained or [], s),
    }
    if a.ws is not None:
        report["space"]["suspect_maps"] = [
            {"word": p["word"], "positive_mean_map": [float(x) for x in a.ws.mean_map(p[WORD_ID])],
             "top_share": [float(x) for x in a.ws.top_share(p[WORD_ID])]} for p in a.suspects]
    report["review"], a.thumbs, a.zooms = review_section(a, s, storage)
    report["findings"] = findings(report)
    return report


def _compared(report: dict[str, Any], cur: Read, base: Read, s: ReportSettings,
              storage: StorageSettings, run: summary.MapFn | None = None
              ) -> tuple[dict[str, Any], pa.Table]:
    """The report with the comparison first, and the per-word comparison table."""
    base.devs = summary.group_deviations(base.agg, s, run)
    audits = [Audit(x.results, x.manifest, x.agg, [w for w in (x.ws, x.wx) if w is not None],
                    x.suspects or [], groups, x.devs, has_success(x.results, storage))
              for x, groups in ((cur, report["groups"]),
                                (base, summary.groups_section(base.agg, s, base.devs)))]
    comparison, table = compare(audits[0], audits[1], s)
    return {"report_version": REPORT_VERSION, "results": cur.results, "baseline": base.results,
            "comparison": comparison, **{k: v for k, v in report.items()
                                         if k not in ("report_version", "results")}}, table


def _write(staging: Staging, report: dict[str, Any], html: str,
           tables: dict[str, pa.Table | Iterator[pa.Table]], flag_list: FlagList,
           meta: dict[str, str]) -> None:
    """Every file of the report into ``staging``, report.json and report.html last; a table
    given in slices (``summary.word_tables``) streamed a slice at a time."""
    for name, table in tables.items():
        if isinstance(table, pa.Table):
            staging.put(f"aggregates/{name}.parquet", _parquet(table))
            continue
        first = next(table)
        with staging.open(f"aggregates/{name}.parquet") as f, \
                pq.ParquetWriter(f, first.schema) as out:
            out.write_table(first)
            del first
            for more in table:
                out.write_table(more)
                del more  # not held while the next slice is made
        release_memory()  # a table's slices freed before the next one's
    with staging.open("flags.parquet") as f:
        flag_list.write(f, meta)
    body = json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    staging.put("report.json", body.encode())
    staging.put("report.html", html.encode())
