"""The inputs teams have, audited end to end (local Ray, the local S3 endpoint): the demo
scenes as WebDataset shards beside a shard of bad samples and one cut short, and
img2dataset's Parquet output through ``data=img2dataset``.

The oracle: the scenes' own pairs (``make_pair``) through the engine called directly
(``engine_oracle``), and hand-built tars and tables whose every row's status is written
out here."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import s3fs
import torch
import yaml

from pipeline.cli.app import CONF_DIR
from pipeline.demo.scenes import make_pair, png_bytes, write_webdataset_shards
from pipeline.io.manifest import read_manifest
from pipeline.io.results import read_results
from pipeline.job.driver import EXIT_OK, EXIT_PARTIAL, run_job
from tests.data import caption, member_offsets, pairs_table, png, tar_bytes, write_table
from tests.integration.test_job import engine_oracle
from tests.jobutil import settings

SEED, PAIRS, SHARDS = 5, 24, 2
WDS = {"format": "webdataset", "id_column": None, "keep_columns": ["n_objects", "gt_names"]}
#: The bad shard: each sample's status and a piece of its error, by key.
BAD = {
    "b0": ("ok", None),
    "b1": ("bad_image", "not an image"),  # bytes that are no image
    "b2": ("bad_image", "cannot decode image"),  # a PNG cut short
    "b3": ("bad_caption", "no txt member (members: b3.png, b3.json)"),
    "b4": ("bad_caption", "empty"),
    "b5": ("bad_image", "no image member (jpg, jpeg, png, webp; members: b5.txt, b5.json)"),
}


def bad_shard() -> bytes:
    members = [("b0.png", png(1)), ("b0.txt", caption(1).encode()),
               ("b1.png", b"this is not an image"), ("b1.txt", b"a red square"),
               ("b2.png", png(2)[:60]), ("b2.txt", b"a blue circle"),
               ("b3.png", png(3)), ("b3.json", b'{"n_objects": 1}'),
               ("b4.png", png(4)), ("b4.txt", b"   "),
               ("b5.txt", b"a caption without its image"), ("b5.json", b"{}")]
    return tar_bytes(members)


def cut_shard() -> tuple[bytes, int]:
    """Four good samples, cut inside the third one's image at a block boundary (a size
    the plan cannot tell from a whole shard's)."""
    whole = tar_bytes([(f"c{i}.{ext}", png(10 + i) if ext == "png" else b"a green triangle")
                       for i in range(4) for ext in ("png", "txt")])
    _, data = member_offsets(whole)["c2.png"]
    return whole[:data + 512], data + 512


@pytest.fixture(scope="module")
def shards(s3_endpoint, tmp_path_factory):
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("wds")
    local = tmp_path_factory.mktemp("wds")
    for p in write_webdataset_shards(local, PAIRS, SHARDS, SEED):
        fs.put(str(p), f"wds/in/{p.name}")
    fs.pipe_file("wds/in/bad.tar", bad_shard())
    cut, _ = cut_shard()
    fs.pipe_file("wds/in/cut.tar", cut)
    fs.pipe_file("wds/in/00000_stats.json", b"{}")  # not a shard: not listed
    return fs


def run(s3_endpoint: str, out: str, **data):
    return run_job(settings("s3://wds/in/", f"s3://wds/{out}", endpoint=s3_endpoint,
                            data={**WDS, **data}))


def test_demo_shards_on_s3_match_the_engine_and_bad_input_is_named(ray_local, s3_endpoint,
                                                                   shards):
    code, summary = run(s3_endpoint, "out")
    assert code == EXIT_PARTIAL  # the cut shard
    (failure,) = summary["failures"]
    _, cut_at = cut_shard()
    assert failure["source"] == "s3://wds/in/cut.tar"
    assert f"damaged tar shard: member c2.png cut short at byte {cut_at}" in failure["error"]
    assert "after 2 whole sample(s)" in failure["error"]
    assert (summary["tasks_total"], summary["tasks_failed"]) == (SHARDS + 2, 1)
    assert summary["rows_in"] == summary["rows_out"] == PAIRS + len(BAD)
    assert summary["status_counts"] == {"ok": PAIRS + 1, "bad_image": 3, "bad_caption": 2}

    storage = settings("x", "y", endpoint=s3_endpoint).storage
    results = read_results("s3://wds/out", storage)
    by_id = {r["id"]: r for r in results.to_pylist()}
    for key, (status, says) in BAD.items():
        assert by_id[key]["status"] == status, key
        assert says is None or says in by_id[key]["error"], (key, by_id[key]["error"])
        assert by_id[key]["source"] == "s3://wds/in/bad.tar"
    pairs = [make_pair(SEED, i) for i in range(PAIRS)]
    demo = results.filter(pc.starts_with(results.column("source"), "s3://wds/in/part-"))
    assert demo.column("id").to_pylist() == [p.id for p in pairs]
    assert demo.column("row").to_pylist() == list(range(PAIRS // 2)) * 2
    assert demo.column("n_objects").to_pylist() == [str(p.n_objects) for p in pairs]
    assert demo.column("gt_names").to_pylist() == [json.dumps(p.names) for p in pairs]
    attr, _, _ = engine_oracle(pa.table({"image": [png_bytes(p.image) for p in pairs],
                                         "caption": [p.caption for p in pairs]}))
    assert torch.allclose(torch.tensor(demo.column("score").to_pylist()), attr.score, atol=1e-5)
    assert torch.allclose(torch.tensor(demo.column("image_attr").to_pylist()),
                          attr.image.flatten(1), rtol=1e-3, atol=1e-6)

    parts = {p["source"]: p for p in read_manifest("s3://wds/out", storage)["parts"]}
    assert "s3://wds/in/cut.tar" not in parts  # nothing of it committed
    assert (parts["s3://wds/in/bad.tar"]["row_start"], parts["s3://wds/in/bad.tar"]["row_end"],
            parts["s3://wds/in/bad.tar"]["rows"]) == (0, len(BAD), len(BAD))
    assert parts["s3://wds/in/bad.tar"]["input_fingerprint"].endswith("|tar")

    code, again = run(s3_endpoint, "out")  # resume: the committed shards are skipped
    assert code == EXIT_PARTIAL and again["failures"][0]["source"] == "s3://wds/in/cut.tar"
    assert (again["tasks_run"], again["tasks_skipped"]) == (1, SHARDS + 1)
    assert again["rows_in"] == PAIRS + len(BAD)


def test_img2dataset_parquet_output_through_its_preset(ray_local, tmp_path):
    """img2dataset's Parquet: ``key``, ``jpg``, ``txt`` and its metadata; a failed download
    is a row with a null ``jpg`` and ``txt``."""
    preset = yaml.safe_load(Path(CONF_DIR, "data", "img2dataset.yaml").read_text())
    preset.pop("_target_")
    table = pairs_table(6, seed=9)
    jpg = table.column("image").to_pylist()
    txt = table.column("caption").to_pylist()
    jpg[4] = txt[4] = None
    (tmp_path / "in").mkdir()
    write_table(pa.table({
        "key": [f"{i:09d}" for i in range(6)], "jpg": pa.array(jpg, pa.binary()), "txt": txt,
        "url": [f"http://example.com/{i}.png" for i in range(6)],
        "status": ["success"] * 4 + ["failed_to_download", "success"],
        "error_message": [None] * 4 + ["HTTP 404", None],
    }), str(tmp_path / "in" / "00000.parquet"))
    code, summary = run_job(settings(str(tmp_path / "in"), str(tmp_path / "out"),
                                     data={**preset, "keep_columns": ["url", "error_message"]}))
    assert code == EXIT_OK, summary["failures"]
    assert summary["status_counts"] == {"ok": 5, "bad_image": 1}
    results = read_results(str(tmp_path / "out"))
    assert results.column("id").to_pylist() == [f"{i:09d}" for i in range(6)]
    assert results.column("status").to_pylist()[4] == "bad_image"
    assert results.column("status").to_pylist()[:4] == ["ok"] * 4
    assert results.column("url").to_pylist()[2] == "http://example.com/2.png"
    assert results.column("error_message").to_pylist()[4] == "HTTP 404"
    ok = [i for i in range(6) if i != 4]
    attr, _, _ = engine_oracle(table.take(ok))
    got = torch.tensor([results.column("score").to_pylist()[i] for i in ok])
    assert torch.allclose(got, attr.score, atol=1e-5)
