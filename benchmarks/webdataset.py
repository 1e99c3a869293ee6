"""Reading WebDataset shards against reading Parquet, the same images, from the local S3 store.

The same 2,048 pairs stored both ways: 640x480 camera-like JPEGs of the demo scenes
(``tests.images.camera_jpeg``, ~50 KB; 256 distinct images, each used eight times)
with a caption and, as DataComp ships them, a JSON of their metadata; as 4 WebDataset
shards (``<key>.jpg``, ``.txt``, ``.json``) and as 4 Parquet files (the same columns,
row groups of 256 rows). Each file is one task, planned as the job plans it
(``plan`` / ``plan_shards``), and read as a worker reads it: its batches of 256 rows
(``iter_rows`` / ``iter_sample_rows``, pinned to the planned ETag; a shard's chunks
fetched ahead in a pool of threads kept across tasks, as a worker keeps it), image and
caption cells in the Python lists the worker hands to the decoder.
Decoding and the engine are left out: they are the same work for both.

Through the store with no delay and with 30 ms a request (object storage that is far
away), the formats alternating, ``ROUNDS`` rounds. Reported per format and delay: rows
per second (the median round, and every round), this process's CPU per row (what a
reader takes from the cores that decode), requests per file, and WebDataset's rate over
Parquet's.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FILES, ROWS_PER_FILE, DISTINCT, BATCH, ROW_GROUP = 4, 512, 256, 256, 256
DELAYS_MS = (0, 30)
ROUNDS = 9
FORMATS = ("parquet", "webdataset")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def write_inputs(root: Path) -> tuple[dict[str, list[Path]], float]:
    """The pairs as Parquet files and as WebDataset shards, the same bytes in both; and the
    JPEGs' mean size."""
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.demo.scenes import add_member, make_pair
    from tests import images as im

    pairs = [make_pair(7, i) for i in range(DISTINCT)]
    jpegs = [im.camera_jpeg(p.image, (640, 480), seed=i) for i, p in enumerate(pairs)]
    out: dict[str, list[Path]] = {f: [] for f in FORMATS}
    for f in FORMATS:
        (root / f).mkdir()
    for k in range(FILES):
        idx = range(k * ROWS_PER_FILE, (k + 1) * ROWS_PER_FILE)
        keys = [f"{k:05d}{i:04d}" for i in idx]
        meta = [{"key": key, "uid": f"{i:032x}", "url": f"https://example.com/{i}.jpg",
                 "width": 640, "height": 480} for key, i in zip(keys, idx)]
        images = [jpegs[i % DISTINCT] for i in idx]
        captions = [pairs[i % DISTINCT].caption for i in idx]
        table = pa.table({"key": keys, "image": images, "caption": captions,
                          "uid": [m["uid"] for m in meta], "url": [m["url"] for m in meta]})
        path = root / "parquet" / f"{k:05d}.parquet"
        pq.write_table(table, path, row_group_size=ROW_GROUP)
        out["parquet"].append(path)
        path = root / "webdataset" / f"{k:05d}.tar"
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
            for key, img, cap, m in zip(keys, images, captions, meta):
                add_member(tar, f"{key}.jpg", img)
                add_member(tar, f"{key}.txt", cap.encode())
                add_member(tar, f"{key}.json", json.dumps(m).encode())
        out["webdataset"].append(path)
    return out, sum(map(len, jpegs)) / len(jpegs)


def _read(fmt: str, prefix: str, storage, pool: ThreadPoolExecutor) -> int:
    """Plan ``prefix`` as the job does, then read every task as a worker does; rows read."""
    from pipeline.config import DataSettings
    from pipeline.io.shards import iter_rows
    from pipeline.io.storage import filesystem, list_inputs
    from pipeline.io.webdataset import iter_sample_rows
    from pipeline.job.plan import plan, plan_shards

    if fmt == "webdataset":
        data = DataSettings(format="webdataset")
        tasks = plan_shards(list_inputs(prefix, storage, fmt), storage, "bench")
    else:
        data = DataSettings(id_column="key")
        tasks = plan(list_inputs(prefix, storage), storage, ROWS_PER_FILE, "bench")
    rows = 0
    for task in tasks:
        fs, path = filesystem(task.uri, storage)
        batches = (iter_sample_rows(fs, path, task, data, BATCH, pool) if task.shard
                   else iter_rows(fs, path, task, data, BATCH))
        for batch in batches:
            assert len(batch.captions) == len(batch) and all(batch.images)
            rows += len(batch)
    return rows


def run(rounds: int = ROUNDS) -> dict:
    import s3fs

    from pipeline.config import StorageSettings
    from pipeline.devtools.s3local import LOCAL_S3_ENV, StoreControl, local_s3
    from pipeline.io.webdataset import READ_AHEAD

    os.environ.update(LOCAL_S3_ENV)  # the local store's dummy credentials
    t0 = time.perf_counter()
    rates: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    requests: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="nibt-bench-wds-") as tmp, local_s3() as url, \
            ThreadPoolExecutor(2 * (READ_AHEAD + 1), thread_name_prefix="nibt-shard-read") as pool:
        inputs, jpeg_bytes = write_inputs(Path(tmp))
        sizes = {f: sum(p.stat().st_size for p in paths) for f, paths in inputs.items()}
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": url})
        fs.mkdir("bench")
        for f, paths in inputs.items():
            for p in paths:
                fs.put(str(p), f"bench/{f}/{p.name}")
        t_data = time.perf_counter() - t0
        store, storage = StoreControl(url), StorageSettings(endpoint_url=url)
        for delay in DELAYS_MS:
            store.set_delay(delay)
            for k in range(rounds):
                for f in FORMATS if k % 2 == 0 else FORMATS[::-1]:
                    name = f"{f} {delay}ms"
                    store.reset()
                    c, t = _cpu(), time.perf_counter()
                    rows = _read(f, f"s3://bench/{f}/", storage, pool)
                    seconds, spent = time.perf_counter() - t, _cpu() - c
                    assert rows == FILES * ROWS_PER_FILE, (f, rows)
                    rates.setdefault(name, []).append(round(rows / seconds, 1))
                    cpu.setdefault(name, []).append(round(1e6 * spent / rows, 1))
                    requests[name] = {op: round(n / FILES, 2)
                                      for op, n in store.by_operation("bench/").items()}
    med = {name: statistics.median(v) for name, v in rates.items()}
    return {
        "pairs": FILES * ROWS_PER_FILE, "files": FILES, "batch_rows": BATCH,
        "parquet_row_group": ROW_GROUP, "rounds": rounds, "delays_ms": list(DELAYS_MS),
        "image": "640x480 camera-like JPEG, quality 90",
        "mean_image_bytes": round(jpeg_bytes),
        "input_mb": {f: round(n / 2**20, 1) for f, n in sizes.items()},
        "rows_per_s": rates,
        "median_rows_per_s": med,
        "cpu_us_per_row": {name: statistics.median(v) for name, v in cpu.items()},
        "requests_per_file": requests,
        "webdataset_over_parquet": {f"{d}ms": round(med[f"webdataset {d}ms"]
                                                    / med[f"parquet {d}ms"], 3)
                                    for d in DELAYS_MS},
        "seconds": {"data": round(t_data, 1), "total": round(time.perf_counter() - t0, 1)},
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
