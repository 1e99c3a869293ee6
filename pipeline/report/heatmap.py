"""Signed attribution maps drawn over images (for `nibt-explain` and the report).

Red marks patches that raise the image-text alignment, blue those that lower
it; the colour scale is symmetric around zero and set per map, so a map's
colours say where, not how much compared with another pair. Overlays are drawn
over a lightened grey copy of the image: over the image's own colours a red map
on a red object and a blue map on a blue object could not be told apart.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

#: The diverging scale's ends (ColorBrewer RdBu) and centre, as RGB floats.
RED = (0.70, 0.09, 0.17)
BLUE = (0.13, 0.40, 0.67)
WHITE = (1.0, 1.0, 1.0)


def diverging(values: np.ndarray) -> np.ndarray:
    """Map values in [-1, 1] to RGB floats: blue (-1), white (0), red (+1)."""
    v = np.clip(values, -1.0, 1.0)[..., None]
    red, blue, white = np.array(RED), np.array(BLUE), np.ones(3)
    return np.where(v >= 0, white + v * (red - white), white + (-v) * (blue - white))


def symmetric_scale(grid: np.ndarray) -> float:
    """The map's largest |value|: its colour scale runs from minus that to plus that."""
    g = np.nan_to_num(np.asarray(grid, dtype=np.float64))
    return float(np.abs(g).max()) if g.size else 0.0


def _upsampled(norm: np.ndarray, w: int, h: int) -> np.ndarray:
    """Bilinear upsampling of a [-1, 1] grid to h x w (the grid covers the whole image)."""
    field = Image.fromarray(((norm + 1) / 2 * 65535).astype(np.uint16).astype(np.int32), "I")
    return np.asarray(field.resize((w, h), Image.BILINEAR), dtype=np.float64) / 65535 * 2 - 1


def grey(image: np.ndarray | Image.Image, low: float = 0.3, high: float = 0.92) -> np.ndarray:
    """The image as lightened grey floats [H, W, 3] in [low, high] (ITU-R 601 luma)."""
    img = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image,
                     dtype=np.float64) / 255.0
    luma = img @ np.array([0.299, 0.587, 0.114])
    return np.repeat((low + (high - low) * luma)[..., None], 3, axis=2)


def overlay(image: np.ndarray | Image.Image, grid: np.ndarray, alpha: float = 0.85,
            on_grey: bool = True, scale: float | None = None) -> Image.Image:
    """Blend a signed patch map ``grid`` [gh, gw] over ``image`` (uint8 RGB).

    The colour's weight grows linearly with |value| up to ``alpha`` at half the
    scale (so mid values show, and the weight has no kink at zero that would
    draw the zero crossings as lines); ``on_grey`` draws over a lightened grey
    copy of the image. ``scale`` fixes the colour scale (default: the map's own
    largest |value|).
    """
    img = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    grid = np.nan_to_num(np.asarray(grid, dtype=np.float64))
    top = symmetric_scale(grid) if scale is None else float(scale)
    norm = np.clip(grid / top, -1, 1) if top > 0 else np.zeros_like(grid)
    h, w = img.shape[:2]
    up = _upsampled(norm, w, h)
    base = grey(img) if on_grey else img / 255.0
    weight = alpha * np.clip(2.0 * np.abs(up), 0.0, 1.0)[..., None]
    blended = base * (1 - weight) + diverging(up) * weight
    return Image.fromarray((np.clip(blended, 0, 1) * 255 + 0.5).astype(np.uint8))


def map_image(grid: np.ndarray, size: tuple[int, int], scale: float | None = None) -> Image.Image:
    """The map alone: one flat block of colour per patch, ``size`` (w, h) pixels."""
    g = np.nan_to_num(np.asarray(grid, dtype=np.float64))
    top = symmetric_scale(g) if scale is None else float(scale)
    norm = np.clip(g / top, -1, 1) if top > 0 else np.zeros_like(g)
    small = Image.fromarray((diverging(norm) * 255 + 0.5).astype(np.uint8))
    return small.resize(size, Image.NEAREST)


def png_bytes(img: Image.Image) -> bytes:
    """PNG encoding of ``img`` (deterministic: no timestamps)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    """JPEG encoding of ``img`` (deterministic for the same pixels and library)."""
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality, optimize=False)
    return buf.getvalue()
