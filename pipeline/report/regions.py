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


def _np(arr: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return arr.to_numpy(zero_copy_only=False)


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
    ``rows``) whose map fits ``grid``; null and non-finite values count as 0.

    The maps are cut straight out of the list's values (one slice when the rows'
    maps lie back to back, as they do when every other row has no map), not
    filtered and flattened row by row.
    """
    col = table.column("image_attr")
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    lengths = _np(pc.list_value_length(col).fill_null(0))
    h = _np(table.column("grid_h").fill_null(0))
    w = _np(table.column("grid_w").fill_null(0))
    valid = (lengths == grid.cells) & (h == grid.h) & (w == grid.w)
    if rows is not None:
        valid &= rows
    if not valid.any():
        return np.empty((0, grid.cells)), valid
    values = col.values  # the whole child array: the offsets below index into it
    values = _np(values.fill_null(0) if values.null_count else values)
    start = _np(col.offsets)[:-1][valid]
    if (np.diff(start) == grid.cells).all():  # back to back: one slice
        maps = values[start[0]: start[0] + start.size * grid.cells].reshape(-1, grid.cells)
    else:
        maps = values[start[:, None] + np.arange(grid.cells)]
    maps = maps.astype(np.float64)
    if not np.isfinite(maps).all():
        np.nan_to_num(maps, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
    return maps, valid


def positive_maps(maps: np.ndarray, inplace: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per map: its positive mass normalised to sum 1, its top cell, and whether it counts.

    A map counts when it has positive mass and is not constant (a constant map
    has no top cell; ``argmax`` would put it in the top-left corner). ``inplace``:
    the normalised maps are written over ``maps`` (no copy of them is made).
    """
    top = np.argmax(maps, axis=1) if maps.size else np.zeros(0, dtype=np.int64)
    high = maps[np.arange(maps.shape[0]), top] if maps.size else np.zeros(0)
    constant = high <= maps.min(axis=1, initial=np.inf)
    pos = np.maximum(maps, 0.0, out=maps if inplace else None)
    mass = pos.sum(axis=1)
    usable = (mass > 0) & ~constant
    pos /= np.where(mass > 0, mass, 1.0)[:, None]  # a map without mass stays 0
    return pos, top, usable


def region_shares(maps: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per map: share of |attribution| in the border ring and in the corners; rows with mass."""
    a = np.abs(maps)
    total = a.sum(axis=1)
    has = total > 0
    safe = np.where(has, total, 1.0)
    return a[:, grid.border()].sum(axis=1) / safe, a[:, grid.corners()].sum(axis=1) / safe, has
