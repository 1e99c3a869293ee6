"""Many small requests to S3 at once: the last bytes of many objects (planning reads a
footer per input Parquet file, a resume one per part of the frontier) or the first
bytes (planning reads the first tar header of each WebDataset shard).

On S3 the reads go through obstore (Rust's ``object_store``): a ranged GET costs
its client about 0.5 ms of CPU where botocore under s3fs spends 2-2.5 ms
(measured through the local store, ``python -m benchmarks controlplane``), and
at 230,000 input files that CPU, not the store's latency, would set the time of
planning. Everything else about storage stays with s3fs: the same endpoint,
region, timeouts and retry bounds (``StorageSettings``) and the same
credentials, taken from botocore's own chain (environment, AWS config and
profile, instance role) and handed to obstore. Other filesystems go through
fsspec.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline.config import S3FS_CALL_TRIES, StorageSettings
from pipeline.io.storage import filesystem, is_local

#: A tail read: (URI, the object's size or None, bytes wanted from its end).
Tail = tuple[str, "int | None", int]
#: A ranged read: (URI, first byte or None, bytes wanted); None: the last bytes.
_Range = tuple[str, "int | None", int]


def _split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.split("://", 1)[1].partition("/")
    return bucket, key


def _credentials(storage: StorageSettings) -> Any:
    """obstore's credential callback over botocore's chain (as s3fs signs)."""
    import botocore.session

    session = botocore.session.get_session()

    def provide() -> dict[str, Any]:
        creds = session.get_credentials()
        if creds is None:
            raise PermissionError("no AWS credentials found (environment, AWS config, "
                                  "instance role); storage.anon=true reads public buckets")
        frozen = creds.get_frozen_credentials()
        # asked again after a few minutes: botocore refreshes temporary credentials
        return {"access_key_id": frozen.access_key, "secret_access_key": frozen.secret_key,
                "token": frozen.token,
                "expires_at": dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5)}
    return provide


def _store(bucket: str, storage: StorageSettings) -> Any:
    from obstore.store import S3Store

    config: dict[str, Any] = {}
    if storage.endpoint_url:
        config["endpoint"] = storage.endpoint_url
    if storage.region:
        config["region"] = storage.region
    client = {"connect_timeout": dt.timedelta(seconds=storage.connect_timeout_s),
              "timeout": dt.timedelta(seconds=storage.read_timeout_s),
              "allow_http": bool(storage.endpoint_url
                                 and storage.endpoint_url.startswith("http://"))}
    # as many tries as s3fs makes (its tries of botocore's attempts), within the same bound
    retry = {"max_retries": storage.max_attempts * S3FS_CALL_TRIES - 1,
             "retry_timeout": dt.timedelta(seconds=storage.worst_case_s())}
    if storage.anon:
        return S3Store(bucket, config={**config, "skip_signature": True},
                       client_options=client, retry_config=retry)
    return S3Store(bucket, config=config, client_options=client, retry_config=retry,
                   credential_provider=_credentials(storage))


async def _s3_ranges(items: Sequence[_Range], storage: StorageSettings,
                     in_flight: int) -> list[bytes | BaseException]:
    import obstore
    from obstore.exceptions import NotFoundError

    stores: dict[str, Any] = {}
    gate = asyncio.Semaphore(in_flight)

    async def one(uri: str, start: int | None, n: int) -> bytes | BaseException:
        bucket, key = _split_s3(uri)
        if bucket not in stores:
            stores[bucket] = _store(bucket, storage)
        async with gate:
            try:
                if start is None:
                    got = await obstore.get_async(stores[bucket], key,
                                                  options={"range": {"suffix": n}})
                    return bytes(await got.bytes_async())
                return bytes(await obstore.get_range_async(stores[bucket], key, start=start,
                                                           end=start + n))
            except NotFoundError:
                return FileNotFoundError(uri)
            except Exception as e:
                return e

    return list(await asyncio.gather(*(one(*item) for item in items)))


def object_getter(uri: str, storage: StorageSettings) -> Callable[[str], Any] | None:
    """Whole objects under ``uri`` read through obstore when it is on S3 (``get(object
    URI)`` -> the object's bytes, one GET; ``FileNotFoundError`` for one not there); None
    elsewhere. For the report's parts: its client costs less CPU a GET than s3fs's, spent
    in obstore's own threads without Python's lock, which the report's own work holds
    meanwhile (docs/performance.md). Thread-safe (the report reads in threads). One store
    per bucket and storage settings in a process (``_kept_store``): a report worker runs
    many tasks, and each would otherwise open its own connections and resolve the
    credentials again."""
    if not str(uri).startswith(("s3://", "s3a://")):
        return None
    return functools.partial(_get_object, storage)


_STORES: dict[tuple[str, str], Any] = {}
_STORES_LOCK = threading.Lock()


def _kept_store(bucket: str, storage: StorageSettings) -> Any:
    """This process's store for ``bucket`` under ``storage``, made once."""
    key = (repr(storage), bucket)
    with _STORES_LOCK:
        if key not in _STORES:
            _STORES[key] = _store(bucket, storage)
        return _STORES[key]


def _get_object(storage: StorageSettings, object_uri: str) -> Any:
    import obstore
    from obstore.exceptions import NotFoundError

    bucket, key = _split_s3(object_uri)
    try:
        return obstore.get(_kept_store(bucket, storage), key).bytes()
    except NotFoundError:
        raise FileNotFoundError(object_uri) from None


def _read_ranges(items: Sequence[_Range], storage: StorageSettings,
                 in_flight: int) -> list[bytes | BaseException]:
    """Each (uri, start, n): one request each, ``in_flight`` at a time on S3; an exception
    in the place of each that failed (``FileNotFoundError`` for an object not there)."""
    out: list[bytes | BaseException | None] = [None] * len(items)
    s3 = [i for i, (uri, _, _) in enumerate(items) if str(uri).startswith(("s3://", "s3a://"))]
    if s3:
        # in a thread of its own: the caller may be inside an event loop (a notebook)
        with ThreadPoolExecutor(1, thread_name_prefix="nibt-ranges") as pool:
            got = pool.submit(asyncio.run, _s3_ranges([items[i] for i in s3], storage,
                                                      in_flight)).result()
        for i, value in zip(s3, got):
            out[i] = value
    for i, (uri, start, n) in enumerate(items):
        if out[i] is None:
            out[i] = _fs_range(uri, start, n, storage)
    return out  # type: ignore[return-value]


def read_tails(items: Sequence[Tail], storage: StorageSettings,
               in_flight: int = 64) -> list[bytes | BaseException]:
    """The last ``n`` bytes of each (uri, size, n): one request each, ``in_flight`` at a
    time; an exception in the place of each that failed (``FileNotFoundError`` for an
    object that is not there). A size of None costs nothing more (a suffix range)."""
    return _read_ranges([(uri, None if size is None else max(0, size - n),
                          n if size is None else min(n, size)) for uri, size, n in items],
                        storage, in_flight)


def read_heads(items: Sequence[tuple[str, int, int]], storage: StorageSettings,
               in_flight: int = 64) -> list[bytes | BaseException]:
    """The first ``n`` bytes of each (uri, size, n) (fewer when the object is smaller), as
    ``read_tails`` reads the last."""
    return _read_ranges([(uri, 0, min(n, size)) for uri, size, n in items], storage,
                        in_flight)


def _fs_range(uri: str, start: int | None, n: int,
              storage: StorageSettings) -> bytes | BaseException:
    try:
        fs, path = filesystem(uri, storage)
        if is_local(fs):
            with open(path, "rb") as f:
                if start is None:
                    f.seek(0, 2)
                    start = max(0, f.tell() - n)
                f.seek(start)
                return f.read(n)
        if start is None:
            start = max(0, int(fs.info(path)["size"]) - n)
        return fs.cat_file(path, start=start, end=start + n)
    except Exception as e:
        return e
