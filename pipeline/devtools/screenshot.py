"""A screenshot of a report page in headless Chromium, to look at it as a person would.

    python -m pipeline.devtools.screenshot report.html report.png [--width 1280 --height 8000]
    python -m pipeline.devtools.screenshot report.html pair.png --fragment zoom-p0r3  # a pair enlarged

Needs Debian's ``chromium`` (``apt-get install -y chromium``); ``NIBT_CHROMIUM``
names another binary. Runs it with a fresh, empty profile, no network
services and a time limit; the blank band below the page is cut off. Exit codes: 0 written, 2 no browser or no page,
1 the browser failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "/usr/bin/chromium",
              "/usr/bin/chromium-browser")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--disable-dev-shm-usage")


class ScreenshotError(RuntimeError):
    """The screenshot could not be taken (the message says why)."""


def find_chromium() -> str | None:
    """The Chromium binary: ``$NIBT_CHROMIUM``, else the first of ``CANDIDATES`` found."""
    env = os.environ.get("NIBT_CHROMIUM")
    if env:
        return shutil.which(env) or (env if os.access(env, os.X_OK) else None)
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def trim_bottom(path: Path, margin: int = 24) -> None:
    """Cut the blank band below the page's content (Chromium shoots the whole window)."""
    from PIL import Image

    with Image.open(path) as img:
        rgb = img.convert("RGB")
    px = np.asarray(rgb)
    blank = (px == px[-1:, :1]).all(axis=(1, 2))  # rows all of the bottom-left colour
    content = np.flatnonzero(~blank)
    bottom = min(px.shape[0], int(content[-1]) + 1 + margin) if content.size else px.shape[0]
    if bottom < px.shape[0]:
        rgb.crop((0, 0, px.shape[1], bottom)).save(path, format="PNG")


def screenshot(page: str | Path, out: str | Path, width: int = 1280, height: int = 8000,
               timeout: float = 120.0, trim: bool = True, fragment: str | None = None) -> Path:
    """Render the local HTML file ``page`` into the PNG ``out``; returns ``out``.

    The window is ``width x height``; with ``trim`` the blank band below the
    page is cut off, so a tall window gives a whole-page picture. ``fragment``
    opens the page at ``#fragment`` (a report's enlarged pair). Raises
    ``ScreenshotError`` when Chromium is missing, fails, times out or writes
    nothing.
    """
    page, out = Path(page).resolve(), Path(out).resolve()
    if not page.is_file():
        raise ScreenshotError(f"no such page: {page}")
    binary = find_chromium()
    if binary is None:
        raise ScreenshotError("Chromium not found (tried $NIBT_CHROMIUM, "
                              f"{', '.join(CANDIDATES[:3])}); install it: apt-get install -y chromium")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="nibt-chromium-") as profile:
        cmd = [binary, *FLAGS, f"--user-data-dir={profile}", f"--screenshot={out}",
               f"--window-size={width},{height}",
               page.as_uri() + (f"#{fragment}" if fragment else "")]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                               env={**os.environ, "HOME": profile})
        except subprocess.TimeoutExpired:
            raise ScreenshotError(f"Chromium took over {timeout:.0f} s") from None
    if r.returncode != 0 or not out.is_file() or out.stat().st_size == 0:
        raise ScreenshotError(f"Chromium failed (exit {r.returncode}): {r.stderr.strip()[-1500:]}")
    if trim:
        trim_bottom(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command line: page, output PNG, optional window size and time limit."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.devtools.screenshot",
                                 description="Screenshot a report page with headless Chromium.")
    ap.add_argument("page", help="the report.html to render")
    ap.add_argument("out", help="the PNG to write")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=8000, help="window height (px)")
    ap.add_argument("--no-trim", action="store_true", help="keep the blank band below the page")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds")
    ap.add_argument("--fragment", help="open the page at #FRAGMENT (e.g. zoom-p0r3)")
    args = ap.parse_args(argv)
    try:
        path = screenshot(args.page, args.out, args.width, args.height, args.timeout,
                          trim=not args.no_trim, fragment=args.fragment)
    except ScreenshotError as e:
        print(f"screenshot: {e}", file=sys.stderr)
        return 2 if "not found" in str(e) or "no such page" in str(e) else 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
