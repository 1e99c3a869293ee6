"""What can be known before any worker starts is refused before Ray starts: a model
the engine cannot cut, a layer out of range, input columns that do not fit, an output
that cannot be written (ConfigError in the driver, exit 2 on the command line)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError
from pipeline.job.driver import run_job
from tests.data import pairs_table, write_table
from tests.jobutil import settings


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("refusals")
    write_table(pairs_table(4, seed=31), str(root / "pairs.parquet"))
    pq.write_table(pa.table({"image": pa.array(["a path, not bytes"] * 2),
                             "caption": pa.array(["a cat", "a dog"])}), root / "strings.parquet")
    return root


def refused(inp: str, out: str, **groups) -> str:
    import ray

    with pytest.raises(ConfigError) as e:
        run_job(settings(inp, out, **groups))
    assert not ray.is_initialized()  # refused before any worker could start
    return str(e.value)


def test_model_and_layers_are_checked_before_ray(inputs, tmp_path):
    inp, out = str(inputs / "pairs.parquet"), str(tmp_path / "out")
    assert refused(inp, out, model={"image_layer": 4}).startswith("model.image_layer: nibt-demo:")
    assert refused(inp, out, model={"name": "RN50"}).startswith("model.name: RN50: ")
    assert not (tmp_path / "out").exists()  # nothing written


def test_input_columns_are_checked_before_ray(inputs, tmp_path):
    msg = refused(str(inputs / "pairs.parquet"), str(tmp_path / "out"),
                  data={"image_column": "nope"})
    assert "pairs.parquet: data.image_column: no column 'nope'" in msg
    assert "image (binary), caption (string), extra (int64)" in msg
    msg = refused(str(inputs / "strings.parquet"), str(tmp_path / "out"),
                  data={"id_column": None, "keep_columns": []})
    assert "strings.parquet: data.image_column: 'image' is string" in msg


def test_an_unwritable_output_is_refused_before_ray(inputs):
    msg = refused(str(inputs / "pairs.parquet"), "/proc/nope/out")
    assert msg.startswith("output: cannot write to /proc/nope/out: ")


@pytest.mark.parametrize(("args", "says"), [
    (["output=/proc/nope/out"], "output: cannot write to /proc/nope/out"),
    (["data.image_column=nope"], "data.image_column: no column 'nope'"),
    (["model.image_layer=7"], "model.image_layer: nibt-demo: image layer 7 is out of range"),
    (["model.name=ViT-S-32", "model.pretrained=shipped"], "model.pretrained: no shipped weights"),
], ids=["output", "column", "layer", "weights"])
def test_the_command_line_exits_2_naming_the_problem(inputs, tmp_path, args, says):
    """The issue's runs: these started Ray and the actors, then exited 1 or 3."""
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "pipeline", f"input={inputs / 'pairs.parquet'}",
         f"output={tmp_path / 'out'}", "model=demo", "model.pretrained=null", "run.progress=false",
         *args],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "NIBT_LOG_DIR": str(tmp_path / "logs")},
    )
    assert r.returncode == 2, r.stderr[-3000:]
    assert says in r.stderr and "Traceback" not in r.stderr
    assert "starting" not in r.stderr  # no actor was started
    assert time.monotonic() - t0 < 120  # generous: it ends at start-up, not after a run


def test_a_file_that_is_not_a_tar_is_refused_before_ray(tmp_path):
    from tests.data import png, tar_bytes

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "00000.tar").write_bytes(tar_bytes([("a.png", png(1)), ("a.txt", b"x")]))
    (tmp_path / "in" / "00001.tar").write_bytes(b"<html>404 Not Found</html>" + bytes(600))
    msg = refused(str(tmp_path / "in"), str(tmp_path / "out"),
                  data={"format": "webdataset", "id_column": None, "keep_columns": []})
    assert msg.startswith(f"input (data.format=webdataset): {tmp_path / 'in' / '00001.tar'}: "
                          "not a tar archive")
    assert "00000.tar" not in msg


def test_a_table_of_urls_is_refused_before_ray(tmp_path):
    pq.write_table(pa.table({"URL": ["http://a/1.jpg"], "TEXT": ["a dog"]}),
                   tmp_path / "laion.parquet")
    msg = refused(str(tmp_path / "laion.parquet"), str(tmp_path / "out"),
                  data={"id_column": None, "keep_columns": []})
    assert "laion.parquet: no image bytes: the table has image URLs (URL)" in msg
    assert "downloaded first (img2dataset" in msg and "URL (string), TEXT (string)" in msg
