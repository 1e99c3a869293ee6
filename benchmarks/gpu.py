"""`make bench-gpu`: what a short GPU loan needs measured, in bounded sections.

    python -m benchmarks.gpu [--sections engine,decode,job] [--out bench-results/gpu.json]
    python -m benchmarks.gpu --smoke   # the same steps at toy sizes on a CPU

Each section runs in a process of its own (a CUDA error in one cannot poison the
next) for at most ``SECTION_LIMIT_S`` seconds, and the whole for at most
``TOTAL_LIMIT_S``; the results file is rewritten after every section, so a run cut
short keeps what it measured. The exit status is 1 when anything failed: a section
that raised, ran out of time or printed a CUDA error; a job that exited non-zero,
has a row in status ``error`` or fell back to the CPU for more than
``FALLBACK_BOUND`` of its device-path JPEGs; device pixels or attributions further
from the fast path's than ``PIXEL_BOUND`` / ``PEARSON_BOUND``. Every failure is
listed under ``errors``.

* ``engine``: ViT-B-32 (random weights, bf16, 10 steps, image and text) at the
  job's own batch size (``auto_batch_size``) on captions of realistic lengths (8
  to 77 tokens), timed by phase with CUDA events: the copy to the device, the
  prefix, the image and text integrals, the metrics, the copy back; achieved
  TFLOP/s against the device's bf16 matmul rate measured in the same run; peak
  memory beside the memory model's prediction.
* ``decode``: camera-size JPEGs (640x480) through the fast path (processes) and
  the device path (nvJPEG): images/s, fallbacks, the device pixels against the
  fast path's, and NIBT maps from both (Pearson).
* ``job``: the whole job (``python -m pipeline``: Ray, actors, Parquet in and out)
  on camera-size JPEGs with ``data.decode`` fast and device; each summary parsed
  from the job's last line of output; the job's rate over the engine's with
  metrics from the ``engine`` section.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

SECTIONS = ("engine", "decode", "job")
SECTION_LIMIT_S, TOTAL_LIMIT_S = 240, 480
#: Share of device-path JPEGs that may fall back to the CPU before the run fails.
FALLBACK_BOUND = 0.01
#: Device pixels against the fast path's (mean |difference|, levels) and NIBT maps from
#: both (the smallest Pearson over the images).
PIXEL_BOUND, PEARSON_BOUND = 1.0, 0.99
CUDA_SIGNS = ("CUDA error", "device-side assert", "illegal memory access", "cuDNN error",
              "CUBLAS_STATUS")


class Sizes:
    """What a section runs: real sizes on a GPU, toy ones for ``--smoke`` on a CPU."""

    def __init__(self, smoke: bool) -> None:
        self.smoke = smoke
        self.device = "cpu" if smoke else "cuda"
        self.model = "nibt-demo" if smoke else "ViT-B-32"  # the engine and decode sections
        self.job_model = "demo" if smoke else "vit_b_32"  # conf/model/<name>.yaml
        self.precision = "fp32" if smoke else "bf16"
        self.steps = 2 if smoke else 10
        self.batch = 4 if smoke else None  # None: the job's own (auto_batch_size)
        self.images = 8 if smoke else 512
        self.matmul = 128 if smoke else 8192  # bf16 is emulated, slowly, on most CPUs
        self.pairs = 16 if smoke else 8192
        self.decode_workers = 1 if smoke else 8
        self.job_paths = ("device",) if smoke else ("fast", "device")


def cuda_errors(text: str) -> list[str]:
    """Lines of ``text`` that report a CUDA error."""
    return [line.strip()[:300] for line in text.splitlines() if any(s in line for s in CUDA_SIGNS)]


def realistic_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` captions of 8 to 77 tokens (start- and end-of-text included), most of them
    short as in captioned-image datasets: 60% 8-20 tokens, 30% 21-40, 10% 41-77."""
    rng = np.random.default_rng(seed)
    from benchmarks.common import WORDS

    kind = rng.choice(3, size=n, p=[0.6, 0.3, 0.1])
    lo, hi = np.array([8, 21, 41])[kind], np.array([20, 40, 77])[kind]
    lengths = rng.integers(lo, hi + 1)
    return [" ".join(rng.choice(WORDS, int(t) - 2)) for t in lengths]  # one token per word


class Phases:
    """Time named phases of device work: CUDA events on a GPU (read once at the end,
    no synchronisation between phases), wall time on a CPU."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"
        self.marks: list[tuple[str, Any, Any]] = []

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
        else:
            start = time.perf_counter()
            yield
            end = time.perf_counter()
        self.marks.append((name, start, end))

    def wrap(self, obj: Any, attr: str, name: Callable[..., str] | str) -> None:
        """Time every call of ``obj.attr`` as a phase (``name`` may read the arguments)."""
        fn = getattr(obj, attr)

        def timed(*a: Any, **kw: Any) -> Any:
            with self(name(*a, **kw) if callable(name) else name):
                return fn(*a, **kw)

        setattr(obj, attr, timed)

    def ms(self) -> dict[str, float]:
        """Milliseconds per phase name, summed over its calls."""
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, float] = {}
        for name, s, e in self.marks:
            t = s.elapsed_time(e) if self.cuda else (e - s) * 1e3
            out[name] = round(out.get(name, 0.0) + t, 2)
        return out


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def bf16_matmul_tflops(device: str, n: int, repeats: int = 20) -> float:
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


def camera_jpegs(n: int, size: tuple[int, int] = (640, 480)) -> list[bytes]:
    """``n`` photo-like JPEGs of ``size`` at quality 90 (``tests.images.photo_jpeg``)."""
    from concurrent.futures import ProcessPoolExecutor

    from tests.images import photo_jpeg

    with ProcessPoolExecutor(max_workers=min(16, os.cpu_count() or 4)) as pool:
        return list(pool.map(photo_jpeg, range(n), [size] * n))


def write_camera_inputs(folder: Path, pairs: int, distinct: int, captions: list[str],
                        per: int = 1024) -> Path:
    """``pairs`` rows of camera-size JPEGs (``distinct`` different ones, repeated: the
    decode work is the same) and ``captions``, in Parquet shards of ``per`` rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    images = camera_jpegs(distinct)
    per = min(per, pairs)
    for k in range(max(1, pairs // per)):
        rows = range(k * per, (k + 1) * per)
        pq.write_table(pa.table({"image": [images[i % distinct] for i in rows],
                                 "caption": [captions[i] for i in rows]}),
                       folder / f"{k:04d}.parquet", row_group_size=256)
    return folder


def engine_section(z: Sizes) -> dict:
    """The engine at the job's batch size on realistic captions, by phase."""
    from benchmarks.common import count_flops
    from pipeline.engine.model import load_clip
    from pipeline.engine.nibt import NIBT, suffix_row_bytes
    from pipeline.job import attribute
    from pipeline.job.attribute import Attributor, Stager, auto_batch_size

    peak = bf16_matmul_tflops(z.device, z.matmul)
    clip = load_clip(z.model, None, device=z.device, precision=z.precision)
    eng = NIBT(clip, steps=z.steps)
    batch = z.batch or auto_batch_size(eng)
    h, w = clip.image.image_size
    pixels = torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8)
    tokens = clip.tokenize(realistic_captions(batch))
    lengths = (clip.text.eot_index(tokens) + 1).float()
    images = (pixels.float() / 255 - 0.45) / 0.27
    flops = count_flops(lambda: eng.attribute(images.to(z.device), tokens.to(z.device)))
    stager, att = Stager(clip.device), Attributor(clip, eng)
    att.compute(images.to(z.device), tokens.to(z.device))  # warm-up: kernels, allocator
    if z.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    phases = Phases(z.device)
    phases.wrap(eng, "attribute", "attribute")
    phases.wrap(eng, "_integrate", lambda h, target, step, *a: (
        "image_integral" if step == eng._image_step else "text_integral"))
    phases.wrap(attribute, "confidence", "metrics")
    repeats = 1 if z.smoke else 3
    sync(z.device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        with phases("total"):
            with phases("copy_to_device"):
                p, t = stager.take(stager.stage(images, tokens))
            out = att.compute(p, t)
    sync(z.device)
    secs = (time.perf_counter() - t0) / repeats
    ms = {k: round(v / repeats, 2) for k, v in phases.ms().items()}
    ms["copy_back_and_rest"] = round(ms["total"] - ms["copy_to_device"] - ms["attribute"]
                                     - ms["metrics"], 2)
    ms["prefix_and_rest"] = round(ms["attribute"] - ms["image_integral"] - ms["text_integral"], 2)
    errors = [f"engine: {type(r).__name__}: {r}" for r in out if isinstance(r, Exception)]
    eng_secs = ms["attribute"] / 1e3
    row = {"model": z.model, "precision": z.precision, "steps": z.steps, "batch": batch,
           "caption_tokens": {"mean": round(float(lengths.mean()), 1),
                              "min": int(lengths.min()), "max": int(lengths.max())},
           "pairs_per_s": round(batch / eng_secs, 1),
           "with_metrics_pairs_per_s": round(batch / secs, 1),
           "ms_per_batch_by_phase": ms,
           "gflop_per_pair": round(flops / batch / 1e9, 2),
           "achieved_tflops": round(flops / eng_secs / 1e12, 3),
           "fraction_of_bf16_matmul": round(flops / eng_secs / 1e12 / peak, 3),
           "bf16_matmul_tflops": round(peak, 1)}
    v = clip.image
    rows = min(batch * z.steps, eng._image_rows())
    row["memory_model_gb"] = round(rows * suffix_row_bytes(
        v.grid[0] * v.grid[1] + 1, v.width, v.depth - eng.image_layer, z.precision) / 2**30, 2)
    if z.device == "cuda":
        row["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return {"engine": row, "errors": errors}


def decode_section(z: Sizes) -> dict:
    """Fast path (processes) against the device path (nvJPEG) on camera-size JPEGs."""
    import open_clip

    from benchmarks.common import decode_rate
    from pipeline.decode.device import DeviceDecoder
    from pipeline.decode.pixels import fast_preprocess
    from pipeline.decode.pool import ProcessDecoder
    from pipeline.engine.model import load_clip, register_configs
    from pipeline.engine.nibt import NIBT
    from pipeline.io.images import DEFAULT_MAX_CAPTION_CHARS, DEFAULT_MAX_PIXELS

    limits = (DEFAULT_MAX_PIXELS, DEFAULT_MAX_CAPTION_CHARS)
    register_configs()
    fast = fast_preprocess(open_clip.create_model_and_transforms(z.model)[2])
    images = camera_jpegs(z.images)
    captions = ["a photo"] * len(images)

    def cpu(n: int) -> ProcessDecoder:
        return ProcessDecoder(fast, *limits, processes=n, draft=fast.draft_size)

    def device() -> DeviceDecoder:
        return DeviceDecoder(cpu(1), fast.geometry, *limits, device=z.device)

    row: dict = {"images": len(images), "size": "640x480",
                 "fast_processes_images_per_s": round(decode_rate(cpu(z.decode_workers), images,
                                                                  captions, 256), 1)}
    dev = device()
    row["device_images_per_s"] = round(decode_rate(dev, images, captions, 256), 1)
    row["device_fallbacks"] = dev.fallbacks
    n = min(32, len(images))
    ref, mine = cpu(1), device()
    try:
        a, b = ref.decode(images[:n], captions[:n]), mine.decode(images[:n], captions[:n])
    finally:
        ref.close()
        mine.close()
    diff = (a.pixels.int() - b.pixels.cpu().int()).abs().float()
    row["pixels_mean_abs_vs_fast"] = round(float(diff.mean()), 3)
    row["pixels_max_abs_vs_fast"] = int(diff.max())
    clip = load_clip(z.model, None, device=z.device, precision=z.precision)
    eng = NIBT(clip, steps=z.steps)
    tokens = clip.tokenize(captions[:n]).to(z.device)
    maps = [eng.attribute(fast.split.normalise(x.to(z.device)), tokens).image.flatten(1).float()
            for x in (a.pixels, b.pixels)]
    row["attribution_pearson_min_vs_fast"] = round(min(
        float(torch.corrcoef(torch.stack([p, q]))[0, 1]) for p, q in zip(*maps)), 5)
    errors = []
    if row["device_fallbacks"] > FALLBACK_BOUND * 2 * len(images):  # two passes above
        errors.append(f"decode: {row['device_fallbacks']} device-path JPEGs fell back to the CPU")
    if row["pixels_mean_abs_vs_fast"] > PIXEL_BOUND:
        errors.append(f"decode: device pixels {row['pixels_mean_abs_vs_fast']} levels from fast")
    if row["attribution_pearson_min_vs_fast"] < PEARSON_BOUND:
        errors.append(f"decode: attribution Pearson {row['attribution_pearson_min_vs_fast']}")
    return {"decode": row, "errors": errors}


def parse_job(r: subprocess.CompletedProcess, path: str, pairs: int) -> tuple[dict, list[str]]:
    """A job's summary from its last line of output, and what went wrong in it."""
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    errors = [f"job {path}: {line}" for line in cuda_errors(r.stderr)]
    try:
        s = json.loads(lines[-1])
    except (IndexError, ValueError):
        return {}, [*errors, f"job {path}: exit {r.returncode}, no summary: {r.stderr[-500:]}"]
    if r.returncode != 0:
        errors.append(f"job {path}: exit {r.returncode} ({s.get('status')}; failures "
                      f"{[f.get('error', '')[:200] for f in s.get('failures', [])]})")
    if s.get("status_counts", {}).get("error"):
        errors.append(f"job {path}: {s['status_counts']['error']} rows in status error")
    if s.get("tasks_retried"):  # a worker that died or failed: nothing may go wrong quietly
        errors.append(f"job {path}: {s['tasks_retried']} task(s) retried")
    if path == "device":
        fell = s.get("device_fallbacks")
        if fell is None:
            errors.append("job device: the summary reports no device_fallbacks")
        elif fell > FALLBACK_BOUND * pairs:
            errors.append(f"job device: {fell} of {pairs} JPEGs fell back to the CPU")
    return s, errors


def job_section(z: Sizes, engine_row: dict | None, deadline: float) -> dict:
    """The whole job on camera-size JPEGs, once per decode path."""
    rows, errors = [], []
    with tempfile.TemporaryDirectory(prefix="nibt-gpu-") as tmp:
        work = Path(tmp)
        data = write_camera_inputs(work / "in", z.pairs, min(z.images, z.pairs),
                                   realistic_captions(z.pairs, seed=1))
        toy = ("model.batch_size=4", "cluster.decode_processes=1") if z.smoke else ()
        for path in z.job_paths:
            left = deadline - time.time()
            if left < 20:
                errors.append(f"job {path}: no time left in the section")
                continue
            r = subprocess.run(
                [sys.executable, "-m", "pipeline", f"input={data}", f"output={work}/out-{path}",
                 f"model={z.job_model}", "model.pretrained=null", "run.rows_per_task=2048",
                 "run.progress=false", f"data.decode={path}", *toy],
                capture_output=True, text=True, timeout=left,
                env=dict(os.environ, NIBT_LOG_DIR=str(work / f"logs-{path}")))
            s, errs = parse_job(r, path, z.pairs)
            errors += errs + [f"job {path} worker log: {line}" for f in (work / f"logs-{path}").rglob("*")
                              if f.is_file() for line in cuda_errors(f.read_text(errors="replace"))]
            row = {"decode": path, "pairs": s.get("rows_out"), "batch_size": s.get("batch_size"),
                   "job_pairs_per_s": s.get("pairs_per_second"),
                   "engine_pairs_per_s_inside_job": s.get("engine_pairs_per_second"),
                   "engine_share_of_actor_time": s.get("engine_share_of_actor_time"),
                   "actors": s.get("actors"), "decode_processes": s.get("decode_processes"),
                   "device_fallbacks": s.get("device_fallbacks"), "seconds": s.get("seconds")}
            if engine_row and s.get("pairs_per_second"):
                row["job_over_engine_with_metrics"] = round(
                    s["pairs_per_second"] / engine_row["with_metrics_pairs_per_s"], 3)
            rows.append(row)
    return {"job": rows, "errors": errors}


def child(section: str, z: Sizes, result: Path, engine_row: dict | None) -> int:
    """Run one section in this process and write its result to ``result``."""
    deadline = time.time() + SECTION_LIMIT_S
    out = (engine_section(z) if section == "engine" else decode_section(z)
           if section == "decode" else job_section(z, engine_row, deadline))
    result.write_text(json.dumps(out))
    return 0


def run_section(section: str, smoke: bool, limit: float, engine_row: dict | None) -> dict:
    """One section in a fresh process, within ``limit`` seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        cmd = [sys.executable, "-m", "benchmarks.gpu", "--child", section, "--result", str(result)]
        if smoke:
            cmd.append("--smoke")
        if engine_row:
            cmd += ["--engine-row", json.dumps(engine_row)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            return {"errors": [f"{section}: ran past its {limit:.0f} s"]}
        out = json.loads(result.read_text()) if result.exists() else {"errors": []}
    out["errors"] = out.get("errors", []) + [f"{section}: {e}" for e in cuda_errors(r.stderr)]
    if r.returncode != 0:
        out["errors"].append(f"{section}: exit {r.returncode}: {r.stderr[-1500:]}")
    out["seconds"] = round(time.time(), 1)  # replaced by the caller
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma-separated, in this order: {','.join(SECTIONS)}")
    ap.add_argument("--out", default="bench-results/gpu.json")
    ap.add_argument("--smoke", action="store_true", help="toy sizes on a CPU: checks the script")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--engine-row", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    z = Sizes(args.smoke)
    if args.child:
        row = json.loads(args.engine_row) if args.engine_row else None
        return child(args.child, z, Path(args.result), row)
    want = [s for s in args.sections.split(",") if s]
    unknown = sorted(set(want) - set(SECTIONS))
    if unknown:
        print(f"unknown section(s) {unknown}; have {list(SECTIONS)}", file=sys.stderr)
        return 2
    if not args.smoke and not torch.cuda.is_available():
        print(json.dumps({"errors": ["no CUDA device: run this on a GPU machine (or --smoke)"]}))
        return 2
    from pipeline.devtools.machine import machine

    t0 = time.time()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    res: dict = {"machine": machine("python -m benchmarks.gpu" + (" --smoke" if args.smoke else "")),
                 "device": torch.cuda.get_device_name(0) if not args.smoke else "cpu (smoke)",
                 "sections": {}, "errors": []}
    for section in SECTIONS:
        if section not in want:
            continue
        limit = min(SECTION_LIMIT_S, TOTAL_LIMIT_S - (time.time() - t0))
        if limit < 30:
            res["errors"].append(f"{section}: not run, the run's {TOTAL_LIMIT_S} s are spent")
            continue
        start = time.time()
        engine_row = res["sections"].get("engine", {}).get("engine")
        got = run_section(section, args.smoke, limit, engine_row)
        got["seconds"] = round(time.time() - start, 1)
        res["errors"] += got.pop("errors")
        res["sections"][section] = got
        res["seconds"] = round(time.time() - t0, 1)
        out.write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps({section: got}), file=sys.stderr, flush=True)
    res["seconds"] = round(time.time() - t0, 1)
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
