"""A fault-injecting HTTP proxy on 127.0.0.1 in front of the S3 endpoint.

Each request is read whole, then either forwarded, answered ``503 SlowDown``,
dropped (connection closed without an answer), or refused ``403 AccessDenied``
(for keys matching ``deny``). Forwarding happens only for whole requests, so
the proxy itself can never make the store see half an object.
"""

from __future__ import annotations

import http.client
import random
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")
DENIED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
          b"<Message>Access Denied</Message></Error>")
HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade"}


class FaultProxy:
    """Start with ``with FaultProxy(upstream, ...) as url:``; counts are in ``self.counts``."""

    def __init__(self, upstream: str, fail_rate: float = 0.0, drop_rate: float = 0.0,
                 deny: str | None = None, seed: int = 0) -> None:
        self.upstream = urlsplit(upstream)
        self.fail_rate, self.drop_rate = fail_rate, drop_rate
        self.deny = re.compile(deny) if deny else None
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: Counter = Counter()
        self.enabled = True
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True

    def _decide(self, path: str) -> str:
        with self.lock:
            self.counts["requests"] += 1
            if self.deny and self.deny.search(path):
                self.counts["denied"] += 1
                return "deny"
            if not self.enabled:
                return "forward"
            r = self.rng.random()
            if r < self.fail_rate:
                self.counts["503"] += 1
                return "fail"
            if r < self.fail_rate + self.drop_rate:
                self.counts["dropped"] += 1
                return "drop"
            return "forward"

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                return

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    out = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return out
                        out += self.rfile.read(size)
                        self.rfile.readline()
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _answer(self, status: int, body: bytes, headers=()) -> None:
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _any(self) -> None:
                body = self._body()
                action = proxy._decide(self.path)
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if action == "fail":
                    self._answer(503, SLOW_DOWN, [("Content-Type", "application/xml")])
                    return
                if action == "deny":
                    self._answer(403, DENIED, [("Content-Type", "application/xml")])
                    return
                up = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port,
                                                timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
                headers["Content-Length"] = str(len(body))
                up.request(self.command, self.path, body=body, headers=headers)
                resp = up.getresponse()
                data = resp.read()
                up.close()
                head = self.command == "HEAD"
                hdrs = [(k, v) for k, v in resp.getheaders()
                        if k.lower() not in HOP and (head or k.lower() != "content-length")]
                self.send_response(resp.status, resp.reason)
                for k, v in hdrs:
                    self.send_header(k, v)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        return Handler

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
