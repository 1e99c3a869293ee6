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
