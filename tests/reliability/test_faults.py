"""Fault injection: each guarantee is a test that injects the fault and counts the outcome."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs
from PIL import Image

from pipeline.io.manifest import read_manifest
from pipeline.io.results import read_results
from pipeline.job.driver import EXIT_OK, EXIT_PARTIAL, run_job
from tests import images as im
from tests.data import caption, pairs_table, png, write_shards, write_table
from tests.jobutil import settings
from tests.reliability.proxy import FaultProxy

KEY = re.compile(r"^(parts/[0-9a-f]{24}\.parquet|_manifest\.json|_summary\.json|_SUCCESS"
                 r"|_manifest/parts-\d{8}T\d{6}Z-[0-9a-f]{8}\.parquet|_ledger/inputs\.parquet"
                 r"|_ledger/[0-9a-f]{16}/L\d+-\d{12}-\d{12}\.parquet)$")


def ids_of(out: str, storage=None) -> list[str]:
    return read_results(out, storage, columns=["id"]).column("id").to_pylist()


def all_ids(tables) -> list[str]:
    return sorted(i for t in tables for i in t.column("id").to_pylist())


@pytest.fixture(scope="module")
def four_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("in4")
    tables = write_shards(root, 4, 16, seed=40)
    return root, tables


# 2 -------------------------------------------------------------------------------------
def _kill_ray_of(temp_dir: str) -> int:
    """Kill what an embedded Ray left behind when its driver was SIGKILLed: the
    processes holding files under its temp dir (Ray rewrites their command lines)."""
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            fd_dir = Path(f"/proc/{pid}/fd")
            targets = [os.readlink(fd_dir / fd) for fd in os.listdir(fd_dir)]
        except OSError:
            continue
        if any(t.startswith(temp_dir) for t in targets):
            try:
                os.kill(int(pid), signal.SIGKILL)
                n += 1
            except OSError:
                pass
    return n


def test_driver_killed_then_rerun(ray_local, four_shards, tmp_path, figure):
    root, tables = four_shards
    out = tmp_path / "out"
    ray_tmp = f"/tmp/nibt-kill-{os.getpid()}"
    args = [sys.executable, "-m", "pipeline", f"input={root}", f"output={out}",
            "model=demo", "model.pretrained=null", "model.steps=6", "model.image_layer=1",
            "model.text_layer=1",
            "data.id_column=id", "run.rows_per_task=8", "run.progress=false",
            f"cluster.temp_dir={ray_tmp}"]
    driver = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "NIBT_LOG_DIR": str(tmp_path / "logs")})
    deadline = time.time() + 180
    while time.time() < deadline:
        if len(list((out / "parts").glob("*.parquet"))) >= 2:
            break
        time.sleep(0.2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    time.sleep(1)
    leftovers = _kill_ray_of(ray_tmp)
    committed = len(list((out / "parts").glob("*.parquet")))
    assert not (out / "_manifest.json").exists()
    code, s = run_job(settings(str(root), str(out), model={"steps": 6}, run={"rows_per_task": 8},
                               data={"keep_columns": []}))
    ids = ids_of(str(out))
    listed = {p["path"] for p in read_manifest(str(out))["parts"]}
    on_disk = {f"parts/{p.name}" for p in (out / "parts").iterdir()}
    figure(parts_committed_before_kill=committed, tasks_total=s["tasks_total"],
           tasks_run_on_rerun=s["tasks_run"], duplicates=len(ids) - len(set(ids)),
           orphan_parts=len(on_disk - listed), ray_processes_left_by_killed_driver=leftovers)
    assert code == EXIT_OK and committed >= 2
    assert s["tasks_skipped"] == committed and s["tasks_run"] == s["tasks_total"] - committed
    assert sorted(ids) == all_ids(tables)
    assert on_disk == listed


# 3 -------------------------------------------------------------------------------------
def test_flaky_storage(ray_local, s3_endpoint, tmp_path, figure):
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("flaky")
    tables = [pairs_table(16, seed=60 + s) for s in range(2)]
    for s, t in enumerate(tables):
        write_table(t, f"flaky/in/{s}.parquet", fs=fs)
    t0 = time.time()
    proxy = FaultProxy(s3_endpoint, fail_rate=0.1, drop_rate=0.1, seed=1)
    with proxy as url:
        code, s = run_job(settings("s3://flaky/in/", "s3://flaky/out", endpoint=url))
        storage = settings("x", "y", endpoint=url).storage
        ids = ids_of("s3://flaky/out", storage)
    fs.invalidate_cache()
    keys = [k.removeprefix("flaky/out/") for k in fs.find("flaky/out")]
    for k in keys:  # every object is complete
        data = fs.cat(f"flaky/out/{k}")
        if k.endswith(".parquet"):
            pq.read_table(pa.BufferReader(data))
        else:
            json.loads(data)
    figure(injected="10% 503 SlowDown + 10% dropped connections",
           requests=proxy.counts["requests"], answered_503=proxy.counts["503"],
           dropped=proxy.counts["dropped"], rows_out=len(ids), tasks_retried=s["tasks_retried"], seconds=round(time.time() - t0, 1),
           objects_written=len(keys))
    assert code == EXIT_OK
    assert sorted(ids) == all_ids(tables)
    assert all(KEY.match(k) for k in keys), keys


def test_flaky_storage_counts(s3_endpoint):
    """The proxy really injects: a burst of reads sees both kinds of fault and still succeeds."""
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}).mkdir("probe")
    proxy = FaultProxy(s3_endpoint, fail_rate=0.2, drop_rate=0.2, seed=2)
    with proxy as url:
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": url},
                               config_kwargs={"retries": {"max_attempts": 10, "mode": "standard"}},
                               skip_instance_cache=True)
        fs.pipe("probe/probe.bin", b"x" * 1000)
        for _ in range(20):
            assert fs.cat("probe/probe.bin") == b"x" * 1000
            fs.invalidate_cache()
    assert proxy.counts["503"] > 0 and proxy.counts["dropped"] > 0


# 4 -------------------------------------------------------------------------------------
def test_refused_shard(ray_local, s3_endpoint, tmp_path, figure):
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("refuse")
    tables = [pairs_table(16, seed=70 + s) for s in range(3)]
    for s, t in enumerate(tables):
        write_table(t, f"refuse/in/{s}.parquet", fs=fs)
    with FaultProxy(s3_endpoint, deny=r"/refuse/in/1\.parquet") as url:
        code, s = run_job(settings("s3://refuse/in/", "s3://refuse/out", endpoint=url))
        ids = ids_of("s3://refuse/out", settings("x", "y", endpoint=url).storage)
    figure(exit_code=code, tasks_failed=s["tasks_failed"], rows_out=len(ids),
           failure=s["failures"][0]["error"][:80] if s["failures"] else None)
    assert code == EXIT_PARTIAL
    assert {f["source"] for f in s["failures"]} == {"s3://refuse/in/1.parquet"}
    assert sorted(ids) == all_ids([tables[0], tables[2]])


# 5 -------------------------------------------------------------------------------------
BAD_CASES = [
    # (name, image bytes, caption, expected status, truncated)
    ("truncated_jpeg", im.truncated_jpeg(), "a grey square", "bad_image", None),
    ("not_an_image", b"GIF89a? no", "a thing", "bad_image", None),
    ("empty_bytes", b"", "a thing", "bad_image", None),
    ("null_image", None, "a thing", "bad_image", None),
    ("cmyk", im.cmyk_jpeg(), "a red square", "ok", False),
    ("gray16", im.gray16_png(), "a grey square", "ok", False),
    ("palette_transparent", im.palette_transparent_png(), "a red dot", "ok", False),
    ("rgba", im.rgba_png(), "a blue dot", "ok", False),
    ("exif_rotated", im.exif_rotated_jpeg()[0], "a green bar", "ok", False),
    ("one_pixel", im.one_pixel_png(), "a dot", "ok", False),
    ("bomb", im.bomb_png(), "a huge image", "bad_image", None),
    ("animated_gif", im.animated_gif(), "a red square", "ok", False),
    ("null_caption", png(1), None, "bad_caption", None),
    ("empty_caption", png(2), "", "bad_caption", None),
    ("whitespace_caption", png(3), " \t\n ", "bad_caption", None),
    ("megabyte_caption", png(4), "word " * 200_000, "ok", True),
    ("over_context", png(5), " ".join(["circle"] * 40), "ok", True),
    ("normal", png(6), caption(6), "ok", False),
]


def test_bad_input_shard(ray_local, tmp_path, figure):
    root = tmp_path / "in"
    root.mkdir()
    names = [c[0] for c in BAD_CASES]
    table = pa.table({"id": names, "image": pa.array([c[1] for c in BAD_CASES], pa.binary()),
                      "caption": pa.array([c[2] for c in BAD_CASES], pa.string())})
    write_table(table, str(root / "bad.parquet"))
    binary_caps = pa.table({"id": ["utf8_ok", "utf8_bad"], "image": [png(7), png(8)],
                            "caption": pa.array([b"a caf\xc3\xa9 photo", b"a \xff\xfe photo"],
                                                pa.binary())})
    write_table(binary_caps, str(root / "binary_captions.parquet"))
    t0 = time.time()
    code, s = run_job(settings(str(root), str(tmp_path / "out"), data={"keep_columns": []}))
    res = read_results(str(tmp_path / "out"))
    got = dict(zip(res.column("id").to_pylist(), res.column("status").to_pylist()))
    trunc = dict(zip(res.column("id").to_pylist(), res.column("caption_truncated").to_pylist()))
    expected = {c[0]: c[3] for c in BAD_CASES} | {"utf8_ok": "ok", "utf8_bad": "bad_caption"}
    mismatches = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
    figure(rows=len(expected), statuses_as_expected=len(expected) - len(mismatches),
           status_counts=s["status_counts"], seconds=round(time.time() - t0, 1))
    assert code == EXIT_OK
    assert not mismatches
    for name, *_rest, truncated in BAD_CASES:
        assert trunc[name] == truncated, name
    scores = dict(zip(res.column("id").to_pylist(), res.column("score").to_pylist()))
    assert all(scores[k] is not None for k, v in expected.items() if v == "ok")


# 6 -------------------------------------------------------------------------------------
def test_shard_level_faults(ray_local, tmp_path, figure):
    root = tmp_path / "in"
    root.mkdir()
    write_table(pairs_table(10, seed=80), str(root / "a_normal.parquet"))
    write_table(pairs_table(10, seed=81).slice(0, 0), str(root / "b_zero_rows.parquet"))
    full = io.BytesIO()
    pq.write_table(pairs_table(10, seed=82), full)
    (root / "c_half_written.parquet").write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    odd = pairs_table(10, seed=83)
    odd = pa.table({
        "id": pa.array(range(1000, 1010), pa.int64()),  # int ids
        "image": odd.column("image").cast(pa.large_binary()),
        "caption": odd.column("caption").cast(pa.large_string()),
        "extra": odd.column("extra"),
        "unexpected": pa.array(["x"] * 10),
    })
    write_table(odd, str(root / "d_other_schema.parquet"))
    code, s = run_job(settings(str(root), str(tmp_path / "out")))
    res = read_results(str(tmp_path / "out"))
    ids = res.column("id").to_pylist()
    figure(exit_code=code, files_empty=s["files_empty"], tasks_failed=s["tasks_failed"],
           rows_out=len(ids), failure=s["failures"][0]["error"][:90] if s["failures"] else None)
    assert code == EXIT_PARTIAL
    assert s["files_empty"] == 1
    assert [f["source"].rsplit("/", 1)[1] for f in s["failures"]] == ["c_half_written.parquet"]
    assert "Parquet footer" in s["failures"][0]["error"]
    assert "1000" in ids and len(ids) == 20  # int ids are stored as text
    assert res.schema.field("id").type == pa.string()


# security ------------------------------------------------------------------------------
def test_hostile_ids_never_shape_keys(ray_local, s3_endpoint, figure):
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.mkdir("keys")
    hostile = ["../../etc/passwd", "/abs/path", "a" * 2048, "x\x00y", "parts/evil.parquet",
               "<script>alert(1)</script>", "..", "%2e%2e%2f"]
    t = pairs_table(len(hostile), seed=95)
    t = t.set_column(0, "id", pa.array(hostile))
    write_table(t, "keys/in/a.parquet", fs=fs)
    code, s = run_job(settings("s3://keys/in/", "s3://keys/out", endpoint=s3_endpoint))
    keys = [k.removeprefix("keys/out/") for k in fs.find("keys/out")]
    ids = ids_of("s3://keys/out", settings("x", "y", endpoint=s3_endpoint).storage)
    figure(keys_written=len(keys), keys_matching_pattern=sum(bool(KEY.match(k)) for k in keys))
    assert code == EXIT_OK
    assert all(KEY.match(k) for k in keys), keys
    assert ids == hostile
    assert not [k for k in fs.find("keys") if not k.startswith(("keys/in/", "keys/out/"))]


def test_png_thumbnail_helper_is_sane():
    assert Image.open(io.BytesIO(png(0))).size == (56, 48)
