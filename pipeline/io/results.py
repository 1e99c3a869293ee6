"""Read audit results through their manifest (never a glob of ``parts/``).

``iter_parts`` streams one part at a time, so a reader's memory is bounded by
the largest part, whatever the number of rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import StorageSettings
from pipeline.io.manifest import read_manifest
from pipeline.io.storage import filesystem, join


def iter_parts(
    output: str,
    storage: StorageSettings | None = None,
    columns: Sequence[str] | None = None,
    manifest: dict | None = None,
) -> Iterator[pa.Table]:
    """Each committed part of ``output`` as a table, in manifest (input) order.

    Pass ``manifest`` to read the parts of one manifest read several times over
    (the manifest is re-read otherwise, and may list more parts by then).
    """
    storage = storage or StorageSettings()
    manifest = manifest if manifest is not None else read_manifest(output, storage)
    fs, root = filesystem(output, storage)
    for entry in manifest["parts"]:
        with fs.open(join(root, entry["path"]), "rb") as f:
            yield pq.read_table(f, columns=list(columns) if columns else None)


def read_results(
    output: str, storage: StorageSettings | None = None, columns: Sequence[str] | None = None
) -> pa.Table:
    """All results in one table (for small outputs and tests; use ``iter_parts`` at scale)."""
    tables = list(iter_parts(output, storage, columns))
    if not tables:
        return pa.table({})
    return pa.concat_tables(tables, promote_options="permissive")
