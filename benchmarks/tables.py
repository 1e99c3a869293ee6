"""The measured tables of docs/performance.md and docs/engine.md, drawn from JSON.

Each such table sits between ``<!-- table: NAME -->`` and ``<!-- /table -->`` and is
rendered from ``docs/figures/<section>.json`` (what ``make bench`` and ``make evaluate``
write to ``bench-results/``), followed by the date, machine, command and commit stamped
in that JSON. So a figure in the docs cannot drift from the run that measured it:
``tests/unit/test_docs.py`` re-renders every table and compares.

    python -m benchmarks.tables --copy bench-results   # take a new run's JSON, then render
    python -m benchmarks.tables                        # re-render the pages
    python -m benchmarks.tables --check                # exit 1 when a table differs
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from statistics import mean, median

ROOT = Path(__file__).resolve().parents[1]
PAGES = (ROOT / "docs" / "performance.md", ROOT / "docs" / "engine.md")
FIGURES = ROOT / "docs" / "figures"
BLOCK = re.compile(r"(<!-- table: ([a-z0-9_-]+) -->\n)(.*?)(<!-- /table -->)", re.S)


# ------------------------------------------------------------------ formatting
def num(x: float, digits: int = 3) -> str:
    """``digits`` significant digits, thousands separated: 4906.2 -> 4,906; 0.8791 -> 0.879."""
    if x == 0:
        return "0"
    mag = len(str(int(abs(x)))) if abs(x) >= 1 else 0
    places = max(0, digits - mag) if abs(x) >= 1 else digits - 1 - int(f"{abs(x):e}".split("e")[1])
    return f"{x:,.{max(0, places)}f}"


def pct(x: float, places: int = 0) -> str:
    return f"{100 * x:.{places}f}%"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def stamp(m: dict) -> str:
    """When, where and how: the line under every table (``render`` adds it)."""
    gpu = m.get("gpu") or "no GPU"
    load = (f"; load average {m['load_average'][0]:g} when it began"
            if m.get("load_average") else "")
    return (f"*{m['date']}; {m['cpu']}, {m['cores']} cores, {m['memory_gib']:g} GiB, {gpu}; "
            f"Python {m['python']}, torch {m['torch']}; `.venv/bin/python -m "
            f"{m['command'].removeprefix('python -m ')}` at commit {m['commit']}{load}.*")


# ------------------------------------------------------------------ renderers
def engine(d: dict) -> str:
    s, cap = d["setup"], d["captum_layer_ig_pairs_per_s"]
    rows = [
        ["this engine, fp32", f"**{num(d['engine_fp32_pairs_per_s'])}**",
         f"**{d['engine_fp32_pairs_per_s'] / cap:.1f}x**"],
        ["this engine, bf16 autocast", f"**{num(d['engine_bf16_pairs_per_s'])}**",
         f"**{d['engine_bf16_pairs_per_s'] / cap:.1f}x**"],
        ["naive per-step loop (the tests' oracle)", num(d["naive_loop_pairs_per_s"]),
         f"{d['naive_loop_pairs_per_s'] / cap:.1f}x"],
        [f"captum `LayerIntegratedGradients` (layer {s['layer']}, {s['steps']} steps, "
         "riemann_right)", num(cap), "1x"],
    ]
    rss = d["peak_rss_mb"]
    return "\n\n".join([
        f"{s['model']}, {s['sides']}, layer {s['layer']}, {s['steps']} steps, batch "
        f"{s['batch']}, {s['threads']} threads.",
        table(["", "pairs/s", "vs captum"], rows),
        f"fp32: {num(d['engine_fp32_gflop_per_pair'])} GFLOP per pair (torch's "
        f"FlopCounterMode), {num(d['engine_fp32_achieved_gflops'])} GFLOP/s achieved = "
        f"**{pct(d['engine_fp32_fraction_of_matmul_peak'])} of the machine's fp32 matmul rate** "
        f"({num(d['matmul_fp32_gflops'])} GFLOP/s, measured in the same run). bf16 maps against "
        f"fp32: Pearson {d['bf16_pearson_vs_fp32_image']} (image), "
        f"{d['bf16_pearson_vs_fp32_text']} (text). Peak RSS: {rss['batch8_fp32']:,} MB at batch "
        f"8, {rss['batch32_fp32']:,} MB at batch 32 (fp32), {rss['batch32_bf16']:,} MB (bf16, "
        "batch 32).",
    ])


def flops(d: dict) -> str:
    s, here, peer = d["setup"], d["this_engine"], d["peer"]
    labels = [*(f"all {n} tokens" for n in (8, 32, 77)), "all 6 tokens",
              "seven of 6 tokens, one of 70"]
    keys = ["tokens_8", "tokens_32", "tokens_77", "short_8", "one_long_among_8"]
    rows = [[label, f"**{num(here[k])}**", num(peer[k]), f"{here[k] / peer[k]:.2f}"]
            for label, k in zip(labels, keys)]
    return "\n\n".join([
        f"{s['model']}, {s['sides']}, layer {s['layer']}, {s['steps']} steps, batches of "
        f"{s['batch']} pairs; GFLOP per pair (torch's FlopCounterMode).",
        table(["captions (tokens with start- and end-of-text)", "this engine",
               f"the engine at commit {s['peer_commit']}", "this / that"], rows),
        f"One 70-token caption among eight adds **{pct(here['one_long_adds'])}** of the batch's "
        f"FLOPs here, {pct(peer['one_long_adds'])} at commit {s['peer_commit']}.",
    ])


def completeness(d: dict) -> str:
    rows = []
    for key in ("uniform_10", "uniform_200", "log_10", "log_200"):
        schedule, steps = key.split("_")
        r = d[key]
        rows.append([f"`{schedule}`", steps,
                     f"{num(min(r['image_ratio']))} to {num(max(r['image_ratio']))}",
                     f"{num(min(r['text_ratio']))} to {num(max(r['text_ratio']))}"])
    return "\n\n".join([
        f"{d['model']}, layer {d['layer']}, {d['pairs']} pairs; the ratio of the attributions' "
        "sum to the score change `cos(S(h)) - cos(S(0))` (1 = complete), smallest to largest "
        "over the pairs:",
        table(["schedule", "steps", "image", "text"], rows),
    ])


def models(d: dict) -> str:
    rows = []
    for name in ("ViT-B-16", "ViT-L-14"):
        m = d[name]
        rows.append([f"{name} (layers {m['layers'][0]} / {m['layers'][1]})", str(m["batch"]),
                     num(m["fp32_pairs_per_s"]),
                     f"{num(m['bf16_pairs_per_s'])} ({m['bf16_speedup']:.2f}x)",
                     num(m["gflop_per_pair"]), pct(m["fp32_fraction_of_matmul_peak"])])
    return "\n\n".join([
        table(["model (image / text layer)", "batch", "fp32 pairs/s", "bf16 pairs/s",
               "GFLOP/pair", "fp32 share of matmul rate"], rows),
        f"The machine's fp32 matmul rate in the same run: {num(d['matmul_fp32_gflops'])} GFLOP/s.",
    ])


def job(d: dict) -> str:
    rows = []
    for n in (256, 1024):
        r = d[f"job_vit_b_32_{n}_pairs"]
        e = r["engine"]
        rows.append([f"{n:,}", f"**{num(r['job_pairs_per_s'])}**",
                     num(r["engine_inside_job_pairs_per_s"]), pct(r["job_vs_engine_inside_job"], 1),
                     f"{num(e['one_pass_pairs_per_s'])} ({e['one_pass_pairs']} pairs)",
                     f"**{pct(r['job_vs_engine_one_pass'], 1)}**",
                     num(e["attribute_and_metrics_pairs_per_s"]),
                     pct(r["job_vs_engine_with_metrics"], 1),
                     f"{r['worker_peak_rss_mb']:,.0f} / {r['driver_peak_rss_mb']:,.0f} MB"])
    return table(["pairs", "job pairs/s", "engine inside the job", "job / that",
                  "engine alone, one pass over the same pairs", "job / that",
                  "engine alone, best of 5 on one batch", "job / that",
                  "worker / driver peak RSS"], rows)


def scale(d: dict) -> str:
    rows = []
    for n, best in sorted(d["best_ms_per_pair"].items(), key=lambda kv: int(kv[0])):
        runs = d["runs"][n]
        rows.append([
            f"{int(n):,}", f"**{best:.2f}**", ", ".join(f"{r['ms_per_pair']:.2f}" for r in runs),
            ", ".join(f"{num(r['engine_inside_job_pairs_per_s'])}" for r in runs),
            ", ".join(f"{r['overhead_ms_per_pair']:.2f}" for r in runs),
            f"{max(r['driver_peak_rss_mb'] for r in runs):,.0f} MB",
            f"{min(r['worker_peak_rss_mb'] for r in runs):,.0f}-"
            f"{max(r['worker_peak_rss_mb'] for r in runs):,.0f} MB"])
    return "\n\n".join([
        table(["pairs", "ms per pair (best run)", "each run", "engine inside the job, pairs/s",
               "job's own ms per pair", "driver peak RSS", "worker peak RSS"], rows),
        f"Best ms per pair, largest over smallest: {d['ms_per_pair_max_over_min']:.3f}; "
        f"driver peak RSS {d['driver_rss_max_over_min']:.3f}; worker "
        f"{d['worker_rss_max_over_min']:.3f}.",
    ])


def overlap(d: dict) -> str:
    rates, share = d["job_pairs_per_s"], d["engine_share_of_actor_time"]
    rows = [[str(k), f"**{num(mean(rates[f'tasks_per_actor_{k}']))}**",
             ", ".join(num(x) for x in rates[f"tasks_per_actor_{k}"]),
             ", ".join(f"{x:.2f}" for x in share[f"tasks_per_actor_{k}"])] for k in (1, 2)]
    return "\n\n".join([
        f"The {d['model']} model, {d['image_px']}x{d['image_px']} JPEGs, {d['pairs']:,} pairs, "
        f"{d['rows_per_task']} pairs per task, one CPU actor; runs alternated 1, 2, 2, 1.",
        table(["tasks in flight", "pairs/s (mean)", "each run", "engine share of actor time"],
              rows),
        f"Two over one: {d['speedup_2_over_1']:.3f}.",
    ])


def _pixels(name: str) -> int:
    """jpeg_640x480 -> 307200 (0 for a name without a size)."""
    size = name.rsplit("_", 1)[-1]
    w, _, h = size.partition("x")
    return int(w) * int(h) if w.isdigit() and h.isdigit() else 0


def decode_per_core(d: dict, target: str) -> str:
    paths = ["open_clip", "exact", "fast", "device_cpu"]
    rows = []
    sets = d["per_core"][target]
    for name in sorted(sets, key=lambda k: (k == "mix", k.startswith("png"), _pixels(k))):
        r = sets[name]
        label = name.replace("jpeg_", "JPEG ").replace("png_", "PNG ")
        rows.append([label, *(num(r[p]["per_cpu_s"]["median"]) for p in paths),
                     f"**{r['fast']['x_open_clip']:.2f}**"])
    return table(["images", "open_clip", "exact", "fast", "device (CPU)", "fast / open_clip"], rows)


def decode_224(d: dict) -> str:
    return decode_per_core(d, "vit_b_32_224px")


def decode_64(d: dict) -> str:
    return decode_per_core(d, "demo_64px")


def decode_parity(d: dict) -> str:
    rows = []
    for label, r in d["parity"].items():
        paths = sorted((k for k in r if k not in ("images", "sizes")), key=lambda k: k != "fast")
        for i, path in enumerate(paths):
            p = r[path]
            rows.append([f"{label}, {r['images']} images" if i == 0 else "",
                         "device (CPU)" if path == "device_cpu" else path,
                         f"{p['pixel_abs_diff_mean']:.3g}", str(p["pixel_abs_diff_max"]),
                         f"{p['embedding_cosine_min']:.5f}", f"{p['attribution_pearson_min']:.4f}"])
    return table(["model, images", "path", "mean \\|Δ\\|", "max \\|Δ\\|", "embedding cosine",
                  "attribution Pearson"], rows)


POOLS = {
    "threads": "threads",
    "process_pool": "process pool, shared-memory buffers",
    "process_pool_pickled": "process pool, pixels pickled back",
    "dataloader_per_batch": "`DataLoader`, workers built per batch",
    "dataloader_persistent_rows_known": "`DataLoader`, persistent workers, rows known up front",
}


def decode_pools(d: dict) -> str:
    p = d["pools"]
    rows = [[label, f"{num(p[k]['per_wall_s']['median'])} ({num(p[k]['per_wall_s']['range'][0])}"
             f"-{num(p[k]['per_wall_s']['range'][1])})", num(p[k]["per_cpu_s"]["median"])]
            for k, label in POOLS.items()]
    return "\n\n".join([
        f"{p['images']} {p['set'].replace('jpeg_', '')} JPEGs to 224 px on the {p['path']} path, "
        f"{p['workers']} workers, batches of {p['batch']}; medians (range) of the runs.",
        table(["decoder", "per wall second", "per CPU-second"], rows),
    ])


def decode_job(d: dict) -> str:
    rate, over, over_all = d["pairs_per_s"], d["camera_over_64px"], d["camera_over_64px_all_runs"]
    by_round = d["camera_over_64px_by_round"]
    rows = []
    for s in ("jpeg_64x64", "jpeg_640x480", "jpeg_1024x768"):
        cells = [s.replace("jpeg_", "JPEG "),
                 *(f"{num(median(rate[f'{s} {p}']))} ({', '.join(num(x) for x in rate[f'{s} {p}'])})"
                   for p in ("exact", "fast"))]
        if s == "jpeg_64x64":
            cells += [""] * 4
        else:
            cells += [f"{over[f'{s} {p}']:.2f} ({over_all[f'{s} {p}']:.2f})" for p in ("exact", "fast")]
            cells += [f"{'**' * bold}{median(by_round[f'{s} {p}']):.2f}{'**' * bold} "
                      f"({', '.join(f'{x:.2f}' for x in by_round[f'{s} {p}'])})"
                      for p, bold in (("exact", False), ("fast", True))]
        rows.append(cells)
    return "\n\n".join([
        f"{d['pairs']} pairs per set, {d['model']}, {d['rounds']} rounds.",
        table(["images", "exact, pairs/s: median (runs)", "fast, pairs/s: median (runs)",
               "exact / 64x64: of medians (/ all 64x64 runs)",
               "fast / 64x64: of medians (/ all 64x64 runs)",
               "exact / 64x64 by round: median (rounds)", "fast / 64x64 by round: median (rounds)"],
              rows),
    ])


def decoders(run: dict) -> str:
    d = run["beside_engine"]
    rows = [[kind, ", ".join(num(x["pairs_per_s"]) for x in d[kind]),
             num(mean(x["pairs_per_s"] for x in d[kind])),
             ", ".join(f"{x['engine_ms_per_pair']:.2f}" for x in d[kind])]
            for kind in ("threads", "processes")]
    return "\n\n".join([
        f"{d['pairs']} pairs of {d['image_px'][0]}x{d['image_px'][1]} JPEGs, batch {d['batch']}; "
        "runs in the order threads, processes, processes, threads, threads, processes.",
        table(["decode worker", "worker pairs/s, each run", "mean", "engine ms per pair, each run"],
              rows),
        f"The engine alone on the same batches: "
        f"{', '.join(f'{x:.2f}' for x in d['engine_alone_ms_per_pair'])} ms per pair. "
        f"Processes over threads: {d['processes_over_threads_pairs_per_s']:.3f}. The engine's time "
        f"per pair against the engine alone: {d['engine_slowdown_beside_decode_threads']:.2f}x "
        f"beside a decode thread, {d['engine_slowdown_beside_decode_processes']:.2f}x beside a "
        "decode process.",
    ])


#: The audit the report must keep up with, and the cluster it has for it (docs/performance.md).
HORIZON_ROWS, HORIZON_CORES = 2_300_000_000, 64
#: The report's steps that are passes over the parts (``nibt-report``'s summary names them).
PASSES = ("first_pass", "space_pass", "last_pass")


def _store(r: dict) -> str:
    return "local disk" if r["store"] == "local" else r["store"].replace("S3, ", "local S3, ")


def _runs(d: dict) -> list[str]:
    """The table of ``d["runs"]`` and the speed-up of two workers over one."""
    rows = []
    for r in d["runs"]:
        gets = (f"{r['gets_per_part_min']}-{r['gets_per_part_max']}"
                if "gets_per_part_max" in r else "")
        rows.append([f"{r['rows']:,}", f"{r['part_rows']:,}", _store(r), str(r["workers"]),
                     f"**{r['seconds']:.1f} s**", f"{r['rows_per_s']:,}",
                     f"**{r['rows_per_s_per_worker']:,}**", f"{r['rows_per_cpu_s']:,}",
                     f"{r['peak_rss_mb']:,.0f} MB", f"{r['distinct_words']:,}", gets,
                     f"{r['load_average_before']:.1f}"])
    out = [table(["rows", "rows a part", "store", "workers", "wall time", "rows/s",
                  "rows/s per worker", "rows per CPU-second", "peak memory, all processes",
                  "distinct words", "GETs per part", "load before"], rows)]
    pairs = {}
    for r in d["runs"]:
        pairs.setdefault((r["rows"], r["part_rows"], r["store"]), {})[r["workers"]] = r
    speed = []
    for k in pairs:
        one = [r for r in d["runs"] if (r["rows"], r["part_rows"], r["store"]) == k
               and r["workers"] == 1]
        two = [r for r in d["runs"] if (r["rows"], r["part_rows"], r["store"]) == k
               and r["workers"] == 2]
        if one and two:
            busy1, busy2 = _busy(one), _busy(two)
            speed.append(f"{k[0]:,} rows in {k[1]:,}-row parts ({_store(pairs[k][1])}): "
                         f"**{_seconds(one) / _seconds(two):.2f}x** = {busy2:.2f} cores busy "
                         f"against {busy1:.2f}, x {_cpu(one) / _cpu(two):.2f}"
                         + (f" (means of {len(one)} and {len(two)} runs)" if len(one) > 1 else ""))
    if speed:
        out.append("Two workers over one, and what it is made of: the cores that two workers kept "
                   "busy against one worker's (CPU seconds of every process over wall seconds), "
                   "times one worker's CPU seconds over two workers': " + "; ".join(speed) + ".")
    return out


def _seconds(runs: list[dict]) -> float:
    return mean(r["seconds"] for r in runs)


def _cpu(runs: list[dict]) -> float:
    return mean(r["cpu_seconds"] for r in runs)


def _busy(runs: list[dict]) -> float:
    """Cores kept busy on average: CPU seconds over wall seconds, of the runs' means."""
    return _cpu(runs) / _seconds(runs)


def report_runs(d: dict) -> str:
    """Runs of the report benchmark measured apart from its grid (the same benchmark, other
    sizes: a Ray cluster, say)."""
    return "\n\n".join(_runs(d))


def report_window(d: dict) -> str:
    """The first pass in the audit's part size with the read window bounded in bytes and by
    its count of parts alone: each run, then the means."""
    runs, rows = d["window"], []
    for r in runs:
        rows.append([f"{r['rows']:,}", f"{r['part_rows']:,}", f"{r['task_rows']:,}",
                     _store(r), str(r["workers"]),
                     "64 MiB" if r["window"] == "bytes" else "16 parts",
                     f"**{r['seconds']:.1f} s**",
                     "**" + ", ".join(f"{m:,.0f}" for m in r["workers_peak_rss_mb"]) + " MB**",
                     f"{r['load_average_before']:.1f}"])
    out = table(["rows", "rows a part", "rows a task", "store", "workers", "read window",
                 "first pass", "each worker's peak memory", "load before"], rows)
    means = []
    for window, name in (("bytes", "64 MiB"), ("parts", "16 parts")):
        mine = [r for r in runs if r["window"] == window]
        if mine:
            peak = mean(max(r["workers_peak_rss_mb"]) for r in mine)
            means.append(f"{name}: {_seconds(mine):.1f} s, {peak:,.0f} MB at the larger "
                         f"worker's peak ({len(mine)} runs)")
    return out + "\n\nMeans: " + "; ".join(means) + "."


def report_memory(d: dict) -> str:
    """The report's peak memory at its largest size (``d["memory"]``)."""
    m = d["memory"]
    return (f"Memory: {m['rows']:,} rows in {m['part_rows']:,}-row parts with "
            f"{m['distinct_words']:,} distinct words, {m['workers']} workers: "
            f"**{m['peak_rss_mb']:,.0f} MB** at the peak for all processes together "
            f"(the report's own process {m['driver_peak_rss_mb']:,.0f} MB, its workers "
            f"{m['workers_peak_rss_mb']:,.0f} MB at most together), in "
            f"{m['seconds']:.0f} s ({m['rows_per_s_per_worker']:,} rows/s per worker).")


def report_compare(d: dict) -> str:
    """The comparison at a size of its own (``d["compare"]``): its time beside the plain
    report of the same rows, its memory by process, the union of both audits' words."""
    c = d["compare"]
    return (f"The comparison (`baseline=`) of {c['rows'][0]:,} rows with {c['rows'][1]:,}, in "
            f"{c['part_rows']:,}-row parts, both with the long tail of rare words, "
            f"{c['workers']} workers: **{c['seconds']:,.0f} s** ({c['vs_report']:.2f}x the "
            f"plain report of the same rows, {c['report_seconds']:,.0f} s); **"
            f"{c['peak_rss_mb']:,.0f} MB** at the peak for all processes together (the "
            f"report's own process {c['driver_peak_rss_mb']:,.0f} MB, its workers "
            f"{c['workers_peak_rss_mb']:,.0f} MB at most together; the plain report "
            f"{c['report_peak_rss_mb']:,.0f} MB); {c['union_words']:,} words in the union of "
            f"both audits' words (the current audit's: {c['distinct_words']:,}); "
            f"{c['findings']} findings, the planted word change first: "
            f"{'yes' if c['planted_word_change_found'] else 'no'}.")


def report_tasks(d: dict) -> str:
    """The report's own process's CPU in the passes (its merge of the workers' results) with
    tasks as large as at full size and as the report cuts the benchmark's rows: each run,
    the means a task, and what the full-size tasks' cost comes to at 2.3 billion rows."""
    runs, rows = d["tasks"], []
    for r in runs:
        rows.append([f"{r['rows']:,}", f"{r['part_rows']:,}",
                     f"{r['task_rows']:,}" if r["task_rows"] else "as the report cuts them",
                     str(r["tasks_a_pass"]), str(r["workers"]), f"{r['seconds']:.1f} s",
                     f"{r['passes_seconds']:.1f} s", f"{r['driver_passes_cpu_seconds']:.1f} s",
                     f"**{r['driver_cpu_ms_a_task']:,.0f} ms**",
                     f"{r['load_average_before']:.1f}"])
    out = table(["rows", "rows a part", "rows a task", "tasks a pass", "workers", "wall time",
                 "the two passes", "the report's own CPU in them", "a task",
                 "load before"], rows)
    means, full = [], [r for r in runs if r["task_rows"]]
    for name, mine in (("tasks of the full size", full),
                       ("as the report cuts them", [r for r in runs if not r["task_rows"]])):
        if mine:
            means.append(f"{name}: {mean(r['driver_cpu_ms_a_task'] for r in mine):,.0f} ms a "
                         f"task, {mean(r['driver_passes_cpu_seconds'] for r in mine):.1f} s "
                         f"in all ({len(mine)} runs)")
    out += "\n\nMeans: " + "; ".join(means) + "."
    if full:
        size = full[0]["task_rows"]
        tasks = 2 * -(-HORIZON_ROWS // size)
        ms = mean(r["driver_cpu_ms_a_task"] for r in full)
        out += (f"\n\nAt {HORIZON_ROWS / 1e9:.1f} billion rows in tasks of {size:,} rows: "
                f"{tasks:,} tasks in the two passes, at {ms:,.0f} ms each: **"
                f"{tasks * ms / 60_000:.1f} minutes** of the report's own process's CPU, "
                f"spread over the passes (extrapolated, not measured).")
    return out


def report_vocabulary(d: dict) -> str:
    """The report's own process's merge of the words alone, its merged vocabulary beside a
    dictionary of Python strings: each run, the means, and both at 2.3 billion rows."""
    runs, rows = d["vocabulary"], []
    names = {"merged": "merged (bytes, hashes, arrays)", "dictionary": "a dictionary of strings"}
    for r in runs:
        held = r.get("arrays_bytes_a_word")
        rows.append([f"{r['rows']:,}", f"{r['task_rows']:,}", f"{r['tasks']:,}",
                     names[r["vocabulary"]], f"{r['distinct_words']:,}",
                     f"**{r['cpu_ms_a_task']:,.0f} ms**",
                     f"**{r['resident_bytes_a_word']:,} B**", f"{held:,} B" if held else "",
                     f"{r['peak_rss_mb']:,} MB", f"{r['load_average_before']:.1f}"])
    out = table(["rows", "rows a task", "tasks", "merged into", "distinct words",
                 "CPU a task", "resident memory a word", "its arrays a word",
                 "peak memory", "load before"], rows)
    means = []
    for kind in ("merged", "dictionary"):
        mine = [r for r in runs if r["vocabulary"] == kind]
        if mine:
            r0 = mine[0]
            words = r0["distinct_words"] * HORIZON_ROWS / r0["rows"]
            tasks = -(-HORIZON_ROWS // r0["task_rows"])
            ms = mean(r["cpu_ms_a_task"] for r in mine)
            b = mean(r["resident_bytes_a_word"] for r in mine)
            means.append(f"{names[kind]}: {ms:,.0f} ms a task, {b:,.0f} bytes a word "
                         f"({len(mine)} runs); at {HORIZON_ROWS / 1e9:.1f} billion rows "
                         f"({words / 1e6:,.0f} million words, {tasks:,} tasks) **"
                         f"{words * b / 1e9:,.0f} GB** and {tasks * ms / 60_000:.1f} minutes "
                         f"of CPU")
    return out + "\n\nMeans, and scaled with the rows (extrapolated, not measured): " + \
        "; ".join(means) + "."


def report(d: dict) -> str:
    """The report at scale: each size, part size, store and number of workers; the speed-up
    of two workers; memory at the largest size; the comparison; the extrapolation."""
    out = _runs(d)
    alone = {(r["rows"], r["part_rows"]): r["store_alone_seconds"] for r in d["runs"]
             if "store_alone_seconds" in r}
    if alone:
        out.append("The local S3 store alone, every part object once with 16 GETs in flight "
                   "and nothing done with them (the floor of one pass): " + "; ".join(
                       f"{k[0]:,} rows in {k[1]:,}-row parts {v:.1f} s"
                       for k, v in alone.items()) + ".")
    store = [r for r in d["runs"] if "store_cpu_seconds" in r]
    if store:
        out.append("The local S3 store (moto, a Python server) runs on the same cores as the "
                   "report, which real object storage does not: its own CPU seconds in each "
                   "run, and the cores the report and the store kept busy together: " + "; ".join(
                       f"{r['rows']:,} rows in {r['part_rows']:,}-row parts, {r['workers']} "
                       f"worker{'s' * (r['workers'] > 1)}: {r['store_cpu_seconds']:.1f} CPU-s "
                       f"({(r['cpu_seconds'] + r['store_cpu_seconds']) / r['seconds']:.2f} "
                       "cores busy)" for r in store) + ".")
    if "memory" in d:
        out.append(report_memory(d))
    if "compare" in d:
        c = d["compare"]
        out.append(f"The comparison (`baseline=`) of {c['rows'][0]:,} rows with "
                   f"{c['rows'][1]:,}, 2 workers: {c['seconds']:.1f} s ({c['vs_report']:.2f}x "
                   f"the plain report of the same rows, {c['report_seconds']:.1f} s), "
                   f"{c['peak_rss_mb']:,.0f} MB; {c['findings']} findings, the planted word "
                   f"change first: {'yes' if c['planted_word_change_found'] else 'no'}.")
    out.append(_horizon(d))
    return "\n\n".join(out)


def _horizon(d: dict) -> str:
    """2.3 billion rows on a 64-core cluster, extrapolated from the largest run with two
    workers: the passes at its rows per CPU-second on every core; the report's own process,
    which merges the workers' results, at its own rate; the steps after the passes scaled
    with the rows (the curation list grows with them). The report's own CPU in the passes is
    its merge: as measured in them where the run has it, else its CPU in all less the wall
    time of the steps after the passes."""
    runs = [r for r in d["runs"] if r["store"] == "local" and r["workers"] > 1]
    r = max(runs + ([d["memory"]] if "memory" in d else []),
            key=lambda x: (x["rows"], x["part_rows"]))
    steps = r["step_seconds"]
    after = sum(v for k, v in steps.items()
                if k != "sample" and k not in PASSES)
    passes = HORIZON_ROWS / (HORIZON_CORES * r["rows_per_cpu_s"]) / 60
    cpu = r.get("driver_step_cpu_seconds")  # measured by step since 66a651d
    merging = sum(cpu.get(k, 0.0) for k in PASSES) if cpu else r["driver_cpu_seconds"] - after
    merge_rate = r["rows"] / max(merging, 1e-9)
    driver = HORIZON_ROWS / merge_rate / 60
    end = after * HORIZON_ROWS / r["rows"] / 60
    return (f"Extrapolated, not measured, from the {r['rows']:,}-row run with {r['workers']} "
            f"workers ({r['part_rows']:,}-row parts): {HORIZON_ROWS / 1e9:.1f} billion rows on "
            f"{HORIZON_CORES} cores. The passes, at its {r['rows_per_cpu_s']:,} rows per "
            f"CPU-second (every process counted), take {passes:.0f} minutes; the report's own "
            f"process merges the workers' results at {merge_rate:,.0f} rows per CPU-second, so "
            f"with {HORIZON_CORES} workers it sets the pace: **{driver:.0f} minutes**; the steps "
            f"after the passes ({after:.0f} s there), scaled with the rows, {end:.0f} minutes. "
            f"In all about **{max(passes, driver) + end:.0f} minutes**.")


def _requests(counts: dict, per: int = 0) -> str:
    """Requests by operation: in all, or per unit when ``per`` is given."""
    if not counts:
        return "none"
    return ", ".join(f"{op} {n / per:.2f}" if per else f"{op} {n:,}"
                     for op, n in sorted(counts.items()))


def controlplane_planning(d: dict) -> str:
    p, rows = d["planning"], []
    for n, r in sorted(p["sizes"].items(), key=lambda kv: int(kv[0])):
        f, again, k = r["first"], r["rerun"], int(n)
        rows.append([f"{k:,}", f"**{f['seconds']:.1f} s** ({f['ms_per_file']:.2f} ms/file)",
                     f"{1000 * f['cpu_s'] / k:.2f} / {1000 * f['store_cpu_s'] / k:.2f}",
                     _requests(f["requests"], k),
                     f"{again['seconds']:.1f} s", _requests(again["requests"])])
    prev = p["previous_planner"]
    rows.append([f"{prev['files']:,}, the previous planner",
                 f"{prev['seconds']:.1f} s ({prev['ms_per_file']:.2f} ms/file)",
                 f"{1000 * prev['cpu_s'] / prev['files']:.2f} / "
                 f"{1000 * prev['store_cpu_s'] / prev['files']:.2f}",
                 _requests(prev["requests"], prev["files"]), "", ""])
    return "\n\n".join([
        f"Input files listed and planned through the local store at {d['delay_ms']} ms a "
        "request; then again from the saved plan.",
        table(["input files", "planning", "CPU ms per file: driver / store", "requests per file",
               "rerun", "rerun requests"], rows),
        f"Time per file, largest size over smallest: {p['ms_per_file_largest_over_smallest']:.2f}."
        f" At 230,000 files, at the largest size's cost per file: "
        f"**{p['extrapolated_230k_files_s']:,.0f} s** to plan, "
        f"{p['extrapolated_230k_files_rerun_s']:,.0f} s from the saved plan.",
    ])


def controlplane_dispatch(d: dict) -> str:
    p, rows = d["dispatch"], []
    for n, r in sorted(p["sizes"].items(), key=lambda kv: int(kv[0])):
        rows.append([f"{int(n):,}", f"**{num(r['completions_per_s'])}**",
                     f"{r['driver_cpu_ms_per_task']:.3f}",
                     f"{r['driver_rss_before_mb']:,.0f} / {r['driver_peak_rss_mb']:,.0f} MB",
                     str(r["ledger_segments"]), _requests(r["requests"]),
                     f"{r['run_seconds']:,.0f} s"])
    return "\n\n".join([
        f"One-row tasks over {p['actors']} actors that run no engine, a whole `run_job` each "
        "(planning, ledger, manifest, summary) in a fresh process.",
        table(["tasks", "completions/s", "driver CPU ms per task",
               "driver RSS before / peak", "ledger segments", "requests", "run"], rows),
        f"Driver memory per task (peak RSS, largest size less smallest, over the tasks between): "
        f"**{p['driver_kb_per_task_slope']:.2f} KB**. CPU per task, largest size over smallest: "
        f"{p['cpu_per_task_largest_over_smallest']:.2f}. At 2.25 million tasks: "
        f"{p['extrapolated_2_25m_tasks_driver_cpu_s']:,.0f} s of driver CPU, "
        f"{p['extrapolated_2_25m_tasks_driver_gb']:.1f} GB of driver memory.",
    ])


def controlplane_resume(d: dict) -> str:
    p, rows = d["resume"], []
    for n, r in sorted(p["sizes"].items(), key=lambda kv: int(kv[0])):
        rows.append([f"{int(n):,}", f"**{r['seconds']:.1f} s**",
                     f"{r['cpu_s']:.1f} / {r['store_cpu_s']:.1f} s", _requests(r["requests"]),
                     str(r["ledger_files"])])
    prev = p["previous_resume"]
    rows.append([f"{prev['committed_parts']:,}, the previous resume",
                 f"{prev['seconds']:.1f} s", f"{prev['cpu_s']:.1f} / {prev['store_cpu_s']:.1f} s",
                 _requests(prev["requests"]), ""])
    return "\n\n".join([
        f"An output whose driver died after its last checkpoint, {p['after_checkpoint']:,} parts "
        "committed after it; the time to decide what is left to run.",
        table(["committed parts", "resume", "CPU: driver / store", "requests", "ledger files"],
              rows),
        f"At 2.25 million committed parts, at the largest size's cost per part: "
        f"**{p['extrapolated_2_25m_parts_s']:,.0f} s**.",
    ])


def controlplane_encoding(d: dict) -> str:
    rows = []
    for key, r in d["encoding"].items():
        grid, n = key.split("_")
        rows.append([grid, f"{int(n):,}", f"**{num(r['bytes_per_row'])}**",
                     num(r["previous_bytes_per_row"]), f"{r['previous_over_now']:.2f}x"])
    return table(["grid", "rows per part", "bytes per row", "dictionary-encoded floats",
                  "that / this"], rows)


def commitlog(d: dict) -> str:
    names = [("ledger", "this ledger"), ("delta_default", "Delta Lake (deltalake), default"),
             ("delta_interval_10", "Delta Lake, checkpoint every 10")]
    rows = []
    for key, label in names:
        r = d[key]
        c, t, load = r["per_commit"]["all"], r["totals"], r["load"]
        rows.append([label, f"**{c['wall_ms']['median']:,.0f}** / {c['wall_ms']['p95']:,.0f}",
                     f"{c['requests']['median']:g} / {c['requests']['p95']:g}",
                     f"{t['cpu_s']:.1f} s", f"{r['log_at_end']['objects']} ({r['log_at_end']['mb']} MB)",
                     f"**{load['after_200']['seconds']:.2f} s**, {load['after_200']['requests']}",
                     f"{load['after_198']['seconds']:.2f} s, {load['after_198']['requests']}"])
    return "\n\n".join([
        f"{d['commits']} checkpoints of {d['parts_per_commit']:,} parts through the local store at "
        f"{d['delay_ms']} ms a request, each with a frontier; then the state loaded by a fresh "
        "process.",
        table(["commit log", "ms per commit: median / p95", "requests per commit: median / p95",
               "writer CPU, all commits", "objects at the end", "load after the last commit: s, requests",
               "load 2 commits earlier: s, requests"], rows),
    ])


def webdataset(d: dict) -> str:
    rows = []
    for delay in d["delays_ms"]:
        for fmt, label in (("parquet", "Parquet"), ("webdataset", "WebDataset")):
            name = f"{fmt} {delay}ms"
            ratio = d["webdataset_over_parquet"][f"{delay}ms"]
            rows.append([f"{delay} ms", label, f"**{num(d['median_rows_per_s'][name])}**",
                         ", ".join(num(r) for r in d["rows_per_s"][name]),
                         num(d["cpu_us_per_row"][name]), _requests(d["requests_per_file"][name]),
                         f"**{ratio:.2f}x**" if fmt == "webdataset" else ""])
    mb = d["input_mb"]
    return "\n\n".join([
        f"{d['pairs']:,} pairs ({d['image']}, {d['mean_image_bytes'] / 1000:.0f} KB on average) "
        f"as {d['files']} Parquet files ({mb['parquet']:g} MB, row groups of "
        f"{d['parquet_row_group']}) and as {d['files']} WebDataset shards ({mb['webdataset']:g} "
        f"MB), each file one task, read in batches of {d['batch_rows']} rows; {d['rounds']} "
        "rounds, the formats alternating.",
        table(["store delay", "input", "rows/s (median)", "each round", "CPU us per row",
               "requests per file", "WebDataset / Parquet"], rows),
    ])


def evaluate(d: dict) -> str:
    from pipeline.demo.evaluate import tables

    return tables(d)


RENDER: dict[str, tuple[str, Callable[[dict], str]]] = {
    "engine": ("engine", engine), "engine-flops": ("flops", flops),
    "completeness": ("completeness", completeness),
    "models": ("models", models), "job": ("job", job), "scale": ("scale", scale),
    "overlap": ("overlap", overlap), "decode-224": ("decode", decode_224),
    "decode-64": ("decode", decode_64), "decode-parity": ("decode", decode_parity),
    "decode-pools": ("decode", decode_pools), "decode-job": ("decode_job", decode_job),
    "decoders": ("decoders", decoders), "report": ("report", report),
    "report-ray": ("report_ray", report_runs),
    "report-window": ("report_window", report_window),
    "report-tasks": ("report_tasks", report_tasks),
    "report-vocabulary": ("report_vocabulary", report_vocabulary),
    "report-memory-audit-parts": ("report_memory_audit_parts", report_memory),
    "report-compare": ("report_compare", report_compare),
    "evaluate": ("evaluate", evaluate),
    "controlplane-planning": ("controlplane", controlplane_planning),
    "controlplane-dispatch": ("controlplane", controlplane_dispatch),
    "controlplane-resume": ("controlplane", controlplane_resume),
    "controlplane-encoding": ("controlplane", controlplane_encoding),
    "commitlog": ("commitlog", commitlog),
    "webdataset": ("webdataset", webdataset),
}


def render(page: str, figures: Path = FIGURES) -> str:
    """``page`` with every table block re-rendered from its JSON."""
    def one(m: re.Match) -> str:
        section, fn = RENDER[m.group(2)]
        data = json.loads((figures / f"{section}.json").read_text())
        return f"{m.group(1)}{fn(data)}\n\n{stamp(data['machine'])}\n{m.group(4)}"

    return BLOCK.sub(one, page)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tables")
    ap.add_argument("--copy", metavar="DIR", help="first copy DIR/<section>.json to docs/figures/")
    ap.add_argument("--check", action="store_true", help="exit 1 when a table differs")
    args = ap.parse_args(argv)
    if args.copy:
        FIGURES.mkdir(parents=True, exist_ok=True)
        for section in sorted({s for s, _ in RENDER.values()}):
            src = Path(args.copy) / f"{section}.json"
            if src.exists():
                shutil.copyfile(src, FIGURES / f"{section}.json")
                print(f"copied {src}", file=sys.stderr)
    differ = []
    for page in PAGES:
        text = page.read_text()
        new = render(text)
        if new != text:
            differ.append(page)
            if not args.check:
                page.write_text(new)
    if args.check and differ:
        print(f"tables differ from {FIGURES} in {[str(p) for p in differ]}; "
              "run python -m benchmarks.tables", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
