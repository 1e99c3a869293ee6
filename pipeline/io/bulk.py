"""Many small requests to S3 at once: the last bytes of many objects (planning reads a
footer per input file, a resume one per part of the frontier).

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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline.config import S3FS_CALL_TRIES, StorageSettings
from pipeline.io.storage import filesystem, is_local

#: A tail read: (URI, the object's size or None, bytes wanted from its end).
Tail = tuple[str, "int | None", int]


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


async def _s3_tails(items: Sequence[Tail], storage: StorageSettings,
                    in_flight: int) -> list[bytes | BaseException]:
    import obstore
    from obstore.exceptions import NotFoundError

    stores: dict[str, Any] = {}
    gate = asyncio.Semaphore(in_flight)

    async def one(uri: str, size: int | None, n: int) -> bytes | BaseException:
        bucket, key = _split_s3(uri)
        if bucket not in stores:
            stores[bucket] = _store(bucket, storage)
        async with gate:
            try:
                if size is None:
                    got = await obstore.get_async(stores[bucket], key,
                                                  options={"range": {"suffix": n}})
                    return bytes(await got.bytes_async())
                start = max(0, size - n)
                return bytes(await obstore.get_range_async(stores[bucket], key, start=start,
                                                           end=size))
            except NotFoundError:
                return FileNotFoundError(uri)
            except Exception as e:
                return e

    return list(await asyncio.gather(*(one(*item) for item in items)))


def read_tails(items: Sequence[Tail], storage: StorageSettings,
               in_flight: int = 64) -> list[bytes | BaseException]:
    """The last ``n`` bytes of each (uri, size, n): one request each, ``in_flight`` at a
    time; an exception in the place of each that failed (``FileNotFoundError`` for an
    object that is not there)."""
    out: list[bytes | BaseException | None] = [None] * len(items)
    s3 = [i for i, (uri, _, _) in enumerate(items) if str(uri).startswith(("s3://", "s3a://"))]
    if s3:
        # in a thread of its own: the caller may be inside an event loop (a notebook)
        with ThreadPoolExecutor(1, thread_name_prefix="nibt-ranges") as pool:
            got = pool.submit(asyncio.run, _s3_tails([items[i] for i in s3], storage,
                                                     in_flight)).result()
        for i, value in zip(s3, got):
            out[i] = value
    for i, (uri, size, n) in enumerate(items):
        if out[i] is None:
            out[i] = _fs_tail(uri, size, n, storage)
    return out  # type: ignore[return-value]


def _fs_tail(uri: str, size: int | None, n: int,
             storage: StorageSettings) -> bytes | BaseException:
    try:
        fs, path = filesystem(uri, storage)
        if is_local(fs):
            with open(path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - n))
                return f.read()
        if size is None:
            size = int(fs.info(path)["size"])
        return fs.cat_file(path, start=max(0, size - n), end=size)
    except Exception as e:
        return e
