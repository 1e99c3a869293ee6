"""Input columns checked from the footers the plan reads, before any worker starts:
a missing column, an image column that holds no encoded bytes, a caption column that
holds no text are refused naming the file, the column, its type and the columns there
are. Hand-built Parquet files are the oracle."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError, DataSettings, StorageSettings
from pipeline.io.shards import schema_problem
from pipeline.io.storage import list_inputs
from pipeline.job.plan import plan

HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def write(path, **columns: pa.Array) -> None:
    pq.write_table(pa.table(columns), path)


def plan_with(where, data: DataSettings):
    storage = StorageSettings()
    others = [c for c in data.read_columns() if c not in (data.image_column, data.caption_column)]
    return plan(list_inputs(str(where), storage), storage, 16, "fp",
                check=lambda s: schema_problem(s, data.image_column, data.caption_column, others))


@pytest.mark.parametrize("columns", [
    {"image": pa.array([b"x"], pa.binary()), "caption": pa.array(["a"], pa.string())},
    {"image": pa.array([b"x"], pa.large_binary()), "caption": pa.array(["a"], pa.large_string())},
    {"image": pa.array([{"bytes": b"x", "path": "a.png"}], HF_IMAGE),
     "caption": pa.array(["a"]).dictionary_encode()},
    {"image": pa.array([b"x"], pa.binary()), "caption": pa.array([b"utf-8 text"], pa.binary())},
], ids=["binary+string", "large", "hf-struct+dictionary", "binary-caption"])
def test_usable_layouts_pass(tmp_path, columns):
    write(tmp_path / "in.parquet", **columns)
    tasks = plan_with(tmp_path, DataSettings())
    assert [(t.row_start, t.row_end, t.error) for t in tasks] == [(0, 1, None)]


def test_a_string_image_column_is_refused_naming_file_column_type_and_columns(tmp_path):
    """The issue's run: data.image_column=text, a string column, 'succeeded' with every
    row bad_image; now it is refused before the run."""
    write(tmp_path / "in.parquet", image=pa.array([b"x"]), text=pa.array(["a caption"]))
    with pytest.raises(ConfigError) as e:
        plan_with(tmp_path, DataSettings(image_column="text", caption_column="text"))
    msg = str(e.value)
    assert msg.startswith(f"input: {tmp_path / 'in.parquet'}: data.image_column: 'text' is string")
    assert "image (binary), text (string)" in msg


def test_a_missing_column_is_refused_listing_the_columns(tmp_path):
    write(tmp_path / "in.parquet", image=pa.array([b"x"]), caption=pa.array(["a"]))
    with pytest.raises(ConfigError) as e:
        plan_with(tmp_path, DataSettings(image_column="nope"))
    assert "in.parquet: data.image_column: no column 'nope'" in str(e.value)
    assert "image (binary), caption (string)" in str(e.value)
    for data in (DataSettings(id_column="key"), DataSettings(keep_columns=["gt"])):
        with pytest.raises(ConfigError, match="data.id_column / data.keep_columns: no column"):
            plan_with(tmp_path, data)


@pytest.mark.parametrize(("columns", "message"), [
    ({"image": pa.array([b"x"]), "caption": pa.array([3], pa.int64())},
     "data.caption_column: 'caption' is int64"),
    ({"image": pa.array([{"path": "a.png"}], pa.struct([("path", pa.string())])),
      "caption": pa.array(["a"])},
     "data.image_column: 'image' is struct<path: string>"),
    ({"image": pa.array([{"bytes": "not bytes"}], pa.struct([("bytes", pa.string())])),
      "caption": pa.array(["a"])},
     "data.image_column: 'image' is struct<bytes: string>"),
], ids=["int-caption", "struct-without-bytes", "struct-of-strings"])
def test_columns_of_the_wrong_kind_are_refused(tmp_path, columns, message):
    write(tmp_path / "in.parquet", **columns)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        plan_with(tmp_path, DataSettings())


def test_every_bad_file_is_counted_and_good_files_do_not_hide_them(tmp_path):
    write(tmp_path / "a-good.parquet", image=pa.array([b"x"]), caption=pa.array(["a"]))
    for i in range(7):
        write(tmp_path / f"b-bad-{i}.parquet", image=pa.array(["s"]), caption=pa.array(["a"]))
    with pytest.raises(ConfigError) as e:
        plan_with(tmp_path, DataSettings())
    msg = str(e.value)
    assert msg.count("data.image_column") == 5 and "(and 2 more files)" in msg
    assert "a-good.parquet" not in msg


def test_an_unreadable_footer_still_fails_only_its_task(tmp_path):
    write(tmp_path / "good.parquet", image=pa.array([b"x"]), caption=pa.array(["a"]))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not parquet")
    tasks = plan_with(tmp_path, DataSettings())
    assert [bool(t.error) for t in tasks] == [True, False]
