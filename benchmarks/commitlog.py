"""The commit log of committed parts: our ledger beside Delta Lake (deltalake), 30 ms away.

The question (an open issue): should the record of committed parts be an open
table format's log rather than ``pipeline.io.ledger``? Both are driven as the job
drives the ledger, through moto behind a 30 ms delay per request
(``pipeline.devtools.s3server``), for ``COMMITS`` checkpoints of ``PER_COMMIT``
parts each, every checkpoint naming its frontier (the tasks in flight and the
next ``WINDOW``), the last one an empty frontier (the run ended cleanly):

* ``ledger``: ``Ledger.add`` per part, ``checkpoint(frontier)``, ``close()``; the
  segment is written by the ledger's own thread, which the benchmark waits for
  after each checkpoint so each commit's time and requests are its own.
* ``delta_default`` / ``delta_interval_10``: one Delta table (at the output root,
  ``parts/<task id>.parquet`` relative to it), one commit per checkpoint through
  ``DeltaTable.create_write_transaction`` (an add action per part: path, size,
  modification time, ``{"numRecords": rows}`` as stats; the frontier in the
  commit's ``commitInfo``), then ``update_incremental`` so the next commit starts
  from the newest version (without it each commit replays the log from the
  version the object was opened at). Delta's own checkpoints at the default
  interval and at 10. Single writer: ``AWS_S3_ALLOW_UNSAFE_RENAME``. The part
  files are not written: delta-rs 1.6 does not look at them when committing.

Each commit is timed from its first step (building the entries) to its object(s)
being written, with its requests, bytes written (the ledger: what it PUTs; Delta:
objects new or changed in ``_delta_log/`` after the commit) and the CPU of the
writing process (all its threads; delta-rs's are in it too). The state (committed
task ids and their rows, and the frontier) is then loaded by a fresh process
twice: after ``LOAD_AT`` commits (Delta's newest checkpoint at its default
interval is then 99 commits old) and at the end. Beside them: two writers at once
on each log, and what readers (polars, DuckDB, Spark) can do with a Delta table of
parts here, offline.

The store's own CPU (moto, a process of its own) is reported beside the times:
real object storage does not take it from the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import statistics
import tempfile
import threading
import time
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.devtools.s3local import LOCAL_S3_ENV, StoreControl, local_s3

DELAY_MS = 30
COMMITS = int(os.environ.get("NIBT_BENCH_COMMITS", "200"))  # fewer for a quick try
PER_COMMIT = 1_000
FIRST = min(50, COMMITS)  # per-commit figures of the first and last commits, as well as of all
LOAD_AT = COMMITS - 2
IN_FLIGHT = 32
WINDOW = 2 * PER_COMMIT  # the next tasks a frontier names (the driver's window)
ROWS, PART_BYTES, BATCH = 1_024, 700_000, 8
STATUS_COUNTS = {"ok": 1_020, "bad_image": 4}
FP = "benchfingerprint"
BUCKET = "bench"
RACE_ROUNDS, RACE_PARTS = 10, 10


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: ``ru_maxrss`` would carry the parent's across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _child(call: str, timeout: float = 3000) -> dict:
    """``benchmarks.commitlog.<call>`` in a fresh Python (``benchmarks.common`` would bring
    torch into the writer, whose memory is reported); it prints one JSON line."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", "import json; from benchmarks import commitlog "
                          f"as m; print(json.dumps(m.{call}))"],
                         capture_output=True, text=True, timeout=timeout, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ids(n: int, salt: str) -> list[str]:
    """``n`` task ids shaped as the planner makes them (24 hex digits of a SHA-256)."""
    return [hashlib.sha256(f"{salt}/{i}".encode()).hexdigest()[:24] for i in range(n)]


def _frontier(ids: list[str], c: int) -> list[str]:
    """What checkpoint ``c`` (0-based) names: the tasks in flight and the next ``WINDOW``;
    none at the last (a clean end)."""
    if c == COMMITS - 1:
        return []
    lo = (c + 1) * PER_COMMIT
    return ids[lo:lo + IN_FLIGHT + WINDOW]


def _dist(xs: list[float], digits: int = 1) -> dict:
    s = sorted(xs)
    p95 = s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]
    return {"median": round(statistics.median(s), digits), "p95": round(p95, digits),
            "max": round(s[-1], digits), "mean": round(statistics.fmean(s), digits)}


def _summary(per: list[dict]) -> dict:
    """Per-commit distributions over all commits, the first ``FIRST`` and the last ``FIRST``."""
    out = {}
    for name, sel in (("all", per), (f"first_{FIRST}", per[:FIRST]),
                      (f"last_{FIRST}", per[-FIRST:])):
        out[name] = {"commits": len(sel),
                     "wall_ms": _dist([1000 * p["wall_s"] for p in sel]),
                     "requests": _dist([p["requests"] for p in sel]),
                     "kb_written": _dist([p["bytes"] / 1024 for p in sel]),
                     "cpu_ms": _dist([1000 * p["cpu_s"] for p in sel])}
        for step in ("driver_s", "build_s", "commit_s", "update_s"):  # the parts of wall_s
            if step in sel[0]:
                out[name][f"{step[:-2]}_ms"] = _dist([1000 * p[step] for p in sel])
    return out


def _totals(per: list[dict]) -> dict:
    ops: dict[str, int] = {}
    for p in per:
        for op, n in p["by_op"].items():
            ops[op] = ops.get(op, 0) + n
    return {"wall_s": round(sum(p["wall_s"] for p in per), 2),
            "cpu_s": round(sum(p["cpu_s"] for p in per), 2),
            "requests": sum(p["requests"] for p in per), "requests_by_op": dict(sorted(ops.items())),
            "mb_written": round(sum(p["bytes"] for p in per) / 2**20, 2)}


def _s3(url: str):
    import boto3

    return boto3.client("s3", endpoint_url=url, region_name="us-east-1")


def _objects(url: str, prefix: str) -> dict[str, tuple[int, str]]:
    """key -> (size, ETag) of every object under ``prefix`` (requests not counted: the
    caller resets the store's counts before the next commit)."""
    out = {}
    for page in _s3(url).get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for o in page.get("Contents", []):
            out[o["Key"]] = (o["Size"], o["ETag"])
    return out


def _log_at_end(url: str, prefix: str) -> dict:
    objs = _objects(url, prefix)
    return {"objects": len(objs), "mb": round(sum(s for s, _ in objs.values()) / 2**20, 2),
            "checkpoint_files": sorted(k.rsplit("/", 1)[1] for k in objs if ".checkpoint." in k)}


def delta_options(url: str, safe: bool = False) -> dict:
    """deltalake's options for the local store: one writer (unsafe rename) or writers made
    safe by conditional PUTs (``If-None-Match``)."""
    opts = {"AWS_ENDPOINT_URL": url, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": LOCAL_S3_ENV["AWS_ACCESS_KEY_ID"],
            "AWS_SECRET_ACCESS_KEY": LOCAL_S3_ENV["AWS_SECRET_ACCESS_KEY"]}
    opts.update({"aws_conditional_put": "etag"} if safe else {"AWS_S3_ALLOW_UNSAFE_RENAME": "true"})
    return opts


# ------------------------------------------------------------------ loading (fresh process)
def _load_in_child(url: str, store: StoreControl, fn: str, root: str, expect: int) -> dict:
    store.reset()
    store_cpu = store.cpu_seconds()
    out = _child(f"{fn}({url!r}, {root!r})", timeout=900)
    out["store_cpu_s"] = round(store.cpu_seconds() - store_cpu, 2)
    assert out["task_ids"] == expect, (fn, out["task_ids"], expect)
    return out


def _requests(url: str) -> dict:
    """The requests counted since the caller's reset (read over the store's control
    endpoint, which counts none)."""
    ops = StoreControl(url).by_operation()
    return {"requests": sum(ops.values()), "requests_by_op": ops}


def load_ledger(url: str, root: str) -> dict:
    """In a fresh process: every committed task id and its rows, and the frontier."""
    os.environ.update(LOCAL_S3_ENV)
    t = time.perf_counter()
    from pipeline.config import StorageSettings
    from pipeline.io.ledger import Ledger
    from pipeline.io.storage import filesystem
    import_s = time.perf_counter() - t
    cpu, t = _cpu(), time.perf_counter()
    fs, path = filesystem(f"s3://{BUCKET}/{root}", StorageSettings(endpoint_url=url))
    client_s = time.perf_counter() - t  # s3fs's client (the job has made it before it loads)
    ledger = Ledger(fs, path, FP)
    table = ledger.load()
    state = table.select(["task_id", "rows"])
    seconds, cpu = time.perf_counter() - t, _cpu() - cpu
    first = _requests(url)
    warm_cpu, t = _cpu(), time.perf_counter()  # again, a fresh object (the store client made)
    Ledger(fs, path, FP).load().select(["task_id", "rows"])
    return {"seconds": round(seconds, 3), "cpu_s": round(cpu, 3), **first,
            "client_s": round(client_s, 3),
            "fresh_object_s": round(time.perf_counter() - t, 3),
            "fresh_object_cpu_s": round(_cpu() - warm_cpu, 3),
            "import_s": round(import_s, 3), "peak_rss_mb": round(_peak_rss_mb(), 1),
            "files_read": len(ledger.files), "task_ids": state.num_rows,
            "rows": int(pc.sum(state.column("rows")).as_py()), "frontier": len(ledger.frontier)}


def load_delta(url: str, root: str) -> dict:
    """In a fresh process: the table's add actions (task id from the path, rows from the
    stats) and the frontier from the newest commit's ``commitInfo``."""
    t = time.perf_counter()
    from deltalake import DeltaTable
    import_s = time.perf_counter() - t
    cpu, t = _cpu(), time.perf_counter()
    dt = DeltaTable(f"s3://{BUCKET}/{root}", storage_options=delta_options(url))
    opened = time.perf_counter() - t
    adds = pa.table(dt.get_add_actions(flatten=True))
    paths = adds.column("path")
    state = pa.table({"task_id": pc.utf8_slice_codeunits(paths, len("parts/"), -len(".parquet")),
                      "rows": adds.column("num_records")})
    actions = time.perf_counter() - t
    frontier = dt.history(1)[0].get("nibt.frontier", [])
    seconds, cpu = time.perf_counter() - t, _cpu() - cpu
    first = _requests(url)
    warm_cpu, t = _cpu(), time.perf_counter()  # again, a fresh object
    again = DeltaTable(f"s3://{BUCKET}/{root}", storage_options=delta_options(url))
    pa.table(again.get_add_actions(flatten=True)).select(["path", "num_records"])
    again.history(1)
    return {"seconds": round(seconds, 3), "cpu_s": round(cpu, 3), **first,
            "fresh_object_s": round(time.perf_counter() - t, 3),
            "fresh_object_cpu_s": round(_cpu() - warm_cpu, 3),
            "open_s": round(opened, 3), "to_add_actions_s": round(actions, 3),
            "import_s": round(import_s, 3), "peak_rss_mb": round(_peak_rss_mb(), 1),
            "version": dt.version(), "task_ids": state.num_rows,
            "rows": int(pc.sum(state.column("rows")).as_py()), "frontier": len(frontier)}


# ------------------------------------------------------------------ writing
def _drive(url: str, store: StoreControl, commit: Callable[[int], dict], load: str, root: str,
           after: Callable[[dict], None] | None = None) -> dict:
    """``commit(c)`` for each checkpoint, each with its requests and CPU (then ``after``,
    neither counted nor timed); a fresh process loads the state after ``LOAD_AT`` commits
    and at the end."""
    per, loads = [], {}
    store_cpu = store.cpu_seconds()
    for c in range(COMMITS):
        store.reset()
        cpu = _cpu()
        p = commit(c)
        p["cpu_s"] = _cpu() - cpu
        p["by_op"] = store.by_operation()
        p["requests"] = sum(p["by_op"].values())
        if after is not None:
            after(p)
        per.append(p)
        if c + 1 == LOAD_AT:
            loads[f"after_{LOAD_AT}"] = _load_in_child(url, store, load, root, LOAD_AT * PER_COMMIT)
    store_cpu = round(store.cpu_seconds() - store_cpu, 1)
    loads[f"after_{COMMITS}"] = _load_in_child(url, store, load, root, COMMITS * PER_COMMIT)
    return {"per_commit": _summary(per), "totals": {**_totals(per), "store_cpu_s": store_cpu},
            "writer_peak_rss_mb": round(_peak_rss_mb(), 1), "load": loads}


def write_ledger(url: str, root: str) -> dict:
    """The ledger as the job drives it, in a fresh process."""
    os.environ.update(LOCAL_S3_ENV)
    import pipeline.io.ledger as ledger_mod
    from pipeline.config import StorageSettings
    from pipeline.io.ledger import Commit, Ledger
    from pipeline.io.storage import filesystem

    store = StoreControl(url)
    fs, path = filesystem(f"s3://{BUCKET}/{root}", StorageSettings(endpoint_url=url))
    ids = _ids(COMMITS * PER_COMMIT + IN_FLIGHT + WINDOW, root)
    ledger = Ledger(fs, path, FP)
    written: list[int] = []
    put = ledger_mod.put_atomic

    def counted_put(fs_, p, data):  # the bytes the ledger writes, merges included
        written.append(len(data))
        put(fs_, p, data)

    ledger_mod.put_atomic = counted_put
    done, write_s = threading.Event(), []
    write = ledger._write

    def timed_write(segments):
        t = time.perf_counter()
        left = write(segments)
        if segments:
            write_s.append(time.perf_counter() - t)
            done.set()
        return left

    ledger._write = timed_write  # the writer thread looks it up on the instance
    ledger.start()

    def commit(c: int) -> dict:
        n_bytes, done_before = len(written), len(write_s)
        done.clear()
        t = time.perf_counter()
        for tid in ids[c * PER_COMMIT:(c + 1) * PER_COMMIT]:
            ledger.add(Commit(tid, ROWS, PART_BYTES, BATCH, STATUS_COUNTS))
        if c == COMMITS - 1:
            ok = ledger.close()  # the clean end: a segment with an empty frontier
            assert ok
        else:
            ledger.checkpoint(_frontier(ids, c))
        handed = time.perf_counter() - t
        done.wait()
        assert len(write_s) == done_before + 1
        return {"wall_s": time.perf_counter() - t, "driver_s": handed,
                "bytes": sum(written[n_bytes:])}

    out = _drive(url, StoreControl(url), commit, "load_ledger", root)
    out["log_at_end"] = _log_at_end(url, f"{root}/_ledger/")
    out["segments_written"] = ledger.segments_written
    assert ledger.write_failures == 0
    del store
    return out


def write_delta(url: str, root: str, interval: int | None) -> dict:
    """Delta Lake as the commit log, in a fresh process: one commit per checkpoint."""
    from deltalake import CommitProperties, DeltaTable, Schema
    from deltalake.transaction import AddAction, create_table_with_add_actions

    from pipeline.io.schema import result_schema

    store = StoreControl(url)
    uri, opts = f"s3://{BUCKET}/{root}", delta_options(url)
    schema = Schema.from_arrow(result_schema(None))
    ids = _ids(COMMITS * PER_COMMIT + IN_FLIGHT + WINDOW, root)
    config = {"delta.checkpointInterval": str(interval)} if interval else None
    store.reset()
    t = time.perf_counter()
    create_table_with_add_actions(uri, schema, [], mode="error", configuration=config,
                                  storage_options=opts)
    dt = DeltaTable(uri, storage_options=opts)
    setup = {"seconds": round(time.perf_counter() - t, 3), "requests": store.by_operation()}
    log_prefix = f"{root}/_delta_log/"
    seen = _objects(url, log_prefix)
    stats = json.dumps({"numRecords": ROWS})

    def commit(c: int) -> dict:
        t = time.perf_counter()
        now = int(time.time() * 1000)
        actions = [AddAction(f"parts/{tid}.parquet", PART_BYTES, {}, now, True, stats)
                   for tid in ids[c * PER_COMMIT:(c + 1) * PER_COMMIT]]
        props = CommitProperties(custom_metadata={"nibt.frontier": _frontier(ids, c)})
        built = time.perf_counter()
        dt.create_write_transaction(actions, mode="append", schema=schema,
                                    commit_properties=props)
        committed = time.perf_counter()
        dt.update_incremental()
        end = time.perf_counter()
        assert dt.version() == c + 1, (dt.version(), c)
        return {"wall_s": end - t, "build_s": built - t, "commit_s": committed - built,
                "update_s": end - committed}

    def written(p: dict) -> None:  # objects new or changed in the log since the last commit
        nonlocal seen
        now = _objects(url, log_prefix)
        p["bytes"] = sum(s for k, (s, e) in now.items() if seen.get(k, (0, None))[1] != e)
        seen = now

    out = _drive(url, store, commit, "load_delta", root, written)
    out["setup"] = setup
    out["checkpoint_interval"] = interval or "default"
    out["log_at_end"] = _log_at_end(url, log_prefix)
    return out


# ------------------------------------------------------------------ two writers at once
def _race(fns: list[Callable[[int], None]]) -> list[str]:
    """Each of ``fns`` called with 0..RACE_ROUNDS-1 in its own thread, the threads meeting
    before each round (so their commits overlap); the errors raised."""
    barrier, errors = threading.Barrier(len(fns)), []

    def run(fn):
        for r in range(RACE_ROUNDS):
            barrier.wait()
            try:
                fn(r)
            except Exception as e:
                errors.append(f"{type(e).__name__}: {str(e)[:160]}")

    threads = [threading.Thread(target=run, args=(fn,)) for fn in fns]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return errors


def _delta_writer(dt, w: int, schema) -> Callable[[int], None]:
    from deltalake.transaction import AddAction

    stats = json.dumps({"numRecords": ROWS})

    def commit(r: int) -> None:
        now = int(time.time() * 1000)
        dt.create_write_transaction(
            [AddAction(f"parts/w{w}r{r}p{i}.parquet", PART_BYTES, {}, now, True, stats)
             for i in range(RACE_PARTS)], mode="append", schema=schema)
        dt.update_incremental()
    return commit


def two_writers(url: str, store: StoreControl) -> dict:
    """Two writers commit ``RACE_ROUNDS`` times each, at the same moments: what the log
    then holds, against the 2 x ``RACE_ROUNDS`` x ``RACE_PARTS`` parts committed."""
    from deltalake import DeltaTable, Schema
    from deltalake.transaction import create_table_with_add_actions

    from pipeline.config import StorageSettings
    from pipeline.io.ledger import Commit, Ledger
    from pipeline.io.schema import result_schema
    from pipeline.io.storage import filesystem

    expect = 2 * RACE_ROUNDS * RACE_PARTS
    out: dict = {"parts_committed": expect}
    schema = Schema.from_arrow(result_schema(None))
    for name, safe in (("delta_unsafe_rename", False), ("delta_conditional_put", True)):
        uri, opts = f"s3://{BUCKET}/race-{name}", delta_options(url, safe)
        create_table_with_add_actions(uri, schema, [], mode="error", storage_options=opts)
        writers = [DeltaTable(uri, storage_options=opts) for _ in range(2)]
        store.reset()
        errors = _race([_delta_writer(dt, w, schema) for w, dt in enumerate(writers)])
        reqs = store.by_operation()
        fresh = DeltaTable(uri, storage_options=opts)
        out[name] = {"parts_in_log": len(fresh.file_uris()), "version": fresh.version(),
                     "errors": errors, "requests_per_commit": round(
                         sum(reqs.values()) / (2 * RACE_ROUNDS), 1)}
    storage = StorageSettings(endpoint_url=url)
    fs, path = filesystem(f"s3://{BUCKET}/race-ledger", storage)
    ledgers = [Ledger(fs, path, FP) for _ in range(2)]
    for lg in ledgers:
        lg.load()
        lg.start()

    def ledger_writer(w: int):
        def commit(r: int) -> None:
            for i in range(RACE_PARTS):
                ledgers[w].add(Commit(f"w{w}r{r}p{i}", ROWS, PART_BYTES, BATCH, STATUS_COUNTS))
            ledgers[w].checkpoint([])
        return commit

    errors = _race([ledger_writer(0), ledger_writer(1)])
    for lg in ledgers:
        lg.close()
    out["ledger"] = {"parts_in_log": Ledger(fs, path, FP).load().num_rows, "errors": errors}
    return out


def commit_put_headers() -> dict:
    """The conditions deltalake's commit PUTs carry, with each S3 option: moto in this
    process (loopback), behind a WSGI layer that notes each PUT's ``If-None-Match`` and
    ``If-Match`` headers."""
    import logging

    from deltalake import DeltaTable, Schema
    from deltalake.transaction import AddAction, create_table_with_add_actions
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    from pipeline.devtools.s3local import free_port

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app, seen = DomainDispatcherApplication(create_backend_app), []

    def noting(environ, start_response):
        if environ["REQUEST_METHOD"] == "PUT" and "_delta_log/0" in environ.get("PATH_INFO", ""):
            seen.append({"if_none_match": environ.get("HTTP_IF_NONE_MATCH"),
                         "if_match": environ.get("HTTP_IF_MATCH")})
        return app(environ, start_response)

    server = make_server("127.0.0.1", free_port(), noting, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    out = {}
    try:
        _s3(url).create_bucket(Bucket=BUCKET)
        schema = Schema.from_arrow(pa.schema([("x", pa.int64())]))
        for name, safe in (("unsafe_rename", False), ("conditional_put", True)):
            seen.clear()
            uri, opts = f"s3://{BUCKET}/headers-{name}", delta_options(url, safe)
            create_table_with_add_actions(uri, schema, [], storage_options=opts)
            DeltaTable(uri, storage_options=opts).create_write_transaction(
                [AddAction("parts/x.parquet", 1, {}, 0, True, '{"numRecords": 1}')],
                mode="append", schema=schema)
            out[name] = list(seen)
    finally:
        server.shutdown()
    return out


# ------------------------------------------------------------------ readers, offline
def readers() -> dict:
    """What a Delta table of parts gives readers here (no network): polars and deltalake
    on a small local table of real parts, one of them with a carried column of another
    type; whether DuckDB's delta extension is at hand; whether Spark can read Delta."""
    import importlib.util

    import duckdb
    import polars as pl
    from deltalake import DeltaTable, Schema
    from deltalake.transaction import AddAction, create_table_with_add_actions

    from pipeline.io.parts import encode_part
    from pipeline.io.schema import RESULT_FIELDS, result_schema

    def part(width_type: pa.DataType, width) -> pa.Table:
        carried = pa.schema([("width", width_type)])
        cols = {f.name: pa.nulls(2, f.type) for f in RESULT_FIELDS}
        cols.update(id=pa.array(["a", "b"]), source=pa.array(["s3://in/x.parquet"] * 2),
                    row=pa.array([0, 1], pa.int64()), status=pa.array(["ok"] * 2),
                    width=pa.array([width, width], width_type))
        return pa.table(cols, schema=result_schema(carried, {"task_id": "x"}))

    out: dict = {}
    with tempfile.TemporaryDirectory() as d:
        os.makedirs(f"{d}/parts")
        adds = []
        for name, (typ, val) in {"p0": (pa.int64(), 640), "p1": (pa.int64(), 480),
                                 "p2": (pa.string(), "640")}.items():
            data = encode_part(part(typ, val))
            with open(f"{d}/parts/{name}.parquet", "wb") as f:
                f.write(data)
            adds.append(AddAction(f"parts/{name}.parquet", len(data), {}, int(time.time() * 1000),
                                  True, json.dumps({"numRecords": 2})))
        schema = Schema.from_arrow(part(pa.int64(), 0).schema)
        create_table_with_add_actions(d, schema, adds[:2])
        dt = DeltaTable(d)
        out["polars_read_delta_one_schema"] = pl.read_delta(d).height
        out["deltalake_to_pyarrow_one_schema"] = dt.to_pyarrow_table().num_rows
        try:  # a part whose carried column is a string, committed to the int64 table
            dt.create_write_transaction([adds[2]], mode="append", schema=schema)
            out["commit_of_mismatched_part"] = "accepted (the file's schema is not checked)"
        except Exception as e:
            out["commit_of_mismatched_part"] = f"refused: {type(e).__name__}: {str(e)[:200]}"
        for name, read in (("polars_read_delta_mixed", lambda: pl.read_delta(d).height),
                           ("deltalake_to_pyarrow_mixed",
                            lambda: DeltaTable(d).to_pyarrow_table().num_rows)):
            try:
                out[name] = f"read {read()} rows"
            except Exception as e:
                out[name] = f"{type(e).__name__}: {str(e)[:200]}"
    con = duckdb.connect()
    con.execute("SET autoinstall_known_extensions = false")  # never reach the network
    row = con.execute("SELECT installed, loaded FROM duckdb_extensions() "
                      "WHERE extension_name = 'delta'").fetchone()
    out["duckdb_delta_extension"] = {"version": duckdb.__version__, "listed": row is not None,
                                     "installed": bool(row and row[0])}
    try:
        con.execute("LOAD delta")
        out["duckdb_delta_extension"]["load"] = "loaded"
    except Exception as e:
        out["duckdb_delta_extension"]["load"] = f"{type(e).__name__}: {str(e)[:160]}"
    out["pyspark_installed"] = importlib.util.find_spec("pyspark") is not None
    return out


def dependency() -> dict:
    """The size of deltalake (and what it brings) as installed, and its import time."""
    import importlib.metadata as md
    import subprocess
    import sys

    def size(dist: str) -> float:
        files = md.distribution(dist).files or []
        return sum(os.path.getsize(f.locate()) for f in files if os.path.exists(f.locate()))

    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import deltalake"], check=True)
    with_import = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    bare = time.perf_counter() - t
    return {"deltalake": md.version("deltalake"),
            "installed_mb": {d: round(size(d) / 2**20, 1)
                             for d in ("deltalake", "arro3-core", "deprecated")},
            "import_s": round(with_import - bare, 2)}


def run() -> dict:
    os.environ.update(LOCAL_S3_ENV)
    result: dict = {"delay_ms": DELAY_MS, "commits": COMMITS, "parts_per_commit": PER_COMMIT,
                    "frontier": IN_FLIGHT + WINDOW, "load_at": LOAD_AT}
    with local_s3(delay_ms=DELAY_MS) as url:
        store = StoreControl(url)
        _s3(url).create_bucket(Bucket=BUCKET)

        # each writer in a fresh process: its own CPU and memory
        result["ledger"] = _child(f"write_ledger({url!r}, 'ledger')")
        result["delta_default"] = _child(f"write_delta({url!r}, 'delta-default', None)")
        result["delta_interval_10"] = _child(f"write_delta({url!r}, 'delta-10', 10)")
        result["two_writers"] = two_writers(url, store)
    result["commit_put_headers"] = commit_put_headers()
    result["readers"] = readers()
    result["dependency"] = dependency()
    return json.loads(json.dumps(result))
