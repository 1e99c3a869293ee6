"""Signed attribution maps drawn over images (for `nibt-explain` and the report).

Red marks patches that raise the image-text alignment, blue those that lower
it; the colour scale is symmetric around zero and set per map, so a map's
colours say where, not how much compared with another pair.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def _diverging(values: np.ndarray) -> np.ndarray:
    """Map values in [-1, 1] to RGB floats: blue (-1), white (0), red (+1)."""
    v = np.clip(values, -1.0, 1.0)[..., None]
    red = np.array([0.70, 0.09, 0.17])
    blue = np.array([0.13, 0.40, 0.67])
    white = np.ones(3)
    return np.where(v >= 0, white + v * (red - white), white + (-v) * (blue - white))


def unnormalize(pixels: np.ndarray, mean: tuple, std: tuple) -> np.ndarray:
    """A preprocessed [3, H, W] tensor back to a uint8 [H, W, 3] image (what the model saw)."""
    arr = pixels.transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    return (np.clip(arr, 0, 1) * 255 + 0.5).astype(np.uint8)


def overlay(image: np.ndarray | Image.Image, grid: np.ndarray, alpha: float = 0.55) -> Image.Image:
    """Blend a signed patch map ``grid`` [gh, gw] over ``image`` (uint8 RGB)."""
    img = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    grid = np.asarray(grid, dtype=np.float64)
    scale = np.abs(grid).max()
    norm = grid / scale if scale > 0 else np.zeros_like(grid)
    h, w = img.shape[:2]
    # bilinear upsampling of the colour field (the grid covers the whole crop)
    field = Image.fromarray(((norm + 1) / 2 * 65535).astype(np.uint16).astype(np.int32), "I")
    up = np.asarray(field.resize((w, h), Image.BILINEAR), dtype=np.float64) / 65535 * 2 - 1
    colours = _diverging(up)
    weight = alpha * np.abs(up)[..., None]
    blended = img / 255.0 * (1 - weight) + colours * weight
    return Image.fromarray((np.clip(blended, 0, 1) * 255 + 0.5).astype(np.uint8))


def png_bytes(img: Image.Image) -> bytes:
    """PNG encoding of ``img`` (deterministic: no timestamps)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
