"""moto's S3 server with a delay per request and a count of requests: a store that is far away.

Real object storage answers in 20-50 ms a request; moto on 127.0.0.1 answers in
about one. This server puts moto's own WSGI application behind a small
middleware that sleeps ``delay_ms`` before each request (in the request's own
thread, so requests in flight overlap as they do against S3) and counts every
request by operation and key. Run it as a process::

    python -m pipeline.devtools.s3server -p 5000 --delay-ms 30

and read or change it at ``/_nibt/`` (``pipeline.devtools.s3local.StoreControl``):
``GET /_nibt/stats`` the counts, ``DELETE /_nibt/stats`` resets them,
``PUT /_nibt/delay?ms=30`` changes the delay. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, unquote

#: Where the control endpoints live (no bucket can be named so: S3 names have no '_').
CONTROL = "/_nibt/"


def operation(method: str, path: str, query: dict[str, list[str]]) -> tuple[str, str]:
    """(operation, bucket/key) of one S3 request in path style.

    A GET of a bucket with ``list-type`` or ``prefix`` is a ``LIST`` whose key is the
    listed prefix; multipart uploads are ``PUT`` (each part and the completion count).
    """
    parts = unquote(path).lstrip("/").split("/", 1)
    bucket, key = parts[0], parts[1] if len(parts) > 1 else ""
    if method == "GET" and not key:
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


class FarAway:
    """WSGI middleware: count, wait ``delay_s``, then hand the request to moto."""

    def __init__(self, app: Any, delay_ms: float = 0.0) -> None:
        self.app = app
        self.delay_s = delay_ms / 1000.0
        self.counts = Counts()

    def _control(self, environ: dict, start_response: Any) -> list[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        query = parse_qs(environ.get("QUERY_STRING", ""))
        body: Any = {"ok": True}
        if path == CONTROL + "stats" and method == "GET":
            body = {"delay_ms": self.delay_s * 1000.0, "counts": self.counts.report()}
        elif path == CONTROL + "stats" and method == "DELETE":
            self.counts.reset()
        elif path == CONTROL + "delay" and method == "PUT":
            self.delay_s = float(query.get("ms", ["0"])[0]) / 1000.0
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
        op, key = operation(environ["REQUEST_METHOD"], path,
                            parse_qs(environ.get("QUERY_STRING", "")))
        self.counts.add(op, key)
        if self.delay_s > 0:
            time.sleep(self.delay_s)
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
    args = ap.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        ap.error("the local store binds to loopback only")
    os.environ.setdefault("MOTO_PORT", str(args.port))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    app = FarAway(DomainDispatcherApplication(create_backend_app), args.delay_ms)
    run_simple(args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
