"""JPEGs decoded in batches on the actor's device (nvJPEG on a GPU) and resized there.

``data.decode: device``. ``torchvision.io.decode_jpeg`` takes a list of encoded
JPEGs and a device; on CUDA it runs nvJPEG's batched decoder, so beside a GPU the
host only parses headers and captions. It differs from the CPU paths in two ways,
both handled here:

* one undecodable image fails the whole call: the chunk is then decoded image by
  image, and an image that fails alone goes to the CPU decoder, which gives it
  the status and message it gets on every path;
* nvJPEG upsamples chroma differently from libjpeg (the pixel difference to PIL is
  measured by ``benchmarks/gpu.py``).

Only plain baseline JPEGs in colour (``plain_jpeg``, header checked against
``max_pixels`` by PIL, ending in an end-of-image marker) go to the device; every
other row (PNGs, CMYK, rotated, progressive or grey JPEGs, anything PIL cannot
identify) and every row with a bad caption goes whole to the CPU decoder, so its
status and message are the CPU path's. On a CPU device the same code runs with
libjpeg-turbo inside torchvision, which is how it is tested without a GPU.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg

from pipeline.io.images import (
    OK,
    Decoded,
    RowError,
    decode_caption,
    image_bytes,
    open_image,
    plain_jpeg,
)
from pipeline.job.decode_pool import DecodedRows, ProcessDecoder, ThreadDecoder
from pipeline.job.preprocess import Geometry, resize_crop

log = logging.getLogger(__name__)

#: JPEGs per decode call (full-size pixels of a chunk sit on the device at once).
CHUNK = 64


def _device_jpeg(cell: Any, caption: Any, max_pixels: int, max_chars: int) -> tuple | None:
    """(bytes, caption text) when the row can go to the device whole, else None."""
    try:
        data = image_bytes(cell)
        text = decode_caption(caption, max_chars)
        img = open_image(data, max_pixels)
    except RowError:
        return None
    if (img.mode != "RGB" or not plain_jpeg(img) or img.info.get("progressive")
            or not data.rstrip(b"\0").endswith(b"\xff\xd9")):
        return None
    return data, text


class DeviceDecoder:
    """Decodes plain JPEGs with ``decode_jpeg`` on ``device`` and resizes them there
    (``resize_crop``: the transform's resize and crop); every other row goes to
    ``cpu`` (a ``ThreadDecoder`` or ``ProcessDecoder``). ``pixels`` come back on
    ``device``; token ids too are made for every ok row when ``tokenize`` is given."""

    def __init__(self, cpu: ThreadDecoder | ProcessDecoder, geometry: Geometry, max_pixels: int,
                 max_chars: int, device: str | torch.device,
                 tokenize: Callable[[list[str]], tuple[np.ndarray, list[bool]]] | None = None,
                 decode: Callable[..., Any] = decode_jpeg, chunk: int = CHUNK) -> None:
        # ``decode``: torchvision's decode_jpeg (a stand-in in tests)
        self.cpu, self.geometry = cpu, geometry
        self.max_pixels, self.max_chars = max_pixels, max_chars
        self.device = torch.device(device)
        self.tokenize = tokenize
        self.decode_jpeg, self.chunk = decode, chunk
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.fallbacks = 0  # JPEGs the device refused, decoded on the CPU instead

    def _on_device(self, blobs: list[bytes]) -> list[torch.Tensor | None]:
        """[3, h, w] uint8 per JPEG on the device, None where it fails alone."""
        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        try:
            return list(self.decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
        except Exception as e:  # one bad image fails the call: each alone
            log.info("batched JPEG decode failed (%s: %s); decoding one by one",
                     type(e).__name__, e)
        out: list[torch.Tensor | None] = []
        for d in data:
            try:
                out.append(self.decode_jpeg([d], mode=ImageReadMode.RGB, device=self.device)[0])
            except Exception:
                out.append(None)
        return out

    def decode(self, images: Sequence[Any], captions: Sequence[Any]) -> DecodedRows:
        """Decode one batch; every row gets the status the CPU path gives it."""
        images, captions = list(images), list(captions)
        device_rows = {i: r for i, (c, t) in enumerate(zip(images, captions))
                       if (r := _device_jpeg(c, t, self.max_pixels, self.max_chars))}
        pixels: dict[int, torch.Tensor] = {}
        stacked: torch.Tensor | None = None
        side = torch.cuda.stream(self.stream) if self.stream is not None else \
            contextlib.nullcontext()
        with side:  # on a GPU: a stream of its own, beside the compute's
            idx = list(device_rows)
            for s in range(0, len(idx), self.chunk):
                part = idx[s : s + self.chunk]
                for i, x in zip(part, self._on_device([device_rows[i][0] for i in part])):
                    if x is not None:
                        pixels[i] = resize_crop(x.permute(1, 2, 0), self.geometry)
            if pixels:
                stacked = torch.stack(list(pixels.values()))
        if self.stream is not None:
            self.stream.synchronize()
            if stacked is not None:  # used on the caller's stream from here on
                stacked.record_stream(torch.cuda.current_stream(self.device))
        self.fallbacks += len(device_rows) - len(pixels)
        cpu_idx = [i for i in range(len(images)) if i not in pixels]
        cpu = self.cpu.decode([images[i] for i in cpu_idx], [captions[i] for i in cpu_idx])
        rows: list[Decoded] = [Decoded(OK, None, None, device_rows[i][1]) if i in pixels
                               else None for i in range(len(images))]  # type: ignore[misc]
        for i, r in zip(cpu_idx, cpu.rows):
            rows[i] = r
        ok = [i for i, r in enumerate(rows) if r.status == OK]
        out = DecodedRows(rows, ok)
        if not ok:
            return out
        at = {i: k for k, i in enumerate(ok)}  # row -> its place in the batch
        cpu_ok = [cpu_idx[j] for j in cpu.ok]
        ch, cw = self.geometry.crop
        out.pixels = torch.empty((len(ok), ch, cw, 3), dtype=torch.uint8, device=self.device)
        if stacked is not None:
            where = torch.tensor([at[i] for i in pixels], device=self.device)
            out.pixels[where] = stacked
        if cpu.pixels is not None:
            where = torch.tensor([at[i] for i in cpu_ok], device=self.device)
            out.pixels[where] = cpu.pixels.to(self.device, non_blocking=True)
        if self.tokenize is not None:
            have: dict[int, tuple[np.ndarray, bool]] = {}
            if cpu.tokens is not None:
                have.update({i: (cpu.tokens[k], cpu.truncated[k]) for k, i in enumerate(cpu_ok)})
            todo = [i for i in ok if i not in have]
            if todo:
                ids, flags = self.tokenize([rows[i].caption for i in todo])
                have.update({i: (ids[k], flags[k]) for k, i in enumerate(todo)})
            out.tokens = np.stack([have[i][0] for i in ok])
            out.truncated = [bool(have[i][1]) for i in ok]
        return out

    def close(self) -> None:
        self.cpu.close()
