"""The control plane at full size, with no engine, through a store 30 ms away.

Everything the driver does besides attributing: planning input files, handing
out tasks and recording their results, resuming an output, committing its
manifest. The actors run no engine (``pipeline.job.null.NullRunner``: each task
answered at once), the store is moto behind a 30 ms delay per request
(``pipeline.devtools.s3server``), and each figure comes with its cost per unit
at each size, so it can be carried to 230,000 files and 2.25 million tasks.

* planning: 1,000, 5,000 and 20,000 input files, footers read and then from the
  saved plan; beside it, the previous planner (``fs.open`` and a footer read, 16
  files at a time) at 1,000 files.
* dispatch: 50,000 and 200,000 one-row tasks over 32 actors, a whole ``run_job``
  in a fresh process: completions per second, driver CPU and memory per task.
* resume: an output of 10,000, 50,000 and 200,000 committed parts whose driver
  died after its last checkpoint (1,000 parts committed after it); beside it,
  the previous resume (one footer read per committed part, 16 at a time) at 10,000.
* encoding: bytes per result row for 7x7, 14x14 and 16x16 grids, as parts are
  written and as they were (dictionary-encoded float lists).

The store's own CPU (moto, in a process of its own on this machine) is reported
beside each time: real object storage does not take it from the machine.
"""

from __future__ import annotations

import io
import json
import os
import resource
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import s3fs

from pipeline.config import StorageSettings
from pipeline.devtools.s3local import LOCAL_S3_ENV, StoreControl, local_s3

DELAY_MS = 30
PLAN_FILES = (1_000, 5_000, 20_000)
DISPATCH_TASKS = (50_000, 200_000)
ROW_GROUPS_PER_FILE = 100
ACTORS = 32
RESUME_PARTS = (10_000, 50_000, 200_000)
AFTER_CHECKPOINT = 1_000
FULL_FILES, FULL_TASKS = 230_000, 2_250_000


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _input_file(row_groups: int) -> bytes:
    """A small Parquet file with an image-text table's columns, ``row_groups`` of one row."""
    table = pa.table({"id": [f"r{i}" for i in range(row_groups)],
                      "image": [b"\xff\xd8 not decoded"] * row_groups,
                      "caption": ["a photo of a dog on a beach"] * row_groups})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=1)
    return buf.getvalue()


def _measured(store: StoreControl, fn, *args, **kw) -> dict:
    """Wall time, this process's CPU, the store's CPU and requests of ``fn(*args, **kw)``."""
    store.reset()
    cpu, store_cpu, t = _cpu(), store.cpu_seconds(), time.perf_counter()
    value = fn(*args, **kw)
    out = {"seconds": round(time.perf_counter() - t, 2), "cpu_s": round(_cpu() - cpu, 2),
           "store_cpu_s": round(store.cpu_seconds() - store_cpu, 2),
           "requests": store.by_operation()}
    return {**out, "value": value}


# ------------------------------------------------------------------ planning
def _old_plan(files, fs) -> int:
    """The previous planner: open each file (a HEAD), read its footer, 16 at a time."""
    def one(f):
        with fs.open(f.uri[len("s3://"):], "rb") as fh:
            return pq.ParquetFile(fh).metadata.num_row_groups
    with ThreadPoolExecutor(16) as pool:
        return sum(pool.map(one, files))


def _plan(prefix: str, storage: StorageSettings, cache) -> tuple:
    from pipeline.io.storage import list_inputs
    from pipeline.job.plan import plan

    files = list_inputs(prefix, storage)
    return files, plan(files, storage, 1024, "fp", cache=cache,
                       in_flight=storage.requests_in_flight)


def planning(url: str, store: StoreControl) -> dict:
    from pipeline.io.footers import FooterCache
    from pipeline.io.storage import filesystem

    storage = StorageSettings(endpoint_url=url)
    body = _input_file(10)
    out: dict = {"sizes": {}}
    for n in PLAN_FILES:
        store.set_delay(0)
        store.seed("bench", [f"plan{n}/in/{i:06d}.parquet" for i in range(n)], body)
        store.set_delay(DELAY_MS)
        out_fs, out_path = filesystem(f"s3://bench/plan{n}/out", storage)
        cache = FooterCache(out_fs, out_path)
        m = _measured(store, _plan, f"s3://bench/plan{n}/in/", storage, cache)
        files, tasks = m.pop("value")
        cache.save()
        r = _measured(store, lambda where, c: _plan(where, storage, c.load()),
                      f"s3://bench/plan{n}/in/", FooterCache(out_fs, out_path))
        assert len(r.pop("value")[1]) == len(tasks)
        out["sizes"][str(n)] = {"first": {**m, "ms_per_file": round(1000 * m["seconds"] / n, 3)},
                                "rerun": {**r, "ms_per_file": round(1000 * r["seconds"] / n, 3)}}
        if n == PLAN_FILES[0]:
            p = _measured(store, _old_plan, files,
                          s3fs.S3FileSystem(client_kwargs={"endpoint_url": url}))
            p.pop("value")
            out["previous_planner"] = {"files": n, **p,
                                       "ms_per_file": round(1000 * p["seconds"] / n, 3)}
    per = [out["sizes"][str(n)]["first"]["ms_per_file"] for n in PLAN_FILES]
    out["ms_per_file_largest_over_smallest"] = round(per[-1] / per[0], 3)
    out["extrapolated_230k_files_s"] = round(per[-1] * FULL_FILES / 1000, 1)
    rerun = out["sizes"][str(PLAN_FILES[-1])]["rerun"]["ms_per_file"]
    out["extrapolated_230k_files_rerun_s"] = round(rerun * FULL_FILES / 1000, 1)
    return out


# ------------------------------------------------------------------ dispatch
DISPATCH_CHILD = """
import json, os, resource, time
os.environ.update({env})
from pipeline.config import *
from pipeline.job.driver import JobSettings, run_job
from pipeline.job.null import NullRunner
from pipeline.job.procstats import peak_rss_mb
import pipeline.job.actors, pipeline.job.worker  # imported before the baseline is taken
def rss():
    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20
s = JobSettings(input="s3://bench/{name}/in/", output="s3://bench/{name}/out",
    model=ModelSettings(name="nibt-demo", pretrained=None, batch_size=8),
    data=DataSettings(id_column="id"), storage=StorageSettings(endpoint_url="{url}"),
    cluster=ClusterSettings(num_actors={actors}, cpus_per_actor=2 / {actors},
                            actor_start_timeout_s=900),
    run=RunSettings(rows_per_task=1, progress=False))
before = rss()
r0 = resource.getrusage(resource.RUSAGE_SELF)
t = time.perf_counter()
code, summary = run_job(s, runner=NullRunner)
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps(dict(code=code, seconds=time.perf_counter() - t, rss_before_mb=before,
    peak_rss_mb=peak_rss_mb(), rss_after_mb=rss(), cpu_s=r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime,
    summary={{k: summary[k] for k in ("tasks_run", "pairs_per_second", "actors", "seconds",
             "tasks_failed", "ledger")}})))
"""


def dispatch(url: str, store: StoreControl) -> dict:
    from benchmarks.common import run_child

    body = _input_file(ROW_GROUPS_PER_FILE)
    out: dict = {"actors": ACTORS, "sizes": {}}
    for n in DISPATCH_TASKS:
        name = f"dispatch{n}"
        store.set_delay(0)
        store.seed("bench", [f"{name}/in/{i:06d}.parquet"
                             for i in range(n // ROW_GROUPS_PER_FILE)], body)
        store.set_delay(DELAY_MS)
        store.reset()
        store_cpu = store.cpu_seconds()
        child = run_child(DISPATCH_CHILD.format(env=repr(dict(LOCAL_S3_ENV)), name=name,
                                                url=url, actors=ACTORS), timeout=3600)
        s = child["summary"]
        assert child["code"] == 0 and s["tasks_run"] == n, child
        out["sizes"][str(n)] = {
            "tasks": n, "completions_per_s": s["pairs_per_second"],
            "run_seconds": round(child["seconds"], 1),
            "driver_cpu_ms_per_task": round(1000 * child["cpu_s"] / n, 3),
            "driver_rss_before_mb": round(child["rss_before_mb"], 1),
            "driver_peak_rss_mb": round(child["peak_rss_mb"], 1),
            "driver_kb_per_task": round(1024 * (child["peak_rss_mb"] - child["rss_before_mb"])
                                        / n, 3),
            "ledger_segments": s["ledger"]["segments_written"],
            "store_cpu_s": round(store.cpu_seconds() - store_cpu, 1),
            "requests": store.by_operation(),
        }
    small, large = (out["sizes"][str(n)] for n in DISPATCH_TASKS)
    out["driver_kb_per_task_slope"] = round(
        1024 * (large["driver_peak_rss_mb"] - small["driver_peak_rss_mb"])
        / (DISPATCH_TASKS[1] - DISPATCH_TASKS[0]), 3)
    out["cpu_per_task_largest_over_smallest"] = round(
        large["driver_cpu_ms_per_task"] / small["driver_cpu_ms_per_task"], 3)
    out["extrapolated_2_25m_tasks_driver_cpu_s"] = round(
        large["driver_cpu_ms_per_task"] * FULL_TASKS / 1000, 1)
    out["extrapolated_2_25m_tasks_driver_gb"] = round(
        large["driver_rss_before_mb"] / 1024 + out["driver_kb_per_task_slope"] * FULL_TASKS
        / 2**20, 2)
    return out


# ------------------------------------------------------------------ resume
def _tasks(n: int, prefix: str):
    from pipeline.job.plan import Task

    return [Task(f"{prefix}{i:018x}", f"s3://bench/in/{i // 10:06d}.parquet", 12345,
                 "etag", (i % 10,), i % 10, i % 10 + 1) for i in range(n)]


def _old_resume(fs, root: str, ids: list[str]) -> int:
    """The previous resume: the footer of every committed part, 16 at a time."""
    def one(tid):
        with fs.open(f"{root}/parts/{tid}.parquet", "rb") as fh:
            return pq.ParquetFile(fh).metadata.num_rows
    with ThreadPoolExecutor(16) as pool:
        return sum(pool.map(one, ids))


def _part(task, fp: str) -> bytes:
    from pipeline.io.parts import encode_part
    from pipeline.io.schema import RESULT_FIELDS, result_schema

    cols = {f.name: pa.nulls(1, f.type) for f in RESULT_FIELDS}
    cols.update(id=pa.array(["x"]), source=pa.array([task.uri]), row=pa.array([0], pa.int64()),
                status=pa.array(["ok"]))
    meta = {"task_id": task.task_id, "fingerprint": fp, "batch_size": 8,
            "status_counts": {"ok": 1}}
    return encode_part(pa.table(cols, schema=result_schema(None, meta)))


def resume_section(url: str, store: StoreControl) -> dict:
    from pipeline.io.ledger import Ledger
    from pipeline.io.storage import filesystem
    from pipeline.job.resume import commit_of, resume

    storage = StorageSettings(endpoint_url=url)
    fp = "benchfingerprint"
    out: dict = {"after_checkpoint": AFTER_CHECKPOINT, "sizes": {}}
    for n in RESUME_PARTS:
        store.set_delay(0)
        root = f"bench/resume{n}"
        fs, path = filesystem(f"s3://{root}", storage)
        tasks = _tasks(n + 2 * AFTER_CHECKPOINT, f"{n:06x}")
        ledger = Ledger(fs, path, fp).start()
        for lo in range(0, n, 1000):  # the run's checkpoints, as it would have written them
            for t in tasks[lo:lo + 1000]:
                ledger.add(commit_of(t, 1, {"ok": 1}, 8, 700))
            ledger.checkpoint([t.task_id for t in tasks[lo + 1000:lo + 3000]])
        ledger._queue.put(None)  # the driver died here
        ledger._thread.join()
        late = tasks[n:n + AFTER_CHECKPOINT]
        fs.pipe({f"{root}/parts/{t.task_id}.parquet": _part(t, fp) for t in late},
                batch_size=64)
        store.set_delay(DELAY_MS)
        m = _measured(store, resume, tasks, Ledger(fs, path, fp), f"s3://{root}", storage, fp,
                      overwrite=False)
        r = m.pop("value")
        assert len(r.todo) == AFTER_CHECKPOINT and r.recovered == AFTER_CHECKPOINT, \
            (len(r.todo), r.recovered)
        out["sizes"][str(n)] = {**m, "ledger_files": len(ledger.files),
                                "ms_per_committed_part": round(1000 * m["seconds"] / n, 4)}
        if n == RESUME_PARTS[0]:
            store.set_delay(0)
            store.seed("bench", [f"resume{n}/parts/{t.task_id}.parquet" for t in tasks[:n]],
                       _part(tasks[0], fp))
            store.set_delay(DELAY_MS)
            p = _measured(store, _old_resume, s3fs.S3FileSystem(
                client_kwargs={"endpoint_url": url}), root, [t.task_id for t in tasks[:n]])
            p.pop("value")
            out["previous_resume"] = {"committed_parts": n, **p}
    largest = out["sizes"][str(RESUME_PARTS[-1])]
    out["extrapolated_2_25m_parts_s"] = round(
        largest["ms_per_committed_part"] * FULL_TASKS / 1000, 1)
    return out


# ------------------------------------------------------------------ encoding
def _results(rows: int, grid: int, seed: int = 0) -> pa.Table:
    from pipeline.io.schema import RESULT_FIELDS, result_schema

    rng = np.random.default_rng(seed)
    vocab = [f"{w}</w>" for w in ("a", "photo", "of", "the", "dog", "on", "beach", "red",
                                 "car", "woman", "man", "with", "in", "blue", "sky")] + \
        [f"w{i}</w>" for i in range(2000)]
    n_tok = rng.integers(6, 30, rows)
    cols = {
        "id": [f"s3://lake/laion/part-{seed:05d}.parquet#{i}" for i in range(rows)],
        "source": [f"s3://lake/laion/part-{seed:05d}.parquet"] * rows,
        "row": list(range(rows)), "status": ["ok"] * rows, "error": [None] * rows,
        "score": rng.normal(0.3, 0.05, rows).astype(np.float32),
        "image_attr": [rng.normal(0, 1e-3, grid * grid).astype(np.float32) for _ in range(rows)],
        "grid_h": [grid] * rows, "grid_w": [grid] * rows,
        "image_cls_attr": rng.normal(0, 1e-3, rows).astype(np.float32),
        "image_cls_share": rng.uniform(0, 1, rows).astype(np.float32),
        "tokens": [["<start_of_text>", *rng.choice(vocab, k - 2).tolist(), "<end_of_text>"]
                   for k in n_tok],
        "text_attr": [rng.normal(0, 1e-3, k).astype(np.float32) for k in n_tok],
        "text_eot_share": rng.uniform(0, 1, rows).astype(np.float32),
        "caption_truncated": [False] * rows,
        **{m: rng.normal(0, 10, rows).astype(np.float32) for m in
           ("img_conf_drop", "img_conf_incr", "txt_conf_drop", "txt_conf_incr")},
    }
    return pa.table({f.name: pa.array(cols[f.name], f.type) for f in RESULT_FIELDS},
                    schema=result_schema(None, {"task_id": "x"}))


def encoding() -> dict:
    from pipeline.io.parts import encode_part

    out = {}
    for grid in (7, 14, 16):
        for rows in (1_024, 8_192):
            table = _results(rows, grid)
            now = len(encode_part(table))
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink, compression="zstd", row_group_size=4096)
            before = sink.getvalue().size
            out[f"{grid}x{grid}_{rows}"] = {
                "bytes_per_row": round(now / rows, 1),
                "previous_bytes_per_row": round(before / rows, 1),
                "previous_over_now": round(before / now, 3)}
    return out


def run() -> dict:
    os.environ.update(LOCAL_S3_ENV)
    with local_s3(delay_ms=0) as url:
        store = StoreControl(url)
        s3fs.S3FileSystem(client_kwargs={"endpoint_url": url}).mkdir("bench")
        result = {"delay_ms": DELAY_MS, "encoding": encoding(),
                  "planning": planning(url, store),
                  "resume": resume_section(url, store),
                  "dispatch": dispatch(url, store)}
    return json.loads(json.dumps(result))
