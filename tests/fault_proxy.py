"""A loopback HTTP proxy that injects faults between a client (s3fs, gcsfs) and a real object store
(moto, fake-gcs-server).

Point the client's ``endpoint_url`` at :attr:`FaultProxy.url`; requests are forwarded unchanged to
the upstream server, except those a rule picks, which get one of these faults instead:

* ``"500"``, ``"503"``, ``"429"``, ``"403"``: an error answer with the store's own error body
  (S3 XML or GCS JSON), so the client library parses it as it would a real one (403: access
  denied, a permanent error);
* ``"reset"``: the connection is reset (RST) after the request was read;
* ``"stall"``: the request is read and never answered (the connection stays open until the
  proxy stops): a server that accepts connections and hangs;
* ``"truncate"``: the upstream answer, with its full ``Content-Length``, but the body cut in
  half and the connection closed;
* ``"blackhole"``: like ``stall``, meant for every request of one path (a shard that never
  answers).

Rules: :meth:`FaultProxy.set_rate` faults a fraction of the requests (seeded, reproducible) with
kinds drawn from a list; :meth:`FaultProxy.add_rule` faults requests whose path contains a
substring, always or the first ``times`` of them; :meth:`FaultProxy.hold` keeps some requests
waiting until another one arrives (which proves the client sent that one first). ``log``
records ``(method, path, fault)`` per request, and ``ranges`` ``(method, path, Range header)``.
One thread per client connection; keep-alive connections are served request after request.
"""

from __future__ import annotations

import http.client
import random
import socket
import socketserver
import struct
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

KINDS = ("500", "503", "429", "403", "reset", "stall", "truncate", "blackhole")
TRANSIENT_MIX = ("500", "503", "429", "reset", "truncate")

_S3_ERROR = {
    "500": ("InternalError", "We encountered an internal error. Please try again."),
    "503": ("SlowDown", "Please reduce your request rate."),
    "429": ("SlowDown", "Please reduce your request rate."),
    "403": ("AccessDenied", "Access Denied"),
}
_REASON = {"500": "Internal Server Error", "503": "Service Unavailable", "429": "Too Many Requests", "403": "Forbidden"}


@dataclass
class _Rule:
    kind: str
    match: str
    times: int | None  # None: always
    method: str | None = None  # None: any


@dataclass
class _Hold:
    match: str
    until: object  # (method, path) -> bool
    arrived: threading.Event
    timeout: float


class FaultProxy:
    """``FaultProxy(upstream_url, flavor="s3"|"gcs")``; ``start()``/``stop()`` or a ``with`` block."""

    def __init__(self, upstream: str, flavor: str = "s3", seed: int = 0, port: int = 0):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.flavor = flavor
        self.log: list[tuple[str, str, str | None]] = []
        self._rules: list[_Rule] = []
        self._holds: list[_Hold] = []
        self.held: list[tuple[str, bool]] = []
        self.ranges: list[tuple[str, str, str | None]] = []  # (method, path, Range header) per request
        self._rate = 0.0
        self._rate_kinds: tuple[str, ...] = ()
        self._rate_match = ""
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = None
        self._thread = None
        self._port = port

    # -- control -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", self._port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases stalled connections
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def set_rate(self, rate: float, kinds=TRANSIENT_MIX, match: str = "") -> None:
        """Fault a fraction ``rate`` of the requests whose path contains ``match``."""
        with self._lock:
            self._rate, self._rate_kinds, self._rate_match = rate, tuple(kinds), match

    def add_rule(self, kind: str, match: str = "", times: int | None = None, method: str | None = None) -> None:
        """Fault requests whose path contains ``match`` (and whose method is ``method``, where
        given) with ``kind`` (the first ``times``, or all)."""
        assert kind in KINDS, kind
        with self._lock:
            self._rules.append(_Rule(kind, match, times, method))

    def hold(self, match: str, until, timeout: float = 10.0) -> None:
        """Hold requests whose path contains ``match`` until a request for which
        ``until(method, path)`` is true has arrived (at most ``timeout`` s, then forward them
        anyway). ``held`` records ``(path, True)`` for a request released by that arrival,
        ``(path, False)`` for one released by the timeout."""
        with self._lock:
            self._holds.append(_Hold(match, until, threading.Event(), timeout))

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._holds.clear()
            self._rate = 0.0
            self.log.clear()
            self.held.clear()
            self.ranges.clear()

    def faults(self, kind: str | None = None) -> int:
        with self._lock:
            return sum(1 for _, _, k in self.log if k is not None and (kind is None or k == kind))

    def requests(self, match: str = "") -> int:
        with self._lock:
            return sum(1 for _, path, _ in self.log if match in path)

    def _pick(self, method: str, path: str) -> str | None:
        with self._lock:
            kind = None
            for hold in self._holds:
                if hold.until(method, path):
                    hold.arrived.set()
            for rule in self._rules:
                if rule.method not in (None, method):
                    continue
                if rule.match in path and (rule.times is None or rule.times > 0):
                    if rule.times is not None:
                        rule.times -= 1
                    kind = rule.kind
                    break
            if kind is None and self._rate and self._rate_match in path and self._random.random() < self._rate:
                kind = self._random.choice(self._rate_kinds)
            self.log.append((method, path, kind))
            return kind

    # -- serving -----------------------------------------------------------------------------

    def _serve(self, conn: socket.socket) -> None:
        reader = conn.makefile("rb")
        try:
            while not self._stopping.is_set():
                request = _read_request(reader, conn)
                if request is None:
                    return
                method, path, headers, body = request
                kind = self._pick(method, path)
                with self._lock:
                    self.ranges.append((method, path, headers.get("range")))
                for hold in [h for h in self._holds if h.match in path]:
                    released = hold.arrived.wait(hold.timeout)
                    with self._lock:
                        self.held.append((path, released))
                if kind in ("stall", "blackhole"):
                    self._stopping.wait()
                    return
                if kind == "reset":
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if kind in _REASON:
                    conn.sendall(self._error(kind, method))
                    continue
                status, reason, out_headers, data = self._forward(method, path, headers, body)
                if kind == "truncate" and method != "HEAD":
                    conn.sendall(_response(status, reason, out_headers, data, method, cut=len(data) // 2))
                    return
                conn.sendall(_response(status, reason, out_headers, data, method))
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, OSError):
            return
        finally:
            try:
                reader.close()
                conn.close()
            except OSError:
                pass

    def _forward(self, method, path, headers, body):
        upstream = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            send = {k: v for k, v in headers.items() if k not in ("connection", "keep-alive")}
            upstream.request(method, path, body=body, headers=send)
            resp = upstream.getresponse()
            data = resp.read()
            return resp.status, resp.reason, resp.getheaders(), data
        finally:
            upstream.close()

    def _error(self, kind: str, method: str) -> bytes:
        code = int(kind)
        if self.flavor == "s3":
            err, msg = _S3_ERROR[kind]
            body = (
                f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{err}</Code><Message>{msg}</Message>'
                f"<RequestId>fault-proxy</RequestId></Error>"
            ).encode()
            ctype = "application/xml"
        else:
            body = f'{{"error": {{"code": {code}, "message": "{_REASON[kind]} (injected)"}}}}'.encode()
            ctype = "application/json"
        head = f"HTTP/1.1 {code} {_REASON[kind]}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n"
        return head.encode() + (b"" if method == "HEAD" else body)


def _read_request(reader, conn):
    line = reader.readline(65537)
    if not line:
        return None
    method, path, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        h = reader.readline(65537)
        if h in (b"\r\n", b"\n", b""):
            break
        k, v = h.decode("latin-1").split(":", 1)
        headers[k.strip().lower()] = v.strip()
    body = b""
    if headers.pop("expect", "").lower() == "100-continue":  # botocore's uploads wait for it
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
    if "content-length" in headers:
        body = reader.read(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(reader.readline().split(b";")[0], 16)
            if size == 0:
                reader.readline()
                break
            chunks.append(reader.read(size))
            reader.readline()
        body = b"".join(chunks)
        del headers["transfer-encoding"]
        headers["content-length"] = str(len(body))
    return method, path, headers, body


def _response(status, reason, headers, data, method, cut=None) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"]
    for k, v in headers:
        if k.lower() in ("transfer-encoding", "connection", "content-length"):
            continue
        lines.append(f"{k}: {v}")
    if method == "HEAD":
        length = dict((k.lower(), v) for k, v in headers).get("content-length", "0")
        lines.append(f"Content-Length: {length}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    lines.append(f"Content-Length: {len(data)}")
    body = data if cut is None else data[:cut]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def wait_until(predicate, timeout: float = 10.0, step: float = 0.01) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
