"""What a run asks of object storage, counted by the far-away store (moto behind a delay
per request): planning, checkpoints, and a rerun with nothing left to do.

The actors run no engine (``NullRunner``): only the driver's requests are counted.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from pipeline.devtools.s3local import StoreControl, local_s3
from pipeline.io.manifest import read_manifest
from pipeline.job.driver import EXIT_OK, run_job
from pipeline.job.null import NullRunner
from tests.data import pairs_table, write_table
from tests.jobutil import settings

FILES, ROWS, GROUP = 20, 16, 8


@pytest.fixture(scope="module")
def far():
    with local_s3(delay_ms=5) as url:
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": url})
        fs.mkdir("far")
        for i in range(FILES):
            table = pa.table({"id": [f"f{i}-{r}" for r in range(ROWS)],
                              "image": [b"not decoded by the null runner"] * ROWS,
                              "caption": ["a caption"] * ROWS, "extra": list(range(ROWS))})
            with fs.open(f"far/in/{i:03d}.parquet", "wb") as f:
                pq.write_table(table, f, row_group_size=GROUP)
        yield url, StoreControl(url)


def _run(url: str, out: str, **run):
    s = settings("s3://far/in/", f"s3://far/{out}", endpoint=url,
                 run={"rows_per_task": GROUP, **run})
    return run_job(s, runner=NullRunner)


def test_planning_reads_each_footer_once_and_a_rerun_none(ray_local, far):
    url, store = far
    store.reset()
    code, first = _run(url, "out", checkpoint_every_tasks=5)
    assert code == EXIT_OK, first["failures"]
    counts = store.requests()
    inputs = {k: n for k, n in counts.items() if k[1].startswith("far/in/")}
    for i in range(FILES):
        key = f"far/in/{i:03d}.parquet"
        assert inputs.pop(("GET", key)) == 1  # one ranged read of the footer
    assert set(inputs) == {("LIST", "far/in/")}, inputs  # the listing, nothing else
    assert first["tasks_run"] == FILES * ROWS // GROUP
    # the ledger was written as the run went: one segment at the start, then one per 5 tasks
    assert first["ledger"]["segments_written"] >= 1 + first["tasks_run"] // 5
    assert first["ledger"]["all_written"]

    store.reset()
    code, second = _run(url, "out", checkpoint_every_tasks=5)
    assert code == EXIT_OK and (second["tasks_run"], second["tasks_skipped"]) == \
        (0, first["tasks_run"])
    counts = store.requests()
    assert not [k for k in counts if k[1].startswith("far/in/") and k[0] != "LIST"], counts
    # no part is read or listed (the write probe is the only request there)
    assert not [k for k in counts if k[1].startswith("far/out/parts/")
                and "write-probe" not in k[1]], counts
    # a constant few, whatever the number of files and parts: listings, the saved plan,
    # the ledger's files, the manifest and the summary
    assert sum(counts.values()) <= 30, counts
    manifest = read_manifest("s3://far/out", settings("x", "y", endpoint=url).storage)
    assert manifest["parts_count"] == first["tasks_run"] and manifest["rows"] == FILES * ROWS
    assert [p["source"] for p in manifest["parts"]] == sorted(
        p["source"] for p in manifest["parts"])  # input order


def test_changed_input_is_planned_again(ray_local, far):
    """A file replaced between runs is read again (its tag changed) and only it."""
    url, store = far
    code, first = _run(url, "changed")
    assert code == EXIT_OK
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": url})
    original = fs.cat_file("far/in/003.parquet")
    table = pq.read_table(pa.BufferReader(original))
    with fs.open("far/in/003.parquet", "wb") as f:
        pq.write_table(table.slice(0, 12), f, row_group_size=4)
    store.reset()
    try:
        code, second = _run(url, "changed")
    finally:
        fs.pipe_file("far/in/003.parquet", original)
    counts = store.requests()
    assert counts[("GET", "far/in/003.parquet")] == 1
    assert not [k for k in counts if k[1].startswith("far/in/") and k[0] == "GET"
                and k[1] != "far/in/003.parquet"]
    assert second["tasks_run"] == 2  # 12 rows in groups of 4, tasks of 8 rows: 8 + 4
    summary = json.loads(fs.cat_file("far/changed/_summary.json"))
    assert summary["rows_out"] == (FILES - 1) * ROWS + 12


def test_a_task_reads_its_input_pinned_and_writes_one_part(ray_local, far):
    """The real worker: its input read with GETs only (no HEAD: the size comes from the
    plan), each pinned to the planned ETag; one PUT for its part."""
    url, store = far
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": url})
    write_table(pairs_table(ROWS, seed=3), "far/one/000.parquet", fs=fs, row_group_size=GROUP)
    store.reset()
    s = settings("s3://far/one/", "s3://far/worker", endpoint=url,
                 run={"rows_per_task": GROUP}, data={"keep_columns": []})
    code, summary = run_job(s)
    assert code == EXIT_OK and summary["tasks_run"] == ROWS // GROUP
    assert summary["status_counts"] == {"ok": ROWS}
    counts = store.requests()
    on_input = {op: n for (op, k), n in counts.items() if k == "far/one/000.parquet"}
    # the planner's footer read, then each task's reads: a footer and its row group
    assert set(on_input) == {"GET"} and on_input["GET"] <= 1 + 2 * summary["tasks_run"]
    puts = [k for (op, k) in counts if op == "PUT" and k.startswith("far/worker/parts/")
            and "write-probe" not in k]
    assert len(puts) == summary["tasks_run"]
    assert not [k for (op, k) in counts if op == "HEAD" and k.startswith("far/worker/parts/")]


def test_an_input_replaced_after_planning_fails_its_task_by_name(far):
    """A file replaced between the plan and the read: the read (pinned to the planned ETag)
    fails, the task is not retried, and the message names the file."""
    from pipeline.io.shards import TaskError, iter_batches
    from pipeline.io.storage import file_tag, filesystem
    from pipeline.job.plan import Task

    url, _ = far
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": url})
    original = fs.cat_file("far/in/005.parquet")
    info = fs.info("far/in/005.parquet")
    task = Task("t", "s3://far/in/005.parquet", info["size"], file_tag(info), (0,), 0, GROUP)
    storage = settings("x", "y", endpoint=url).storage
    sfs, path = filesystem(task.uri, storage)
    assert sum(b.num_rows for b in iter_batches(sfs, path, task, ["id"], 4)) == GROUP
    table = pq.read_table(pa.BufferReader(original))
    with fs.open("far/in/005.parquet", "wb") as f:  # the same size, other bytes
        pq.write_table(table.set_column(0, "id", pa.array([f"x{i}" for i in range(ROWS)])),
                       f, row_group_size=GROUP)
    try:
        with pytest.raises(TaskError, match="far/in/005.parquet changed") as e:
            list(iter_batches(sfs, path, task, ["id"], 4))
        assert not e.value.retryable
    finally:
        fs.pipe_file("far/in/005.parquet", original)
