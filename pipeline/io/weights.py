"""Remote model weights (any fsspec URI, e.g. ``s3://``) copied once into a local cache.

The engine loads weights from local files only; this is how a remote file gets
there. The cache key hashes the URI, size and ETag, so a re-uploaded file is
fetched again.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from pipeline.config import StorageSettings
from pipeline.io.storage import file_tag, filesystem

#: Where fetched weights are kept (``NIBT_CACHE_DIR`` moves it).
CACHE_DIR = Path(os.environ.get("NIBT_CACHE_DIR", Path.home() / ".cache" / "nibt-audit"))


def fetch_weights(uri: str, storage: StorageSettings | None = None) -> Path:
    """A local copy of the weights file at ``uri``, downloaded on first use."""
    fs, path = filesystem(uri, storage or StorageSettings())
    info = fs.info(path)
    tag = file_tag(info) or str(info.get("size"))
    key = hashlib.sha256(f"{uri}|{info.get('size')}|{tag}".encode()).hexdigest()[:24]
    dest = CACHE_DIR / "weights" / key / Path(path).name
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + f".part{os.getpid()}")
        fs.get(path, str(tmp))
        tmp.replace(dest)
    return dest


def weights_fetcher(storage: StorageSettings) -> Callable[[str], Path]:
    """``fetch`` for ``load_clip`` / ``resolve_weights`` under ``storage``'s settings."""
    return lambda uri: fetch_weights(uri, storage)
