#!/usr/bin/env python
"""A small HTTP/1.1 reverse proxy (asyncio, loopback) that adds a fixed first-byte latency.

Put it in front of an object-store emulator (fake-gcs-server) to get the regime where concurrency
matters: every request waits ``--latency-ms`` before it is forwarded upstream, so its first
response byte arrives that much later; bodies (Range responses included) are streamed through
unchanged in both directions, and client connections are kept alive (one upstream connection per
client connection, reused across its requests).

    python benchmarks/latency_proxy.py --upstream 127.0.0.1:4443 --latency-ms 20 [--port 0] [--bandwidth-mbps 200]

``--bandwidth-mbps`` caps the response bytes of all connections together (MB/s, a token bucket),
standing in for a bucket's total egress. It prints ``LISTENING <port>`` on stdout once it
accepts connections. ``GET /__proxy_stats`` returns ``{"requests": n, "response_bytes": b}``
(without delay, not forwarded); ``GET /__proxy_reset`` zeroes them. With
``LATENCY_PROXY_LOG=<file>`` in its environment it appends one line per request (time, method,
target, status). Handles Content-Length and chunked bodies and close-delimited responses;
``Expect: 100-continue`` uploads are not supported (upload straight to the server instead).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time

LOG = open(os.environ["LATENCY_PROXY_LOG"], "a") if os.environ.get("LATENCY_PROXY_LOG") else None
LIMIT = 4 * 2**20  # stream buffer limit: big reads keep the per-byte cost low
CHUNK = 2**20


class Stats:
    requests = 0
    response_bytes = 0


class Bandwidth:
    """A token bucket shared by every connection: response bytes flow at most ``rate`` per
    second in all (None: no cap). Bursts up to 1/20 s of traffic."""

    rate: float | None = None
    _tokens = 0.0
    _last = 0.0

    @classmethod
    async def take(cls, n: int) -> None:
        if cls.rate is None:
            return
        now = time.monotonic()
        cls._tokens = min(cls.rate / 20, cls._tokens + (now - cls._last) * cls.rate)
        cls._last = now
        cls._tokens -= n
        if cls._tokens < 0:  # pay the debt before sending: later callers queue behind it
            await asyncio.sleep(-cls._tokens / cls.rate)


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial.strip():
            raise
        return None


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return lines[0], headers


async def _relay_exact(reader, writer, n: int, capped: bool = False) -> int:
    total = 0
    while n > 0:
        data = await reader.read(min(n, CHUNK))
        if not data:
            raise ConnectionError("peer closed mid-body")
        if capped:
            await Bandwidth.take(len(data))
        writer.write(data)
        n -= len(data)
        total += len(data)
        if writer.transport.get_write_buffer_size() > LIMIT:
            await writer.drain()
    await writer.drain()
    return total


async def _relay_chunked(reader, writer, capped: bool = False) -> int:
    total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        writer.write(line)
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:  # trailers, then the empty line
                t = await reader.readuntil(b"\r\n")
                writer.write(t)
                if t == b"\r\n":
                    break
            await writer.drain()
            return total
        total += await _relay_exact(reader, writer, size + 2, capped)  # data + CRLF


async def _relay_body(reader, writer, headers: dict[str, str], capped: bool = False) -> tuple[int, bool]:
    """Relay a message body; returns (bytes, whether it was close-delimited)."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await _relay_chunked(reader, writer, capped), False
    if "content-length" in headers:
        return await _relay_exact(reader, writer, int(headers["content-length"]), capped), False
    return -1, True


class Proxy:
    def __init__(self, upstream_host: str, upstream_port: int, latency: float):
        self.host, self.port, self.latency = upstream_host, upstream_port, latency

    async def handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        ureader = uwriter = None
        try:
            while True:
                head = await _read_head(creader)
                if head is None:
                    return
                reqline, headers = _parse_head(head)
                method, target = reqline.split(" ", 2)[:2]
                if target.startswith("/__proxy_"):
                    await self._admin(target, cwriter)
                    continue
                if self.latency:
                    await asyncio.sleep(self.latency)
                if uwriter is None or uwriter.is_closing():
                    ureader, uwriter = await asyncio.open_connection(self.host, self.port, limit=LIMIT)
                uwriter.write(head)
                if "content-length" in headers or "transfer-encoding" in headers:
                    await _relay_body(creader, uwriter, headers)  # request body, streamed
                await uwriter.drain()
                while True:
                    rhead = await _read_head(ureader)
                    if rhead is None:
                        raise ConnectionError("upstream closed before responding")
                    status_line, rheaders = _parse_head(rhead)
                    status = int(status_line.split(" ", 2)[1])
                    cwriter.write(rhead)
                    if 100 <= status < 200:
                        continue
                    break
                Stats.requests += 1
                if LOG is not None:
                    LOG.write(f"{time.time():.3f} {method} {target[:160]} -> {status}\n")
                    LOG.flush()
                close = False
                if method == "HEAD" or status in (204, 304):
                    await cwriter.drain()
                else:
                    n, close = await _relay_body(ureader, cwriter, rheaders, capped=True)
                    if close:  # close-delimited: relay until EOF, then close both sides
                        while True:
                            data = await ureader.read(CHUNK)
                            if not data:
                                break
                            await Bandwidth.take(len(data))
                            cwriter.write(data)
                            Stats.response_bytes += len(data)
                            await cwriter.drain()
                    else:
                        Stats.response_bytes += n
                if close or rheaders.get("connection", "").lower() == "close":
                    uwriter.close()
                    uwriter = None
                if close or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.CancelledError):
            return
        finally:
            for w in (uwriter, cwriter):
                if w is not None:
                    w.close()

    async def _admin(self, target: str, writer: asyncio.StreamWriter) -> None:
        if target.startswith("/__proxy_reset"):
            Stats.requests = Stats.response_bytes = 0
        body = json.dumps({"requests": Stats.requests, "response_bytes": Stats.response_bytes}).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
        )
        await writer.drain()


async def serve(
    upstream: str,
    latency_ms: float,
    port: int,
    bandwidth_mbps: float | None = None,
    host: str = "127.0.0.1",
    tls: tuple[str, str] | None = None,
) -> None:
    Bandwidth.rate = bandwidth_mbps * 1e6 if bandwidth_mbps else None
    Bandwidth._last = time.monotonic()
    uhost, _, uport = upstream.rpartition(":")
    proxy = Proxy(uhost.replace("http://", "") or "127.0.0.1", int(uport), latency_ms / 1000.0)
    ssl_context = None
    if tls is not None:  # HTTPS towards the client (TF's GCS client only speaks HTTPS), HTTP upstream
        import ssl

        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(*tls)
    server = await asyncio.start_server(proxy.handle, host, port, limit=LIMIT, backlog=1024, ssl=ssl_context)
    print(f"LISTENING {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
        sys.stdout.flush()
        os._exit(0)  # no teardown of open keep-alive connections: nothing to flush


def start_proxy(
    upstream: str,
    latency_ms: float,
    timeout: float = 15.0,
    bandwidth_mbps: float | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: tuple[str, str] | None = None,
):
    """Start the proxy in its own process (its own GIL); returns ``(Popen, "http://host:port")``
    (``https`` with ``tls`` = (certificate file, key file))."""
    extra = ["--bandwidth-mbps", str(bandwidth_mbps)] if bandwidth_mbps else []
    extra += ["--host", host, "--port", str(port)] + (["--tls-cert", tls[0], "--tls-key", tls[1]] if tls else [])
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--upstream", upstream, "--latency-ms", str(latency_ms), *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + timeout
    line = proc.stdout.readline()
    if not line.startswith("LISTENING") or time.monotonic() > deadline:
        proc.kill()
        raise RuntimeError(f"latency proxy did not start: {line!r}")
    return proc, f"{'https' if tls else 'http'}://{host}:{int(line.split()[1])}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream", required=True, help="host:port of the server to forward to")
    ap.add_argument("--latency-ms", type=float, default=0.0, help="first-byte latency per request")
    ap.add_argument("--port", type=int, default=0, help="port to listen on (0: any free one)")
    ap.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    ap.add_argument("--tls-cert", default=None, help="serve HTTPS with this certificate (PEM)")
    ap.add_argument("--tls-key", default=None, help="... and this key (PEM)")
    ap.add_argument("--bandwidth-mbps", type=float, default=None, help="total response bandwidth cap, MB/s")
    args = ap.parse_args()
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    asyncio.run(serve(args.upstream, args.latency_ms, args.port, args.bandwidth_mbps, args.host, tls))


if __name__ == "__main__":
    main()
