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


def photo(seed: int, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """A photo-like uint8 [h, w, 3] image of ``size`` (w, h): 1/f noise (a power
    spectrum like natural images'), mostly in brightness, some in colour; a few
    sharp-edged shapes; sensor grain.
    At JPEG quality 90 it takes ~2-3 bits per pixel, as camera photos do."""
    from PIL import ImageDraw

    rng = np.random.default_rng([seed, *size])
    w, h = size
    acc = np.zeros((h, w, 3), np.float32)
    for cells, amp in ((4, 50), (8, 36), (16, 26), (32, 19), (64, 14), (128, 10), (256, 8)):
        gh, gw = max(2, h * cells // 512), max(2, w * cells // 512)
        grid = rng.normal(0, 1, (gh, gw, 1)) + 0.4 * rng.normal(0, 1, (gh, gw, 3))
        grid = grid.astype(np.float32)
        acc += amp * np.stack([np.asarray(Image.fromarray(grid[..., c], "F").resize(
            (w, h), Image.BICUBIC)) for c in range(3)], -1)
    img = Image.fromarray(np.clip(128 + acc, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(w // 16, w // 3)), y0 + int(rng.integers(h // 16, h // 3))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    grain = rng.normal(0, 3, (h, w, 3))
    return np.clip(np.asarray(img, np.float32) + grain, 0, 255).astype(np.uint8)


def photo_jpeg(seed: int, size: tuple[int, int] = (640, 480), quality: int = 90) -> bytes:
    """``photo(seed, size)`` as a baseline JPEG (4:2:0, Pillow's default)."""
    return encode(Image.fromarray(photo(seed, size)), "JPEG", quality=quality)


def camera_jpeg(scene: np.ndarray, size: tuple[int, int] = (640, 480), quality: int = 90,
                seed: int = 0) -> bytes:
    """A small square scene (uint8 [s, s, 3]) as a camera-size JPEG of ``size`` (w, h):
    upscaled (bicubic) to the full height, centred, the side bands filled with the
    scene's edge colours, sensor grain added. A model's resize and centre crop of
    it see the scene again."""
    w, h = size
    big = np.asarray(Image.fromarray(scene).resize((h, h), Image.BICUBIC), np.float32)
    left = (w - h) // 2
    canvas = np.empty((h, w, 3), np.float32)
    canvas[:, :left] = big[:, :1]
    canvas[:, left + h:] = big[:, -1:]
    canvas[:, left : left + h] = big
    canvas += np.random.default_rng(seed).normal(0, 3, canvas.shape)
    return encode(Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)), "JPEG",
                  quality=quality)
