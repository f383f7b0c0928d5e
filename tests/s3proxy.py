"""A seeded fault-injecting HTTP proxy for S3 tests: forwards every request to an endpoint (the moto server) and
returns its answer, except that some requests get a 503 ``SlowDown`` or the connection dropped without an answer,
as a throttled or flaky S3 (or a load balancer in front of MinIO) does.

Faults are bounded so that a client that retries always gets through: one request (method, path and query) is
faulted at most ``max_in_a_row`` times in a row, and at most ``max_faults`` times in all. Whether a given attempt
is faulted depends only on the seed, the request and how often it was seen before, not on thread timing.
"""

from __future__ import annotations

import http.client
import random
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message><RequestId>s3proxy</RequestId></Error>")
# Per-connection headers (RFC 9110 7.6.1): the proxy's own connections carry their own.
# Expect: this proxy answers "100 Continue" itself and then has the whole body to forward.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
              "expect"}


class FaultProxy:
    """``with FaultProxy("http://127.0.0.1:PORT") as proxy:`` point clients at ``proxy.url``.

    ``probability``: chance that an attempt is faulted; ``slowdown_share``: of the faults, the share answered with
    503 SlowDown (the rest are dropped connections); ``methods``: fault only these HTTP methods (default: any).
    ``faults`` counts what was injected, by kind."""

    def __init__(self, target: str, seed: int = 0, probability: float = 0.3, max_in_a_row: int = 2,
                 max_faults: int = 200, slowdown_share: float = 0.5, methods: frozenset[str] | None = None):
        self.target = urlsplit(target)
        self.seed, self.probability, self.max_in_a_row = seed, probability, max_in_a_row
        self.max_faults, self.slowdown_share, self.methods = max_faults, slowdown_share, methods
        self.faults: Counter[str] = Counter()
        self.requests = 0
        self._seen: Counter[str] = Counter()     # attempts per request key
        self._in_a_row: Counter[str] = Counter()  # current run of faults per request key
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="s3proxy",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def storage_options(self) -> dict:
        return {"client_kwargs": {"endpoint_url": self.url}}

    @property
    def total_faults(self) -> int:
        return sum(self.faults.values())

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._server.shutdown()
        self._server.server_close()

    def decide(self, method: str, path: str) -> str | None:
        """``"slowdown"``, ``"drop"`` or None (forward) for this attempt of ``method path``."""
        key = f"{method} {path}"
        with self._lock:
            self.requests += 1
            attempt = self._seen[key]
            self._seen[key] += 1
            rng = random.Random(f"{self.seed}|{key}|{attempt}")
            if (self.total_faults >= self.max_faults or self._in_a_row[key] >= self.max_in_a_row
                    or (self.methods is not None and method not in self.methods) or rng.random() >= self.probability):
                self._in_a_row[key] = 0
                return None
            kind = "slowdown" if rng.random() < self.slowdown_share else "drop"
            self._in_a_row[key] += 1
            self.faults[kind] += 1
            return kind


def _handler(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

        def log_message(self, *_):  # quiet: pytest shows failures, not every request
            pass

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                    pass
                return b"".join(chunks)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _any(self) -> None:
            body = self._body()  # read in full first, so a drop is seen as "no answer", not "cannot send"
            fault = proxy.decide(self.command, self.path)
            if fault == "drop":
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault == "slowdown":
                self._answer(503, [("Content-Type", "application/xml")], SLOWDOWN)
                return
            status, headers, data = self._forward(body)
            self._answer(status, headers, data)

        def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
            conn = http.client.HTTPConnection(proxy.target.hostname, proxy.target.port, timeout=60)
            try:
                # The Host header goes through unchanged: it is part of the request's SigV4 signature.
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                conn.request(self.command, self.path, body=body if body or "Content-Length" in headers else None,
                             headers=headers)
                resp = conn.getresponse()
                return resp.status, [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP], resp.read()
            finally:
                conn.close()

        def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
            self.send_response_only(status)  # moto's own Date and Server headers are forwarded
            for k, v in headers:
                self.send_header(k, v)
            # A HEAD answer keeps the object's Content-Length and has no body; 204 and 304 have none either.
            bodiless = self.command == "HEAD" or status in (204, 304)
            if not bodiless and not any(k.lower() == "content-length" for k, _ in headers):
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not bodiless:
                self.wfile.write(data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

    return Handler
