"""Filesystems from settings, input listing, and atomic writes (local paths and S3).

Everything goes through fsspec: s3fs for ``s3://`` (credentials from the
environment, AWS config or instance role; ``storage.endpoint_url`` for
S3-compatible stores), the local filesystem otherwise.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import fsspec

from pipeline.config import S3FS_CALL_TRIES, ConfigError, StorageSettings

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class InputFile:
    """One input Parquet file, and the tag that changes when its content does."""

    uri: str
    size: int
    tag: str  # ETag on S3, mtime (ns) locally


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def filesystem(uri: str, storage: StorageSettings) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem holding ``uri`` and the path within it."""
    uri = str(uri)
    if is_remote(uri):
        fs, path = fsspec.core.url_to_fs(uri, **storage.options(uri))
        if hasattr(fs, "retries"):  # s3fs: a class attribute, not a constructor option
            fs.retries = S3FS_CALL_TRIES
            _without_expect_continue(fs)
        return fs, path
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(path))


def _without_expect_continue(fs: fsspec.AbstractFileSystem) -> None:
    """botocore asks S3 to accept a PUT before sending its body (``Expect: 100-continue``),
    and aiohttp waits for that answer with no timeout: a PUT to an endpoint that stops
    answering would hang for ever. Without the header, the read timeout bounds it."""
    from botocore.handlers import add_expect_header

    fs.connect().meta.events.unregister("before-call.s3", add_expect_header)


def to_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A full URI for ``path`` on ``fs`` (local paths stay plain paths)."""
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    if protocol in ("file", "local"):
        return path
    return f"{protocol}://{path}"


def file_tag(info: dict[str, Any]) -> str:
    """What changes when a file's content does: its ETag on S3, its mtime locally."""
    for key in ("ETag", "etag", "mtime", "LastModified", "created"):
        if info.get(key) is not None:
            return str(info[key]).strip('"')
    return ""


#: What a storage client raises when the endpoint cannot be reached or does not answer.
_UNREACHABLE = ("ReadTimeoutError", "ConnectTimeoutError", "EndpointConnectionError",
                "ConnectionClosedError", "ServerTimeoutError", "ClientConnectorError",
                "TimeoutError", "timeout", "FSTimeoutError")


def describe_error(e: BaseException, storage: StorageSettings, uri: str) -> str:
    """``e`` as one line; a timeout or connection failure on object storage names the
    endpoint and the bounds that were spent on it."""
    text = f"{type(e).__name__}: {e}"
    unreachable = type(e).__name__ in _UNREACHABLE or isinstance(e, (TimeoutError,
                                                                      ConnectionError))
    if unreachable and is_remote(uri):
        text = (f"storage endpoint {storage.endpoint()} did not answer "
                f"({storage.max_attempts} attempt(s) x {S3FS_CALL_TRIES} tries, connect timeout "
                f"{storage.connect_timeout_s:g} s, read timeout {storage.read_timeout_s:g} s): "
                + text)
    return text


def _hidden(path: str) -> bool:
    return posixpath.basename(path).startswith(("_", "."))


def _is_data_file(path: str) -> bool:
    return path.endswith(".parquet") and not _hidden(path)


def list_inputs(inputs: str | Sequence[str], storage: StorageSettings) -> list[InputFile]:
    """Expand a prefix, a glob, a file, or a list of them into Parquet files.

    A prefix means every ``*.parquet`` below it; a glob, what it matches. Names
    starting with ``_`` or ``.`` (markers, temporary files) are skipped in both.

    Raises ``ConfigError`` when a location cannot be listed or matches nothing.
    """
    items = [inputs] if isinstance(inputs, str) else list(inputs)
    if not items:
        raise ConfigError("input: no input location given")
    found: dict[str, InputFile] = {}
    for item in items:
        item = str(item)
        try:
            fs, path = filesystem(item, storage)
            if _GLOB_CHARS & set(path):
                infos = fs.glob(path, detail=True)
                infos = {p: i for p, i in infos.items()
                         if i.get("type") != "directory" and not _hidden(p)}
            elif fs.isdir(path):
                infos = fs.find(path, detail=True)
                infos = {p: i for p, i in infos.items() if _is_data_file(p)}
            elif fs.exists(path):
                infos = {path: fs.info(path)}
            else:
                raise ConfigError(f"input: {item} does not exist")
        except ConfigError:
            raise
        except Exception as e:
            raise ConfigError(f"input: cannot list {item}: {describe_error(e, storage, item)}") \
                from None
        if not infos:
            raise ConfigError(f"input: no Parquet files under {item}")
        for p, info in infos.items():
            uri = to_uri(fs, p)
            found[uri] = InputFile(uri=uri, size=int(info.get("size") or 0), tag=file_tag(info))
    return [found[k] for k in sorted(found)]


def join(base: str, *parts: str) -> str:
    """Join URI or path segments with '/'."""
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])


TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_writer(fs: fsspec.AbstractFileSystem, path: str,
                  exclusive: bool = False) -> Iterator[BinaryIO]:
    """A file to write whose content becomes visible at ``path`` only when the block ends
    without an error.

    Locally: a hidden temporary file (``.tmp-<name>-<random>``) beside the target,
    renamed into place (atomic on one filesystem); readers skip hidden names and
    ``remove_stale_temps`` clears those left by a killed writer. On object storage: an
    upload that becomes visible only when completed (a PUT at close, or a multipart
    upload); on an error it is aborted: never a partial object. ``exclusive``: raise
    ``FileExistsError`` instead of replacing an existing ``path`` (S3's If-None-Match).
    """
    if is_local(fs):
        parent = os.path.dirname(path)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f"{TMP_PREFIX}{os.path.basename(path)}-{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            if exclusive:
                os.link(tmp, path)  # FileExistsError when it is there
            else:
                os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    f = fs.open(path, "xb" if exclusive else "wb")
    try:
        yield f
    except BaseException:
        f.discard()  # nothing uploaded becomes visible
        f.closed = True
        raise
    f.close()


def put_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes,
               exclusive: bool = False) -> None:
    """Make ``data`` visible at ``path`` only once complete (``atomic_writer``; on object
    storage one PUT); ``exclusive``: ``FileExistsError`` rather than replace ``path``."""
    if is_local(fs):
        with atomic_writer(fs, path, exclusive) as f:
            f.write(data)
    else:
        fs.pipe_file(path, data, **({"mode": "create"} if exclusive else {}))


def check_writable(fs: fsspec.AbstractFileSystem, directory: str, uri: str,
                   storage: StorageSettings | None = None) -> None:
    """Write and remove a small probe under ``directory``; ``ConfigError`` naming
    ``uri`` when that fails (a read-only path, a missing bucket, no permission).

    The probe is a hidden temporary name, as ``put_atomic`` uses: readers skip
    it, and ``remove_stale_temps`` clears one a killed driver left behind.
    """
    probe = join(directory, f"{TMP_PREFIX}write-probe-{uuid.uuid4().hex}")
    try:
        put_atomic(fs, probe, b"")
        fs.rm(probe)
    except Exception as e:
        raise ConfigError(f"output: cannot write to {uri}: "
                          f"{describe_error(e, storage or StorageSettings(), uri)}") from None


def remove_stale_temps(fs: fsspec.AbstractFileSystem, directory: str) -> int:
    """Delete temporary files a killed writer left in a local ``directory``."""
    if not is_local(fs) or not os.path.isdir(directory):
        return 0
    stale = [n for n in os.listdir(directory) if n.startswith(TMP_PREFIX)]
    for name in stale:
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(directory, name))
    return len(stale)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    return protocol in ("file", "local")


def _one_get(fs: fsspec.AbstractFileSystem) -> dict[str, Any]:
    """Options that make s3fs read a whole object in one GET (without them it asks for
    the size first, to split large objects over several GETs)."""
    return {"max_concurrency": 1} if hasattr(fs, "max_concurrency") else {}


def read_bytes(fs: fsspec.AbstractFileSystem, path: str) -> bytes:
    """A whole (small) object: one request on S3."""
    return fs.cat_file(path, **_one_get(fs))


def read_many(fs: fsspec.AbstractFileSystem, paths: list[str],
              in_flight: int = 64) -> list[bytes | BaseException]:
    """Whole (small) objects, ``in_flight`` requests at a time on object storage; an
    exception in the place of each that could not be read."""
    if not paths:
        return []
    if not getattr(fs, "async_impl", False):
        out: list[bytes | BaseException] = []
        for p in paths:
            try:
                out.append(fs.cat_file(p))
            except Exception as e:
                out.append(e)
        return out
    got = fs.cat(paths, on_error="return", batch_size=in_flight, **_one_get(fs))
    return [got.get(p, FileNotFoundError(p)) for p in paths]


def list_names(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    """Base names of the files directly under ``path`` (empty when it does not exist)."""
    try:
        return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []
