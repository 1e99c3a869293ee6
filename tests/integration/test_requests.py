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
