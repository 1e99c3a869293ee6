"""Patch-grid helpers: maps out of a results table, border and corner cells, cell names.

One results set has one grid (the model's); rows whose map does not fit the
first grid seen are counted and left out of the spatial statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class Grid:
    """A patch grid ``h x w`` (row-major cells, as ``image_attr`` stores them)."""

    h: int
    w: int

    @property
    def cells(self) -> int:
        return self.h * self.w

    def border(self) -> np.ndarray:
        """Boolean mask of the outermost ring of cells."""
        m = np.zeros((self.h, self.w), dtype=bool)
        m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = True
        return m.ravel()

    def corners(self) -> np.ndarray:
        """Boolean mask of the four corner cells."""
        m = np.zeros((self.h, self.w), dtype=bool)
        m[0, 0] = m[0, -1] = m[-1, 0] = m[-1, -1] = True
        return m.ravel()

    def name(self, cell: int) -> str:
        """A cell as text: 'r2 c5', with 'corner (bottom-right)' or 'border' when it is one."""
        r, c = divmod(int(cell), self.w)
        where = ""
        if self.corners()[cell]:
            where = f" corner ({'top' if r == 0 else 'bottom'}-{'left' if c == 0 else 'right'})"
        elif self.border()[cell]:
            where = " border"
        return f"r{r} c{c}{where}"


def first_grid(table: pa.Table, rows: np.ndarray | None = None) -> Grid | None:
    """The grid of the first row (of those in the mask ``rows``) with a map whose length fits
    its ``grid_h x grid_w``."""
    h = table.column("grid_h").fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    w = table.column("grid_w").fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    n = pc.list_value_length(table.column("image_attr")).fill_null(0).to_numpy(zero_copy_only=False)
    fits = (h > 0) & (w > 0) & (n == h * w)
    if rows is not None:
        fits &= rows
    first = np.flatnonzero(fits)
    return Grid(int(h[first[0]]), int(w[first[0]])) if first.size else None


def maps_of(table: pa.Table, grid: Grid,
            rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(maps [m, cells] float64, valid [rows] bool)``: the rows (of those in the mask
    ``rows``) whose map fits ``grid``."""
    col = table.column("image_attr").combine_chunks()
    lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False)
    h = table.column("grid_h").fill_null(0).to_numpy(zero_copy_only=False)
    w = table.column("grid_w").fill_null(0).to_numpy(zero_copy_only=False)
    valid = (lengths == grid.cells) & (h == grid.h) & (w == grid.w)
    if rows is not None:
        valid &= rows
    if not valid.any():
        return np.empty((0, grid.cells)), valid
    kept = col.filter(pa.array(valid))
    values = kept.flatten().fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)
    maps = np.nan_to_num(values.reshape(-1, grid.cells), copy=False, nan=0.0, posinf=0.0,
                         neginf=0.0)
    return maps, valid


def positive_maps(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per map: its positive mass normalised to sum 1, its top cell, and whether it counts.

    A map counts when it has positive mass and is not constant (a constant map
    has no top cell; ``argmax`` would put it in the top-left corner).
    """
    pos = np.maximum(maps, 0.0)
    mass = pos.sum(axis=1)
    usable = (mass > 0) & (maps.max(axis=1) > maps.min(axis=1))
    norm = np.divide(pos, mass[:, None], out=np.zeros_like(pos), where=mass[:, None] > 0)
    top = np.argmax(maps, axis=1) if maps.size else np.zeros(0, dtype=np.int64)
    return norm, top, usable


def region_shares(maps: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per map: share of |attribution| in the border ring and in the corners; rows with mass."""
    a = np.abs(maps)
    total = a.sum(axis=1)
    has = total > 0
    safe = np.where(has, total, 1.0)
    return a[:, grid.border()].sum(axis=1) / safe, a[:, grid.corners()].sum(axis=1) / safe, has
