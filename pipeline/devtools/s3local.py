"""A real S3 endpoint on 127.0.0.1 (moto in server mode), for tests, the demo and benchmarks.

Starts moto's server (``pipeline.devtools.s3server``: moto's own application,
behind a delay per request and a count of requests) as a child process on
loopback only, waits until it answers, and stops it afterwards. ``delay_ms``
makes it a store that is far away, as real object storage is (20-50 ms a
request); ``StoreControl`` reads the counts and changes the delay. Needs the
``dev`` extra (moto[server]).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator

#: Dummy credentials for the local endpoint (moto accepts any).
LOCAL_S3_ENV = {
    "AWS_ACCESS_KEY_ID": "nibt-local-key",
    "AWS_SECRET_ACCESS_KEY": "nibt-local-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StoreControl:
    """The local store's counts of requests and its delay, read and set over HTTP."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}/_nibt/{path}", data=data, method=method)
        with urllib.request.urlopen(req, timeout=600) as r:
            return json.loads(r.read())

    def seed(self, bucket: str, keys: list[str], body: bytes) -> None:
        """Store ``body`` under each of ``keys`` in ``bucket`` at once (straight into moto:
        no request is counted or delayed); for benchmarks that need many objects."""
        for lo in range(0, len(keys), 50_000):
            self._call("POST", "seed", {"bucket": bucket, "keys": keys[lo:lo + 50_000],
                                        "body": base64.b64encode(body).decode()})

    def set_delay(self, ms: float) -> None:
        """Every later request waits ``ms`` milliseconds before moto answers it."""
        self._call("PUT", f"delay?ms={ms:g}")

    def reset(self) -> None:
        """Forget the requests counted so far."""
        self._call("DELETE", "stats")

    def requests(self) -> Counter:
        """Requests since the last reset by (operation, bucket/key): operations are GET,
        HEAD, PUT, DELETE and LIST (whose key is the listed prefix)."""
        return Counter({(op, key): n for op, key, n in self._call("GET", "stats")["counts"]})

    def count(self, op: str | None = None, prefix: str = "") -> int:
        """Requests of operation ``op`` (any when None) on keys under ``prefix``
        (``bucket/key prefix``)."""
        return sum(n for (o, key), n in self.requests().items()
                   if (op is None or o == op) and key.startswith(prefix))

    def cpu_seconds(self) -> float:
        """CPU time the store's process has used so far (moto's own cost, which real
        object storage does not put on the machine under test)."""
        return float(self._call("GET", "stats")["cpu_s"])

    def by_operation(self, prefix: str = "") -> dict[str, int]:
        """Requests under ``prefix`` by operation."""
        out: Counter = Counter()
        for (o, key), n in self.requests().items():
            if key.startswith(prefix):
                out[o] += n
        return dict(sorted(out.items()))


@contextlib.contextmanager
def local_s3(port: int | None = None, timeout: float = 30.0, delay_ms: float = 0.0,
             moto_only: bool = False) -> Iterator[str]:
    """Run a moto S3 server on 127.0.0.1, each request delayed ``delay_ms``; yields its
    endpoint URL (``StoreControl(url)`` counts its requests and changes the delay).
    ``moto_only``: listings and object reads answered by moto's own code (see
    ``s3server``)."""
    port = port or free_port()
    env = dict(os.environ, **LOCAL_S3_ENV)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.devtools.s3server", "-H", "127.0.0.1", "-p", str(port),
         "--delay-ms", f"{delay_ms:g}", *(["--moto-only"] if moto_only else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{url}/_nibt/stats", timeout=1).close()
                break
            except Exception:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"local S3 endpoint did not start on {url}") from None
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
