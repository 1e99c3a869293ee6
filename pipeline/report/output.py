"""The report's files published together: written under a hidden temporary prefix of the
output, moved into place only once every one of them is complete.

A report that fails on its way (a part that cannot be read, a worker lost)
leaves the output as it was: its temporary prefix is removed, and one left by a
killed report is hidden (``.tmp-`` names, which readers skip). Each file is
moved in the order given, ``report.json`` and ``report.html`` last; on object
storage a move is a server-side copy, so each object appears whole.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import Any

from pipeline.config import StorageSettings
from pipeline.io.storage import TMP_PREFIX, filesystem, is_local, join, put_atomic


class Staging:
    """Files of one report under ``<output>/.tmp-report-<random>/`` until ``publish``."""

    def __init__(self, output: str, storage: StorageSettings) -> None:
        self.fs, self.root = filesystem(output, storage)
        self.tmp = join(self.root, f"{TMP_PREFIX}report-{uuid.uuid4().hex}")
        self.names: list[str] = []

    def _parent(self, path: str) -> None:
        if is_local(self.fs):
            os.makedirs(posixpath.dirname(path), exist_ok=True)

    def put(self, name: str, data: bytes) -> None:
        """Write ``name`` (relative to the output) whole."""
        put_atomic(self.fs, join(self.tmp, name), data)
        self.names.append(name)

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[Any]:
        """A writable file for ``name``, streamed (a multipart upload on object storage)."""
        path = join(self.tmp, name)
        self._parent(path)
        with self.fs.open(path, "wb") as f:
            yield f
        self.names.append(name)

    def publish(self) -> None:
        """Move every file into place, in the order written, then remove the prefix."""
        for name in self.names:
            dst = join(self.root, name)
            self._parent(dst)
            self.fs.mv(join(self.tmp, name), dst)
        self.discard()

    def discard(self) -> None:
        """Remove the temporary prefix and what is left in it."""
        with contextlib.suppress(FileNotFoundError, OSError):
            if self.fs.exists(self.tmp):
                self.fs.rm(self.tmp, recursive=True)
