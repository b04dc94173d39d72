"""A small threaded HTTP/1.1 server that keeps every request exactly as it arrived on the socket.

The ZStack test doubles (tests/mn_simulator.py, tests/upstream_agent.py) need the header block byte for
byte (names in their received case and order) to check that a proxy forwards requests untouched, which
frameworks that normalise headers cannot give. Keep-alive and chunked request bodies are understood, since
the clients under test may use either.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus

max_head_bytes = 64 * 1024
idle_timeout_s = 30.0


@dataclass
class RawRequest:
    """One request: `head` is the request line and header lines up to the blank line, as received."""

    method: str
    target: str
    version: str
    head: bytes
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), latin-1 decoded, or None."""
        wanted = name.lower().encode("latin-1")
        for key, value in self.raw_headers:
            if key.lower() == wanted:
                return value.decode("latin-1")
        return None


@dataclass
class RawResponse:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    # runs once the reply has been written (an agent's work that starts after it answered)
    after: Callable[[], None] | None = None


Handler = Callable[[RawRequest], RawResponse]


class _BadRequest(Exception):
    pass


def _read_head(rfile) -> bytes | None:
    """The request line and headers up to and including the blank line; None on a cleanly closed socket."""
    lines: list[bytes] = []
    size = 0
    while True:
        line = rfile.readline(max_head_bytes + 1)
        if not line:
            if lines:
                raise _BadRequest("connection closed inside the request head")
            return None
        if not lines and line in (b"\r\n", b"\n"):
            continue  # RFC 9112 §2.2: ignore empty lines before the request line
        lines.append(line)
        size += len(line)
        if size > max_head_bytes:
            raise _BadRequest("request head too large")
        if line in (b"\r\n", b"\n"):
            return b"".join(lines)


def _parse_head(head: bytes) -> tuple[str, str, str, list[tuple[bytes, bytes]]]:
    lines = head.split(b"\n")
    parts = lines[0].rstrip(b"\r").split(b" ")
    if len(parts) != 3:
        raise _BadRequest("malformed request line")
    method, target, version = (p.decode("latin-1") for p in parts)
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        line = line.rstrip(b"\r")
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise _BadRequest("malformed header line")
        headers.append((name, value.strip(b" \t")))
    return method, target, version, headers


def _read_chunked(rfile) -> bytes:
    chunks: list[bytes] = []
    while True:
        size_line = rfile.readline(1024)
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise _BadRequest("malformed chunk size") from exc
        if size == 0:
            while rfile.readline(max_head_bytes) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        chunks.append(rfile.read(size))
        rfile.readline(3)


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


class _Connection(socketserver.StreamRequestHandler):
    server: RawHttpServer

    def handle(self) -> None:
        self.connection.settimeout(idle_timeout_s)
        self.server.track(self.connection, True)
        try:
            while self._one_request():
                pass
        except (OSError, _BadRequest):
            pass
        finally:
            self.server.track(self.connection, False)

    def _one_request(self) -> bool:
        try:
            head = _read_head(self.rfile)
            if head is None:
                return False
            method, target, version, headers = _parse_head(head)
            if _header(headers, b"transfer-encoding") is not None:
                body = _read_chunked(self.rfile)
            else:
                length = _header(headers, b"content-length")
                body = self.rfile.read(int(length)) if length else b""
        except (_BadRequest, ValueError):
            self._write(RawResponse(400, b"bad request"), close=True)
            return False
        request = RawRequest(method, target, version, head, headers, body)
        response = self.server.handler(request)
        connection = (_header(headers, b"connection") or b"").lower()
        close = connection == b"close" or (version == "HTTP/1.0" and connection != b"keep-alive")
        self._write(response, close)
        if response.after is not None:
            response.after()
        return not close

    def _write(self, response: RawResponse, close: bool) -> None:
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = "Unknown"
        lines = [f"HTTP/1.1 {response.status} {reason}"]
        lines += [f"{k}: {v}" for k, v in response.headers]
        lines.append(f"Content-Length: {len(response.body)}")
        if close:
            lines.append("Connection: close")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body)
        self.wfile.flush()


class RawHttpServer(socketserver.ThreadingTCPServer):
    """Serves `handler` on 127.0.0.1:<free port> from a background thread; `close()` drops every connection."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, handler: Handler):
        self.handler = handler
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Connection)
        self.port: int = self.server_address[1]
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"raw-http-{self.port}", daemon=True)
        self._thread.start()

    def track(self, conn: socket.socket, is_open: bool) -> None:
        with self._open_lock:
            (self._open.add if is_open else self._open.discard)(conn)

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        with self._open_lock:
            for conn in list(self._open):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self._thread.join(5)
