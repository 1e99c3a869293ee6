"""Hand-built input Parquet files for the job tests (the oracle side of each test)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

WORDS = ["red", "blue", "green", "circle", "square", "triangle", "small", "large", "photo"]


def png(seed: int, size: tuple[int, int] = (48, 56)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def caption(seed: int) -> str:
    rng = np.random.default_rng(seed + 10_000)
    return "a " + " ".join(rng.choice(WORDS, size=int(rng.integers(2, 6))))


def pairs_table(
    n: int, seed: int = 0, *, struct: bool = False, prefix: str = "p",
    images: Sequence[object] | None = None, captions: Sequence[object] | None = None,
) -> pa.Table:
    """``n`` pairs: id, image (binary, or {bytes, path} struct), caption, extra."""
    imgs = list(images) if images is not None else [png(seed * 1000 + i) for i in range(n)]
    caps = list(captions) if captions is not None else [caption(seed * 1000 + i) for i in range(n)]
    if struct:
        image_col = pa.array(
            [{"bytes": b, "path": f"{i}.png"} for i, b in enumerate(imgs)],
            type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        )
    else:
        image_col = pa.array(imgs, type=pa.binary())
    return pa.table({
        "id": [f"{prefix}{seed}-{i}" for i in range(n)],
        "image": image_col,
        "caption": pa.array(caps, type=pa.string()),
        "extra": pa.array(range(n), type=pa.int64()),
    })


def write_table(table: pa.Table, where: str, fs=None, row_group_size: int = 8) -> None:
    if fs is None:
        pq.write_table(table, where, row_group_size=row_group_size)
    else:
        with fs.open(where, "wb") as f:
            pq.write_table(table, f, row_group_size=row_group_size)


def write_shards(root, shards: int, rows: int, seed: int) -> list[pa.Table]:
    """``shards`` files ``root/shard-<s>.parquet`` of ``rows`` pairs each (seeds ``seed + s``)."""
    tables = [pairs_table(rows, seed=seed + s) for s in range(shards)]
    for s, t in enumerate(tables):
        write_table(t, f"{root}/shard-{s}.parquet")
    return tables
