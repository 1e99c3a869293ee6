"""The job on CPU with the demo model: camera-size JPEGs against 64x64 JPEGs of the same scenes.

The same demo scenes (``pipeline.demo.scenes.make_pair``) stored three ways:
64x64 JPEGs (the model's input size: decoding is nearly free) and camera-size
JPEGs at 640x480 and 1024x768 (the scene upscaled to the full height, centred,
side bands from its edge colours, sensor grain; ``tests.images.camera_jpeg``),
all at quality 90. Each set runs through the whole job (``run_job``: Ray,
one actor on this machine's CPUs, local Parquet in and out) with the shipped demo
model (``conf/model/demo.yaml``) and ``data.decode`` exact and fast; runs
alternate set and path, five times, so the machine's drift spreads over all.

Reported: the job's pairs/s per run (from the actors being ready to the last
result), and per path the camera-size rate over the 64x64 rate three ways: the
ratio of the medians, of that path's runs and of all 64x64 runs (the same work on
both paths), and the median of the ratios round by round (each camera-size run over
the same round's 64x64 run, a minute apart at most: the machine's slower drift
cancels in the pair).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
from PIL import Image

from tests import images as im

PAIRS = 384
SETS = {"jpeg_64x64": None, "jpeg_640x480": (640, 480), "jpeg_1024x768": (1024, 768)}
PATHS = ("exact", "fast")


def write_sets(root: Path, pairs: int) -> dict[str, Path]:
    from pipeline.demo.scenes import make_pair
    from tests.data import write_table

    rows = [make_pair(5, i) for i in range(pairs)]
    out = {}
    for name, size in SETS.items():
        images = [im.encode(Image.fromarray(r.image), "JPEG", quality=90) if size is None
                  else im.camera_jpeg(r.image, size, seed=i) for i, r in enumerate(rows)]
        folder = root / name
        folder.mkdir()
        write_table(pa.table({"id": [r.id for r in rows], "image": images,
                              "caption": [r.caption for r in rows]}),
                    str(folder / "pairs.parquet"), row_group_size=32)
        out[name] = folder
    return out


def run(pairs: int = PAIRS, rounds: int = 5) -> dict:
    from pipeline.config import (
        ClusterSettings,
        DataSettings,
        ModelSettings,
        RunSettings,
        StorageSettings,
    )
    from pipeline.job.cluster import ray_session
    from pipeline.job.driver import JobSettings, run_job

    t0 = time.perf_counter()
    model = ModelSettings(name="nibt-demo", pretrained="shipped", image_layer=2, text_layer=0,
                          steps=10, batch_size=32)
    rates: dict = {(s, p): [] for s in SETS for p in PATHS}
    engine: dict = {(s, p): [] for s in SETS for p in PATHS}
    with tempfile.TemporaryDirectory(prefix="nibt-decode-job-") as tmp:
        root = Path(tmp)
        sets = write_sets(root, pairs)
        t_data = time.perf_counter() - t0
        with ray_session(ClusterSettings()):
            for k in range(rounds):
                for name, folder in sets.items():
                    for path in PATHS if k % 2 == 0 else PATHS[::-1]:
                        s = JobSettings(
                            input=str(folder), output=str(root / f"out-{name}-{path}-{k}"),
                            model=model, data=DataSettings(id_column="id", decode=path),
                            storage=StorageSettings(), cluster=ClusterSettings(),
                            run=RunSettings(rows_per_task=pairs // 2, progress=False))
                        code, summary = run_job(s)
                        assert code == 0 and summary["status_counts"] == {"ok": pairs}, summary
                        rates[name, path].append(summary["pairs_per_second"])
                        engine[name, path].append(summary["engine_pairs_per_second"])
    med = {key: statistics.median(v) for key, v in rates.items()}
    # 64x64 JPEGs of a 64 px model take the same work on both paths (no DCT scale,
    # no resize): all their runs are one baseline too
    small = statistics.median([r for p in PATHS for r in rates["jpeg_64x64", p]])
    return {
        "pairs": pairs, "model": "nibt-demo (shipped, conf/model/demo.yaml)", "rounds": rounds,
        "pairs_per_s": {f"{s} {p}": rates[s, p] for s, p in rates},
        "engine_pairs_per_s_inside_job": {f"{s} {p}": engine[s, p] for s, p in engine},
        "camera_over_64px": {f"{s} {p}": round(med[s, p] / med["jpeg_64x64", p], 3)
                             for s in SETS if s != "jpeg_64x64" for p in PATHS},
        "camera_over_64px_all_runs": {f"{s} {p}": round(med[s, p] / small, 3)
                                      for s in SETS if s != "jpeg_64x64" for p in PATHS},
        "camera_over_64px_by_round": {
            f"{s} {p}": [round(a / b, 3) for a, b in zip(rates[s, p], rates["jpeg_64x64", p])]
            for s in SETS if s != "jpeg_64x64" for p in PATHS},
        "seconds": {"data": round(t_data, 1), "total": round(time.perf_counter() - t0, 1)},
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
