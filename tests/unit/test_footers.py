"""Input footers: one ranged read each (against pyarrow's own reading of whole files),
and the saved plan that spares a rerun every footer."""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from pipeline.config import StorageSettings
from pipeline.devtools.s3local import StoreControl
from pipeline.io.footers import TAIL_BYTES, Footer, FooterCache, NotParquet, footers_of
from pipeline.io.storage import InputFile, filesystem, list_inputs
from pipeline.job.plan import plan


def _write(path, rows: int, group: int, wide: int = 0) -> pa.Table:
    cols = {"image": [b"\x89PNG" * 3] * rows, "caption": [f"c{i}" for i in range(rows)]}
    cols.update({f"extra_{j:04d}": list(range(rows)) for j in range(wide)})
    table = pa.table(cols)
    pq.write_table(table, path, row_group_size=group)
    return table


def _oracle(path) -> tuple[tuple[int, ...], pa.Schema]:
    """Row groups and schema as pyarrow reads them from the whole file."""
    pf = pq.ParquetFile(path)
    return (tuple(pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)),
            pf.schema_arrow)


def test_local_footers_match_whole_file_reads(tmp_path):
    _write(tmp_path / "a.parquet", 50, 7)
    _write(tmp_path / "b.parquet", 3, 10)
    # a footer well over the first read: 1,500 columns
    _write(tmp_path / "wide.parquet", 4, 2, wide=1500)
    assert (tmp_path / "wide.parquet").stat().st_size > TAIL_BYTES
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all, nowhere near")
    (tmp_path / "tiny.parquet").write_bytes(b"PAR1")
    storage = StorageSettings()
    files = list_inputs(str(tmp_path), storage)
    got = footers_of(files, storage)
    by_name = {f.uri.rsplit("/", 1)[1]: g for f, g in zip(files, got)}
    for name in ("a.parquet", "b.parquet", "wide.parquet"):
        groups, schema = _oracle(tmp_path / name)
        assert isinstance(by_name[name], Footer), by_name[name]
        assert by_name[name].row_groups == groups
        assert by_name[name].schema.equals(schema, check_metadata=False)
    assert isinstance(by_name["bad.parquet"], NotParquet)
    assert isinstance(by_name["tiny.parquet"], NotParquet)


@pytest.fixture
def lake(s3_endpoint):
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    bucket = "footers"
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    return fs, bucket, StoreControl(s3_endpoint), StorageSettings(endpoint_url=s3_endpoint)


def test_s3_planning_is_one_get_per_file_and_none_from_the_saved_plan(lake, tmp_path):
    fs, bucket, store, storage = lake
    for i in range(6):
        _write(tmp_path / f"{i}.parquet", 20 + i, 8)
        fs.put_file(str(tmp_path / f"{i}.parquet"), f"{bucket}/in/{i}.parquet")
    _write(tmp_path / "wide.parquet", 4, 2, wide=1500)
    fs.put_file(str(tmp_path / "wide.parquet"), f"{bucket}/in/wide.parquet")
    files = list_inputs(f"s3://{bucket}/in/", storage)
    out_fs, out_path = filesystem(f"s3://{bucket}/out", storage)
    cache = FooterCache(out_fs, out_path).load()
    store.reset()
    tasks = plan(files, storage, 16, "fp", cache=cache)
    counts = store.requests()
    for f in files:
        key = f.uri[len("s3://"):]
        want = 2 if key.endswith("wide.parquet") else 1  # a footer over 64 KiB: one more
        assert counts[("GET", key)] == want, (key, counts)
        assert counts[("HEAD", key)] == 0
    expected = []
    for f in files:
        name = f.uri.rsplit("/", 1)[1]
        groups, _ = _oracle(tmp_path / name)
        expected += [(f.uri, s, e) for s, e in _by_hand(groups, 16)]
    assert [(t.uri, t.row_start, t.row_end) for t in tasks] == expected
    cache.save()
    store.reset()
    again = plan(files, storage, 16, "fp",
                 cache=FooterCache(out_fs, out_path).load())
    assert [t.task_id for t in again] == [t.task_id for t in tasks]
    assert store.count(prefix=f"{bucket}/in/") == 0
    assert store.by_operation(f"{bucket}/out/") == {"GET": 1}  # the saved plan itself


def _by_hand(groups: tuple[int, ...], target: int) -> list[tuple[int, int]]:
    """Row ranges of tasks of at least ``target`` rows along row groups, by arithmetic."""
    out, start, pos = [], 0, 0
    for n in groups:
        pos += n
        if pos - start >= target:
            out.append((start, pos))
            start = pos
    return out + ([(start, pos)] if pos > start else [])


def test_saved_plan_is_used_only_for_an_unchanged_file(tmp_path, caplog):
    _write(tmp_path / "a.parquet", 10, 5)
    storage = StorageSettings()
    (f,) = list_inputs(str(tmp_path / "a.parquet"), storage)
    fs, out = filesystem(str(tmp_path / "out"), storage)
    cache = FooterCache(fs, out)
    (footer,) = footers_of([f], storage, cache)
    cache.save()
    loaded = FooterCache(fs, out).load()
    assert loaded.get(f) == footer
    assert loaded.get(InputFile(f.uri, f.size, "another tag")) is None
    assert loaded.get(InputFile(f.uri, f.size + 1, f.tag)) is None
    (tmp_path / "out" / "_ledger" / "inputs.parquet").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="nibt-audit"):
        assert FooterCache(fs, out).load().get(f) is None
    assert "read again" in caplog.text
