"""Decode paths on realistic images, each beside open_clip's own transform in one run.

Images (``tests/images.py``, deterministic): photo-like JPEGs (1/f noise, sharp
shapes, grain; quality 90, 4:2:0, ~2.2-2.4 bits per pixel like camera photos) at
224x224, 640x480 and 1024x768, and PNGs at 640x480; ``mix`` weighs them as a web
crawl might (50% 640x480, 20% 1024x768, 15% 224x224 JPEGs, 15% PNGs).

Targets: ViT-B-32's input (224 px, random weights' transform) and the demo
model's (64 px).

Paths, per image, to the uint8 pixels the model is normalised from:

* ``open_clip`` (the peer): ``Image.open(...).convert("RGB")`` then the model's
  whole transform (to normalised floats), as open_clip users and clip-retrieval
  run it;
* ``exact``: ``data.decode=exact`` (``decode_pair`` with open_clip's PIL steps:
  the pixels of the peer, bit for bit);
* ``fast``: ``data.decode=fast`` (DCT-scaled JPEG decoding, torch's uint8
  bicubic);
* ``device_cpu``: ``data.decode=device`` run on a CPU (torchvision's
  decode_jpeg, libjpeg-turbo, full size, then the same resize): the GPU path's
  code without nvJPEG; its figures say nothing of a GPU.

``per_core``: one process, one thread (``torch.set_num_threads(1)``), each
(target, set, path) timed ``REPEATS`` times in alternation. Reported: images per
CPU-second of this process (``time.process_time``: what one core does, and
robust to other work on a shared machine) and per wall second, as the median
and [min, max] of the repeats.

``pools``: one actor's decoder with 2 workers on the 640x480 JPEGs to 224 px,
fast path, 128-row batches: threads, the process pool (pixels back through its
shared-memory buffers, and pickled: the peer of its hand-made transport), and two
``torch.utils.data.DataLoader`` peers with 2 worker processes: one built per
batch (fork; the only way a DataLoader takes rows that arrive batch by batch, as
the job's do) and one with persistent workers over rows known up front (its best
case, which the job cannot use). Images per wall second and per CPU-second
(this process and its children).

``parity``: fast and device_cpu against open_clip's transform on 640x480 and
1024x768 images: mean and max absolute pixel difference (uint8), the smallest
image-embedding cosine and attribution-map Pearson (NIBT, 4 steps): the demo
model with its shipped weights on demo scenes, a random ViT-B-32 on photos.
"""

from __future__ import annotations

import io
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from tests import images as im

REPEATS = 5
PER_SET = 24
SETS = {
    "jpeg_224x224": ("JPEG", (224, 224)),
    "jpeg_640x480": ("JPEG", (640, 480)),
    "jpeg_1024x768": ("JPEG", (1024, 768)),
    "png_640x480": ("PNG", (640, 480)),
}
MIX = {"jpeg_640x480": 0.5, "jpeg_1024x768": 0.2, "jpeg_224x224": 0.15, "png_640x480": 0.15}
LIMITS = (64_000_000, 4096)


def image_sets(n: int = PER_SET) -> dict[str, list[bytes]]:
    out = {}
    for name, (fmt, size) in SETS.items():
        if fmt == "JPEG":
            out[name] = [im.photo_jpeg(i, size) for i in range(n)]
        else:
            out[name] = [im.encode(Image.fromarray(im.photo(i, size)), "PNG") for i in range(n)]
    return out


def transforms() -> dict[str, object]:
    """The models' own eval transforms (open_clip's), by target."""
    import open_clip

    from pipeline.engine.model import register_configs

    register_configs()
    return {"vit_b_32_224px": open_clip.create_model_and_transforms("ViT-B-32")[2],
            "demo_64px": open_clip.create_model_and_transforms("nibt-demo")[2]}


def paths(transform) -> dict[str, Callable[[list[bytes]], object]]:
    """Each path as a function of a list of encoded images."""
    from pipeline.decode.device import DeviceDecoder
    from pipeline.decode.pixels import fast_preprocess
    from pipeline.decode.pool import ThreadDecoder
    from pipeline.io.images import decode_pair

    fast = fast_preprocess(transform)
    device = DeviceDecoder(ThreadDecoder(fast, *LIMITS, threads=1, draft=fast.draft_size),
                           fast.geometry, *LIMITS, device="cpu")

    def open_clip_peer(blobs):
        return [transform(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs]

    def exact(blobs):
        return [decode_pair(b, "x", fast.split.image, *LIMITS) for b in blobs]

    def fast_path(blobs):
        return [decode_pair(b, "x", fast, *LIMITS, fast.draft_size) for b in blobs]

    def device_cpu(blobs):
        return device.decode(blobs, ["x"] * len(blobs))

    device_cpu.close = device.close  # type: ignore[attr-defined]
    return {"open_clip": open_clip_peer, "exact": exact, "fast": fast_path,
            "device_cpu": device_cpu}


def _spread(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 1),
            "range": [round(min(values), 1), round(max(values), 1)]}


def per_core(sets: dict[str, list[bytes]], repeats: int = REPEATS) -> dict:
    torch.set_num_threads(1)
    out: dict = {}
    for target, transform in transforms().items():
        fns = paths(transform)
        for fn in fns.values():  # warm-up: imports, first allocations
            fn(sets["jpeg_224x224"][:2])
        cpu: dict = {(s, p): [] for s in sets for p in fns}
        wall: dict = {(s, p): [] for s in sets for p in fns}
        for _ in range(repeats):
            for s, blobs in sets.items():
                for p, fn in fns.items():
                    c, w = time.process_time(), time.perf_counter()
                    fn(blobs)
                    cpu[s, p].append(len(blobs) / (time.process_time() - c))
                    wall[s, p].append(len(blobs) / (time.perf_counter() - w))
        table: dict = {}
        for s in sets:
            table[s] = {p: {"per_cpu_s": _spread(cpu[s, p]), "per_wall_s": _spread(wall[s, p])}
                        for p in fns}
        # the mix: seconds per image add up in proportion
        table["mix"] = {p: {"per_cpu_s": {"median": round(1 / sum(
            w / statistics.median(cpu[s, p]) for s, w in MIX.items()), 1)}} for p in fns}
        fns["device_cpu"].close()
        for s in table:
            peer = table[s]["open_clip"]["per_cpu_s"]["median"]
            for p in fns:
                table[s][p]["x_open_clip"] = round(table[s][p]["per_cpu_s"]["median"] / peer, 2)
        out[target] = table
    return out


# ------------------------------------------------------------------------ pools
def _children_cpu() -> float:
    """CPU seconds of this process's live children (user + system), from /proc."""
    me, total, tick = os.getpid(), 0.0, os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if int(fields[1]) == me:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def _cpu_now() -> float:
    import resource

    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + _children_cpu() + reaped.ru_utime + reaped.ru_stime


class _Rows(torch.utils.data.Dataset):
    """A DataLoader's view of a batch: row i decoded on the fast path."""

    def __init__(self, images: list, captions: list, fast) -> None:
        self.images, self.captions, self.fast = images, captions, fast

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from pipeline.io.images import decode_pair

        d = decode_pair(self.images[i], self.captions[i], self.fast, *LIMITS,
                        self.fast.draft_size)
        return d.status, d.error, d.caption, d.pixels


def _collate(items: list) -> tuple[list, torch.Tensor | None]:
    pixels = [torch.as_tensor(p) for *_, p in items if p is not None]
    return [i[:3] for i in items], torch.stack(pixels) if pixels else None


class DataLoaderPerBatch:
    """A DataLoader with ``workers`` fork-started processes, built for each batch."""

    def __init__(self, fast, workers: int, chunk: int = 32) -> None:
        self.fast, self.workers, self.chunk = fast, workers, chunk

    def decode(self, images: list, captions: list) -> list:
        loader = torch.utils.data.DataLoader(
            _Rows(images, captions, self.fast), batch_size=self.chunk, num_workers=self.workers,
            collate_fn=_collate, multiprocessing_context="fork")
        return list(loader)

    def close(self) -> None:
        pass


def pools(blobs: list[bytes], workers: int = 2, batch: int = 128, repeats: int = 3) -> dict:
    import open_clip

    from pipeline.decode.pixels import fast_preprocess
    from pipeline.decode.pool import ProcessDecoder, ThreadDecoder

    fast = fast_preprocess(open_clip.create_model_and_transforms("ViT-B-32")[2])
    captions = ["a photo"] * len(blobs)
    decoders = {
        "threads": ThreadDecoder(fast, *LIMITS, threads=workers, one_torch_thread=True,
                                 draft=fast.draft_size),
        "process_pool": ProcessDecoder(fast, *LIMITS, processes=workers, draft=fast.draft_size),
        "process_pool_pickled": ProcessDecoder(fast, *LIMITS, processes=workers,
                                               draft=fast.draft_size, shared=False),
        "dataloader_per_batch": DataLoaderPerBatch(fast, workers),
    }
    persistent = torch.utils.data.DataLoader(
        _Rows(blobs, captions, fast), batch_size=32, num_workers=workers, collate_fn=_collate,
        persistent_workers=True, multiprocessing_context="spawn")
    list(persistent)  # start its workers
    runs = {k: [] for k in (*decoders, "dataloader_persistent_rows_known")}
    cpus = {k: [] for k in runs}
    for _ in range(repeats):
        for name, d in decoders.items():
            d.decode(blobs[:32], captions[:32])
            c, w = _cpu_now(), time.perf_counter()
            for s in range(0, len(blobs), batch):
                d.decode(blobs[s : s + batch], captions[s : s + batch])
            runs[name].append(len(blobs) / (time.perf_counter() - w))
            cpus[name].append(len(blobs) / (_cpu_now() - c))
        c, w = _cpu_now(), time.perf_counter()
        list(persistent)
        runs["dataloader_persistent_rows_known"].append(len(blobs) / (time.perf_counter() - w))
        cpus["dataloader_persistent_rows_known"].append(len(blobs) / (_cpu_now() - c))
    for d in decoders.values():
        d.close()
    del persistent
    return {"workers": workers, "batch": batch, "images": len(blobs), "set": "jpeg_640x480",
            "target": "vit_b_32_224px", "path": "fast",
            **{k: {"per_wall_s": _spread(runs[k]), "per_cpu_s": _spread(cpus[k])} for k in runs}}


# ----------------------------------------------------------------------- parity
def _device_cpu(blob: bytes, geometry) -> torch.Tensor:
    """The device path's pixels on a CPU: torchvision's decode_jpeg, then resize_crop."""
    from torchvision.io import ImageReadMode, decode_jpeg

    from pipeline.decode.pixels import resize_crop

    x = decode_jpeg([torch.frombuffer(bytearray(blob), dtype=torch.uint8)],
                    mode=ImageReadMode.RGB)[0]
    return resize_crop(x.permute(1, 2, 0), geometry)


def parity() -> dict:
    from torch.nn.functional import normalize

    from pipeline.decode.pixels import fast_preprocess
    from pipeline.demo.scenes import make_pair
    from pipeline.engine.model import load_clip
    from pipeline.engine.nibt import NIBT
    from pipeline.io.images import decode_image

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out: dict = {}
    for model, pretrained in (("nibt-demo", "shipped"), ("ViT-B-32", None)):
        clip = load_clip(model, pretrained)
        fast = fast_preprocess(clip.preprocess)
        sizes = ((640, 480), (1024, 768))
        if model == "nibt-demo":
            pairs = [make_pair(11, i) for i in range(3)]
            blobs = [im.camera_jpeg(p.image, s, seed=i) for i, p in enumerate(pairs) for s in sizes]
            captions = [p.caption for p in pairs for _ in sizes]
        else:
            blobs = [im.photo_jpeg(i, s) for i in range(2) for s in sizes]
            captions = ["a photo of a red square beside a blue circle"] * len(blobs)
        reference = torch.stack([clip.preprocess(decode_image(b)) for b in blobs])
        exact8 = torch.stack([torch.from_numpy(fast.split.image(decode_image(b))) for b in blobs])

        got8 = {"fast": torch.stack([torch.as_tensor(fast(decode_image(b, draft=fast.draft_size)))
                                     for b in blobs]),
                "device_cpu": torch.stack([_device_cpu(b, fast.geometry) for b in blobs])}
        tokens, _ = clip.encode_captions(captions)
        engine = NIBT(clip, steps=4)
        with torch.no_grad():
            want = normalize(clip.model.encode_image(reference), dim=-1)
        want_map = engine.attribute(reference, tokens).image.flatten(1).numpy()
        rows: dict = {"images": len(blobs), "sizes": [list(s) for s in sizes]}
        for name, pixels in got8.items():
            diff = (pixels.int() - exact8.int()).abs().float()
            x = fast.split.normalise(pixels)
            with torch.no_grad():
                cos = (want * normalize(clip.model.encode_image(x), dim=-1)).sum(-1)
            got_map = engine.attribute(x, tokens).image.flatten(1).numpy()
            pearson = [float(np.corrcoef(a, b)[0, 1]) for a, b in zip(want_map, got_map)]
            rows[name] = {"pixel_abs_diff_mean": round(float(diff.mean()), 3),
                          "pixel_abs_diff_max": int(diff.max()),
                          "embedding_cosine_min": round(float(cos.min()), 6),
                          "attribution_pearson_min": round(min(pearson), 5)}
        out[f"{model}{'' if pretrained else ' (random weights)'}"] = rows
    return out


def run() -> dict:
    t0 = time.perf_counter()
    sets = image_sets()
    bpp = {s: round(float(np.mean([len(b) for b in v])) * 8 / np.prod(SETS[s][1]), 2)
           for s, v in sets.items()}
    out: dict = {"images_per_set": PER_SET, "bits_per_pixel": bpp, "repeats": REPEATS,
                 "seconds": {"images": round(time.perf_counter() - t0, 1)}}
    for part, fn in (("per_core", lambda: per_core(sets)),
                     ("pools", lambda: pools(sets["jpeg_640x480"] * 8)),
                     ("parity", parity)):
        t = time.perf_counter()
        out[part] = fn()
        out["seconds"][part] = round(time.perf_counter() - t, 1)
    return out


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
