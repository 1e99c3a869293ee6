"""moto's S3 server with a delay per request and a count of requests: a store that is far away.

Real object storage answers in 20-50 ms a request; moto on 127.0.0.1 answers in
about one. This server puts moto's own WSGI application behind a small
middleware that sleeps ``delay_ms`` before each request (in the request's own
thread, so requests in flight overlap as they do against S3) and counts every
request by operation and key. Run it as a process::

    python -m pipeline.devtools.s3server -p 5000 --delay-ms 30

and read or change it at ``/_nibt/`` (``pipeline.devtools.s3local.StoreControl``):
``GET /_nibt/stats`` the counts, ``DELETE /_nibt/stats`` resets them,
``PUT /_nibt/delay?ms=30`` changes the delay, ``POST /_nibt/seed`` stores many
objects of one body at once, straight into moto (a benchmark's 200,000 parts
would take 15 minutes as PUTs here), uncounted and undelayed. Loopback only.

moto spends 3-4 ms of CPU on each request to read an object (its routing and
response machinery), in one process: 300 GETs a second at most, where planning
230,000 files wants thousands. So GETs and HEADs of plain objects (no query,
no conditions but ``If-Match``) are answered here from moto's stored bytes,
with moto's headers; anything else goes to moto.

moto answers a listing by copying and sorting every key of the bucket for each
page of 1,000 (0.1 s a page at 20,000 keys: quadratic in the keys in all), then
spends 0.3-0.8 s of CPU serialising the page (most of it parsing each key's
timestamp back from text). S3 answers a page in tens of milliseconds whatever
the bucket holds, so this server answers ``ListObjectsV2`` itself: the page
from a sorted index of the bucket's key names (rebuilt after the keys change),
as the XML moto would write (``tests/unit/test_far_store.py`` holds the two
side by side through boto3).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import signal
import sys
import threading
import time
from bisect import bisect_left, bisect_right
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, quote, unquote
from xml.sax.saxutils import escape

#: Where the control endpoints live (no bucket can be named so: S3 names have no '_').
CONTROL = "/_nibt/"


def operation(method: str, path: str, query: dict[str, list[str]]) -> tuple[str, str]:
    """(operation, bucket/key) of one S3 request in path style.

    A GET of a bucket with ``list-type`` or ``prefix`` is a ``LIST`` whose key is the
    listed prefix; multipart uploads are ``PUT`` (each part and the completion count).
    """
    parts = unquote(path).lstrip("/").split("/", 1)
    bucket, key = parts[0], parts[1] if len(parts) > 1 else ""
    if method == "GET" and not key and (not query or "list-type" in query or "prefix" in query):
        return "LIST", f"{bucket}/{query.get('prefix', [''])[0]}"
    if method == "POST":  # initiate / complete a multipart upload, delete many
        return ("DELETE" if "delete" in query else "PUT"), f"{bucket}/{key}"
    return method, f"{bucket}/{key}"


class Counts:
    """Requests by (operation, bucket/key); thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_key: Counter = Counter()

    def add(self, op: str, key: str) -> None:
        with self.lock:
            self.by_key[op, key] += 1

    def reset(self) -> None:
        with self.lock:
            self.by_key.clear()

    def report(self) -> list[list[Any]]:
        """[[operation, bucket/key, count], ...]: the raw counts, for the client to sum."""
        with self.lock:
            return [[op, key, n] for (op, key), n in sorted(self.by_key.items())]


def _past(prefix: str) -> str:
    """The smallest string after every string that starts with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def _sorted_names(keys: Any) -> list[str]:
    """The key names of a bucket's key store, sorted; cached until the store changes."""
    state = keys.__dict__
    cached = state.get("_nibt_sorted")
    if cached is None or cached[0] != state.get("_nibt_gen", 0):
        cached = (state.get("_nibt_gen", 0), sorted(dict.keys(keys)))
        state["_nibt_sorted"] = cached
    return cached[1]


def list_page(backend: Any, bucket: Any, prefix: str | None, delimiter: str | None,
              continuation_token: str | None, start_after: str | None, max_keys: int) -> Any:
    """``S3Backend.list_objects_v2`` from the sorted names: the same page, without
    copying and sorting the bucket for each one."""
    from moto.s3.models import FakeDeleteMarker

    names, prefix = _sorted_names(bucket.keys), prefix or ""
    after = (backend._pagination_tokens.get(continuation_token) if continuation_token
             else start_after)
    i = bisect_left(names, prefix)
    if after:
        if delimiter and after.endswith(delimiter) and after.startswith(prefix):
            i = max(i, bisect_left(names, _past(after)))  # a folder: past all it holds
        else:
            i = max(i, bisect_right(names, after))
    out: list[Any] = []
    while i < len(names) and len(out) <= max_keys and names[i].startswith(prefix):
        name = names[i]
        rest = name[len(prefix):]
        if delimiter and delimiter in rest:
            folder = prefix + rest.split(delimiter)[0] + delimiter
            out.append(folder)
            i = bisect_left(names, _past(folder))
            continue
        key = bucket.keys.get(name)
        if key is not None and not isinstance(key, FakeDeleteMarker):
            out.append(key)
        i += 1
    return backend._truncate_result(out, max_keys)


def install_fast_listing() -> None:
    """Answer ``ListObjectsV2`` from a sorted index of each bucket's key names."""
    from moto.s3 import models, utils

    store = utils._VersionedKeyStore

    def counting(orig: Any) -> Any:
        def changed(self: Any, *args: Any, **kw: Any) -> Any:
            self.__dict__["_nibt_gen"] = self.__dict__.get("_nibt_gen", 0) + 1
            return orig(self, *args, **kw)
        return changed

    for name in ("__setitem__", "setlist", "pop", "__delitem__"):
        setattr(store, name, counting(getattr(store, name)))
    original = models.S3Backend.list_objects_v2

    def fast(self: Any, bucket: Any, prefix: Any, delimiter: Any, continuation_token: Any,
             start_after: Any, max_keys: int) -> Any:
        if isinstance(bucket, models.FakeTableStorageBucket):
            return original(self, bucket, prefix, delimiter, continuation_token, start_after,
                            max_keys)
        return list_page(self, bucket, prefix, delimiter, continuation_token, start_after,
                         max_keys)

    models.S3Backend.list_objects_v2 = fast


def _backend() -> Any:
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    return s3_backends[DEFAULT_ACCOUNT_ID]["aws"]


def _tag(name: str, value: Any) -> str:
    return f"<{name}>{escape(str(value))}</{name}>"


def list_v2_xml(bucket_name: str, query: dict[str, list[str]]) -> bytes | None:
    """moto's ``ListObjectsV2`` answer, written here from ``list_page``; None to let
    moto answer (no such bucket, an empty continuation token)."""
    from moto.s3.exceptions import MissingBucket
    from moto.s3.models import FakeKey

    def arg(name: str) -> str | None:
        return query.get(name, [None])[0]

    backend = _backend()
    try:
        bucket = backend.get_bucket(bucket_name)
    except MissingBucket:
        return None
    token, prefix, delimiter = arg("continuation-token"), arg("prefix"), arg("delimiter")
    if token == "":
        return None
    max_keys = int(arg("max-keys") or 1000)
    url = arg("encoding-type") == "url"
    page, truncated, next_token = list_page(backend, bucket, prefix, delimiter, token,
                                            arg("start-after"), max_keys)
    keys = [k for k in page if isinstance(k, FakeKey)]
    folders = [f for f in page if not isinstance(f, FakeKey)]
    out = ['<?xml version="1.0" encoding="utf-8"?>\n<ListBucketResult '
           'xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
           _tag("IsTruncated", "true" if truncated else "false")]
    for k in keys:
        out.append("<Contents>" + _tag("Key", quote(k.name) if url else k.name)
                   + _tag("LastModified", k.last_modified_ISO8601) + _tag("ETag", k.etag)
                   + _tag("Size", k.size) + _tag("StorageClass", k.storage_class)
                   + "</Contents>")
    out += [_tag("Name", bucket.name),
            _tag("Prefix", (quote(prefix) if url else prefix) if prefix else "")]
    if delimiter:
        out.append(_tag("Delimiter", delimiter))
    out.append(_tag("MaxKeys", max_keys))
    if delimiter:
        out += ["<CommonPrefixes>" + _tag("Prefix", quote(f) if url else f) + "</CommonPrefixes>"
                for f in folders]
    if arg("encoding-type"):
        out.append(_tag("EncodingType", arg("encoding-type")))
    out.append(_tag("KeyCount", len(keys) + len(folders)))
    if next_token:
        out.append(_tag("NextContinuationToken", next_token))
    if not token and arg("start-after"):
        out.append(_tag("StartAfter", arg("start-after")))
    out.append("</ListBucketResult>")
    return "".join(out).encode()


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
#: Request headers the fast object path leaves to moto.
_CONDITIONS = ("HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE", "HTTP_IF_UNMODIFIED_SINCE",
               "HTTP_X_AMZ_SERVER_SIDE_ENCRYPTION_CUSTOMER_ALGORITHM")


def object_answer(environ: dict, bucket_name: str, key_name: str) -> tuple | None:
    """(status, headers, body) of a GET or HEAD of an object, with the headers moto's own
    answer has; None to let moto answer (a missing object, a version or part asked for,
    a condition other than If-Match, a failed If-Match, a range it cannot satisfy)."""
    from moto.s3.exceptions import MissingBucket
    from moto.s3.models import FakeKey

    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    if set(query) - {"x-id"} or any(h in environ for h in _CONDITIONS):
        return None
    try:
        key = _backend().get_bucket(bucket_name).keys.get(key_name)
    except MissingBucket:
        return None
    if not isinstance(key, FakeKey) or key.storage_class not in ("STANDARD", None):
        return None  # a delete marker; archived classes moto refuses to read
    match = environ.get("HTTP_IF_MATCH")
    if match is not None and match.strip() not in ("*", key.etag, key.etag.strip('"')):
        return None  # moto answers 412
    headers = {} if key.version_id == "null" else {"x-amz-version-id": key.version_id}
    headers.update(key.response_dict)
    if environ.get("HTTP_X_AMZ_CHECKSUM_MODE") == "ENABLED" and key.checksum_algorithm:
        if key.checksum_type == "COMPOSITE":
            return None
        headers[f"x-amz-checksum-{key.checksum_algorithm.lower()}"] = key.checksum_value
        if key.checksum_type:
            headers["x-amz-checksum-type"] = key.checksum_type
    headers.update(key.metadata)
    headers["Accept-Ranges"] = "bytes"
    size = key.size
    start, end, status = 0, size - 1, "200 OK"
    spec = environ.get("HTTP_RANGE")
    if spec:
        m = _RANGE.match(spec.strip())
        if not m or not (m[1] or m[2]):
            return None
        if m[1]:
            start, end = int(m[1]), min(int(m[2]), size - 1) if m[2] else size - 1
        else:
            start, end = max(0, size - int(m[2])), size - 1
        if start >= size or start > end:
            return None  # moto answers 416
        status = "206 Partial Content"
        headers["content-range"] = f"bytes {start}-{end}/{size}"
        if (start, end) != (0, size - 1):  # the object's checksum does not go with a part
            headers = {k: v for k, v in headers.items() if not k.startswith("x-amz-checksum-")}
    headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
    if environ["REQUEST_METHOD"] == "HEAD":
        return status, [*headers.items(), ("Content-Length", str(end - start + 1))], b""
    with key.lock:  # moto's own lock on the stored bytes
        key._value_buffer.seek(start)
        body = key._value_buffer.read(end - start + 1)
    return status, [*headers.items(), ("Content-Length", str(len(body)))], body


def seed(bucket: str, keys: list[str], body: bytes) -> None:
    """Store ``body`` under every key of ``bucket``, straight into moto's backend."""
    backend = _backend()
    for key in keys:
        backend.put_object(bucket, key, body)


class FarAway:
    """WSGI middleware: count, wait ``delay_s``, then hand the request to moto."""

    def __init__(self, app: Any, delay_ms: float = 0.0, fast: bool = True) -> None:
        self.app = app
        self.delay_s = delay_ms / 1000.0
        self.counts = Counts()
        self.fast = fast  # listings and object reads answered here (see the module's doc)

    def _control(self, environ: dict, start_response: Any) -> list[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        query = parse_qs(environ.get("QUERY_STRING", ""))
        body: Any = {"ok": True}
        if path == CONTROL + "stats" and method == "GET":
            body = {"delay_ms": self.delay_s * 1000.0, "counts": self.counts.report(),
                    "cpu_s": time.process_time()}
        elif path == CONTROL + "stats" and method == "DELETE":
            self.counts.reset()
        elif path == CONTROL + "delay" and method == "PUT":
            self.delay_s = float(query.get("ms", ["0"])[0]) / 1000.0
        elif path == CONTROL + "seed" and method == "POST":
            size = int(environ.get("CONTENT_LENGTH") or 0)
            req = json.loads(environ["wsgi.input"].read(size))
            seed(req["bucket"], req["keys"], base64.b64decode(req["body"]))
            body = {"ok": True, "stored": len(req["keys"])}
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"unknown control request"]
        data = json.dumps(body).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(data)))])
        return [data]

    def __call__(self, environ: dict, start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path.startswith(CONTROL):
            return self._control(environ, start_response)
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        op, key = operation(environ["REQUEST_METHOD"], path, query)
        self.counts.add(op, key)
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        if not self.fast:
            return self.app(environ, start_response)
        if op == "LIST" and query.get("list-type") == ["2"]:
            body = list_v2_xml(key.split("/", 1)[0], query)
            if body is not None:
                start_response("200 OK", [("Content-Type", "application/xml"),
                                          ("Content-Length", str(len(body)))])
                return [body]
        elif op in ("GET", "HEAD") and "/" in key:
            answer = object_answer(environ, *key.split("/", 1))
            if answer is not None:
                status, headers, body = answer
                start_response(status, headers)
                return [body]
        return self.app(environ, start_response)


def main(argv: list[str] | None = None) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    ap = argparse.ArgumentParser(prog="python -m pipeline.devtools.s3server")
    ap.add_argument("-H", "--host", default="127.0.0.1")
    ap.add_argument("-p", "--port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--moto-only", action="store_true",
                    help="answer listings and object reads with moto's own code (slow)")
    args = ap.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        ap.error("the local store binds to loopback only")
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if not args.moto_only:
        install_fast_listing()
    app = FarAway(DomainDispatcherApplication(create_backend_app), args.delay_ms,
                  fast=not args.moto_only)
    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
