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

from pipeline.decode.pixels import Geometry, resize_crop
from pipeline.decode.pool import DecodedRows, ProcessDecoder, ThreadDecoder
from pipeline.engine import device_health
from pipeline.io.images import (
    OK,
    Decoded,
    RowError,
    decode_caption,
    image_bytes,
    open_image,
    plain_jpeg,
)

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
                 decode: Callable[..., Any] = decode_jpeg, chunk: int = CHUNK,
                 stream: Any = None) -> None:
        # ``decode``: torchvision's decode_jpeg; ``stream``: on a GPU a CUDA stream of
        # the decoder's own (None: a new one); both stand-ins in tests
        self.cpu, self.geometry = cpu, geometry
        self.max_pixels, self.max_chars = max_pixels, max_chars
        self.device = torch.device(device)
        self.tokenize = tokenize
        self.decode_jpeg, self.chunk = decode, chunk
        if stream is None and self.device.type == "cuda":
            stream = torch.cuda.Stream(self.device)
        self.stream = stream
        self.fallbacks = 0  # JPEGs the device refused, decoded on the CPU instead

    def _on_device(self, blobs: list[bytes]) -> list[torch.Tensor | None]:
        """[3, h, w] uint8 per JPEG on the device, None where it fails alone. A fatal
        device error raises ``DeviceLost`` (the actor ends) instead of a CPU fallback."""
        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        self._fence()
        try:
            return list(self.decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
        except Exception as e:  # one bad image fails the call: each alone
            device_health.check(e, self.device)
            log.info("batched JPEG decode failed (%s: %s); decoding one by one",
                     type(e).__name__, e)
        out: list[torch.Tensor | None] = []
        for d in data:
            try:
                out.append(self.decode_jpeg([d], mode=ImageReadMode.RGB, device=self.device)[0])
            except Exception as e:
                device_health.check(e, self.device)
                out.append(None)
        return out

    def _fence(self) -> None:
        """Wait until the work queued on this decoder's stream is done. nvJPEG writes
        its output on a stream of its own, into memory allocated on ours: without the
        wait, memory freed by the last chunk (its full-size images, which queued resize
        kernels still read) can be overwritten by the next chunk's decode."""
        if self.stream is not None:
            self.stream.synchronize()

    def _decode_jpegs(self, device_rows: dict[int, tuple]) -> tuple[list[int], torch.Tensor | None]:
        """The rows decoded on the device, and their resized pixels [k, h, w, 3] on it."""
        done: list[int] = []
        crops: list[torch.Tensor] = []
        side = torch.cuda.stream(self.stream) if self.device.type == "cuda" else \
            contextlib.nullcontext()
        with side:  # on a GPU: a stream of its own, beside the compute's
            idx = list(device_rows)
            for s in range(0, len(idx), self.chunk):
                part = idx[s : s + self.chunk]
                for i, x in zip(part, self._on_device([device_rows[i][0] for i in part])):
                    if x is not None:
                        done.append(i)
                        crops.append(resize_crop(x.permute(1, 2, 0), self.geometry))
            stacked = torch.stack(crops) if crops else None
        self._fence()  # the crops are complete before another stream reads them
        if stacked is not None and self.device.type == "cuda":
            stacked.record_stream(torch.cuda.current_stream(self.device))
        return done, stacked

    def decode(self, images: Sequence[Any], captions: Sequence[Any]) -> DecodedRows:
        """Decode one batch; every row gets the status the CPU path gives it."""
        images, captions = list(images), list(captions)
        device_rows = {i: r for i, (c, t) in enumerate(zip(images, captions))
                       if (r := _device_jpeg(c, t, self.max_pixels, self.max_chars))}
        on_device, stacked = self._decode_jpegs(device_rows)
        pixels = set(on_device)
        fallbacks = len(device_rows) - len(pixels)
        self.fallbacks += fallbacks
        cpu_idx = [i for i in range(len(images)) if i not in pixels]
        cpu = self.cpu.decode([images[i] for i in cpu_idx], [captions[i] for i in cpu_idx])
        rows: list[Decoded] = [Decoded(OK, None, None, device_rows[i][1]) if i in pixels
                               else None for i in range(len(images))]  # type: ignore[misc]
        for i, r in zip(cpu_idx, cpu.rows):
            rows[i] = r
        ok = [i for i, r in enumerate(rows) if r.status == OK]
        out = DecodedRows(rows, ok, fallbacks=fallbacks)
        if not ok:
            return out
        at = {i: k for k, i in enumerate(ok)}  # row -> its place in the batch
        cpu_ok = [cpu_idx[j] for j in cpu.ok]
        ch, cw = self.geometry.crop
        out.pixels = torch.empty((len(ok), ch, cw, 3), dtype=torch.uint8, device=self.device)
        # places built on the host, copied with the pixels: no device-side index building
        for rows_here, src in ((on_device, stacked), (cpu_ok, cpu.pixels)):
            if src is not None:
                where = torch.tensor([at[i] for i in rows_here], dtype=torch.long)
                out.pixels.index_copy_(0, where.to(self.device, non_blocking=True),
                                       src.to(self.device, non_blocking=True))
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
