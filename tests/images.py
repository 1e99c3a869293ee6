"""Hand-built awkward images: each case with the pixels a user would expect back."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def solid(rgb: tuple[int, int, int], size=(20, 12)) -> Image.Image:
    return Image.new("RGB", size, rgb)


def cmyk_jpeg() -> bytes:
    return encode(solid((200, 30, 30)).convert("CMYK"), "JPEG", quality=95)


def gray16_png() -> bytes:
    arr = np.full((10, 10), 0x8000, dtype=np.uint16)  # mid grey in 16 bits
    return encode(Image.fromarray(arr), "PNG")


def palette_transparent_png() -> bytes:
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putpixel((0, 0), 1)
    return encode(img, "PNG", transparency=0)  # index 0 (black) is transparent


def rgba_png() -> bytes:
    img = Image.new("RGBA", (10, 10), (0, 0, 255, 0))  # fully transparent blue
    img.putpixel((0, 0), (0, 0, 255, 255))
    return encode(img, "PNG")


def exif_rotated_jpeg() -> tuple[bytes, tuple[int, int]]:
    """A 40x20 landscape stored with orientation 6 (display rotated 90 deg): upright is 20x40."""
    img = solid((10, 200, 10), size=(40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", exif=exif.tobytes()), (20, 40)


def one_pixel_png() -> bytes:
    return encode(solid((1, 2, 3), size=(1, 1)), "PNG")


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A PNG header claiming ``width x height``; the data is tiny (and incomplete)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def animated_gif() -> bytes:
    frames = [solid((255, 0, 0)), solid((0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def truncated_jpeg() -> bytes:
    data = encode(solid((5, 5, 5), size=(64, 64)), "JPEG")
    return data[: len(data) // 2]
