"""Passing a request to ZStack's own agent byte for byte, and its answer back.

The request line, every header (names' case and order kept, ``taskuuid``/``callbackurl``/``X-Resource-UUID``
included, nothing added) and the body (streamed; a chunked body keeps its framing) go to the upstream
agent unchanged, so that it answers the management node (MN) directly: its callback goes to the
``callbackurl`` it reads. Its answer (status, headers, body) comes back unchanged. When the agent cannot
be reached the MN gets a 502, which it treats like a refused connection to an agent (SYS.1015,
[zs] RESTFacadeImpl.java l.447-452): for Ceph the MN tries the next mon, as with a dead agent.
"""

from __future__ import annotations

import http.client
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

COPY_BYTES = 64 * 1024
_NO_BODY_STATUS = {204, 304}


@dataclass
class RawRequest:
    """A request as it arrived: ``target`` is the request line's path (and query); ``headers`` the raw
    (name, value) pairs in order; the body is either ``body`` (read already) or still in ``rfile``."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    rfile: BinaryIO
    body: bytes | None = None

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        return next((v for k, v in self.headers if k.lower() == wanted), None)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def chunked(self) -> bool:
        return "chunked" in (self.header("Transfer-Encoding") or "").lower()

    def read_body(self, limit_bytes: int) -> bytes:
        """Read (and keep) the whole body; ValueError past ``limit_bytes``."""
        if self.body is None:
            self.body = b"".join(self._raw_body(decode=True, limit_bytes=limit_bytes))
        return self.body

    def _raw_body(self, decode: bool, limit_bytes: int | None = None) -> Iterable[bytes]:
        """The body in pieces: decoded (chunk framing removed) or as it came on the wire."""
        total = 0
        if self.chunked:
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if not decode:
                    yield line
                if size == 0:
                    while True:  # trailers, up to the empty line
                        trailer = self.rfile.readline(65537)
                        if not decode:
                            yield trailer
                        if trailer in (b"\r\n", b"\n", b""):
                            return
                data = self.rfile.read(size + 2)
                total += size
                if limit_bytes is not None and total > limit_bytes:
                    raise ValueError(f"the body is larger than {limit_bytes} bytes")
                yield data[:size] if decode else data
        length = int(self.header("Content-Length") or 0)
        if limit_bytes is not None and length > limit_bytes:
            raise ValueError(f"the body is larger than {limit_bytes} bytes")
        while length > 0:
            piece = self.rfile.read(min(COPY_BYTES, length))
            if not piece:
                raise ConnectionError("the client closed the connection within the body")
            length -= len(piece)
            yield piece


class Upstream:
    """ZStack's agent at ``url`` (``http://host:port``)."""

    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        self.url = url
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.https = parts.scheme == "https"
        self.timeout_s = timeout_s

    def connection(self, timeout_s: float | None = None) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=timeout_s or self.timeout_s)

    def forward(self, request: RawRequest, wfile: BinaryIO) -> bool:
        """Send ``request`` on and write the answer to ``wfile``; returns whether the client connection
        may stay open."""
        conn = self.connection()
        try:
            try:
                conn.putrequest(request.method, request.target, skip_host=True, skip_accept_encoding=True)
                for name, value in request.headers:
                    conn.putheader(name, value)
                conn.endheaders()
                if request.body is not None:
                    if request.chunked:  # already decoded: frame it again, as one chunk
                        if request.body:
                            conn.send(b"%x\r\n%s\r\n" % (len(request.body), request.body))
                        conn.send(b"0\r\n\r\n")
                    else:
                        conn.send(request.body)
                else:
                    for piece in request._raw_body(decode=False):
                        conn.send(piece)
                answer = conn.getresponse()
            except (OSError, http.client.HTTPException, ValueError) as e:  # ValueError: a header http.client refuses
                self._unreachable(wfile, e)
                return False
            return self._relay(request, answer, wfile)
        finally:
            conn.close()

    def _unreachable(self, wfile: BinaryIO, error: Exception) -> None:
        reason = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        text = (f"zsagent front: ZStack's agent at {self.url} cannot be reached ({reason}); "
                "check that it runs and that [front] upstream_url points at it").encode()
        log.warning("upstream %s unreachable: %s", self.url, reason)
        wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(text), text))
        wfile.flush()

    @staticmethod
    def _relay(request: RawRequest, answer: http.client.HTTPResponse, wfile: BinaryIO) -> bool:
        version = "HTTP/1.0" if answer.version == 10 else "HTTP/1.1"
        head = [f"{version} {answer.status} {answer.reason}\r\n".encode("latin-1")]
        headers = answer.msg.items()
        head += [f"{name}: {value}\r\n".encode("latin-1") for name, value in headers]
        head.append(b"\r\n")
        wfile.write(b"".join(head))
        lower = {name.lower(): value for name, value in headers}
        chunked = "chunked" in lower.get("transfer-encoding", "").lower()
        keep_open = "close" not in lower.get("connection", "").lower() and answer.version != 10
        if request.method == "HEAD" or answer.status in _NO_BODY_STATUS or answer.status < 200:
            wfile.flush()
            return keep_open
        try:
            if chunked:  # http.client removes the framing: frame the same bytes again
                while piece := answer.read1(COPY_BYTES):
                    wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                wfile.write(b"0\r\n\r\n")
            else:
                while piece := answer.read(COPY_BYTES):
                    wfile.write(piece)
                if "content-length" not in lower:
                    keep_open = False  # the end of the body is the end of the connection
        except (TimeoutError, OSError, http.client.HTTPException) as e:
            log.warning("upstream answer to %s %s broke off: %s", request.method, request.path, e)
            keep_open = False
        wfile.flush()
        return keep_open
