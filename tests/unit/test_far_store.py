"""The far-away store (pipeline.devtools.s3server): its listings and object reads against
moto's own, its delay and its counts."""

from __future__ import annotations

import time

import boto3
import pytest

from pipeline.devtools.s3local import StoreControl, local_s3

KEYS = sorted({*(f"out/parts/{i:03x}{'ab'[i % 2]}.parquet" for i in range(0, 2600, 7)),
               "out/_ledger/fp/L0-000000000000-000000000000.parquet", "out/_manifest.json",
               "out/a b/c+d.txt", "out/a b/e%f", "out/é/ü.bin", "top.txt", "out/z/y/x"})
PAGES = [dict(Prefix=""), dict(Prefix="out/"), dict(Prefix="out/", Delimiter="/"),
         dict(Prefix="out/parts/", MaxKeys=50), dict(Prefix="out/parts/1"),
         dict(Prefix="out/", Delimiter="/", MaxKeys=2), dict(Prefix="out/parts/", StartAfter="out/parts/4"),
         dict(Prefix="out/a b/"), dict(Prefix="out/z", Delimiter="/"), dict(Prefix="nothing/"),
         dict(Prefix="out/parts/", MaxKeys=0)]


def _client(url: str):
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1")


def _listing(client, **kw) -> list:
    """Every page of one listing, as boto3 parses them (request ids aside)."""
    pages = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket="bkt", **kw):
        page.pop("ResponseMetadata", None)
        for c in page.get("Contents", []):
            c.pop("LastModified")  # the two stores stored the keys at other times
            c.pop("ChecksumAlgorithm", None)
        pages.append(page)
    return pages


@pytest.fixture(scope="module")
def stores():
    with local_s3() as fast, local_s3(moto_only=True) as slow:
        for url in (fast, slow):
            c = _client(url)
            c.create_bucket(Bucket="bkt")
            StoreControl(url).seed("bkt", KEYS, b"0123456789")
            # written as a client writes: a checksum, user metadata and a content type
            c.put_object(Bucket="bkt", Key="out/_manifest.json", Body=b"0123456789",
                         ChecksumAlgorithm="CRC32", Metadata={"who": "test"},
                         ContentType="application/json")
        yield fast, slow


@pytest.mark.parametrize("kw", PAGES, ids=[str(p) for p in PAGES])
def test_listing_pages_are_moto_s_own(stores, kw):
    fast, slow = stores
    got, want = _listing(_client(fast), **kw), _listing(_client(slow), **kw)
    assert got == want
    listed = [c["Key"] for p in want for c in p.get("Contents", [])]
    assert listed == sorted(k for k in KEYS if k.startswith(kw["Prefix"]) and k > kw.get(
        "StartAfter", "") and ("Delimiter" not in kw or "/" not in k[len(kw["Prefix"]):])) \
        or kw.get("MaxKeys") == 0


READS = [{}, {"Range": "bytes=0-3"}, {"Range": "bytes=4-"}, {"Range": "bytes=-3"},
         {"Range": "bytes=-100"}, {"Range": "bytes=2-100"}, {"IfMatch": "ETAG"},
         {"IfMatch": '"0123"'}, {"Range": "bytes=50-60"}, {"IfNoneMatch": "ETAG"}]


def _read(client, key: str, head: bool = False, **kw) -> dict:
    """What boto3 makes of a GET (or HEAD) answer: status, body, the headers that matter."""
    try:
        r = (client.head_object if head else client.get_object)(Bucket="bkt", Key=key, **kw)
    except client.exceptions.ClientError as e:
        return {"error": e.response["Error"]["Code"],
                "status": e.response["ResponseMetadata"]["HTTPStatusCode"]}
    return {"status": r["ResponseMetadata"]["HTTPStatusCode"],
            "body": b"" if head else r["Body"].read(), "etag": r["ETag"],
            "length": r["ContentLength"], "range": r.get("ContentRange"),
            "type": r.get("ContentType"), "modified": type(r["LastModified"]),
            "metadata": r.get("Metadata"), "crc": r.get("ChecksumCRC32"),
            "accept": r.get("AcceptRanges"), "version": r.get("VersionId")}


@pytest.mark.parametrize("kw", READS, ids=[str(r) for r in READS])
def test_object_reads_are_moto_s_own(stores, kw):
    fast, slow = stores
    key = "out/_manifest.json"
    etag = _client(slow).head_object(Bucket="bkt", Key=key)["ETag"]
    kw = {k: (etag if v == "ETAG" else v) for k, v in kw.items()}
    for head in (False, True):
        for extra in ({}, {"ChecksumMode": "ENABLED"}):
            got = _read(_client(fast), key, head, **kw, **extra)
            assert got == _read(_client(slow), key, head, **kw, **extra)
    assert _read(_client(fast), "out/no such key") == _read(_client(slow), "out/no such key")


def test_a_listing_after_a_put_and_a_delete_sees_both(stores):
    fast, _ = stores
    c = _client(fast)
    c.put_object(Bucket="bkt", Key="new/one", Body=b"1")
    c.put_object(Bucket="bkt", Key="new/two", Body=b"2")
    assert [o["Key"] for o in c.list_objects_v2(Bucket="bkt", Prefix="new/")["Contents"]] == \
        ["new/one", "new/two"]
    c.delete_object(Bucket="bkt", Key="new/one")
    assert [o["Key"] for o in c.list_objects_v2(Bucket="bkt", Prefix="new/")["Contents"]] == \
        ["new/two"]


def test_requests_are_delayed_and_counted_by_operation_and_key():
    with local_s3(delay_ms=60) as url:
        ctl, c = StoreControl(url), _client(url)
        c.create_bucket(Bucket="bkt")
        ctl.reset()
        t0 = time.perf_counter()
        c.put_object(Bucket="bkt", Key="a/b.bin", Body=b"x")
        c.get_object(Bucket="bkt", Key="a/b.bin", Range="bytes=0-0")["Body"].read()
        c.head_object(Bucket="bkt", Key="a/b.bin")
        c.list_objects_v2(Bucket="bkt", Prefix="a/")
        elapsed = time.perf_counter() - t0
        assert elapsed >= 4 * 0.060
        assert ctl.by_operation("bkt/a/") == {"GET": 1, "HEAD": 1, "LIST": 1, "PUT": 1}
        assert ctl.count("GET", "bkt/a/b") == 1 and ctl.count(prefix="bkt/z") == 0
        ctl.set_delay(0)
        ctl.reset()
        t0 = time.perf_counter()
        for _ in range(5):
            c.head_object(Bucket="bkt", Key="a/b.bin")
        assert time.perf_counter() - t0 < 5 * 0.060
        assert ctl.requests() == {("HEAD", "bkt/a/b.bin"): 5}
