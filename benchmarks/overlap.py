"""Tasks in flight per actor: 1 (each task reads, decodes, computes and writes in
turn) against 2 (the next task reads and decodes while this one computes).

A decode-heavy job, where the overlap matters most: the demo model (small
compute) on 512x512 JPEGs, one 64-pair batch per task, local Parquet, one CPU
actor. Runs alternate 1, 2, 2, 1 so that this machine's drift hits both alike.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from benchmarks.common import make_pairs


def job(inp: Path, out: Path, tasks_per_actor: int) -> dict:
    r = subprocess.run(
        [sys.executable, "-m", "pipeline", f"input={inp}", f"output={out}", "model=demo",
         "model.batch_size=64", "run.rows_per_task=64", "run.progress=false",
         f"cluster.tasks_per_actor={tasks_per_actor}"],
        capture_output=True, text=True, timeout=1800, check=False,
        env=dict(os.environ, NIBT_LOG_DIR=str(out) + "-logs"),
    )
    if r.returncode != 0:
        raise RuntimeError(f"job failed ({r.returncode}): {r.stderr[-2000:]}")
    return json.loads(r.stdout)


def run(pairs: int = 1024) -> dict:
    with tempfile.TemporaryDirectory(prefix="nibt-overlap-") as tmp:
        inp = Path(tmp) / "in"
        inp.mkdir()
        for s in range(4):
            pq.write_table(make_pairs(pairs // 4, s, 512), inp / f"{s}.parquet", row_group_size=64)
        rates: dict[int, list[float]] = {1: [], 2: []}
        engine: dict[int, list[float]] = {1: [], 2: []}
        for i, k in enumerate((1, 2, 2, 1)):
            s = job(inp, Path(tmp) / f"out-{i}", k)
            rates[k].append(s["pairs_per_second"])
            engine[k].append(s["engine_share_of_actor_time"])
    mean = {k: sum(v) / len(v) for k, v in rates.items()}
    return {
        "pairs": pairs, "model": "demo", "image_px": 512, "rows_per_task": 64,
        "job_pairs_per_s": {f"tasks_per_actor_{k}": [round(x, 2) for x in v]
                            for k, v in rates.items()},
        "engine_share_of_actor_time": {f"tasks_per_actor_{k}": [round(x, 3) for x in v]
                                       for k, v in engine.items()},
        "speedup_2_over_1": round(mean[2] / mean[1], 3),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
