"""One SFTP session: an ``ssh -s sftp`` process and the request/reply bookkeeping over a socketpair.

    caller threads ──(send lock)──► ssh stdin  ═══ ssh (crypto in C) ═══► sshd / sftp-server
    reader thread  ◄── replies ───  ssh stdout ◄══                    ◄═══
    stderr thread  ◄── complaints ─ ssh stderr (kept for error messages)

Requests are registered under their id before they are sent; the reader thread matches each reply to
its request. WRITEs are fire-and-forget for the caller (at most ``requests_in_flight`` unanswered; the
first failed one is raised by the next write or by ``drain()``); every other request waits for its
reply. A WRITE sent with ``keep=True`` holds its data until the server answers it, so that when the
session is lost the writes it never confirmed can be sent again on another session (``lost_writes``).
When the server stays silent for ``idle_timeout_s`` while requests are outstanding (ten times that for
fsync, close and truncation), or ssh exits, the session fails: every waiter gets the same
ConnectionLost, naming ssh's exit status and its last words on stderr.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import socket
import subprocess
import threading
import time
from collections.abc import Sequence

from zsagent import faults
from zsagent.sftp import protocol as p
from zsagent.sftp.errors import (
    ConnectionLost,
    IdleTimeout,
    SftpError,
    SftpProtocolError,
    SshConnectError,
    status_error,
)
from zsagent.sftp.settings import SftpSettings
from zsagent.sftp.ssh_command import describe_exit, diagnose, sftp_argv

log = logging.getLogger(__name__)

SOCKET_SNDBUF_BYTES = 1024 * 1024
"""Send buffer of our end of the socketpair that is ssh's stdin and stdout (net.core.wmem_max caps it).

A Unix socket wakes a blocked writer only when a quarter of its buffer is in use again; a pipe wakes it
for every page ssh reads. ssh reads its stdin 32 KiB at a time, so a socketpair saves tens of
thousands of wakeups per GiB (about 0.3 CPU-s/GiB on the project machine)."""

MAX_REPLY_BYTES = 1024 * 1024
"""A reply longer than this is taken for garbage (we never read file data)."""

READ_BYTES = 64 * 1024

SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)  # Linux; not exported by every Python build

PATIENT_FACTOR = 10
"""fsync, close and truncation may take long on a busy server disk: they get this many idle timeouts."""


class _Request:
    """An outstanding request. ``patient``: gets PATIENT_FACTOR times the idle timeout (fsync, close)."""

    __slots__ = ("op", "path", "patient", "event", "kind", "body")

    def __init__(self, op: str, path: str, patient: bool) -> None:
        self.op = op
        self.path = path
        self.patient = patient
        self.event = threading.Event()
        self.kind = 0
        self.body: bytes | None = None


class _Write:
    """An outstanding WRITE: where it went, for the error message; ``data`` when kept for a resend."""

    __slots__ = ("path", "offset", "length", "data")
    patient = False

    def __init__(self, path: str, offset: int, length: int, data: memoryview | bytes | None = None) -> None:
        self.path = path
        self.offset = offset
        self.length = length
        self.data = data


class SftpChannel:
    """One ssh process speaking SFTP v3. Thread-safe: any thread may send requests.

    ``extensions``: what the server announced in SSH_FXP_VERSION (name -> data).
    ``bytes_acked``: WRITE data bytes the server confirmed; ``acked_end``: the highest end offset
    (offset + length) of a confirmed WRITE.
    """

    def __init__(self, settings: SftpSettings, argv: Sequence[str] | None = None) -> None:
        self.settings = settings
        self.target = settings.target
        self.argv = list(argv) if argv is not None else sftp_argv(settings)
        self.extensions: dict[str, bytes] = {}
        self.version: int | None = None
        self.bytes_acked = 0
        self.acked_end = 0
        self._lost: list[_Write] = []
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._fd = -1
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._send_lock = threading.Lock()
        self._pending: dict[int, _Request | _Write] = {}
        self._next_id = 1
        self._patient = 0
        self._busy_since = 0.0
        self._last_rx = 0.0
        self._writes_in_flight = 0
        self._write_error: SftpError | None = None
        self._error: SftpError | None = None
        self._closing = False
        self._versioned = threading.Event()
        self._stderr: collections.deque[str] = collections.deque(maxlen=80)
        self._reader: threading.Thread | None = None
        self._stderr_reader: threading.Thread | None = None

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Run ssh and exchange INIT/VERSION. Raises SshConnectError (HostKeyUnknown, ...) on failure."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        _grow_send_buffer(ours, SOCKET_SNDBUF_BYTES)
        try:
            self._proc = subprocess.Popen(self.argv, stdin=theirs.fileno(), stdout=theirs.fileno(),
                                          stderr=subprocess.PIPE, bufsize=0, start_new_session=True)
        except OSError as e:
            ours.close()
            raise SshConnectError(f"cannot run {self.argv[0]}: {e}", self.target) from e
        finally:
            theirs.close()
        self._sock = ours
        self._fd = ours.fileno()
        self._last_rx = time.monotonic()
        self._stderr_reader = threading.Thread(target=self._read_stderr, name="zsagent-ssh-stderr", daemon=True)
        self._stderr_reader.start()
        self._reader = threading.Thread(target=self._read_replies, name="zsagent-sftp-reader", daemon=True)
        self._reader.start()
        try:
            self._write_all([p.init_packet()])
        except OSError:
            pass  # ssh already gone: the reader reports why
        login_s = max(2 * self.settings.connect_timeout_s, self.settings.connect_timeout_s + 5)
        if not self._versioned.wait(login_s):
            self._fail(SshConnectError(f"no SFTP session with {self.target} after {login_s:.0f} s "
                                       "(login or subsystem start hangs)", self.target))
        if self._error is not None:
            self.close()
            raise self._error
        if self.version != p.PROTOCOL_VERSION:
            self.close()
            raise SshConnectError(f"{self.target} speaks SFTP version {self.version}, not 3", self.target)

    @property
    def pid(self) -> int | None:
        """The ssh process id (for diagnostics and failure tests)."""
        return self._proc.pid if self._proc else None

    @property
    def alive(self) -> bool:
        return self._error is None and self._proc is not None and self._proc.poll() is None

    @property
    def error(self) -> SftpError | None:
        """Why the session ended, when it ended abnormally."""
        return self._error

    def close(self, timeout_s: float = 10.0) -> None:
        """End the session: EOF to ssh, wait for it (kill after ``timeout_s``). Never raises."""
        with self._lock:
            self._closing = True
        proc = self._proc
        if proc is None:
            return
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_WR)  # EOF on ssh's stdin: it ends the session
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for thread in (self._reader, self._stderr_reader):
            if thread is not None and thread is not threading.current_thread():
                thread.join(5)
        with contextlib.suppress(OSError):
            proc.stderr.close()
        if self._sock is not None:
            with self._send_lock:  # never close the fd under a writer (ssh is gone: writers fail fast)
                self._sock.close()
        self._fail(ConnectionLost(f"SFTP session with {self.target} is closed", self.target), kill=False)

    def kill(self) -> None:
        """Kill ssh at once (the session then fails with ConnectionLost)."""
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(OSError):
                self._proc.kill()

    # -- sending ----------------------------------------------------------------------------------

    def _write_all(self, parts: list[bytes | memoryview]) -> None:
        """writev until every byte is in the socket (a blocking write may still return short)."""
        views = [memoryview(x) for x in parts]
        while views:
            n = os.writev(self._fd, views)
            while views and n >= len(views[0]):
                n -= len(views[0])
                views.pop(0)
            if n:
                views[0] = views[0][n:]

    def _register(self, req: _Request | _Write) -> int:
        """Give ``req`` an id and list it as outstanding (caller holds the send lock)."""
        with self._lock:
            if self._error is not None:
                raise self._error
            rid = self._next_id
            self._next_id = (rid + 1) & 0xFFFFFFFF or 1
            if not self._pending:
                self._busy_since = time.monotonic()
            self._pending[rid] = req
            if req.patient:
                self._patient += 1
            return rid

    def _sent_failed(self, error: OSError) -> SftpError:
        """A write into ssh's stdin failed: ssh is gone. Wait briefly for the reader's verdict."""
        self._reader_done(timeout_s=5)
        if self._error is None:
            self._fail(ConnectionLost(f"SFTP session with {self.target} lost: cannot write to ssh: {error}",
                                      self.target))
        assert self._error is not None
        return self._error

    def request(self, kind: int, fields: Sequence[bytes], op: str, path: str = "",
                patient: bool = False) -> tuple[int, p.Reader]:
        """Send one request and wait for its reply: (reply type, Reader positioned after the id)."""
        req = _Request(op, path, patient)
        body = b"".join(fields)
        with self._send_lock:
            rid = self._register(req)
            try:
                self._write_all([p.packet(kind, rid, body)])
            except OSError as e:
                raise self._sent_failed(e) from e
        if op == "RENAME":
            faults.hit("sftp-rename")  # sent, its answer not read: the server may or may not have done it
        req.event.wait()
        if req.body is None:
            assert self._error is not None
            raise self._error
        reader = p.Reader(req.body)
        reader.pos = 5
        return req.kind, reader

    def write(self, handle: bytes, offset: int, data: memoryview | bytes, path: str, keep: bool = False) -> None:
        """Send one WRITE of at most ``settings.request_bytes``; return without waiting for its answer.

        Blocks while ``requests_in_flight`` WRITEs are unanswered. Raises the session's error, or the
        first WRITE the server refused. ``keep``: hold a reference to ``data`` until the answer (the
        caller must not change it meanwhile), so that ``lost_writes()`` can return it if the session
        ends first. A write that raises is never among ``lost_writes()``: its caller still has it.
        """
        with self._cond:
            while (self._writes_in_flight >= self.settings.requests_in_flight and self._error is None
                   and self._write_error is None):
                self._cond.wait()
            if self._error is not None:
                raise self._error
            if self._write_error is not None:
                raise self._write_error
            self._writes_in_flight += 1
        req = _Write(path, offset, len(data), data if keep else None)
        with self._send_lock:
            try:
                rid = self._register(req)
            except SftpError:
                with self._cond:
                    self._writes_in_flight -= 1
                raise
            try:
                self._write_all([p.write_header(rid, handle, offset, len(data)), data])
            except OSError as e:
                error = self._sent_failed(e)
                with self._cond:  # the caller resends this one itself
                    self._pending.pop(rid, None)
                    if req in self._lost:
                        self._lost.remove(req)
                raise error from e

    def lost_writes(self) -> list[tuple[int, memoryview | bytes]]:
        """After the session failed: (offset, data) of every kept WRITE it sent and the server never
        answered, in offset order; each is returned once."""
        with self._cond:
            lost, self._lost = self._lost, []
        return sorted(((w.offset, w.data) for w in lost if w.data is not None), key=lambda item: item[0])

    @property
    def writes_in_flight(self) -> int:
        return self._writes_in_flight

    def drain(self) -> None:
        """Wait until every WRITE is answered; raise the session's error or the first refused WRITE."""
        with self._cond:
            while self._writes_in_flight and self._error is None and self._write_error is None:
                self._cond.wait()
            if self._write_error is not None:
                raise self._write_error
            if self._error is not None:
                raise self._error

    # -- receiving --------------------------------------------------------------------------------

    def _read_replies(self) -> None:
        fd = self._fd
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        tick_ms = int(min(1.0, self.settings.idle_timeout_s / 4) * 1000) or 1
        buf = bytearray()
        try:
            while True:
                if not poller.poll(tick_ms):
                    self._check_idle()
                    continue
                try:
                    chunk = os.read(fd, READ_BYTES)
                except ConnectionResetError:  # ssh exited with our bytes unread: an end like EOF
                    chunk = b""
                if not chunk:
                    break
                self._last_rx = time.monotonic()
                buf += chunk
                pos = 0
                while len(buf) - pos >= 4:
                    length = int.from_bytes(buf[pos:pos + 4], "big")
                    if not 5 <= length <= MAX_REPLY_BYTES:
                        raise p.ProtocolError(f"reply length {length} out of range")
                    if len(buf) - pos - 4 < length:
                        break
                    self._dispatch(bytes(buf[pos + 4:pos + 4 + length]))
                    pos += 4 + length
                del buf[:pos]
        except (p.ProtocolError, ValueError) as e:
            self._fail(SftpProtocolError(f"{self.target} sent a malformed SFTP reply: {e}", self.target))
        except OSError as e:
            self._fail(ConnectionLost(f"reading from ssh for {self.target} failed: {e}", self.target))
        finally:
            self._on_eof()

    def _dispatch(self, body: bytes) -> None:
        if self.version is None:
            self.version, self.extensions = p.parse_version(body)
            self._versioned.set()
            return
        if len(body) < 5:
            raise p.ProtocolError(f"reply of {len(body)} bytes")
        kind, rid = body[0], int.from_bytes(body[1:5], "big")
        with self._cond:
            req = self._pending.pop(rid, None)
            if req is None:
                raise p.ProtocolError(f"reply to unknown request id {rid}")
            if req.patient:
                self._patient -= 1
            if not self._pending:
                self._busy_since = 0.0
            if isinstance(req, _Write):
                if kind != p.FXP_STATUS:
                    raise p.ProtocolError(f"WRITE answered with packet type {kind}")
                self._writes_in_flight -= 1
                status = p.parse_status(_after_id(body))
                if status.code == p.FX_OK:
                    self.bytes_acked += req.length
                    self.acked_end = max(self.acked_end, req.offset + req.length)
                elif self._write_error is None:
                    where = f"{req.path} (offset {req.offset}, {req.length} bytes)"
                    self._write_error = status_error("WRITE", where, status, self.target)
                self._cond.notify_all()
                return
        req.kind, req.body = kind, body
        req.event.set()

    def _check_idle(self) -> None:
        with self._lock:
            if not self._pending or self._closing or self._error is not None:
                return
            silent_s = time.monotonic() - max(self._last_rx, self._busy_since)
            outstanding = len(self._pending)
            limit_s = self.settings.idle_timeout_s * (PATIENT_FACTOR if self._patient else 1)
        if silent_s > limit_s:
            self._fail(IdleTimeout(
                f"SFTP session with {self.target} timed out: no answer for {silent_s:.0f} s to "
                f"{outstanding} outstanding request(s) (limit {limit_s:g} s)", self.target))

    def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        with contextlib.suppress(OSError, ValueError):
            for raw in self._proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                if line:
                    self._stderr.append(line)
                    log.debug("ssh %s: %s", self.target, line)

    def stderr_text(self) -> str:
        return "\n".join(self._stderr)

    def _reader_done(self, timeout_s: float) -> None:
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout_s)

    def _on_eof(self) -> None:
        """ssh's stdout ended (or the reader failed): reap ssh and fail whatever is still waiting."""
        assert self._proc is not None
        try:
            returncode = self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            returncode = self._proc.wait()
        if self._stderr_reader is not None:
            self._stderr_reader.join(2)
        stderr = self.stderr_text()
        if self.version is None:
            error: SftpError = diagnose(stderr, returncode, self.settings)
        elif self._closing:
            error = ConnectionLost(f"SFTP session with {self.target} is closed", self.target)
        else:
            error = ConnectionLost(f"SFTP session with {self.target} lost: {describe_exit(returncode, stderr)}",
                                   self.target)
        self._fail(error, kill=False)
        self._versioned.set()

    def _fail(self, error: SftpError, kill: bool = True) -> None:
        """Record the first fatal error, stop ssh, and wake every waiter."""
        with self._cond:
            if self._error is None:
                self._error = error
            waiting = [r for r in self._pending.values() if isinstance(r, _Request)]
            self._lost.extend(r for r in self._pending.values() if isinstance(r, _Write) and r.data is not None)
            self._pending.clear()
            self._patient = 0
            self._writes_in_flight = 0
            self._cond.notify_all()
        for req in waiting:
            req.event.set()
        if kill:
            self.kill()
        self._versioned.set()


def _grow_send_buffer(sock: socket.socket, size: int) -> None:
    """Ask for a ``size`` byte send buffer; past net.core.wmem_max only with CAP_NET_ADMIN (best effort)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < size:  # Linux reports twice the value
            sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, size)


def _after_id(body: bytes) -> p.Reader:
    reader = p.Reader(body)
    reader.pos = 5
    return reader
