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

    python -m benchmarks report                      # the whole grid (over an hour)
    NIBT_BENCH_REPORT_ROWS=100000 python -m benchmarks report

Sizes (comma-separated rows; 0 leaves a part out): ``NIBT_BENCH_REPORT_ROWS`` and
``_PART_ROWS`` (local disk, 1 and 2 workers), ``_REMOTE_ROWS`` (through the local S3
store 30 ms away), ``_RAY_ROWS`` (a Ray cluster on this machine, ``cluster=existing``, the
largest part size), ``_MEMORY_ROWS`` (in parts of ``_MEMORY_PART_ROWS``, 10,000 unless
set), ``_COMPARE_ROWS`` (in parts of ``_COMPARE_PART_ROWS``, 10,000 unless set; both
audits with the long tail of rare words) and ``_WINDOW_ROWS`` (the first
pass alone in the audit's 65,536-row parts through the store 30 ms away, tasks of 2 million
rows as at full size: each worker's peak with its read window bounded in bytes and by its
count of parts alone), ``_TASKS_ROWS`` (the report's own process's CPU a task, its merge,
in the audit's part size on local disk with tasks of 2 million rows as at full size, beside
tasks as the report cuts that many rows), ``_VOCABULARY_ROWS`` (the report's own process's
merge of the words alone, in tasks of 2 million rows: its merged vocabulary beside a
dictionary of Python strings).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.tables import PASSES
from pipeline.config import StorageSettings
from pipeline.io.manifest import PartEntry, read_manifest, write_manifest
from pipeline.io.parts import encode_part
from pipeline.io.schema import RESULT_FIELDS, result_schema
from pipeline.io.storage import filesystem
from pipeline.job.procstats import status_kb
from pipeline.report.passes import cut
from pipeline.report.pool import available_cores

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
LIMIT_MB = 2048.0
#: The far-away store: each request to the local S3 server waits this long.
DELAY_MS = 30.0
#: Share of captions with a word from the long tail (``make_part(tail=...)``).
TAIL_SHARE = 0.05


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
              bias: dict[str, float] | None = None, tail: int = 0) -> pa.Table:
    """One part of ``n`` result rows (vectorised; ~0.1 s for 10,000 rows); ``bias``
    overrides a planted term's attribution bias (``TERMS``) by its first word. With
    ``tail``, ``TAIL_SHARE`` of the captions hold one word drawn from ``tail`` rare words
    (``t<number>x``) besides the vocabulary, so the distinct words grow with the rows."""
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
    first, second = pieces.first[form], pieces.second[form].copy()
    strings = pieces.strings
    if tail:  # the second word of some captions (not the shortcut's) from the long tail
        rows = np.flatnonzero(ok & ~vintage & (k >= 5) & (rng.random(n) < TAIL_SHARE))
        rare = rng.integers(0, tail, size=rows.size)
        first[starts[rows] + 1] = len(strings) + np.arange(rows.size)
        second[starts[rows] + 1] = -1
        strings = pa.concat_arrays([strings, pa.array([f"t{r}x</w>" for r in rare.tolist()])])
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
    ids[word_pos] = first
    vals[word_pos] = np.where(two, 0.3, 1.0) * attr
    ids[word_pos[two] + 1] = second[two]
    vals[word_pos[two] + 1] = 0.7 * attr[two]
    tokens = _lists(lengths, strings.take(pa.array(ids)), ok)
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


META = {"model": "synthetic", "weights": "none", "steps": 10, "schedule": "uniform",
        "precision": "fp32", "code_version": "bench", "fingerprint": "bench", "schema_version": 1}


def _write_part(args: tuple) -> dict:
    """Generate and write one part (a process of its own may run it); its manifest entry."""
    root, p, n, vocab_size, seed, bias, tail = args
    vocab = _vocab(vocab_size, seed)
    table = make_part(n, p, vocab[0], vocab[1], seed, bias, tail).replace_schema_metadata(
        result_schema(None, META).metadata)
    task = f"task{p:05d}"
    path = os.path.join(root, "parts", f"{task}.parquet")
    data = encode_part(table)  # encoded as an audit writes its parts
    with open(path, "wb") as f:
        f.write(data)
    counts = dict(zip(*np.unique(table.column("status").to_numpy(zero_copy_only=False),
                                 return_counts=True)))
    return asdict(PartEntry(task, f"parts/{task}.parquet", n, f"/bench/input-{p:05d}.parquet",
                            0, n, "bench", {str(k): int(v) for k, v in counts.items()},
                            bytes=len(data)))


_VOCAB: dict = {}


def _vocab(size: int, seed: int) -> tuple[Pieces, dict[str, int]]:
    if (size, seed) not in _VOCAB:
        words = vocabulary(size, seed)
        _VOCAB[(size, seed)] = (Pieces(words), {w: i for i, w in enumerate(words)})
    return _VOCAB[(size, seed)]


def make_results(root: str, rows: int = 1_000_000, parts: int | None = 100,
                 vocab_size: int = 3000, seed: int = 0, bias: dict[str, float] | None = None,
                 part_rows: int | None = None, tail: int = 0, processes: int = 1) -> str:
    """Write ``rows`` synthetic result rows plus ``_manifest.json``: in ``parts`` parts, or
    in parts of ``part_rows`` rows; ``tail``: see ``make_part``; ``processes`` write parts
    side by side."""
    os.makedirs(os.path.join(root, "parts"), exist_ok=True)
    per = part_rows or -(-rows // parts)
    jobs = [(root, p, min(per, rows - p * per), vocab_size, seed, bias, tail)
            for p in range(-(-rows // per))]
    if processes > 1:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(processes) as pool:
            entries = pool.map(_write_part, jobs, chunksize=8)
    else:
        entries = [_write_part(j) for j in jobs]
    settings = {"input": "/bench/", "output": root, "model": {"name": "synthetic", "layer": 9},
                "data": {"image_column": "image", "caption_column": "caption"}}
    fs, out = filesystem(root, StorageSettings())
    write_manifest(fs, out, {"fingerprint": "bench", "metadata": META, "settings": settings},
                   [PartEntry(**e) for e in entries])
    return root


def run_report(results: str, output: str, timeout: float = 3600, baseline: str | None = None,
               args: Sequence[str] = (), env: dict[str, str] | None = None,
               task_rows: int | None = None) -> dict:
    """``nibt-report`` in a subprocess: wall seconds, the peak of the resident memory of it
    and its workers together (polled every 0.2 s), its summary (which has its own peak and
    its workers', the seconds of each step and its own CPU in each). ``task_rows``: its
    passes cut into tasks of that many rows (``tasks_child``), else as the report cuts them."""
    env = {**os.environ, **(env or {}), "NIBT_LOG_DIR": os.path.join(output, "logs")}
    entry = ["-m", "pipeline.cli.report"]
    if task_rows:
        env["NIBT_BENCH_TASK_ROWS"] = str(task_rows)
        entry = ["-c", "from benchmarks.report import tasks_child; tasks_child()"]
    cmd = [sys.executable, *entry, f"results={results}", f"output={output}",
           *([f"baseline={baseline}"] if baseline else []), *args]
    t0, load = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True)
        peak_kb, cpu = 0, {}
        while proc.poll() is None:
            tree = _tree(proc.pid)
            peak_kb = max(peak_kb, sum(status_kb("VmRSS", p) or 0 for p in tree))
            cpu.update({p: t for p in tree if (t := _cpu_s(p)) is not None})
            if time.perf_counter() - t0 > timeout:
                proc.kill()
            time.sleep(0.2)
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"nibt-report failed ({proc.returncode}): {stderr[-3000:]}")
    return {"seconds": seconds, "tree_peak_rss_mb": peak_kb / 1024,
            "cpu_seconds": sum(cpu.values()), "driver_cpu_seconds": cpu.get(proc.pid, 0.0),
            "load_before": load, "summary": json.loads(stdout)}


def _cpu_s(pid: int) -> float | None:
    """User and system CPU seconds of ``pid`` so far (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _ints(name: str, default: str) -> list[int]:
    return [int(x) for x in os.environ.get(name, default).split(",") if x.strip() and int(x)]


def one_run(results: str, out: str, rows: int, part_rows: int, workers: int,
            store: str = "local", args: Sequence[str] = (), env: dict | None = None) -> dict:
    """One report and its figures."""
    r = run_report(results, out, args=[f"report.workers={workers}", *args], env=env)
    summary = r["summary"]
    report = json.loads(Path(out, "report.json").read_text())
    suspects = [p["word"] for p in report["space"]["suspects"]]
    used = summary["workers"]
    return {
        "rows": rows, "part_rows": part_rows, "parts": -(-rows // part_rows), "store": store,
        "workers": used, "seconds": round(r["seconds"], 1),
        "rows_per_s": round(rows / r["seconds"]),
        "rows_per_s_per_worker": round(rows / r["seconds"] / used),
        "cpu_seconds": round(r["cpu_seconds"], 1),
        "driver_cpu_seconds": round(r["driver_cpu_seconds"], 1),
        "rows_per_cpu_s": round(rows / max(r["cpu_seconds"], 1e-9)),
        "load_average_before": round(r["load_before"], 2),
        "step_seconds": summary["seconds"],
        "driver_step_cpu_seconds": summary["cpu_seconds"],
        "peak_rss_mb": round(r["tree_peak_rss_mb"], 1),
        "driver_peak_rss_mb": summary["peak_rss_mb"],
        "workers_peak_rss_mb": summary["workers_peak_rss_mb"],
        "distinct_words": report["words"]["distinct"], "flagged": summary["flagged"],
        "planted_shortcut_found": bool(suspects) and suspects[0] == SHORTCUT,
    }


def _workers(results: str) -> tuple[int, ...]:
    """1 and 2 workers; 1 alone when the results make one task (2 would run as 1)."""
    entries = read_manifest(results)["parts"]
    return (1, 2) if len(cut(entries)) > 1 else (1,)


def local_runs(tmp: Path, rows_grid: list[int], part_grid: list[int], out: dict) -> None:
    """Reports of local results into ``out["runs"]``: each size and part size with 1 and 2
    workers; at the smallest size alternated 1, 2, 2, 1 (the machine is shared: its load
    moves)."""
    for rows in rows_grid:
        for part_rows in part_grid:
            res = str(tmp / f"res-{rows}-{part_rows}")
            make_results(res, rows, None, part_rows=part_rows, tail=rows // 20, processes=2)
            order = _workers(res)
            if rows == min(rows_grid) and len(order) == 2:
                order = (1, 2, 2, 1)
            for i, workers in enumerate(order):
                out["runs"].append(one_run(res, str(tmp / f"out-{rows}-{part_rows}-{i}"), rows,
                                           part_rows, workers))
                _progress(out)
            shutil.rmtree(res, ignore_errors=True)


def _progress(out: dict) -> None:
    """The figures so far into ``NIBT_BENCH_REPORT_PROGRESS`` (a file), when set: a run that
    ends early keeps what it measured."""
    path = os.environ.get("NIBT_BENCH_REPORT_PROGRESS")
    if path:
        Path(path).write_text(json.dumps(out, indent=1))


def remote_runs(tmp: Path, rows: int, part_grid: list[int], delay_ms: float) -> list[dict]:
    """Reports of results in a local S3 store ``delay_ms`` away, and its GETs per part."""
    import s3fs

    from pipeline.devtools.s3local import LOCAL_S3_ENV, StoreControl, local_s3

    runs = []
    with local_s3() as url:
        store = StoreControl(url)
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": url}, **_creds(LOCAL_S3_ENV))
        fs.mkdir("nibt-bench")
        for part_rows in part_grid:
            res = str(tmp / f"res-{rows}-{part_rows}")
            make_results(res, rows, None, part_rows=part_rows, tail=rows // 20, processes=2)
            key = f"nibt-bench/res-{part_rows}"
            fs.put(res + "/", key, recursive=True)
            store.set_delay(delay_ms)
            alone = _store_alone(fs, key)
            for workers in _workers(res):
                store.set_delay(delay_ms)
                store.reset()
                store_cpu = store.cpu_seconds()
                run = one_run(f"s3://{key}", str(tmp / f"s3-{part_rows}-{workers}"), rows,
                              part_rows, workers, f"S3, {delay_ms:g} ms a request",
                              [f"storage.endpoint_url={url}"], LOCAL_S3_ENV)
                # the store (moto) shares this machine's cores; real object storage does not
                run["store_cpu_seconds"] = round(store.cpu_seconds() - store_cpu, 1)
                gets = [n for (op, k), n in store.requests().items()
                        if op == "GET" and k.startswith(f"{key}/parts/")]
                heads = store.count("HEAD", f"{key}/parts/")
                store.set_delay(0)
                runs.append({**run, "gets_per_part_max": max(gets, default=0),
                             "gets_per_part_min": min(gets, default=0), "heads_on_parts": heads,
                             "store_alone_seconds": alone})
            fs.rm(key, recursive=True)
            shutil.rmtree(res, ignore_errors=True)
    return runs


def ray_runs(tmp: Path, rows: int, part_rows: int) -> list[dict]:
    """Reports whose passes run as Ray tasks on a Ray cluster: a head started with
    ``ray start --head`` on 127.0.0.1 with this machine's cores, which ``nibt-report
    cluster=existing`` joins (the driver and the cluster share the machine)."""
    from tests.jobs.rayhead import _pids_using, ray_head

    res = str(tmp / f"res-ray-{rows}-{part_rows}")
    make_results(res, rows, None, part_rows=part_rows, tail=rows // 20, processes=2)
    cores = available_cores()
    try:
        with ray_head(num_cpus=cores) as head:
            tops = _pids_using(head.temp_dir)  # the head's processes; the workers are theirs
            seen: dict[int, float] = {}  # each process's CPU seconds when last seen
            peak_kb = [0]  # the most the cluster's processes held together

            def snapshot() -> None:
                pids = {q for top in tops for q in _tree(top)}
                seen.update({p: t for p in pids if (t := _cpu_s(p)) is not None})
                peak_kb[0] = max(peak_kb[0], sum(status_kb("VmRSS", p) or 0 for p in pids))

            def watch() -> None:  # Ray ends a job's workers when its driver leaves: watched
                while not stop.wait(0.5):
                    snapshot()

            snapshot()
            before, stop = dict(seen), threading.Event()
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            try:
                run = one_run(res, str(tmp / f"ray-{rows}-{part_rows}"), rows, part_rows, cores,
                              f"local disk, a Ray cluster ({cores} CPUs)",
                              ["cluster=existing", f"cluster.address={head.gcs_address}"],
                              {k: v for k, v in head.env.items() if k.startswith("RAY_")})
            finally:
                stop.set()
                watcher.join()
                snapshot()
            cpu = run["cpu_seconds"] + sum(t - before.get(p, 0.0) for p, t in seen.items())
            # memory: the report's processes' peak plus the cluster's (each at its own peak)
            return [{**run, "cpu_seconds": round(cpu, 1),
                     "rows_per_cpu_s": round(rows / max(cpu, 1e-9)),
                     "peak_rss_mb": round(run["peak_rss_mb"] + peak_kb[0] / 1024, 1),
                     "cluster_peak_rss_mb": round(peak_kb[0] / 1024, 1)}]
    finally:
        shutil.rmtree(res, ignore_errors=True)


#: The audit's part size beside GPUs, and a task's rows when a report is cut into
#: ``passes.TASKS`` tasks at 2.3 billion rows (``passes.MAX_TASK_ROWS``).
AUDIT_PART_ROWS, FULL_TASK_ROWS = 65_536, 2_000_000


def window_child(uri: str, endpoint: str, window: str) -> None:
    """(In a process of its own.) The report's first pass over ``uri`` with 2 workers, its
    tasks cut as at full size, each worker's read window bounded in bytes
    (``window="bytes"``) or by its count of parts alone (``"parts"``); prints seconds and
    the workers' peaks."""
    from pipeline.report import passes
    from pipeline.report.pool import LocalPool
    from pipeline.report.settings import ReportSettings

    storage = StorageSettings(endpoint_url=endpoint)
    entries = read_manifest(uri, storage, parts=True)["parts"]
    work = passes.FirstPass(ReportSettings())
    bound = {} if window == "bytes" else {"window_bytes": None}
    tasks = [passes.Task(uri, storage, a, list(entries[a:b]), work, **bound)
             for a, b in cut(entries, rows=FULL_TASK_ROWS)]
    t0 = time.perf_counter()
    with LocalPool(2) as pool:
        for _ in pool.map(passes.run_task, tasks, passes.read_task_ahead):
            pass
        peaks = pool.peak_rss_mb()
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 2), "tasks": len(tasks),
                      "workers_peak_rss_mb": sorted(round(v, 1) for v in peaks.values())}))


def tasks_child() -> None:
    """(In a process of its own.) ``nibt-report`` (arguments from the command line) with its
    passes cut into tasks of ``NIBT_BENCH_TASK_ROWS`` rows, whatever the results' size."""
    from pipeline.cli.report import main
    from pipeline.report import passes

    passes.TASK_ROWS = passes.MAX_TASK_ROWS = int(os.environ["NIBT_BENCH_TASK_ROWS"])
    sys.argv = ["nibt-report", *sys.argv[1:]]
    main()


def tasks_runs(tmp: Path, rows: int, task_rows: int = FULL_TASK_ROWS, rounds: int = 2,
               part_rows: int = AUDIT_PART_ROWS) -> list[dict]:
    """Reports of ``rows`` rows in the audit's 65,536-row parts on local disk, 2 workers, with
    tasks of ``task_rows`` rows (as at full size) and as the report cuts them at this size,
    alternated ``rounds`` times: the report's own process's CPU in the passes (its merge of
    the workers' results), in all and a task of the two passes (the spatial pass runs
    none where the guess missed no word, as here)."""
    res = str(tmp / "res-tasks")
    make_results(res, rows, None, part_rows=part_rows, tail=rows // 20, processes=2)
    runs = []
    try:
        for i in range(rounds):
            for size in (task_rows, None):
                r = run_report(res, str(tmp / f"out-tasks-{i}-{size}"), args=["report.workers=2"],
                               task_rows=size)
                summary = r["summary"]
                cpu = sum(summary["cpu_seconds"][k] for k in PASSES)
                runs.append({
                    "rows": rows, "part_rows": part_rows, "workers": summary["workers"],
                    "task_rows": size, "tasks_a_pass": summary["tasks_a_pass"],
                    "seconds": round(r["seconds"], 1),
                    "passes_seconds": round(sum(summary["seconds"][k] for k in PASSES), 1),
                    "cpu_seconds": round(r["cpu_seconds"], 1),
                    "driver_passes_cpu_seconds": round(cpu, 2),
                    "driver_cpu_ms_a_task": round(1000 * cpu / (2 * summary["tasks_a_pass"]), 1),
                    "load_average_before": round(r["load_before"], 2)})
    finally:
        shutil.rmtree(res, ignore_errors=True)
    return runs


def vocabulary_child(kind: str, rows: int, task_rows: int) -> None:
    """(In a process of its own.) The report's own process's merge of the words of ``rows``
    rows in tasks of ``task_rows`` rows, alone: each task's vocabulary as a worker sends it
    (pickled: the 3,000 common words and up to ``TAIL_SHARE`` of its rows' words from the
    long tail of ``rows / 20`` rare words, ``make_part``'s), unpickled and merged in task
    order into the report's ``MergedVocabulary`` or, for ``kind="dictionary"``, into a
    task's ``Vocabulary`` (a dictionary of Python strings, what the report merged into
    before). Prints its CPU a task and the resident memory it added a distinct word."""
    import gc
    import pickle

    from pipeline.job.procstats import peak_rss_mb
    from pipeline.report.pool import release_memory
    from pipeline.report.vocabulary import MergedVocabulary, Vocabulary

    rng = np.random.default_rng(0)
    common = vocabulary(3000, 0)
    blobs = []
    for _ in range(max(rows // task_rows, 1)):
        rare = rng.integers(0, rows // 20, int(task_rows * TAIL_SHARE))
        words = list(dict.fromkeys(common + [f"t{r}x" for r in rare.tolist()]))
        task = Vocabulary()
        task.add_sums(words, rng.random((len(task.FIELDS), len(words))))
        blobs.append(pickle.dumps(task))
    del words, task
    gc.collect()
    release_memory()  # freed memory back to the system first
    before = status_kb("VmRSS")
    total: Any = MergedVocabulary() if kind == "merged" else Vocabulary()
    cpu = time.process_time()
    for blob in blobs:
        total.merge(pickle.loads(blob))
    cpu = time.process_time() - cpu
    gc.collect()
    release_memory()
    added = (status_kb("VmRSS") - before) * 1024
    held = (sum(getattr(total, a).nbytes for a in ("_data", "_off", "_hash", "_slots", "_sums"))
            if kind == "merged" else None)  # its arrays, their room to grow included
    print(json.dumps({"vocabulary": kind, "rows": rows, "task_rows": task_rows,
                      "tasks": len(blobs), "distinct_words": len(total),
                      "cpu_ms_a_task": round(1000 * cpu / len(blobs), 1),
                      "resident_bytes_a_word": round(added / len(total)),
                      "arrays_bytes_a_word": held and round(held / len(total)),
                      "peak_rss_mb": round(peak_rss_mb())}))


def vocabulary_runs(rows: int, task_rows: int = FULL_TASK_ROWS, rounds: int = 2) -> list[dict]:
    """``vocabulary_child`` for the merged vocabulary and the dictionary, each in a process of
    its own, alternated ``rounds`` times."""
    runs = []
    for _ in range(rounds):
        for kind in ("merged", "dictionary"):
            code = (f"from benchmarks.report import vocabulary_child; "
                    f"vocabulary_child({kind!r}, {rows}, {task_rows})")
            load = os.getloadavg()[0]
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True, timeout=3600).stdout
            runs.append({**json.loads(out.splitlines()[-1]), "load_average_before": round(load, 2)})
    return runs


def window_runs(tmp: Path, rows: int, delay_ms: float, rounds: int = 2) -> list[dict]:
    """The first pass at the audit's part size beside GPUs through the store ``delay_ms``
    away, tasks as large as at full size, with the read window bounded in bytes and by its
    count of parts alone, alternated ``rounds`` times: each worker's peak memory, seconds."""
    import s3fs

    from pipeline.devtools.s3local import LOCAL_S3_ENV, StoreControl, local_s3

    res = str(tmp / "res-window")
    make_results(res, rows, None, part_rows=AUDIT_PART_ROWS, tail=rows // 20, processes=2)
    runs = []
    with local_s3() as url:
        store = StoreControl(url)
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": url}, **_creds(LOCAL_S3_ENV))
        fs.mkdir("nibt-bench")
        fs.put(res + "/", "nibt-bench/window", recursive=True)
        shutil.rmtree(res, ignore_errors=True)
        for _ in range(rounds):
            for window in ("bytes", "parts"):
                store.set_delay(delay_ms)
                load = os.getloadavg()[0]
                out = subprocess.run(
                    [sys.executable, "-c", "import sys; from benchmarks.report import "
                     "window_child; window_child(*sys.argv[1:])", "s3://nibt-bench/window",
                     url, window], env={**os.environ, **LOCAL_S3_ENV}, capture_output=True,
                    text=True, timeout=1800, check=True)
                store.set_delay(0)
                runs.append({"rows": rows, "part_rows": AUDIT_PART_ROWS,
                             "task_rows": FULL_TASK_ROWS, "window": window,
                             "store": f"S3, {delay_ms:g} ms a request", "workers": 2,
                             "load_average_before": round(load, 2),
                             **json.loads(out.stdout.strip().splitlines()[-1])})
    return runs


def _store_alone(fs: Any, key: str) -> float:
    """Seconds the store takes to serve every part object once, 16 GETs in flight, nothing
    done with them: the peer of a pass over the same parts."""
    from concurrent.futures import ThreadPoolExecutor

    paths = sorted(fs.find(f"{key}/parts"))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda p: len(fs.cat_file(p, max_concurrency=1)), paths))
    return round(time.perf_counter() - t0, 2)


def _creds(env: dict[str, str]) -> dict[str, str]:
    return {"key": env["AWS_ACCESS_KEY_ID"], "secret": env["AWS_SECRET_ACCESS_KEY"]}


def memory_run(tmp: Path, rows: int, part_rows: int) -> dict:
    """One report of ``rows`` rows with 2 workers, for its peak memory."""
    res = str(tmp / "res-memory")
    make_results(res, rows, None, part_rows=part_rows, tail=rows // 20, processes=2)
    try:
        return one_run(res, str(tmp / "out-memory"), rows, part_rows, 2)
    finally:
        shutil.rmtree(res, ignore_errors=True)


def compare_run(tmp: Path, rows: int, part_rows: int = 10_000) -> dict:
    """The comparison of ``rows`` rows with ``rows`` (one planted change; both with the long
    tail of rare words, as every other run, so the union of their words grows with the
    rows), 2 workers, and the plain report of the same results as its peer."""
    res, base = str(tmp / "cmp-res"), str(tmp / "cmp-base")
    make_results(res, rows, None, part_rows=part_rows, tail=rows // 20, processes=2)
    make_results(base, rows, None, part_rows=part_rows, seed=1, bias={"woman": 0.0},
                 tail=rows // 20, processes=2)
    try:
        plain = one_run(res, str(tmp / "cmp-plain"), rows, part_rows, 2)
        r = run_report(res, str(tmp / "cmp-out"), baseline=base, args=["report.workers=2"])
    finally:
        shutil.rmtree(res, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)
    report = json.loads((tmp / "cmp-out" / "report.json").read_text())
    comparison, summary = report["comparison"], r["summary"]
    union = pq.ParquetFile(tmp / "cmp-out" / "aggregates" / "comparison_words.parquet")
    words = [f for f in comparison["findings"] if f["kind"] == "word"]
    return {"rows": [rows, rows], "part_rows": part_rows, "workers": summary["workers"],
            "seconds": round(r["seconds"], 1), "peak_rss_mb": round(r["tree_peak_rss_mb"], 1),
            "driver_peak_rss_mb": summary["peak_rss_mb"],
            "workers_peak_rss_mb": summary["workers_peak_rss_mb"],
            "driver_cpu_seconds": round(r["driver_cpu_seconds"], 1),
            "step_seconds": summary["seconds"], "driver_step_cpu_seconds": summary["cpu_seconds"],
            "distinct_words": plain["distinct_words"], "union_words": union.metadata.num_rows,
            "report_seconds": plain["seconds"], "report_peak_rss_mb": plain["peak_rss_mb"],
            "vs_report": round(r["seconds"] / plain["seconds"], 2),
            "findings": len(comparison["findings"]),
            "planted_word_change_found": bool(words) and "\u201cwoman\u201d" in words[0]["text"],
            "load_average_before": round(r["load_before"], 2)}


def run() -> dict:
    """Every figure of the report at scale (sizes from the environment, see the module)."""
    rows_grid = _ints("NIBT_BENCH_REPORT_ROWS", "1000000,10000000")
    part_grid = _ints("NIBT_BENCH_REPORT_PART_ROWS", "1024,10000")
    remote = _ints("NIBT_BENCH_REPORT_REMOTE_ROWS", "1000000,10000000")
    ray = _ints("NIBT_BENCH_REPORT_RAY_ROWS", "10000000")
    memory = _ints("NIBT_BENCH_REPORT_MEMORY_ROWS", "50000000")
    compare = _ints("NIBT_BENCH_REPORT_COMPARE_ROWS", "1000000")
    window = _ints("NIBT_BENCH_REPORT_WINDOW_ROWS", "4000000")
    task_sizes = _ints("NIBT_BENCH_REPORT_TASKS_ROWS", "10000000")
    vocab = _ints("NIBT_BENCH_REPORT_VOCABULARY_ROWS", "200000000")
    tmp = Path(tempfile.mkdtemp(prefix="nibt-bench-report-"))
    try:
        out: dict = {"cores": available_cores(), "runs": []}
        local_runs(tmp, rows_grid, part_grid, out)
        for rows in remote:
            out["runs"] += remote_runs(tmp, rows, part_grid, DELAY_MS)
            _progress(out)
        for rows in ray:
            out["runs"] += ray_runs(tmp, rows, max(part_grid))
            _progress(out)
        if compare:
            out["compare"] = compare_run(
                tmp, compare[0], int(os.environ.get("NIBT_BENCH_REPORT_COMPARE_PART_ROWS", 10_000)))
            _progress(out)
        if memory:
            out["memory"] = memory_run(
                tmp, memory[0], int(os.environ.get("NIBT_BENCH_REPORT_MEMORY_PART_ROWS", 10_000)))
            _progress(out)
        if window:
            out["window"] = window_runs(tmp, window[0], DELAY_MS)
            _progress(out)
        if task_sizes:
            out["tasks"] = tasks_runs(tmp, task_sizes[0])
            _progress(out)
        if vocab:
            out["vocabulary"] = vocabulary_runs(vocab[0])
            _progress(out)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
