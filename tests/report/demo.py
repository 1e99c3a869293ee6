"""A small demo-like report from hand-built results, to look at (``make report-screenshot``).

    python -m tests.report.demo <dir>     # writes <dir>/input.parquet, <dir>/results, <dir>/report
    python -m tests.report.demo <dir> --compare   # also <dir>/baseline and <dir>/compare

400 pairs of drawn shapes with captions from ``builders.VOCAB`` plus people
terms; "vintage" captions keep their top patch in the bottom-right corner (a
planted shortcut), "woman" raises the alignment more than "man" (a group gap),
every 25th row failed. No model: every value is made up, so the page shows
every section filled. The baseline night (``--compare``) is the same scenes
without the shortcut, with "woman" and "man" alike, and fewer failed rows: the
comparison page shows a shortcut that appeared, a gap that opened and more
failed rows.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from pipeline.report import ReportSettings, build_report
from tests.report.builders import VOCAB, Row, write_results

GRID = (7, 7)
CORNER = GRID[0] * GRID[1] - 1
COLOURS = {"red": (200, 40, 40), "blue": (40, 70, 200), "green": (40, 160, 70)}
SHAPES = ("circle", "square", "triangle")


def shape_png(colour: str, shape: str, rng: np.random.Generator, px: int = 96) -> bytes:
    """A ``shape`` in ``colour`` on a light random background."""
    bg = tuple(int(x) for x in rng.integers(200, 250, 3))
    img = Image.new("RGB", (px, int(px * 1.3)), bg)
    d = ImageDraw.Draw(img)
    x, y, r = int(rng.integers(25, 70)), int(rng.integers(30, 95)), int(rng.integers(12, 22))
    box = (x - r, y - r, x + r, y + r)
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    else:
        d.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def demo_rows(n: int = 400, seed: int = 7, shortcut: bool = True, woman: float = 0.04,
              bad_every: int = 25) -> tuple[list[Row], list[bytes]]:
    """Result rows and their input images (PNG bytes), in input order: ``shortcut`` plants
    the corner for "vintage", ``woman`` is that word's attribution ("man": 0.01), every
    ``bad_every``-th row failed."""
    rng = np.random.default_rng(seed)
    rows, images = [], []
    cells = GRID[0] * GRID[1]
    for i in range(n):
        colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
        images.append(shape_png(colour, shape, rng))
        if i % bad_every == bad_every - 1:
            rows.append(Row(f"demo-{i:04d}", [], [], 0.0, None, GRID,
                            "bad_image" if i % 50 == 24 else "error",
                            f"image is {i % 7 + 1}x{i % 5 + 2} pixels, too small"
                            if i % 50 == 24 else "worker 3 raised RuntimeError: CUDA out of memory"))
            continue
        words = ["a", colour, shape]
        attrs = [0.002, 0.03, 0.05]
        person = rng.random()
        if person < 0.2:
            words += ["with", "a", "woman"]
            attrs += [0.0, 0.001, woman]
        elif person < 0.4:
            words += ["with", "a", "man"]
            attrs += [0.0, 0.001, 0.01]
        filler = [str(w) for w in rng.choice(VOCAB[:11], size=int(rng.integers(0, 3)))]
        words += filler
        attrs += [float(x) for x in rng.normal(-0.005, 0.01, len(filler))]
        m = rng.normal(0.0, 0.004, cells)
        peak = int(rng.integers(cells))
        if rng.random() < 0.15:
            words = ["vintage", "photo", "of", *words]
            attrs = [0.02, 0.01, 0.0, *attrs]
            peak = CORNER if rng.random() < 0.85 and shortcut else peak
        m[peak] += 0.03
        m[int(rng.integers(cells))] -= 0.02
        attrs = [a + float(rng.normal(0, 0.005)) for a in attrs]
        rows.append(Row(f"demo-{i:04d}", words, attrs, float(rng.normal(0.27, 0.03)), list(m),
                        GRID, metrics=(float(rng.gamma(2, 0.4)), float(rng.random() < 0.4),
                                       float(rng.gamma(2, 0.15)), float(rng.random() < 0.45))))
    return rows, images


SETTINGS = ReportSettings(words_min_count=5, compare_min_count=5, groups={
    "gender": {"description": "Captions naming a woman vs a man (demo terms).",
               "groups": {"female": ["woman"], "male": ["man"]}, "rest": "no_person"}})


def build_demo(root: str | Path, compare: bool = False) -> Path:
    """Input, results (3 parts) and report under ``root``; returns the report directory.
    With ``compare``, also a baseline night and the comparison report (``<root>/compare``)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows, images = demo_rows()
    src = str(root / "input.parquet")
    pq.write_table(pa.table({"image": pa.array(images, pa.binary()),
                             "caption": [" ".join(r.words) for r in rows]}), src,
                   row_group_size=64)
    parts = [rows[:150], rows[150:300], rows[300:]]
    write_results(str(root / "results"), parts, src)
    build_report(str(root / "results"), str(root / "report"), SETTINGS)
    if compare:
        before, _ = demo_rows(shortcut=False, woman=0.01, bad_every=100)
        write_results(str(root / "baseline"), [before[:150], before[150:300], before[300:]], src)
        build_report(str(root / "results"), str(root / "compare"), SETTINGS,
                     baseline=str(root / "baseline"))
    return root / "report"


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--compare"]
    print(build_demo(args[0] if args else "bench-results/report-demo", "--compare" in sys.argv))
