"""Decode threads against decode processes beside a launch-bound engine.

(The decoders' own rates, and a DataLoader's, are in ``benchmarks/decode.py``.)

On a GPU the engine's host side is thousands of short kernel launches per batch,
each releasing and retaking the GIL. This CPU stand-in has the same shape: a
tiny ViT at ViT-B-32's geometry (224 px, 32 px patches, 7x7 grid; width 64, 2
layers), whose operations are short, so its thread spends its time in Python
and the dispatcher as a launching thread does. One worker (``TaskRunner``, no
Ray), one decode worker beside the compute thread (2 cores: one each), 224x224
JPEGs (decoding faster than the engine, so the engine's time is what moves),
batches of 64; runs alternate threads, processes, processes, threads,
threads, processes against this machine's drift.

Reported: the worker's pairs/s, the engine's time per pair inside it, and the
engine alone on the same batches in the same process (the peer: what the engine
does when nothing competes for the GIL).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import fsspec
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from benchmarks.common import jpeg_pairs

TINY = {"embed_dim": 64,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32,
                       "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                     "layers": 2}}


def photos(n: int, seed: int = 0, size: tuple[int, int] = (500, 375)) -> pa.Table:
    """``n`` rows of a web-sized JPEG (smooth colour field) and a caption of "a photo
    of" and 4-13 words."""
    images, captions = jpeg_pairs(n, seed, size, base=(12, 16), resample=Image.BICUBIC,
                                  prefix="a photo of ", words=(4, 14))
    return pa.table({"image": images, "caption": captions})


def run(pairs: int = 512, batch: int = 64) -> dict:
    return {"beside_engine": beside_engine(pairs, batch)}


def beside_engine(pairs: int, batch: int) -> dict:
    from pipeline.config import DataSettings, ModelSettings, StorageSettings
    from pipeline.io.storage import list_inputs
    from pipeline.job.plan import plan_file
    from pipeline.job.worker import TaskRunner

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="nibt-decoders-") as tmp:
        root = Path(tmp)
        (root / "tiny224.json").write_text(json.dumps(TINY))
        open_clip.add_model_config(root)
        path = root / "in.parquet"
        pq.write_table(photos(pairs, size=(224, 224)), path, row_group_size=batch)
        f = list_inputs(str(path), StorageSettings())[0]
        task = plan_file(f, fsspec.filesystem("file"), str(path), pairs, "bench")[0][0]
        model = ModelSettings(name="tiny224", pretrained=None, layer=1, batch_size=batch,
                              precision="fp32")
        runners = {
            "threads": TaskRunner(model, DataSettings(), StorageSettings(), str(root / "out-t"),
                                  {}, threads=1, decode_threads=1, decode_processes=0),
            "processes": TaskRunner(model, DataSettings(), StorageSettings(),
                                    str(root / "out-p"), {}, threads=1, decode_processes=1),
        }
        # the peer: the same engine alone, on the same batches, decoded beforehand
        r = runners["threads"]
        table = pq.read_table(path)
        dec = r.decoder.decode(table.column("image").to_pylist(),
                               table.column("caption").to_pylist())
        tokens, _ = r.clip.encode_captions([x.caption for x in dec.rows])
        pixels = r.split.normalise(dec.pixels)

        def engine_alone() -> float:
            t = time.perf_counter()
            for s in range(0, pairs, batch):
                r.attributor(pixels[s : s + batch], tokens[s : s + batch])
            return time.perf_counter() - t

        engine_alone()
        out: dict = {"threads": [], "processes": [], "engine_alone_ms_per_pair": []}
        for kind in ("threads", "processes", "processes", "threads", "threads", "processes"):
            res = runners[kind].run(task)
            assert res.ok and res.status_counts == {"ok": pairs}, res
            out[kind].append({"pairs_per_s": round(pairs / res.seconds, 1),
                              "engine_ms_per_pair": round(res.compute_seconds / pairs * 1e3, 3)})
            out["engine_alone_ms_per_pair"].append(round(engine_alone() / pairs * 1e3, 3))
        for r in runners.values():
            r.close()

    def mean(kind: str, key: str) -> float:
        return sum(x[key] for x in out[kind]) / len(out[kind])

    alone = sum(out["engine_alone_ms_per_pair"]) / len(out["engine_alone_ms_per_pair"])
    return {
        "pairs": pairs, "batch": batch, "image_px": [224, 224], "model": "tiny224 (see TINY)",
        **out,
        "processes_over_threads_pairs_per_s": round(
            mean("processes", "pairs_per_s") / mean("threads", "pairs_per_s"), 3),
        "engine_slowdown_beside_decode_threads": round(
            mean("threads", "engine_ms_per_pair") / alone, 3),
        "engine_slowdown_beside_decode_processes": round(
            mean("processes", "engine_ms_per_pair") / alone, 3),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
