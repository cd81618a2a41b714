"""A fault-injecting HTTP proxy on 127.0.0.1 for the fault suite.

It sits in front of a real server (``rustac serve``, moto's S3 server) and forwards every request
unchanged, except those that match one of its `Fault` rules: those get an error status, a stall
(no answer until the client gives up), a dropped connection, or the upstream's answer rewritten
(truncated JSON, a ``next`` link that points back at the same page).

Hand-written rather than a library (mitmproxy, toxiproxy) because those need a separate process
or a binary; this is ~200 lines of the standard library and starts in milliseconds.
"""

from __future__ import annotations

import http.client
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import urlsplit

__all__ = ["Fault", "FaultProxy"]

FaultKind = Literal["status", "stall", "drop", "rewrite"]

#: Headers that describe one hop, not the message (RFC 9110 section 7.6.1): never forwarded.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)


@dataclass
class Fault:
    """What the proxy does to requests whose ``"METHOD /path?query"`` matches `match`.

    kind: ``status`` answers `status` with `body`; ``stall`` reads the request, then answers
        nothing for `stall_s` seconds and closes; ``drop`` closes the connection at once;
        ``rewrite`` forwards, then replaces the upstream's body by ``rewrite(body)``.
    times: how many matching requests get the fault (None: every one). `hits` counts them.
    """

    kind: FaultKind
    match: str = ""
    status: int = 503
    body: bytes = b""
    content_type: str = "application/json"
    times: int | None = None
    stall_s: float = 30.0
    rewrite: Callable[[bytes], bytes] | None = None
    hits: int = 0

    def take(self, request_line: str) -> bool:
        """True (and counted) when this fault applies to `request_line`."""
        if self.times is not None and self.hits >= self.times:
            return False
        if self.match and not re.search(self.match, request_line):
            return False
        self.hits += 1
        return True


@dataclass
class FaultProxy:
    """A running proxy to `upstream` (``http://host:port``); `url` is its own root.

    `rewrite_links`: replace the upstream's root URL by the proxy's in forwarded bodies, so that
    absolute links (STAC ``next``/``self``) come back through the proxy.
    """

    upstream: str
    rewrite_links: bool = False
    faults: list[Fault] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _closing: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the proxy first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def start(self) -> FaultProxy:
        handler = type("_Handler", (_Handler,), {"proxy": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()
        return self

    def stop(self) -> None:
        self._closing.set()  # releases stalled handlers
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _fault_for(self, request_line: str) -> Fault | None:
        with self._lock:
            self.requests.append(request_line)
            return next((f for f in self.faults if f.take(request_line)), None)


class _Handler(BaseHTTPRequestHandler):
    proxy: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive and ``Expect: 100-continue`` as real servers do

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        body = self._body()
        proxy = self.proxy
        fault = proxy._fault_for(f"{self.command} {self.path}")
        if fault is not None and fault.kind == "drop":
            self.close_connection = True
            self.connection.close()
            return
        if fault is not None and fault.kind == "stall":
            proxy._closing.wait(fault.stall_s)
            self.close_connection = True
            return
        if fault is not None and fault.kind == "status":
            self._reply(fault.status, fault.body, {"Content-Type": fault.content_type})
            return
        status, headers, data = self._forward(body)
        if fault is not None and fault.kind == "rewrite" and fault.rewrite is not None:
            data = fault.rewrite(data)
        self._reply(status, data, headers)

    def _forward(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
        up = urlsplit(self.proxy.upstream)
        conn = http.client.HTTPConnection(up.hostname or "127.0.0.1", up.port or 80, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if body or self.command in ("POST", "PUT", "PATCH"):
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = {k: v for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP}
            if self.command == "HEAD":
                return resp.status, out, b""
            if self.proxy.rewrite_links:
                data = data.replace(self.proxy.upstream.encode(), self.proxy.url.encode())
            return resp.status, out, data
        finally:
            conn.close()

    def _reply(self, status: int, data: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        keep_length = self.command == "HEAD" and "Content-Length" in headers
        for key, value in headers.items():
            if key.lower() == "content-length" and not keep_length:
                continue
            self.send_header(key, value)
        if not keep_length:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output quiet
