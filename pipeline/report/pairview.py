"""One pair drawn for a person: the image, the map alone with its colour bar, the overlay,
and the caption with each word coloured by its attribution.

The image is shown at a readable size (at least ``min_px`` on its long side, the
original when larger, at most ``max_px``), enlarged with nearest-neighbour
sampling when it is small (the pixels stay honest), with the square the model
saw outlined. The map alone shows each patch as a flat block on a scale
symmetric around zero (white = 0) with a labelled colour bar; the overlay puts
the same colours, blended by |value|, over a lightened grey copy of the crop.
``pair_figure`` draws all of it as one PNG (``nibt-explain``); ``zoom_images``
gives the report's enlarged view its pieces.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LinearSegmentedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from PIL import Image, ImageDraw

from pipeline.report.heatmap import (
    BLUE,
    RED,
    WHITE,
    jpeg_bytes,
    map_image,
    overlay,
    png_bytes,
    symmetric_scale,
)

#: The same diverging scale as the overlays, as a matplotlib colormap.
CMAP = LinearSegmentedColormap.from_list("nibt", [BLUE, WHITE, RED])
MIN_PX, MAX_PX = 384, 1024


def readable_size(size: tuple[int, int], min_px: int = MIN_PX,
                  max_px: int = MAX_PX) -> tuple[int, int]:
    """(w, h) with the long side at least ``min_px`` (the original when larger), at most
    ``max_px``; the aspect ratio kept."""
    w, h = size
    long = max(w, h, 1)
    target = min(max(long, min_px), max(max_px, min_px))
    s = target / long
    return max(1, round(w * s)), max(1, round(h * s))


def resized(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``img`` at ``size``: nearest-neighbour when enlarged 2x or more (small images stay
    crisp), Lanczos otherwise."""
    img = img.convert("RGB")
    if size == img.size:
        return img
    enlarge = size[0] >= 2 * img.size[0] and size[1] >= 2 * img.size[1]
    return img.resize(size, Image.NEAREST if enlarge else Image.LANCZOS)


def centre_square(size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The centre square of an image of ``size``: what a resize of the short side plus a
    centre crop (open_clip's default preprocessing) keeps."""
    w, h = size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return left, top, left + side, top + side


def _scaled_box(box: tuple[int, int, int, int], src: tuple[int, int],
                dst: tuple[int, int]) -> tuple[int, int, int, int]:
    sx, sy = dst[0] / src[0], dst[1] / src[1]
    return (round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy))


def zoom_images(img: Image.Image | None, values: Sequence[float] | None, grid: tuple[int, int],
                min_px: int = MIN_PX, max_px: int = MAX_PX) -> dict[str, object]:
    """The report's enlarged view of a pair: the image with the crop outlined (JPEG), the
    overlay on the crop (JPEG), the map as one pixel per patch (PNG, scaled up by the
    page) and the colour scale's end."""
    h, w = grid
    m = None
    if values is not None and h * w == len(values) and h * w > 0:
        m = np.nan_to_num(np.asarray(values, dtype=np.float64).reshape(h, w))
    out: dict[str, object] = {"scale": symmetric_scale(m) if m is not None else None,
                              "image": None, "overlay": None, "map": None, "crop_px": None}
    if m is not None:
        out["map"] = png_bytes(map_image(m, (w, h)))
    if img is None:
        return out
    size = readable_size(img.size, min_px, max_px)
    shown = resized(img, size)
    box = _scaled_box(centre_square(img.size), img.size, size)
    crop = shown.crop(box)
    if box != (0, 0, *size):
        marked = shown.copy()
        ImageDraw.Draw(marked).rectangle(box, outline=(255, 200, 0), width=2)
        shown = marked
    out.update(image=jpeg_bytes(shown), crop_px=crop.size[0], size=list(size))
    if m is not None:
        out["overlay"] = jpeg_bytes(overlay(crop, m))
    return out


def _words_layout(fig: Figure, words: Sequence[tuple[str, float]], width: float, x0: float,
                  y0: float, size: float) -> tuple[list[tuple[str, float, float, float]], float]:
    """(word, attribution, x centre, y) per word, wrapped to ``width`` pixels; the height
    used. Each word's slot is as wide as the word or its value, whichever is wider."""
    renderer = fig.canvas.get_renderer()
    placed, x, y, line_h = [], x0, y0, size * 3.6
    for word, a in words:
        slot = 0.0
        for text, fs in ((word, size), (_value(a), size * 0.65)):
            t = fig.text(0, 0, text, fontsize=fs)
            slot = max(slot, t.get_window_extent(renderer).width)
            t.remove()
        slot += size * 1.1
        if x + slot > x0 + width and x > x0:
            x, y = x0, y + line_h
        placed.append((word, a, x + slot / 2, y))
        x += slot + size * 0.4
    return placed, (y - y0) + line_h


def _value(a: float) -> str:
    return f"{a:+.2g}"


class _Sheet:
    """A figure laid out in pixels from its top-left corner (matplotlib counts in
    fractions from the bottom-left)."""

    def __init__(self, fig: Figure, w: float, h: float, top: float) -> None:
        self.fig, self.w, self.h, self.top = fig, w, h, top  # top: the panels' first row

    def axes(self, x: float, y: float, w: float, h: float):
        return self.fig.add_axes([x / self.w, 1 - (y + h) / self.h, w / self.w, h / self.h])

    def text(self, x: float, y: float, s: str, **kw):
        return self.fig.text(x / self.w, 1 - y / self.h, s, **kw)

    def panel(self, x: float, w: float, h: float, name: str):
        """Axes without ticks at ``x`` on the panels' row, named above."""
        ax = self.axes(x, self.top, w, h)
        ax.set_xticks([])
        ax.set_yticks([])
        self.text(x, self.top - 8, name, fontsize=12, va="bottom", ha="left")
        return ax


def pair_figure(image: Image.Image, values: np.ndarray | None, words: Sequence[tuple[str, float]],
                title: str, crop: tuple[int, int, int, int] | None = None,
                min_px: int = MIN_PX, max_px: int = MAX_PX) -> bytes:
    """One PNG: title; image (crop outlined) | map alone + colour bar | overlay; the
    caption's words coloured by attribution, with their values and a colour bar.

    ``crop`` is the box of ``image`` the model saw (default: the centre square).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    dpi = 100
    size = readable_size(image.size, min_px, max_px)
    shown = resized(image, size)
    box = _scaled_box(crop or centre_square(image.size), image.size, size)
    cw, ch = box[2] - box[0], box[3] - box[1]
    pad, head, label, bar = 28, 46, 30, 110
    total_w = pad + size[0] + pad + cw + 14 + bar + pad + cw + pad
    row_h = max(size[1], ch)
    # the caption's height depends on wrapping: lay it out on a scratch figure first
    scratch = Figure(figsize=(total_w / dpi, 4), dpi=dpi)
    FigureCanvasAgg(scratch)
    _, cap_h = _words_layout(scratch, words, total_w - 2 * pad, pad, 0, 13)
    total_h = head + label + row_h + pad + label + cap_h + 70 + pad
    fig = Figure(figsize=(total_w / dpi, total_h / dpi), dpi=dpi, facecolor="white")
    FigureCanvasAgg(fig)
    sheet = _Sheet(fig, total_w, total_h, head + label)
    sheet.text(pad, 12, title, fontsize=13, va="top", ha="left", weight="bold", wrap=True)
    ax = sheet.panel(pad, size[0], size[1], "image")
    ax.imshow(np.asarray(shown), interpolation="none", aspect="auto")
    if box != (0, 0, *size):
        ax.add_patch(Rectangle((box[0] - 0.5, box[1] - 0.5), cw, ch, fill=False,
                               edgecolor="#ffc800", linewidth=2))
        ax.set_title("outline: what the model saw", fontsize=9, loc="right")
    if values is not None:
        x_map = pad + size[0] + pad
        _draw_maps(sheet, values, shown.crop(box), x_map, x_map + cw + 14 + bar + pad)
    _draw_caption(sheet, words, pad, head + label + row_h + pad, label)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return buf.getvalue()


def _draw_maps(sheet: _Sheet, values: np.ndarray, cropped: Image.Image, x_map: float,
               x_over: float) -> None:
    """The map alone with its colour bar at ``x_map``, the overlay at ``x_over``."""
    cw, ch = cropped.size
    top = symmetric_scale(values)
    scale = top if top > 0 else 1.0
    ax = sheet.panel(x_map, cw, ch, "patch attribution (the map alone)")
    ax.imshow(np.asarray(map_image(values, (cw, ch), scale)), interpolation="none",
              aspect="auto")
    cax = sheet.axes(x_map + cw + 14, sheet.top, 18, ch)
    cb = sheet.fig.colorbar(ScalarMappable(Normalize(-scale, scale), CMAP), cax=cax,
                            ticks=np.linspace(-scale, scale, 5), format="%.2g")
    cb.set_label("attribution: red raises, blue lowers\nthe image-text alignment; 0 = white",
                 fontsize=9)
    cb.ax.tick_params(labelsize=9)
    ax = sheet.panel(x_over, cw, ch, "overlay (on grey)")
    ax.imshow(np.asarray(overlay(cropped, values, scale=scale)), interpolation="none",
              aspect="auto")


def _draw_caption(sheet: _Sheet, words: Sequence[tuple[str, float]], pad: float, y_cap: float,
                  label: float) -> None:
    """The caption from ``y_cap``: each word on its colour, its value below, a colour bar."""
    sheet.text(pad, y_cap, "caption, each word coloured by its attribution (value below it)",
               fontsize=12, va="top", ha="left")
    wscale = max((abs(a) for _, a in words), default=0.0) or 1.0
    placed, _ = _words_layout(sheet.fig, words, sheet.w - 2 * pad, pad, y_cap + label, 13)
    for word, a, x, y in placed:
        colour = CMAP(0.5 + 0.5 * max(-1.0, min(1.0, a / wscale)))
        sheet.text(x, y + 10, word, fontsize=13, va="center", ha="center",
                   bbox={"facecolor": colour, "edgecolor": "#999999", "boxstyle": "round,pad=0.3"})
        sheet.text(x, y + 33, _value(a), fontsize=8.5, va="center", ha="center", color="#333333")
    cax = sheet.axes(pad, sheet.h - pad - 22, min(360, sheet.w - 2 * pad), 12)
    cb = sheet.fig.colorbar(ScalarMappable(Normalize(-wscale, wscale), CMAP), cax=cax,
                            orientation="horizontal", ticks=np.linspace(-wscale, wscale, 5),
                            format="%.2g")
    cb.ax.tick_params(labelsize=8)
    cb.ax.set_title("word attribution (scale of this caption; 0 = white)", fontsize=9, loc="left")
