"""Parts and the manifest as other readers see them: DuckDB (the recipe in docs/output.md)
and polars when it is installed, against the values written by hand."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.config import StorageSettings
from pipeline.io.manifest import PartEntry, write_manifest
from pipeline.io.parts import commit_part, encoding_options
from pipeline.io.results import read_results
from pipeline.io.schema import RESULT_FIELDS, result_schema
from pipeline.io.storage import filesystem

GRID = 7


def part_table(task: int, rows: int) -> pa.Table:
    """Result rows with known values: attributions i/1000 + task, tokens by position."""
    cols = {f.name: pa.nulls(rows, f.type) for f in RESULT_FIELDS}
    cols.update(
        id=pa.array([f"t{task}-{i}" for i in range(rows)]),
        source=pa.array([f"/in/{task}.parquet"] * rows),
        row=pa.array(range(rows), pa.int64()),
        status=pa.array(["ok"] * rows),
        score=pa.array([0.25 + i / 1024 for i in range(rows)], pa.float32()),
        image_attr=pa.array([np.arange(GRID * GRID, dtype=np.float32) / 1000 + task + i
                             for i in range(rows)], pa.list_(pa.float32())),
        grid_h=pa.array([GRID] * rows, pa.int16()), grid_w=pa.array([GRID] * rows, pa.int16()),
        tokens=pa.array([["<start_of_text>", "a</w>", f"w{i % 3}</w>", "<end_of_text>"]
                         for i in range(rows)]),
        text_attr=pa.array([[0.0, 0.5, -0.25 * i, 0.0] for i in range(rows)],
                           pa.list_(pa.float32())),
    )
    return pa.table(cols, schema=result_schema(None, {"task_id": f"{task:024x}"}))


@pytest.fixture
def output(tmp_path):
    fs, root = filesystem(str(tmp_path / "out"), StorageSettings())
    entries = []
    for task in range(3):
        table = part_table(task, 10 + task)
        _, size = commit_part(fs, root, f"{task:024x}", table)
        entries.append(PartEntry(f"{task:024x}", f"parts/{task:024x}.parquet", table.num_rows,
                                 f"/in/{task}.parquet", 0, table.num_rows, "x",
                                 {"ok": table.num_rows}, 8, size))
    write_manifest(fs, root, {"fingerprint": "f"}, entries)
    return tmp_path / "out"


def test_parts_use_the_encodings_chosen_for_them(output):
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(next((output / "parts").glob("*.parquet"))).metadata
    enc = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i).encodings
           for i in range(meta.num_columns)}
    assert "BYTE_STREAM_SPLIT" in enc["image_attr.list.element"]
    assert "RLE_DICTIONARY" not in enc["image_attr.list.element"]
    assert "RLE_DICTIONARY" in enc["tokens.list.element"]
    opts = encoding_options(part_table(0, 1).schema)
    assert "score" in opts["use_byte_stream_split"] and "status" in opts["use_dictionary"]


def test_duckdb_reads_the_results_through_the_manifest(output):
    duckdb = pytest.importorskip("duckdb")
    con = duckdb.connect()
    # the recipe of docs/output.md
    con.execute(f"SET VARIABLE out = '{output}/'")
    con.execute("SET VARIABLE parts_file = (SELECT getvariable('out') || parts_file "
                "FROM read_json(getvariable('out') || '_manifest.json'))")
    con.execute("SET VARIABLE parts = (SELECT list(getvariable('out') || path) "
                "FROM read_parquet(getvariable('parts_file')))")
    rows = con.execute("SELECT id, score, image_attr, tokens, text_attr "
                       "FROM read_parquet(getvariable('parts')) ORDER BY id").fetchall()
    assert len(rows) == 10 + 11 + 12
    by_id = {r[0]: r for r in rows}
    _, score, image, tokens, text = by_id["t2-5"]
    assert score == pytest.approx(0.25 + 5 / 1024)
    assert image == pytest.approx([k / 1000 + 2 + 5 for k in range(GRID * GRID)], rel=1e-6)
    assert tokens == ["<start_of_text>", "a</w>", "w2</w>", "<end_of_text>"]
    assert text == pytest.approx([0.0, 0.5, -1.25, 0.0])
    # and the job's own reader agrees
    ours = read_results(str(output), columns=["id", "score"]).sort_by("id")
    assert ours.column("id").to_pylist() == sorted(by_id)


def test_polars_reads_the_parts(output):
    pl = pytest.importorskip("polars")
    frame = pl.read_parquet(sorted(str(p) for p in (output / "parts").glob("*.parquet")))
    assert frame.height == 33
    row = frame.filter(pl.col("id") == "t1-3").row(0, named=True)
    assert row["image_attr"] == pytest.approx([k / 1000 + 1 + 3 for k in range(GRID * GRID)],
                                              rel=1e-6)


def test_a_part_is_decoded_as_pyarrow_reads_it_and_a_missing_column_names_the_part(tmp_path):
    """``read_part`` against ``pq.read_table`` on a hand-written file of three row groups
    (dictionary-encoded pieces included); a column the part lacks is ``PartUnreadable``
    naming the part, not a table without it."""
    import pyarrow.parquet as pq

    from pipeline.io.results import TOKEN_DICTIONARY, PartUnreadable, read_part

    table = pa.table({"status": ["ok", "bad_image", "ok", "ok", None],
                      "tokens": pa.array([["a</w>"], None, ["b", "c</w>"], [], ["a</w>"]],
                                         pa.list_(pa.string())),
                      "score": [0.1, None, 0.3, 0.4, 0.5]})
    pq.write_table(table, tmp_path / "p.parquet", row_group_size=2)
    assert pq.ParquetFile(tmp_path / "p.parquet").num_row_groups == 3
    fs, root = filesystem(str(tmp_path), StorageSettings())
    entry = {"path": "p.parquet", "rows": 5}
    for cols in (["score", "tokens"], None):
        got = read_part(fs, root, entry, cols, TOKEN_DICTIONARY)
        want = pq.read_table(tmp_path / "p.parquet", columns=cols,
                             read_dictionary=list(TOKEN_DICTIONARY))
        assert got.equals(want)
    assert pa.types.is_dictionary(got.schema.field("tokens").type.value_type)
    with pytest.raises(PartUnreadable, match=r"p\.parquet.*image_attr"):
        read_part(fs, root, entry, ["status", "image_attr"])
