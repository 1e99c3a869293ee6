"""The report at scale: a synthetic 1,000,000-row results set, ``nibt-report`` over it,
and over it against a second 1,000,000-row set (``baseline=``: the comparison).

No model: the rows are random but plausible (7 x 7 maps, BPE word pieces with
``</w>`` markers from a vocabulary of a few thousand words, ~2% failed rows,
caption group terms, and a planted shortcut word whose maps peak in the
bottom-right corner). They are generated part by part with numpy / pyarrow and
written as ``parts/*.parquet`` plus ``_manifest.json``, as ``nibt-audit`` would.
The report runs in a subprocess (``python -m pipeline.cli.report``); its wall
time and peak RSS (VmHWM, polled from /proc and reported by the CLI itself)
are the figures. The bar: under 10 minutes and 2 GB on 2 cores, for the report and
for the comparison of 1M rows with 1M rows. The peer of the comparison is the
plain report of the same results, measured in the same run. The baseline set has
another seed and one planted change: the term "woman" carries 0.02 less
attribution, so the comparison's first word finding should name it.

    python -m benchmarks report                      # 1,000,000 rows (and 1M vs 1M)
    NIBT_BENCH_REPORT_ROWS=100000 python -m benchmarks report
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import StorageSettings
from pipeline.io.manifest import PartEntry, write_manifest
from pipeline.io.schema import RESULT_FIELDS, result_schema
from pipeline.io.storage import filesystem

GRID = 7
CORNER = GRID * GRID - 1  # bottom-right cell, where the shortcut word's maps peak
SHORTCUT = "vintage"
COMMON = ["a", "of", "the", "in", "on", "with", "and", "photo", "picture", "image"]
#: Group terms planted with their share of rows and a bias of their word attribution.
TERMS = [(("woman",), 0.04, 0.02), (("man",), 0.04, 0.0), (("girl",), 0.01, 0.01),
         (("boy",), 0.01, 0.0), (("old", "man"), 0.005, 0.0), (("children",), 0.01, 0.005)]
STATUSES = [("ok", 0.98), ("bad_image", 0.01), ("bad_caption", 0.005), ("error", 0.005)]
#: Planted words at the end of the vocabulary, which random captions never draw.
PLANTED = len({SHORTCUT, *(w for t, _, _ in TERMS for w in t)})
LIMIT_S, LIMIT_MB = 600.0, 2048.0


def vocabulary(n: int, seed: int) -> list[str]:
    """``n`` distinct words: common ones, pronounceable pseudo-words, then the planted words
    (which random captions never draw: see ``PLANTED``)."""
    rng = np.random.default_rng(seed)
    cons, vow = list("bcdfghjklmnprstvwz"), list("aeiou")
    planted = [SHORTCUT, *(w for t, _, _ in TERMS for w in t)]
    words = dict.fromkeys(COMMON)
    while len(words) < n - len(planted):
        k = int(rng.integers(1, 5))
        w = "".join(str(rng.choice(cons)) + str(rng.choice(vow)) for _ in range(k))
        w += str(rng.choice(cons)) if rng.random() < 0.5 else ""
        if w not in planted:
            words.setdefault(w, None)
    return list(words) + list(dict.fromkeys(planted))


class Pieces:
    """Each word (and its capitalised form) as 1 or 2 BPE pieces, as flat id arrays."""

    def __init__(self, vocab: list[str]) -> None:
        forms = vocab + [w.capitalize() for w in vocab]
        strings = ["<start_of_text>", "<end_of_text>"]
        first, second = [], []
        for w in forms:
            if len(w) > 5:
                first.append(len(strings))
                second.append(len(strings) + 1)
                strings += [w[:3], w[3:] + "</w>"]
            else:
                first.append(len(strings))
                second.append(-1)
                strings.append(w + "</w>")
        self.strings = pa.array(strings, pa.string())
        self.first, self.second = np.asarray(first), np.asarray(second)
        self.n_words = len(vocab)


def _lists(lengths: np.ndarray, values: pa.Array, valid: np.ndarray) -> pa.Array:
    """A list array from per-row lengths (0 for null rows), flat values and a validity mask."""
    offsets = np.zeros(lengths.size + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values, mask=pa.array(~valid))


def make_part(n: int, part: int, pieces: Pieces, index: dict[str, int], seed: int,
              bias: dict[str, float] | None = None) -> pa.Table:
    """One part of ``n`` result rows (vectorised; ~0.1 s for 10,000 rows); ``bias``
    overrides a planted term's attribution bias (``TERMS``) by its first word."""
    rng = np.random.default_rng([seed, part])
    status = rng.choice([s for s, _ in STATUSES], size=n, p=[p for _, p in STATUSES])
    ok = status == "ok"
    # captions: 4-10 words, Zipf-like over the vocabulary; planted terms overwrite the tail
    k = np.where(ok, rng.integers(4, 11, size=n), 0)
    starts = np.concatenate([[0], np.cumsum(k)[:-1]])
    drawn = pieces.n_words - PLANTED
    p = 1.0 / (np.arange(drawn) + 8.0)
    words = rng.choice(drawn, size=int(k.sum()), p=p / p.sum())
    word_bias = np.zeros(words.size)
    has = ok.copy()
    for term, share, planted in TERMS:
        rows = np.flatnonzero(has & (rng.random(n) < share))
        has[rows] = False  # at most one planted term per caption
        for j, w in enumerate(term):
            at = starts[rows] + k[rows] - len(term) + j
            words[at] = index[w]
            word_bias[at] = (bias or {}).get(term[0], planted)
    vintage = ok & (rng.random(n) < 0.02)
    for j, w in enumerate(("a", SHORTCUT, "photo", "of")):
        words[starts[vintage] + j] = index[w]
    caps = rng.random(words.size) < 0.1
    form = words + caps * pieces.n_words
    attr = rng.normal(0.004, 0.02, words.size) + word_bias
    # pieces: <start>, each word's 1 or 2 pieces, <end>
    second = pieces.second[form]
    n_pieces = 1 + (second >= 0)
    row_of_word = np.repeat(np.arange(n), k)
    per_row = np.bincount(row_of_word, weights=n_pieces, minlength=n).astype(np.int64)
    lengths = np.where(ok, per_row + 2, 0)
    tok_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    ids = np.empty(int(lengths.sum()), np.int64)
    vals = rng.normal(0.0, 0.01, ids.size)
    okr = np.flatnonzero(ok)
    ids[tok_start[okr]] = 0
    ids[tok_start[okr] + lengths[okr] - 1] = 1
    vals[tok_start[okr] + lengths[okr] - 1] = rng.normal(0.1, 0.02, okr.size)
    before = np.cumsum(n_pieces) - n_pieces  # pieces of the earlier words, all rows
    word_pos = tok_start[row_of_word] + 1 + before - before[starts[row_of_word]]
    two = second >= 0
    ids[word_pos] = pieces.first[form]
    vals[word_pos] = np.where(two, 0.3, 1.0) * attr
    ids[word_pos[two] + 1] = second[two]
    vals[word_pos[two] + 1] = 0.7 * attr[two]
    tokens = _lists(lengths, pieces.strings.take(pa.array(ids)), ok)
    text_attr = _lists(lengths, pa.array(vals.astype(np.float32)), ok)
    # maps: noise plus a peak; the shortcut word's captions peak in the corner
    cells = GRID * GRID
    peak = rng.integers(0, cells, size=n)
    peak[vintage & (rng.random(n) < 0.9)] = CORNER
    maps = rng.normal(0.0, 0.01, (n, cells))
    maps[np.arange(n), peak] += 0.06
    image_attr = _lists(np.where(ok, cells, 0), pa.array(maps[ok].ravel().astype(np.float32)), ok)
    bad = ~ok
    errors = np.full(n, None, dtype=object)
    sizes = rng.integers(1, 30, size=n)
    errors[bad] = [f"{s}: image is {z}x{z + 1} pixels, too small" if s == "bad_image" else
                   f"{s}: caption has {z} tokens" if s == "bad_caption" else
                   f"error: worker {z} raised RuntimeError" for s, z in zip(status[bad], sizes[bad])]

    def num(values: np.ndarray, dtype: pa.DataType | None = None) -> pa.Array:
        return pa.array(values, dtype or pa.float32(), mask=bad)

    grid = np.full(n, GRID, np.int16)
    cols = {
        "id": pa.array([f"p{part:03d}-{i}" for i in range(n)], pa.string()),
        "source": pa.array([f"/bench/input-{part:03d}.parquet"] * n, pa.string()),
        "row": pa.array(np.arange(n, dtype=np.int64)),
        "status": pa.array(status.tolist(), pa.string()),
        "error": pa.array(errors.tolist(), pa.string()),
        "score": num(np.clip(rng.normal(0.28, 0.04, n), -1, 1)),
        "image_attr": image_attr, "grid_h": num(grid, pa.int16()), "grid_w": num(grid, pa.int16()),
        "image_cls_attr": num(rng.normal(0.05, 0.01, n)),
        "image_cls_share": num(rng.uniform(0.1, 0.5, n)),
        "tokens": tokens, "text_attr": text_attr,
        "text_eot_share": num(rng.uniform(0.2, 0.6, n)),
        "caption_truncated": pa.array(rng.random(n) < 0.001, pa.bool_(), mask=bad),
        "img_conf_drop": num(rng.gamma(2.0, 0.4, n)), "img_conf_incr": num(rng.random(n) < 0.4),
        "txt_conf_drop": num(rng.gamma(2.0, 0.15, n)), "txt_conf_incr": num(rng.random(n) < 0.45),
    }
    return pa.table(cols, schema=pa.schema(list(RESULT_FIELDS)))


def make_results(root: str, rows: int = 1_000_000, parts: int = 100, vocab_size: int = 3000,
                 seed: int = 0, bias: dict[str, float] | None = None) -> str:
    """Write ``rows`` synthetic result rows in ``parts`` parts plus ``_manifest.json``."""
    vocab = vocabulary(vocab_size, seed)
    pieces, index = Pieces(vocab), {w: i for i, w in enumerate(vocab)}
    meta = {"model": "synthetic", "weights": "none", "steps": 10, "schedule": "uniform",
            "precision": "fp32", "code_version": "bench", "fingerprint": "bench",
            "schema_version": 1}
    schema = result_schema(None, meta)
    fs, out = filesystem(root, StorageSettings())
    os.makedirs(os.path.join(root, "parts"), exist_ok=True)
    entries, per = [], -(-rows // parts)
    for p in range(parts):
        n = min(per, rows - p * per)
        table = make_part(n, p, pieces, index, seed, bias).replace_schema_metadata(
            schema.metadata)
        task = f"task{p:04d}"
        pq.write_table(table, os.path.join(root, "parts", f"{task}.parquet"))
        counts = dict(zip(*np.unique(table.column("status").to_numpy(zero_copy_only=False),
                                     return_counts=True)))
        entries.append(PartEntry(task, f"parts/{task}.parquet", n, f"/bench/input-{p:03d}.parquet",
                                 0, n, "bench", {str(k): int(v) for k, v in counts.items()}))
    settings = {"input": "/bench/", "output": root, "model": {"name": "synthetic", "layer": 9},
                "data": {"image_column": "image", "caption_column": "caption"}}
    write_manifest(fs, out, {"fingerprint": "bench", "metadata": meta, "settings": settings},
                   entries)
    return root


def run_report(results: str, output: str, timeout: float = 3600,
               baseline: str | None = None) -> dict:
    """``nibt-report`` in a subprocess: wall seconds, peak RSS (polled VmHWM) and its summary."""
    env = {**os.environ, "NIBT_LOG_DIR": os.path.join(output, "logs")}
    cmd = [sys.executable, "-m", "pipeline.cli.report", f"results={results}", f"output={output}",
           *([f"baseline={baseline}"] if baseline else [])]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True)
        peak_kb = 0
        while proc.poll() is None:
            peak_kb = max(peak_kb, _vmhwm_kb(proc.pid))
            if time.perf_counter() - t0 > timeout:
                proc.kill()
            time.sleep(0.2)
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"nibt-report failed ({proc.returncode}): {stderr[-3000:]}")
    return {"seconds": seconds, "polled_peak_rss_mb": peak_kb / 1024, "summary": json.loads(stdout)}


def _vmhwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run() -> dict:
    """Generate the results sets, build the report and the comparison, return the figures."""
    rows = int(os.environ.get("NIBT_BENCH_REPORT_ROWS", 1_000_000))
    parts = max(1, min(100, rows // 10_000))
    tmp = Path(tempfile.mkdtemp(prefix="nibt-bench-report-"))
    try:
        t0 = time.perf_counter()
        make_results(str(tmp / "results"), rows, parts)
        gen_s = time.perf_counter() - t0
        make_results(str(tmp / "baseline"), rows, parts, seed=1, bias={"woman": 0.0})
        size = sum(f.stat().st_size for f in (tmp / "results").rglob("*.parquet"))
        r = run_report(str(tmp / "results"), str(tmp / "report"))
        report = json.loads((tmp / "report" / "report.json").read_text())
        peak = max(r["polled_peak_rss_mb"], r["summary"].get("peak_rss_mb") or 0.0)
        suspects = [p["word"] for p in report["space"]["suspects"]]
        c = run_report(str(tmp / "results"), str(tmp / "compare"),
                       baseline=str(tmp / "baseline"))
        comparison = json.loads((tmp / "compare" / "report.json").read_text())["comparison"]
        c_peak = max(c["polled_peak_rss_mb"], c["summary"].get("peak_rss_mb") or 0.0)
        words = [f for f in comparison["findings"] if f["kind"] == "word"]
        return {
            "rows": rows, "parts": parts, "results_mb": round(size / 2**20, 1),
            "generate_seconds": round(gen_s, 1),
            "report_seconds": round(r["seconds"], 1),
            "report_rows_per_s": round(rows / r["seconds"]),
            "report_peak_rss_mb": round(peak, 1),
            "rows_ok": report["overview"]["rows_ok"],
            "planted_shortcut_found": bool(suspects) and suspects[0] == SHORTCUT,
            "findings": len(report["findings"]),
            "within_bar": r["seconds"] < LIMIT_S and peak < LIMIT_MB,
            "compare_rows": [rows, rows],
            "compare_seconds": round(c["seconds"], 1),
            "compare_peak_rss_mb": round(c_peak, 1),
            "compare_vs_report_seconds": round(c["seconds"] / r["seconds"], 2),
            "compare_findings": len(comparison["findings"]),
            "planted_word_change_found": bool(words) and "\u201cwoman\u201d" in words[0]["text"],
            "compare_within_bar": c["seconds"] < LIMIT_S and c_peak < LIMIT_MB,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
