"""An endpoint on 127.0.0.1 that accepts connections and never answers (a hung S3)."""

from __future__ import annotations

import socket
import threading


class SilentEndpoint:
    """``with SilentEndpoint() as url:``; ``connections`` counts what it accepted."""

    def __init__(self) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(128)
        self.held: list[socket.socket] = []
        self.stopped = threading.Event()

    @property
    def connections(self) -> int:
        return len(self.held)

    def _accept(self) -> None:
        self.server.settimeout(0.2)
        while not self.stopped.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                continue
            self.held.append(conn)  # kept open, never read, never answered

    def __enter__(self) -> str:
        threading.Thread(target=self._accept, daemon=True).start()
        return f"http://127.0.0.1:{self.server.getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for c in self.held:
            c.close()
        self.server.close()


def main() -> None:
    """``python -m tests.silent``: `nibt-audit` with the default storage settings against a
    silent endpoint; prints its exit code, seconds and the requests the endpoint got."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    import time

    from pipeline.devtools.s3local import LOCAL_S3_ENV

    endpoint = SilentEndpoint()
    with endpoint as url, tempfile.TemporaryDirectory() as logs:
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "pipeline", "input=s3://lake/in/",
                            "output=s3://lake/out", "model=demo", "storage=s3",
                            f"storage.endpoint_url={url}"],
                           capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, **LOCAL_S3_ENV, NIBT_LOG_DIR=logs))
        seconds = time.monotonic() - t0
        error = [ln for ln in r.stderr.splitlines() if "did not answer" in ln]
        print(json.dumps({"exit_code": r.returncode, "seconds": round(seconds, 1),
                          "requests": endpoint.connections,
                          "error": error[-1][:300] if error else None}, indent=2))


if __name__ == "__main__":
    main()
