"""The output schema: one result row per input row, and the part file's metadata.

Column order: the result columns below, then the carried-through input columns.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

RESULT_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("row", pa.int64(), nullable=False),
    pa.field("status", pa.string(), nullable=False),
    pa.field("error", pa.string()),
    pa.field("score", pa.float32()),
    pa.field("image_attr", pa.list_(pa.float32())),
    pa.field("grid_h", pa.int16()),
    pa.field("grid_w", pa.int16()),
    pa.field("image_cls_attr", pa.float32()),
    pa.field("image_cls_share", pa.float32()),
    pa.field("tokens", pa.list_(pa.string())),
    pa.field("text_attr", pa.list_(pa.float32())),
    pa.field("text_eot_share", pa.float32()),
    pa.field("caption_truncated", pa.bool_()),
    pa.field("img_conf_drop", pa.float32()),
    pa.field("img_conf_incr", pa.float32()),
    pa.field("txt_conf_drop", pa.float32()),
    pa.field("txt_conf_incr", pa.float32()),
]
RESULT_COLUMNS = frozenset(f.name for f in RESULT_FIELDS)
META_PREFIX = "nibt."


def result_schema(carried: pa.Schema | None = None, metadata: dict[str, Any] | None = None) -> pa.Schema:
    """The part schema: result fields, then ``carried`` input fields, with metadata."""
    fields = list(RESULT_FIELDS) + (list(carried) if carried is not None else [])
    meta = {f"{META_PREFIX}{k}": v if isinstance(v, str) else json.dumps(v, sort_keys=True)
            for k, v in (metadata or {}).items()}
    return pa.schema(fields, metadata=meta)


def read_metadata(schema: pa.Schema) -> dict[str, Any]:
    """The ``nibt.*`` key-value metadata of a part, JSON values decoded."""
    return decode_metadata(schema.metadata)


def decode_metadata(kv: dict[bytes, bytes] | None) -> dict[str, Any]:
    """The ``nibt.*`` entries of Parquet or Arrow key-value metadata, JSON values decoded."""
    out: dict[str, Any] = {}
    for k, v in (kv or {}).items():
        key = k.decode()
        if not key.startswith(META_PREFIX):
            continue
        text = v.decode()
        try:
            out[key[len(META_PREFIX):]] = json.loads(text)
        except ValueError:
            out[key[len(META_PREFIX):]] = text
    return out
