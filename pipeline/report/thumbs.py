"""The pairs to review: their input images, and thumbnails with the map.

Images are read from the input by each row's ``source`` and ``row``: only the row
group that holds the row is read (found from the Parquet footer), in small batches; a
WebDataset shard (a tar has no index) up to the last sample wanted.
Thumbnails are a centre square crop resized to ``px`` (open_clip's default
preprocessing is a resize plus centre crop, so the map lines up with what the
model saw up to the crop's exact size), in grey with the map's colours over it
(over the image's own colours a red map on a red object would not show). When
the input is gone or the image cannot be read, the map is drawn alone on white.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from pipeline.config import DataSettings, StorageSettings
from pipeline.io.images import DEFAULT_MAX_PIXELS, decode_image, image_bytes
from pipeline.io.storage import filesystem
from pipeline.io.webdataset import iter_samples, sample_row
from pipeline.report.heatmap import overlay, png_bytes

log = logging.getLogger("nibt-report")


def _row_group(pf: pq.ParquetFile, row: int) -> tuple[int, int]:
    """The row group holding ``row`` and the index of its first row."""
    start = 0
    for i in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(i).num_rows
        if row < start + n:
            return i, start
        start += n
    raise IndexError(f"row {row} is past the end of the file ({start} rows)")


def read_images(keys: Sequence[tuple[str, int]], image_column: str, storage: StorageSettings,
                max_pixels: int = DEFAULT_MAX_PIXELS, data: DataSettings | None = None,
                ) -> dict[tuple[str, int], Image.Image | str]:
    """The input image at each ``(source, row)``, or why it could not be read. ``data``
    with ``format: webdataset``: the sources are tar shards, read front to back up to the
    last row wanted (a tar has no index)."""
    out: dict[tuple[str, int], Image.Image | str] = {}
    by_source: dict[str, set[int]] = defaultdict(set)
    for src, row in keys:
        by_source[src].add(row)
    for src in sorted(by_source):
        try:
            fs, path = filesystem(src, storage)
            with fs.open(path, "rb") as f:
                if data is not None and data.format == "webdataset":
                    out.update(_shard_images(f, src, by_source[src], data, max_pixels))
                    continue
                pf = pq.ParquetFile(f)
                for row in sorted(by_source[src]):
                    out[(src, row)] = _read_one(pf, row, image_column, max_pixels)
        except Exception as e:  # the input moved, was deleted or is unreadable
            log.warning("report: cannot read images from %s: %s: %s", src, type(e).__name__, e)
            for row in by_source[src]:
                out.setdefault((src, row), f"input unreadable ({type(e).__name__})")
    return out


def _shard_images(f: Any, src: str, rows: set[int], data: DataSettings,
                  max_pixels: int) -> dict[tuple[str, int], Image.Image | str]:
    """The images of the samples ``rows`` of the shard open in ``f``."""
    out: dict[tuple[str, int], Image.Image | str] = {}
    for i, sample in enumerate(iter_samples(f, src, getattr(f, "size", 0) or 0)):
        if i in rows:
            image = sample_row(sample, data).image
            try:
                out[(src, i)] = decode_image(image, max_pixels)
            except Exception as e:
                out[(src, i)] = f"image unreadable ({type(e).__name__})"
        if i >= max(rows):
            break
    for row in rows - {r for _, r in out}:
        out[(src, row)] = "row not found in the input"
    return out


def _read_one(pf: pq.ParquetFile, row: int, column: str, max_pixels: int) -> Image.Image | str:
    try:
        rg, offset = _row_group(pf, row)
        seen = offset
        for batch in pf.iter_batches(batch_size=16, row_groups=[rg], columns=[column]):
            if row < seen + batch.num_rows:
                cell = batch.column(0)[row - seen].as_py()
                return decode_image(image_bytes(cell), max_pixels)
            seen += batch.num_rows
        return "row not found in the input"
    except Exception as e:
        return f"image unreadable ({type(e).__name__})"


def square(img: Image.Image, px: int) -> Image.Image:
    """Centre square crop resized to ``px`` x ``px``."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s)).resize((px, px), Image.BICUBIC)


def thumbnail(img: Image.Image | None, values: Sequence[float] | None, grid: tuple[int, int],
              px: int) -> bytes:
    """PNG of the map over the image (or over white when there is no image)."""
    base = square(img, px) if img is not None else Image.new("RGB", (px, px), (255, 255, 255))
    h, w = grid
    if values is None or h * w != len(values) or h * w == 0:
        return png_bytes(base)
    m = np.asarray(values, dtype=np.float64).reshape(h, w)
    if img is None:
        return png_bytes(overlay(base, m, alpha=1.0, on_grey=False))
    return png_bytes(overlay(base, m))
