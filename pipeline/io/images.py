"""Bytes -> RGB image, caption value -> text, with a status for every row.

Web-scraped data is messy. Everything a user would expect to work is converted
(CMYK, 16-bit grayscale, palettes with transparency, RGBA over white, EXIF
rotation, animated images' first frame); what cannot be used is reported with
a clear message instead of crashing the worker. Decompression bombs are refused
from the header, before any pixel is allocated.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

#: Largest image accepted, in pixels (a 30000x30000 PNG claims 9e8).
DEFAULT_MAX_PIXELS = 64_000_000
#: Captions are cut to this many characters before tokenising: far more than
#: any context length holds, and it keeps a 1 MB caption from stalling BPE.
DEFAULT_MAX_CAPTION_CHARS = 4096

OK, BAD_IMAGE, BAD_CAPTION, ERROR = "ok", "bad_image", "bad_caption", "error"
STATUSES = (OK, BAD_IMAGE, BAD_CAPTION, ERROR)


class RowError(ValueError):
    """A row that cannot be attributed; ``status`` says which part is bad."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def image_bytes(value: object) -> bytes | None:
    """The encoded bytes of an image cell: raw bytes or a ``{"bytes": ...}`` struct."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise RowError(BAD_IMAGE, f"image cell is {type(value).__name__}, not bytes")


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "F":
        arr = np.clip(np.asarray(img, dtype=np.float64), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode encoded image bytes to an upright RGB PIL image, or raise ``RowError``."""
    if data is None:
        raise RowError(BAD_IMAGE, "image is missing (null)")
    if len(data) == 0:
        raise RowError(BAD_IMAGE, "image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise RowError(
                    BAD_IMAGE, f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}"
                )
            if w < 1 or h < 1:
                raise RowError(BAD_IMAGE, f"image has no pixels ({w}x{h})")
            img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return _to_rgb(img)
    except (RowError, MemoryError):
        raise  # out of memory is the worker's problem, not the row's
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise RowError(BAD_IMAGE, f"decompression bomb refused: {e}") from None
    except Image.UnidentifiedImageError:
        raise RowError(BAD_IMAGE, "bytes are not an image PIL can identify") from None
    except Exception as e:  # truncated files, broken codecs, bomb warnings
        raise RowError(BAD_IMAGE, f"cannot decode image: {type(e).__name__}: {e}") from None


def decode_caption(value: object, max_chars: int = DEFAULT_MAX_CAPTION_CHARS) -> str:
    """A caption cell as text (strings or UTF-8 bytes), or raise ``RowError``."""
    if value is None:
        raise RowError(BAD_CAPTION, "caption is missing (null)")
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise RowError(BAD_CAPTION, f"caption is not valid UTF-8: {e}") from None
    if not isinstance(value, str):
        raise RowError(BAD_CAPTION, f"caption is {type(value).__name__}, not text")
    if not value.strip():
        raise RowError(BAD_CAPTION, "caption is empty or whitespace only")
    return value[:max_chars]


@dataclass
class Decoded:
    """One row after decoding: a preprocessed image and caption, or its failure."""

    status: str
    error: str | None = None
    pixels: Any = None  # when ok: what the preprocess gave (job.preprocess)
    caption: str = ""


def decode_pair(
    image_cell: object,
    caption_cell: object,
    preprocess: Callable[[Image.Image], Any],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_chars: int = DEFAULT_MAX_CAPTION_CHARS,
) -> Decoded:
    """Decode and preprocess one row; a bad image or caption gets its status and message.

    When both are bad the status is ``bad_image`` and the message names both.
    """
    problems: list[RowError] = []
    pixels = None
    caption = ""
    try:
        pixels = preprocess(decode_image(image_bytes(image_cell), max_pixels))
    except RowError as e:
        problems.append(e)
    except MemoryError:
        raise
    except Exception as e:  # a transform that chokes on an odd image
        if "allocate" in str(e):
            raise  # the allocator ran out: the worker's problem, not the row's
        problems.append(RowError(BAD_IMAGE, f"cannot preprocess image: {type(e).__name__}: {e}"))
    try:
        caption = decode_caption(caption_cell, max_chars)
    except RowError as e:
        problems.append(e)
    if problems:
        return Decoded(problems[0].status, "; ".join(str(p) for p in problems))
    return Decoded(OK, None, pixels, caption)
