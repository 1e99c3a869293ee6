"""`make bench-gpu`: one prepared script for a GPU machine (no network, < 5 minutes).

Engine and job pairs/s for ViT-B-32 and ViT-L-14 (random weights) in bf16,
achieved TFLOP/s against the device's bf16 matmul rate measured in the same
run, and GPU utilisation sampled while the job runs. Target on one H200,
ViT-B-32, image + text, 10 steps: >= 2,000 pairs/s end to end.

The decode paths side by side on camera-size JPEGs (640x480, quality 90):
one actor's decoder per path and worker count (open_clip's transform, exact,
fast, and the device path's nvJPEG), nvJPEG's pixels against PIL's, and the
ViT-B-32 job with ``data.decode`` exact, fast and device (section
``jobs-decode``), so that one run decides the default beside a GPU.

    python -m benchmarks.gpu [--pairs 16384] [--out bench-results/gpu.json]
    python -m benchmarks.gpu --smoke   # the same steps at toy sizes on CPU

The results file is rewritten after every section, so a run stopped at its
time limit still leaves what it measured.
"""

from __future__ import annotations

import argparse
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
import pyarrow.parquet as pq
import torch

from benchmarks.common import WORDS, count_flops, decode_rate, make_pairs


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bf16_matmul_tflops(device: str, n: int = 8192, repeats: int = 20) -> float:
    """The device's dense bf16 matmul rate, measured now (the ceiling for achieved TFLOP/s)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t) / 1e12


def timed(fn, device: str, repeats: int = 3) -> float:
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def engine(name: str, batch: int, peak: float, device: str, compile_: bool = False) -> dict:
    """Engine alone: one preprocessed batch already on the device, image + text, 10 steps."""
    from pipeline.engine.model import load_clip
    from pipeline.engine.nibt import NIBT
    from pipeline.job.attribute import Attributor

    precision = "bf16" if device == "cuda" else "fp32"
    clip = load_clip(name, None, device=device, precision=precision)
    h, w = clip.image.image_size
    images = torch.randn(batch, 3, h, w, device=device)
    caps = [" ".join(np.random.default_rng(i).choice(WORDS, 8)) for i in range(batch)]
    tokens = clip.tokenize(caps).to(device)
    eng = NIBT(clip, steps=10)
    flops = count_flops(lambda: eng.attribute(images, tokens))  # before compiling: eager ops
    t_compile = 0.0
    if compile_:
        for tower in (clip.image, clip.text):
            tower.suffix = torch.compile(tower.suffix, dynamic=True)
        t = time.perf_counter()
        eng.attribute(images, tokens)
        sync(device)
        t_compile = time.perf_counter() - t
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    secs = timed(lambda: eng.attribute(images, tokens), device)
    # what an actor computes per batch: engine, metrics, results back on the host
    full = timed(lambda: Attributor(clip, eng)(images, tokens), device)
    out = {"model": name, "batch": batch, "precision": precision, "compiled": compile_,
           "pairs_per_s": round(batch / secs, 1),
           "with_metrics_pairs_per_s": round(batch / full, 1),
           "achieved_tflops": round(flops / secs / 1e12, 3),
           "fraction_of_bf16_matmul": round(flops / secs / 1e12 / peak, 3)}
    if compile_:
        out["first_call_s"] = round(t_compile, 1)
    if device == "cuda":
        out["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    return out


def decode_rates(images: list[bytes], workers: tuple[int, ...], device: str) -> dict:
    """Images/s of one actor's decoder on camera-size JPEGs to ViT-B-32's 224 px, by
    path and worker count: open_clip's whole transform in threads (the peer), the
    exact and fast paths in processes (``ProcessDecoder``, the default beside a
    GPU), and the device path (``DeviceDecoder``: JPEGs in batches on ``device``,
    nvJPEG on a GPU; anything else on the fast path in one process)."""
    import open_clip

    from pipeline.io.images import DEFAULT_MAX_CAPTION_CHARS, DEFAULT_MAX_PIXELS
    from pipeline.job.decode_pool import ProcessDecoder, ThreadDecoder
    from pipeline.job.device_decode import DeviceDecoder
    from pipeline.job.preprocess import fast_preprocess

    _, _, whole = open_clip.create_model_and_transforms("ViT-B-32")
    torch.set_num_threads(1)
    fast = fast_preprocess(whole)
    limits = (DEFAULT_MAX_PIXELS, DEFAULT_MAX_CAPTION_CHARS)
    captions = ["a photo"] * len(images)
    kinds = {
        "open_clip_threads": lambda n: ThreadDecoder(whole, *limits, threads=n,
                                                     one_torch_thread=True),
        "exact_processes": lambda n: ProcessDecoder(fast.split.image, *limits, processes=n),
        "fast_processes": lambda n: ProcessDecoder(fast, *limits, processes=n,
                                                   draft=fast.draft_size),
    }
    out: dict = {}
    for kind, make in kinds.items():
        for n in workers:
            out[f"{kind}_{n}"] = round(decode_rate(make(n), images, captions, 256), 1)
    dev = DeviceDecoder(ProcessDecoder(fast, *limits, processes=1, draft=fast.draft_size),
                        fast.geometry, *limits, device=device)
    out["device"] = round(decode_rate(dev, images, captions, 256), 1)
    out["device_fallbacks"] = dev.fallbacks
    return out


def device_pixels(images: list[bytes], device: str) -> dict:
    """The device path's pixels against PIL's (libjpeg-turbo, fancy chroma upsampling):
    full-size decodes, and the 224 px crops against the exact path's."""
    import open_clip
    from torchvision.io import ImageReadMode, decode_jpeg

    from pipeline.io.images import decode_image
    from pipeline.job.preprocess import fast_preprocess, resize_crop

    fast = fast_preprocess(open_clip.create_model_and_transforms("ViT-B-32")[2])
    full, crop = [], []
    data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in images]
    for blob, x in zip(images, decode_jpeg(data, mode=ImageReadMode.RGB, device=device)):
        pil = torch.from_numpy(np.asarray(decode_image(blob)).copy())
        full.append((x.permute(1, 2, 0).cpu().int() - pil.int()).abs().float())
        mine = resize_crop(x.permute(1, 2, 0), fast.geometry).cpu()
        crop.append((mine.int() - torch.from_numpy(fast.split.image(
            decode_image(blob))).int()).abs().float())
    f, c = torch.stack(full), torch.stack(crop)
    return {"images": len(images), "full_size_mean_abs": round(float(f.mean()), 3),
            "full_size_max_abs": int(f.max()), "crop_224_mean_abs": round(float(c.mean()), 3),
            "crop_224_max_abs": int(c.max())}


def _shard(args: tuple[str, int, int]) -> str:
    path, seed, n = args
    pq.write_table(make_pairs(n, seed, 224), path, row_group_size=256)
    return path


def write_inputs(folder: Path, pairs: int, per: int = 1024) -> Path:
    """``pairs`` JPEG 224x224 image-caption rows in Parquet shards of ``per`` rows."""
    folder.mkdir(parents=True, exist_ok=True)
    per = min(per, pairs)
    with ProcessPoolExecutor(max_workers=min(16, os.cpu_count() or 4)) as pool:
        list(pool.map(_shard, [(str(folder / f"{i:04d}.parquet"), i, per)
                               for i in range(max(1, pairs // per))]))
    return folder


def camera_jpegs(n: int, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    """``n`` photo-like JPEGs of ``size`` at quality 90 (``tests.images.photo_jpeg``)."""
    from tests.images import photo_jpeg

    with ProcessPoolExecutor(max_workers=min(16, os.cpu_count() or 4)) as pool:
        return list(pool.map(photo_jpeg, range(n), [size] * n))


def write_camera_inputs(folder: Path, pairs: int, distinct: int, per: int = 1024) -> Path:
    """``pairs`` rows of camera-size JPEGs (``distinct`` different ones, repeated: the
    decode work is the same) with captions, in Parquet shards of ``per`` rows."""
    import pyarrow as pa

    folder.mkdir(parents=True, exist_ok=True)
    images = camera_jpegs(distinct)
    per = min(per, pairs)
    for k in range(max(1, pairs // per)):
        rows = [images[(k * per + i) % distinct] for i in range(per)]
        caps = [" ".join(np.random.default_rng([k, i]).choice(WORDS, 6)) for i in range(per)]
        pq.write_table(pa.table({"image": rows, "caption": caps}),
                       folder / f"{k:04d}.parquet", row_group_size=256)
    return folder


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


def job(model: str, data: Path, workdir: Path, tag: str, overrides: tuple[str, ...] = ()) -> dict:
    """The whole job (``python -m pipeline``: Ray, actors, Parquet in and out) on ``data``,
    with the defaults (batch size, actors per GPU, tasks in flight) unless overridden."""
    sampler = GpuSampler()
    sampler.start()
    r = subprocess.run(
        [sys.executable, "-m", "pipeline", f"input={data}", f"output={workdir}/out-{tag}",
         f"model={model}", "model.pretrained=null", "run.rows_per_task=2048",
         "run.progress=false", *overrides],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, NIBT_LOG_DIR=str(workdir / "logs")),
    )
    sampler.stop.set()
    if r.returncode != 0:
        return {"error": r.stderr[-3000:]}
    s = json.loads(r.stdout)
    # GPU samples include Ray's start and the model load: report the busy share of samples
    # taken once the GPU had started working, and the plain mean.
    busy = sampler.samples
    first = next((i for i, v in enumerate(busy) if v > 0), len(busy))
    active = busy[first:]
    return {"model": model, "overrides": list(overrides), "pairs": s.get("rows_out"),
            "batch_size": s.get("batch_size"), "job_pairs_per_s": s.get("pairs_per_second"),
            "engine_pairs_per_s_inside_job": s.get("engine_pairs_per_second"),
            "engine_share_of_actor_time": s.get("engine_share_of_actor_time"),
            "actors": s.get("actors"), "batch_splits": s.get("batch_splits"),
            "decode_processes": s.get("decode_processes"),
            "seconds_total": s.get("seconds"),
            "gpu_util_mean_pct_from_first_busy": round(float(np.mean(active)), 1) if active else None,
            "gpu_util_samples": len(busy)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=16384)
    ap.add_argument("--out", default="bench-results/gpu.json")
    ap.add_argument("--smoke", action="store_true", help="toy sizes on CPU: checks the script")
    ap.add_argument("--sections",
                    default="engine,decode,job,jobs-decode,jobs-shared,l14,compile",
                    help="comma-separated subset of the default list")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="skip the optional sections (torch.compile) past this many seconds")
    args = ap.parse_args()
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device: run this on a GPU machine (or --smoke)"}))
        return 2
    t0 = time.time()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    res: dict = {"device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke)",
                 "torch": torch.__version__, "cpus": os.cpu_count(), "engine": [], "job": []}

    def save(section: dict | None = None) -> None:
        if section is not None:
            print(json.dumps(section), file=sys.stderr, flush=True)
        res["seconds"] = round(time.time() - t0, 1)
        out.write_text(json.dumps(res, indent=2) + "\n")

    want = set(args.sections.split(","))
    res["bf16_matmul_tflops"] = round(bf16_matmul_tflops(device, 512 if args.smoke else 8192), 3)
    save()
    sizes = ((("ViT-B-32", 2), ("ViT-L-14", 1)) if args.smoke else
             (("ViT-B-32", 256), ("ViT-B-32", 1024), ("ViT-L-14", 128)))
    for name, batch in sizes if "engine" in want else ():
        res["engine"].append(engine(name, batch, res["bf16_matmul_tflops"], device))
        if device == "cuda":
            torch.cuda.empty_cache()
        save(res["engine"][-1])
    pairs = 16 if args.smoke else args.pairs
    # on CPU the job decodes in threads: the smoke run takes the GPU default (processes)
    toy = ("model.batch_size=4", "cluster.decode_processes=1") if args.smoke else ()
    with tempfile.TemporaryDirectory(prefix="nibt-gpu-") as tmp:
        work = Path(tmp)
        data = write_inputs(work / "in", pairs)
        if "decode" in want:  # camera-size JPEGs: what real datasets hold
            imgs = camera_jpegs(16 if args.smoke else 512)
            res["decode_images_per_s"] = decode_rates(
                imgs, (1, 2) if args.smoke else (1, 4, 8, 15), device)
            save(res["decode_images_per_s"])
            res["device_pixels_vs_pil"] = device_pixels(imgs[:64], device)
            save(res["device_pixels_vs_pil"])
        if "job" in want:
            res["job"].append(job("vit_b_32", data, work, "b32", toy))
            save(res["job"][-1])
        if "jobs-decode" in want:  # the decode paths on camera-size JPEGs, side by side
            camera = write_camera_inputs(work / "in-camera", pairs, 16 if args.smoke else 512)
            for path in ("exact", "fast", "device"):
                res["job"].append(job("vit_b_32", camera, work, f"camera-{path}",
                                      (*toy, f"data.decode={path}")))
                save(res["job"][-1])
        if "jobs-shared" in want and not args.smoke:  # peers of the defaults
            for tag, over in (("threads", ("cluster.decode_processes=0",)),
                              ("one-actor", ("cluster.gpus_per_actor=1.0",)),
                              ("one-actor-b1024", ("cluster.gpus_per_actor=1.0",
                                                   "model.batch_size=1024")),
                              ("one-task", ("cluster.tasks_per_actor=1",))):
                if time.time() - t0 > args.budget_s:  # peers in order of interest
                    res.setdefault("skipped_for_time", []).append(tag)
                    continue
                res["job"].append(job("vit_b_32", data, work, tag, over))
                save(res["job"][-1])
        if "l14" in want:
            small = write_inputs(work / "in-small", max(pairs // 8, 2), per=min(1024, pairs))
            res["job"].append(job("vit_l_14", small, work, "l14", toy))
            save(res["job"][-1])
    if "compile" in want and time.time() - t0 < args.budget_s:  # optional: last
        res["engine"].append(engine("ViT-B-32", 2 if args.smoke else 1024,
                                    res["bf16_matmul_tflops"], device, compile_=True))
        save(res["engine"][-1])
    save()
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
