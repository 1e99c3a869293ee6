"""`make bench-gpu`: one prepared script for a GPU machine (no network, < 5 minutes).

Engine and job pairs/s for ViT-B-32 and ViT-L-14 (random weights) in bf16,
achieved TFLOP/s against the device's bf16 matmul rate measured in the same
run, and GPU utilisation sampled while the job runs. Target on one H200,
ViT-B-32, image + text, 10 steps: >= 2,000 pairs/s end to end.

    python -m tests.bench.gpu [--pairs 8192] [--out bench-results/gpu.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tests.bench.common import count_flops

WORDS = ["red", "blue", "green", "circle", "square", "photo", "small", "dog", "beach", "street"]


def bf16_matmul_tflops(n: int = 8192, repeats: int = 20) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e12


def timed(fn, repeats: int = 3) -> float:
    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def engine(name: str, batch: int, peak: float) -> dict:
    from pipeline.model import load_clip
    from pipeline.nibt import NIBT

    clip = load_clip(name, None, device="cuda", precision="bf16")
    h, w = clip.image.image_size
    images = torch.randn(batch, 3, h, w, device="cuda")
    caps = [" ".join(np.random.default_rng(i).choice(WORDS, 8)) for i in range(batch)]
    tokens = clip.tokenize(caps).cuda()
    eng = NIBT(clip, steps=10)
    secs = timed(lambda: eng.attribute(images, tokens))
    flops = count_flops(lambda: eng.attribute(images, tokens))
    out = {"model": name, "batch": batch, "pairs_per_s": round(batch / secs, 1),
           "achieved_tflops": round(flops / secs / 1e12, 1),
           "fraction_of_bf16_matmul": round(flops / secs / 1e12 / peak, 3),
           "peak_gpu_mem_gb": round(torch.cuda.max_memory_allocated() / 2**30, 1)}
    return out


def _shard(args: tuple[str, int, int]) -> str:
    from PIL import Image

    path, seed, n = args
    rng = np.random.default_rng(seed)
    imgs, caps = [], []
    for _ in range(n):
        img = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize(
            (224, 224), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        imgs.append(buf.getvalue())
        caps.append("a " + " ".join(rng.choice(WORDS, int(rng.integers(3, 10)))))
    pq.write_table(pa.table({"image": imgs, "caption": caps}), path, row_group_size=256)
    return path


class GpuSampler(threading.Thread):
    """Samples nvidia-smi utilisation every 0.2 s while the job runs."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                     "-i", "0"], capture_output=True, text=True, timeout=5).stdout
                self.samples.append(int(out.strip().splitlines()[0]))
            except Exception:
                pass
            self.stop.wait(0.2)


def job(model: str, pairs: int, batch: int, workdir: Path) -> dict:
    data = workdir / f"in-{model}"
    data.mkdir(parents=True, exist_ok=True)
    per = 1024
    with ProcessPoolExecutor(max_workers=min(16, os.cpu_count() or 4)) as pool:
        list(pool.map(_shard, [(str(data / f"{i:04d}.parquet"), i, per)
                               for i in range(pairs // per)]))
    sampler = GpuSampler()
    sampler.start()
    r = subprocess.run(
        [sys.executable, "-m", "pipeline", f"input={data}", f"output={workdir}/out-{model}",
         f"model={model}", "model.pretrained=null", f"model.batch_size={batch}",
         "run.rows_per_task=2048", "run.progress=false"],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, NIBT_LOG_DIR=str(workdir / "logs")),
    )
    sampler.stop.set()
    if r.returncode != 0:
        return {"error": r.stderr[-1500:]}
    summary = json.loads(r.stdout)
    busy = sampler.samples
    return {"pairs": pairs, "batch": batch, "job_pairs_per_s": summary["pairs_per_second"],
            "seconds_total": summary["seconds"],
            "gpu_util_mean_pct": round(float(np.mean(busy)), 1) if busy else None,
            "gpu_util_samples": len(busy)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=8192)
    ap.add_argument("--out", default="bench-results/gpu.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device: run this on a GPU machine"}))
        return 2
    t0 = time.time()
    peak = bf16_matmul_tflops()
    res: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
                 "bf16_matmul_tflops": round(peak, 1), "engine": [], "job": {}}
    for name, batch in (("ViT-B-32", 256), ("ViT-B-32", 1024), ("ViT-L-14", 128)):
        res["engine"].append(engine(name, batch, peak))
        torch.cuda.empty_cache()
        print(json.dumps(res["engine"][-1]), file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="nibt-gpu-") as tmp:
        res["job"]["vit_b_32"] = job("vit_b_32", args.pairs, 1024, Path(tmp))
        print(json.dumps(res["job"]["vit_b_32"]), file=sys.stderr, flush=True)
        res["job"]["vit_l_14"] = job("vit_l_14", args.pairs // 4, 128, Path(tmp))
    res["seconds"] = round(time.time() - t0, 1)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
