"""Bytes -> RGB image, caption value -> text, with a status for every row.

Web-scraped data is messy. Everything a user would expect to work is converted
(CMYK, 16-bit grayscale, palettes with transparency, RGBA over white, EXIF
rotation, animated images' first frame); what cannot be used is reported with
a clear message instead of crashing the worker. Decompression bombs are refused
from the header, before any pixel is allocated.

A caller that only needs a smaller image can pass ``draft``: plain JPEGs (RGB or
grey, upright) are then decoded with libjpeg's DCT-domain scaling (1/2, 1/4 or
1/8, Pillow's ``Image.draft``) to the smallest scale that still covers the size
it asks for, which skips most of the inverse DCT and colour conversion work.
Every other image, and any JPEG the scaled decode fails on, decodes exactly as
without it, so statuses and messages do not depend on ``draft``.
"""

from __future__ import annotations

import contextlib
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
#: ``info`` key of an image decoded with DCT scaling: (stored w, stored h, scale),
#: the image being the stored one at 1/scale; the preprocess places its resize and
#: crop by it.
SOURCE_SIZE = "nibt_source_size"
#: EXIF orientations that rotate or flip (1 and absent: upright).
_TURNED = range(2, 9)

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


def plain_jpeg(img: Image.Image) -> bool:
    """A JPEG whose decoded pixels are the picture as shown: RGB or grey, no EXIF
    rotation (CMYK, rotated and multi-picture files are not plain)."""
    return (img.format == "JPEG" and img.mode in ("RGB", "L")
            and img.getexif().get(0x0112, 1) not in _TURNED)


def open_image(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """The header of encoded image bytes, checked (present, identifiable, not a
    decompression bomb, within ``max_pixels``); no pixel decoded yet. Raises ``RowError``."""
    return _guarded(lambda: _open(data, max_pixels))


def decode_image(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 draft: Callable[[tuple[int, int]], tuple[int, int]] | None = None,
                 ) -> Image.Image:
    """Decode encoded image bytes to an upright RGB PIL image, or raise ``RowError``.

    ``draft``: (stored w, h) -> the smallest (w, h) the caller needs. A plain JPEG
    is then decoded at the coarsest DCT scale that covers it, and the image's
    ``info[SOURCE_SIZE]`` says how it maps to the stored one; other images are
    unaffected.
    """
    if draft is not None:
        with contextlib.suppress(Exception):  # any failure: the exact path says why
            img = _open(data, max_pixels)
            if plain_jpeg(img):
                w, h = img.size
                drafted = img.draft("RGB", draft((w, h)))
                scale = round(w / drafted[1][2]) if drafted else 1  # box: stored size / scale
                img.load()
                img = img if img.mode == "RGB" else img.convert("RGB")
                img.info[SOURCE_SIZE] = (w, h, scale)
                return img
    return _guarded(lambda: _exact(_open(data, max_pixels)))


def _open(data: bytes | None, max_pixels: int) -> Image.Image:
    if data is None:
        raise RowError(BAD_IMAGE, "image is missing (null)")
    if len(data) == 0:
        raise RowError(BAD_IMAGE, "image is empty (0 bytes)")
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
    return img


def _exact(img: Image.Image) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        img.seek(0)
        img.load()
    img = ImageOps.exif_transpose(img) or img
    return _to_rgb(img)


def _guarded(step: Callable[[], Image.Image]) -> Image.Image:
    """``step()``, its failures turned into ``RowError`` with a message that says why."""
    try:
        return step()
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
    draft: Callable[[tuple[int, int]], tuple[int, int]] | None = None,
) -> Decoded:
    """Decode and preprocess one row; a bad image or caption gets its status and message.

    When both are bad the status is ``bad_image`` and the message names both.
    ``draft``: see ``decode_image`` (the preprocess then sees ``SOURCE_SIZE``).
    """
    problems: list[RowError] = []
    pixels = None
    caption = ""
    try:
        pixels = preprocess(decode_image(image_bytes(image_cell), max_pixels, draft))
    except RowError as e:
        problems.append(e)
    except MemoryError:
        raise  # the process ran out: the worker's problem, not the row's
    except Exception as e:  # a transform that chokes on an odd image
        problems.append(RowError(BAD_IMAGE, f"cannot preprocess image: {type(e).__name__}: {e}"))
    try:
        caption = decode_caption(caption_cell, max_chars)
    except RowError as e:
        problems.append(e)
    if problems:
        return Decoded(problems[0].status, "; ".join(str(p) for p in problems))
    return Decoded(OK, None, pixels, caption)
