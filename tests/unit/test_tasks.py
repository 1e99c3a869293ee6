"""Planning tasks along row-group boundaries, and stable task ids."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import StorageSettings
from pipeline.io.storage import InputFile, list_inputs
from pipeline.job.plan import plan, split_row_groups, task_id

#: (row-group sizes, rows per task) -> the tasks, written out by hand: (groups, start, end)
SPLITS = [
    (([64] * 5, 100), [([0, 1], 0, 128), ([2, 3], 128, 256), ([4], 256, 320)]),
    (([10, 0, 0, 5], 10), [([0], 0, 10), ([1, 2, 3], 10, 15)]),
    (([3, 7, 1, 9, 2], 4), [([0, 1], 0, 10), ([2, 3], 10, 20), ([4], 20, 22)]),
    (([], 5), []),
    (([0, 0], 5), []),
    (([100], 1), [([0], 0, 100)]),
    (([5, 5, 5], 5), [([0], 0, 5), ([1], 5, 10), ([2], 10, 15)]),
]


def test_split_gives_the_tasks_written_out_by_hand():
    for (sizes, target), want in SPLITS:
        got = split_row_groups(sizes, target)
        assert [(list(g), s, e) for g, s, e in got] == want, (sizes, target)


def test_task_ids_change_with_data_and_settings():
    f = InputFile("s3://b/x.parquet", 100, "etag1")
    base = task_id(f, 0, 10, "fp")
    assert base == task_id(f, 0, 10, "fp")
    assert base != task_id(InputFile(f.uri, 101, f.tag), 0, 10, "fp")
    assert base != task_id(InputFile(f.uri, f.size, "etag2"), 0, 10, "fp")
    assert base != task_id(f, 0, 11, "fp")
    assert base != task_id(f, 0, 10, "fp2")


def test_plan_local_files(tmp_path):
    t = pa.table({"a": list(range(50))})
    pq.write_table(t, tmp_path / "one.parquet", row_group_size=10)
    pq.write_table(t.slice(0, 0), tmp_path / "empty.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"nope")
    (tmp_path / "_SUCCESS").write_text("")
    storage = StorageSettings()
    files = list_inputs(str(tmp_path), storage)
    assert [f.uri.rsplit("/", 1)[1] for f in files] == ["bad.parquet", "empty.parquet", "one.parquet"]
    tasks = plan(files, storage, 20, "fp")
    assert [(t.row_start, t.row_end) for t in tasks if not t.error] == [(0, 20), (20, 40), (40, 50)]
    bad = [t for t in tasks if t.error]
    assert len(bad) == 1 and "bad.parquet" in bad[0].error
