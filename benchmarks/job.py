"""The audit job's throughput against the engine alone, and its memory as rows grow.

Data is read from a real S3 endpoint on 127.0.0.1 (moto). The engine figure is
measured in this process on the same model, batch size and thread count, and
includes the metrics the job computes per pair, so the ratio is what reading,
decoding, writing and Ray cost.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import s3fs
import torch
from PIL import Image

from benchmarks.common import best_seconds, make_pairs
from pipeline.devtools.s3local import LOCAL_S3_ENV, local_s3
from pipeline.engine.metrics import confidence
from pipeline.engine.model import load_clip
from pipeline.engine.nibt import NIBT


def upload(fs: s3fs.S3FileSystem, prefix: str, n: int, shards: int, size: int) -> None:
    per = n // shards
    for s in range(shards):
        with fs.open(f"{prefix}/shard-{s:03d}.parquet", "wb") as f:
            pq.write_table(make_pairs(per, s, size), f, row_group_size=32)


def run_job_cli(endpoint: str, inp: str, out: str, overrides: list[str]) -> dict:
    env = dict(os.environ, **LOCAL_S3_ENV, NIBT_LOG_DIR=tempfile.mkdtemp(prefix="nibt-bench-"))
    r = subprocess.run(
        [sys.executable, "-m", "pipeline", f"input={inp}", f"output={out}", "storage=s3",
         f"storage.endpoint_url={endpoint}", "run.progress=false", *overrides],
        capture_output=True, text=True, env=env, check=False, timeout=3600,
    )
    if r.returncode != 0:
        raise RuntimeError(f"job failed ({r.returncode}): {r.stderr[-2000:]}")
    return json.loads(r.stdout)


def _decoded(clip, rows: pa.Table) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels and tokens of ``rows``, decoded with plain PIL and the model's transform."""
    pixels = torch.stack([clip.preprocess(Image.open(io.BytesIO(b)).convert("RGB"))
                          for b in rows.column("image").to_pylist()])
    return pixels, clip.tokenize(rows.column("caption").to_pylist())


def engine_rate(name: str, batch: int, layer_args: dict, steps: int, table: pa.Table) -> dict:
    """The engine alone on the first ``batch`` pairs of ``table`` (decoded as the job
    decodes them), with and without the metrics the job computes per pair."""
    torch.set_num_threads(2)
    clip = load_clip(name, None)
    pixels, tokens = _decoded(clip, table.slice(0, batch))
    engine = NIBT(clip, steps=steps, **layer_args)
    attr_s = best_seconds(lambda: engine.attribute(pixels, tokens), repeats=5)
    full_s = best_seconds(
        lambda: confidence(clip, pixels, tokens, engine.attribute(pixels, tokens)), repeats=5)
    # The like-for-like peer of a job: every batch of the first ``through`` pairs once,
    # as the job meets them (a best-of-5 on one batch flatters the engine)
    through = min(table.num_rows, 128)
    t0 = time.perf_counter()
    for i in range(0, through, batch):
        px, tk = _decoded(clip, table.slice(i, batch))
        confidence(clip, px, tk, engine.attribute(px, tk))
    pass_s = time.perf_counter() - t0
    return {"attribute_pairs_per_s": round(batch / attr_s, 3),
            "attribute_and_metrics_pairs_per_s": round(batch / full_s, 3),
            "one_pass_pairs_per_s": round(through / pass_s, 3),
            "one_pass_pairs": through}


def run() -> dict:
    os.environ.update(LOCAL_S3_ENV)
    out: dict = {}
    with local_s3() as endpoint:
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
        fs.mkdir("bench")
        # 1. throughput: ViT-B-32 (random weights), batch 8, layer 9, 10 steps; the engine
        #    is timed on the same pairs just before each job (this machine's speed drifts)
        for n in (256, 1024):
            upload(fs, f"bench/b32-{n}", n, 4, 320)
            eng = engine_rate("ViT-B-32", 8, {"layer": 9}, 10, make_pairs(n // 4, 0, 320))
            job = run_job_cli(endpoint, f"s3://bench/b32-{n}/", f"s3://bench/out-b32-{n}", [
                "model=vit_b_32", "model.pretrained=null", "run.rows_per_task=64"])
            out[f"job_vit_b_32_{n}_pairs"] = {
                "engine": eng,
                "job_pairs_per_s": job["pairs_per_second"],
                "engine_inside_job_pairs_per_s": job["engine_pairs_per_second"],
                "job_vs_engine_inside_job": round(
                    job["pairs_per_second"] / job["engine_pairs_per_second"], 3),
                "job_vs_engine_with_metrics": round(
                    job["pairs_per_second"] / eng["attribute_and_metrics_pairs_per_s"], 3),
                "job_vs_engine_one_pass": round(
                    job["pairs_per_second"] / eng["one_pass_pairs_per_s"], 3),
                "job_seconds_total": job["seconds"],
                "worker_peak_rss_mb": job["worker_peak_rss_mb"],
                "driver_peak_rss_mb": job["driver_peak_rss_mb"],
            }
    return out
