"""A real S3 endpoint on 127.0.0.1 (moto in server mode), for tests, the demo and benchmarks.

Starts ``python -m moto.server`` as a child process on loopback only, waits until
it answers, and stops it afterwards. Needs the ``dev`` extra (moto[server]).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
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


@contextlib.contextmanager
def local_s3(port: int | None = None, timeout: float = 30.0) -> Iterator[str]:
    """Run a moto S3 server on 127.0.0.1; yields its endpoint URL."""
    port = port or free_port()
    env = dict(os.environ, **LOCAL_S3_ENV)
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
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
