"""Hand-built audit results for the report tests (the oracle side: every row's words are known).

Rows are described by their words and per-word attributions; ``pieces`` cuts
long words into two BPE pieces (attribution split between them) and adds
start/end-of-text tokens with values that must not count, so the report's
merging is exercised without the oracle using it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.io.manifest import PartEntry, write_manifest
from pipeline.io.schema import RESULT_FIELDS, result_schema
from pipeline.io.storage import filesystem, join

VOCAB = ["red", "blue", "green", "circle", "square", "triangle", "small", "large", "photo",
         "a", "of", "woman", "man", "girl", "boy", "dog", "beach"]


def pieces(words: Sequence[str], attrs: Sequence[float]) -> tuple[list[str], list[float]]:
    """BPE-like pieces: words over 4 letters in two pieces (30% / 70% of the value)."""
    toks, vals = ["<start_of_text>"], [5.0]
    for w, a in zip(words, attrs):
        if len(w) > 4:
            toks += [w[:3], w[3:] + "</w>"]
            vals += [0.3 * a, 0.7 * a]
        else:
            toks.append(w + "</w>")
            vals.append(a)
    return toks + ["<end_of_text>"], vals + [-7.0]


def png(colour: tuple[int, int, int], size: tuple[int, int] = (40, 56)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Row:
    """One result row, by its words."""

    id: str
    words: list[str]
    attrs: list[float]
    score: float
    image: list[float] | None
    grid: tuple[int, int] = (4, 4)
    status: str = "ok"
    error: str | None = None
    metrics: tuple[float, float, float, float] = (1.0, 0.0, 0.5, 100.0)
    extra: dict[str, Any] = field(default_factory=dict)


def row_dict(r: Row, source: str, index: int) -> dict[str, Any]:
    ok = r.status == "ok"
    toks, vals = pieces(r.words, r.attrs) if ok else (None, None)
    d = {"id": r.id, "source": source, "row": index, "status": r.status, "error": r.error,
         "score": r.score if ok else None, "image_attr": r.image if ok else None,
         "grid_h": r.grid[0] if ok else None, "grid_w": r.grid[1] if ok else None,
         "image_cls_attr": 0.1 if ok else None, "image_cls_share": 0.2 if ok else None,
         "tokens": toks, "text_attr": vals, "text_eot_share": 0.3 if ok else None,
         "caption_truncated": False}
    for name, v in zip(("img_conf_drop", "img_conf_incr", "txt_conf_drop", "txt_conf_incr"),
                       r.metrics):
        d[name] = v if ok else None
    d.update(r.extra)
    return d


def write_input(path: str, n: int, row_group_size: int = 7) -> list[tuple[int, int, int]]:
    """An input file of ``n`` solid-colour PNGs; returns each row's colour."""
    colours = [((37 * i) % 256, (91 * i + 40) % 256, (13 * i + 200) % 256) for i in range(n)]
    table = pa.table({"image": pa.array([png(c) for c in colours], pa.binary()),
                      "caption": [f"caption {i}" for i in range(n)]})
    pq.write_table(table, path, row_group_size=row_group_size)
    return colours


def write_results(out: str, parts: Sequence[Sequence[Row]], source: str,
                  storage=None, meta: dict[str, Any] | None = None,
                  input_version: str = "v1", success: bool = False) -> str:
    """Parts, manifest and all, as nibt-audit writes them; rows index ``source`` in order.

    Each part's input fingerprint is ``source|size|input_version|rows`` as the job's
    planner writes it (two results of the same ``source`` and version read the same
    input); ``success`` also writes ``_SUCCESS``.
    """
    from pipeline.config import StorageSettings

    fs, root = filesystem(out, storage or StorageSettings())
    metadata = {"model": "nibt-demo", "weights": "sha256:abc", "steps": 10, "schedule": "uniform",
                "precision": "fp32", "engine_results_version": 1, "torch": "2.14.1", "fingerprint": "f00d",
                "schema_version": 1, **(meta or {})}
    entries, start = [], 0
    for p, rows in enumerate(parts):
        dicts = [row_dict(r, source, start + i) for i, r in enumerate(rows)]
        schema = result_schema(None, metadata)
        table = pa.Table.from_pylist(dicts, schema=pa.schema(list(RESULT_FIELDS),
                                                             metadata=schema.metadata))
        task = f"task{p:04d}"
        buf = io.BytesIO()
        pq.write_table(table, buf)
        path = join(root, "parts", f"{task}.parquet")
        if not out.startswith("s3://"):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        fs.pipe_file(path, buf.getvalue())
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.status] = counts.get(r.status, 0) + 1
        entries.append(PartEntry(task, f"parts/{task}.parquet", len(rows), source, start,
                                 start + len(rows),
                                 f"{source}|1000|{input_version}|{start}:{start + len(rows)}",
                                 counts))
        start += len(rows)
    settings = {"input": source, "output": out,
                "model": {"name": "nibt-demo", "layer": None, "image_layer": 1, "text_layer": 1},
                "data": {"image_column": "image", "caption_column": "caption"}}
    write_manifest(fs, root, {"fingerprint": "f00d", "metadata": metadata, "settings": settings},
                   entries)
    if success:
        fs.pipe_file(join(root, "_SUCCESS"), b'{"status": "succeeded"}\n')
    return out


def random_rows(n: int, seed: int = 0, grid: tuple[int, int] = (4, 4), prefix: str = "r",
                vocab: Sequence[str] = VOCAB, bad_every: int = 0) -> list[Row]:
    """Random captions from ``vocab`` (some capitalised), random maps; every ``bad_every``-th
    row failed."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        if bad_every and i % bad_every == bad_every - 1:
            rows.append(Row(f"{prefix}{i}", [], [], 0.0, None, grid, "bad_image",
                            f"image is {i}x{i + 1} pixels, too small"))
            continue
        k = int(rng.integers(2, 7))
        words = [str(w) for w in rng.choice(list(vocab), size=k)]
        words = [w.capitalize() if rng.random() < 0.2 else w for w in words]
        attrs = [float(x) for x in rng.normal(0.01, 0.02, size=k)]
        image = [float(x) for x in rng.normal(0, 0.01, size=grid[0] * grid[1])]
        rows.append(Row(f"{prefix}{i}", words, attrs, float(rng.uniform(0.1, 0.4)), image, grid))
    return rows
