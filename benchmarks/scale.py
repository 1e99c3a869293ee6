"""Cost linear in rows: the demo-model job at 512, 2,048 and 8,192 pairs.

Every size runs the same 256-row tasks from the moto S3 endpoint on
127.0.0.1. Sizes run twice in the order 512, 2,048, 8,192, 8,192, 2,048, 512,
and each size keeps its faster run, so that this machine's drift (up to ~2x
within minutes) does not pass for a cost that grows with rows. The engine's
own rate inside each run is reported beside it.
"""

from __future__ import annotations

import os

import s3fs

from benchmarks.job import run_job_cli, upload
from pipeline.devtools.s3local import LOCAL_S3_ENV, local_s3

SIZES = (512, 2048, 8192)


def run() -> dict:
    os.environ.update(LOCAL_S3_ENV)
    runs: dict[int, list[dict]] = {n: [] for n in SIZES}
    with local_s3() as endpoint:
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
        fs.mkdir("bench")
        for n in SIZES:
            upload(fs, f"bench/demo{n}", n, n // 256, 64)  # the same 256-row task everywhere
        for i, n in enumerate((*SIZES, *reversed(SIZES))):
            job = run_job_cli(endpoint, f"s3://bench/demo{n}/", f"s3://bench/out-{i}-{n}", [
                "model=demo", "run.rows_per_task=256"])
            runs[n].append({
                "job_pairs_per_s": job["pairs_per_second"],
                "engine_inside_job_pairs_per_s": job["engine_pairs_per_second"],
                "ms_per_pair": round(1000 / job["pairs_per_second"], 2),
                # what the job adds per pair beyond its engine, drift-proof
                "overhead_ms_per_pair": round(
                    1000 / job["pairs_per_second"] - 1000 / job["engine_pairs_per_second"], 2),
                "driver_peak_rss_mb": job["driver_peak_rss_mb"],
                "worker_peak_rss_mb": job["worker_peak_rss_mb"],
                "seconds": job["seconds"],
            })
    best = {n: min(r, key=lambda x: x["ms_per_pair"]) for n, r in runs.items()}
    ms = [b["ms_per_pair"] for b in best.values()]

    def spread(key: str) -> float:
        vals = [x[key] for r in runs.values() for x in r]
        return round(max(vals) / min(vals), 3)

    return {
        "runs": {str(n): r for n, r in runs.items()},
        "best_ms_per_pair": {str(n): b["ms_per_pair"] for n, b in best.items()},
        "ms_per_pair_max_over_min": round(max(ms) / min(ms), 3),
        "driver_rss_max_over_min": spread("driver_peak_rss_mb"),
        "worker_rss_max_over_min": spread("worker_peak_rss_mb"),
    }
