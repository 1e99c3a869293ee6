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


def tar_bytes(members: Sequence[tuple[str, bytes]]) -> bytes:
    """A plain tar archive of ``members`` (name, bytes) in order, written by the standard
    library (the oracle of the WebDataset tests: what any tar writer produces)."""
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def member_offsets(archive: bytes) -> dict[str, tuple[int, int]]:
    """(header offset, data offset) of each member, walked block by block from the ustar
    headers (size at bytes 124-136, octal): independent of the reader under test."""
    out, pos = {}, 0
    while pos + 512 <= len(archive) and archive[pos:pos + 512] != bytes(512):
        header = archive[pos:pos + 512]
        name = header[:100].rstrip(b"\0").decode()
        size = int(header[124:136].rstrip(b"\0 ") or b"0", 8)
        out[name] = (pos, pos + 512)
        pos += 512 + -(-size // 512) * 512
    return out
