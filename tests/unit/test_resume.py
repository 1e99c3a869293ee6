"""Skipping committed tasks: the ledger, its frontier, outputs of earlier releases, and
the manifest's parts table in plan order."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest
import s3fs

from pipeline.config import StorageSettings
from pipeline.devtools.s3local import StoreControl
from pipeline.io.ledger import Commit, Ledger, to_table
from pipeline.io.manifest import read_manifest, write_manifest
from pipeline.io.parts import commit_part
from pipeline.io.schema import RESULT_FIELDS, result_schema
from pipeline.io.storage import filesystem
from pipeline.job.commit import Committed
from pipeline.job.plan import Task
from pipeline.job.resume import resume

FP = "f" * 16


def tasks(n: int) -> list[Task]:
    return [Task(f"{i:024x}", f"/in/{i // 3}.parquet", 1000 + i // 3, f"e{i // 3}", (i % 3,),
                 (i % 3) * 4, (i % 3) * 4 + 4) for i in range(n)]


def commit(t: Task, error: int = 0) -> Commit:
    return Commit(t.task_id, t.rows, 999, 8, {"ok": t.rows - error, "error": error})


def write_part(fs, root: str, t: Task, fp: str = FP, task_id: str | None = None) -> None:
    """A committed part as a worker writes it: rows and the footer's metadata."""
    cols = {f.name: pa.nulls(t.rows, f.type) for f in RESULT_FIELDS}
    cols["id"] = pa.array([f"r{i}" for i in range(t.rows)])
    cols["source"] = pa.array([t.uri] * t.rows)
    cols["row"] = pa.array(range(t.row_start, t.row_end), pa.int64())
    cols["status"] = pa.array(["ok"] * t.rows)
    meta = {"task_id": task_id or t.task_id, "fingerprint": fp, "batch_size": 4,
            "status_counts": {"ok": t.rows}}
    commit_part(fs, root, t.task_id, pa.table(cols, schema=result_schema(None, meta)))


def test_committed_tasks_are_skipped_and_those_with_error_rows_run_again(tmp_path):
    fs, root = filesystem(str(tmp_path / "out"), StorageSettings())
    ts = tasks(9)
    ledger = Ledger(fs, root, FP).start()
    for t in ts[:4]:
        ledger.add(commit(t, error=1 if t is ts[2] else 0))
    ledger.add(commit(Task("gone" * 6, "/in/old.parquet", 1, "x", (0,), 0, 4)))  # not planned
    assert ledger.close()
    out = str(tmp_path / "out")
    r = resume(ts, Ledger(fs, root, FP), out, StorageSettings(), FP, overwrite=False)
    assert [t.task_id for t in r.todo] == [t.task_id for t in ts if t not in (ts[0], ts[1], ts[3])]
    assert sorted(r.committed.column("task_id").to_pylist()) == \
        sorted(t.task_id for t in (ts[0], ts[1], ts[3]))
    assert (r.redo_error_rows, r.recovered, r.probed) == (1, 0, 0)
    again = resume(ts, Ledger(fs, root, FP), out, StorageSettings(), FP, overwrite=True)
    assert len(again.todo) == 9 and Ledger(fs, root, FP).load().num_rows == 0


@pytest.fixture
def lake(s3_endpoint):
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    if not fs.exists("resume"):
        fs.mkdir("resume")
    storage = StorageSettings(endpoint_url=s3_endpoint)
    return StoreControl(s3_endpoint), storage


def test_the_frontier_s_parts_are_found_with_one_request_each(lake):
    """A driver died after its last checkpoint: of the frontier, the parts committed are
    found from their footers (one GET each), the rest run; nothing else is read."""
    store, storage = lake
    fs, root = filesystem("s3://resume/died", storage)
    ts = tasks(12)
    ledger = Ledger(fs, root, FP).start()
    for t in ts[:3]:
        ledger.add(commit(t))
        write_part(fs, root, t)
    ledger.checkpoint([t.task_id for t in ts[3:8]])
    ledger._queue.put(None)  # the driver dies: no close
    ledger._thread.join(30)
    write_part(fs, root, ts[4])  # committed after the last checkpoint
    write_part(fs, root, ts[6])
    write_part(fs, root, ts[7], fp="another")  # a part of other settings under the same key
    write_part(fs, root, ts[10])  # outside the frontier: not looked for
    store.reset()
    r = resume(ts, Ledger(fs, root, FP), "s3://resume/died", storage, FP, overwrite=False)
    parts = {k: n for (op, k), n in store.requests().items() if "/parts/" in k}
    assert parts == {(f"resume/died/parts/{t.task_id}.parquet"): 1 for t in ts[3:8]}
    assert all(op == "GET" for (op, k) in store.requests() if "/parts/" in k)
    assert (r.recovered, r.probed) == (2, 5)
    assert [t.task_id for t in r.todo] == [t.task_id for t in ts if t not in
                                           (ts[0], ts[1], ts[2], ts[4], ts[6])]
    assert {c.task_id for c in r.commits} == {ts[4].task_id, ts[6].task_id}
    assert store.count("LIST", "resume/died/parts") == 0


def test_an_output_without_a_ledger_takes_its_manifest_s_parts(tmp_path):
    """Outputs of earlier releases: their manifest listed the parts inline."""
    fs, root = filesystem(str(tmp_path / "out"), StorageSettings())
    ts = tasks(4)
    old = {"fingerprint": FP, "metadata": {}, "settings": {}, "parts": [
        {"task_id": t.task_id, "path": f"parts/{t.task_id}.parquet", "rows": t.rows,
         "source": t.uri, "row_start": t.row_start, "row_end": t.row_end,
         "input_fingerprint": "x", "status_counts": {"ok": t.rows}, "batch_size": 8}
        for t in ts[:2]]}
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "_manifest.json").write_text(json.dumps(old))
    out = str(tmp_path / "out")
    r = resume(ts, Ledger(fs, root, FP), out, StorageSettings(), FP, overwrite=False)
    assert [t.task_id for t in r.todo] == [ts[2].task_id, ts[3].task_id]
    assert r.imported == 2
    other = resume(ts, Ledger(fs, root, "another fp"), out, StorageSettings(), "another fp",
                   overwrite=False)
    assert len(other.todo) == 4


def test_manifest_lists_planned_parts_in_plan_order(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.job.commit.SLICE", 2)  # several slices
    ts = tasks(6)
    # ts[4] recorded twice: the later entry (its 2 error rows) counts
    entries = [to_table([commit(ts[4]), commit(ts[1]), commit(ts[3], error=2)], 0),
               to_table([commit(Task("z" * 24, "/x", 1, "t", (0,), 0, 1)),
                         commit(ts[4], error=1)], 1)]
    done = Committed.of(entries, ts)
    table = pa.Table.from_batches(list(done.batches()))
    assert table.column("task_id").to_pylist() == [ts[1].task_id, ts[3].task_id, ts[4].task_id]
    t = ts[3]
    row = table.to_pylist()[1]
    assert row["path"] == f"parts/{t.task_id}.parquet"
    assert row["input_fingerprint"] == f"{t.uri}|{t.size}|{t.tag}|{t.row_start}:{t.row_end}"
    assert done.totals() == {"rows_out": 12, "status_counts": {"error": 3, "ok": 9},
                             "tasks_with_error_rows": 2, "batch_size": 8}
    fs, root = filesystem(str(tmp_path / "out"), StorageSettings())
    write_manifest(fs, root, {"fingerprint": FP}, Committed.of(entries, ts).batches())
    back = read_manifest(str(tmp_path / "out"))
    assert [p["task_id"] for p in back["parts"]] == table.column("task_id").to_pylist()
    assert back["parts"][1]["status_counts"] == {"ok": 2, "error": 2}
    assert back["parts"][2]["status_counts"] == {"ok": 3, "error": 1}
    assert (back["parts_count"], back["rows"]) == (3, 12)


def test_a_ledger_file_that_cannot_be_read_has_its_parts_found_from_their_footers(lake):
    """Nothing lost: every part the readable ledger does not hold is looked for (one GET
    each) and found; nothing counted twice: each task once, in the ledger or found."""
    store, storage = lake
    fs, root = filesystem("s3://resume/corrupt", storage)
    ts = tasks(9)
    ledger = Ledger(fs, root, FP, fanout=100).start()
    for group in (ts[0:3], ts[3:6]):
        for t in group:
            ledger.add(commit(t))
            write_part(fs, root, t)
        ledger.checkpoint([])
    assert ledger.close()
    fs.pipe_file(f"{root}/_ledger/{FP}/L0-000000000000-000000000000.parquet", b"PAR1 garbage")
    store.reset()
    r = resume(ts, Ledger(fs, root, FP), "s3://resume/corrupt", storage, FP, overwrite=False)
    gets = {k for (op, k), n in store.requests().items() if op == "GET" and "/parts/" in k}
    assert gets == {f"resume/corrupt/parts/{t.task_id}.parquet" for t in ts[:3] + ts[6:]}
    assert r.recovered == 3 and [t.task_id for t in r.todo] == [t.task_id for t in ts[6:]]
    assert sorted(r.committed.column("task_id").to_pylist()) == sorted(t.task_id for t in ts[:6])
