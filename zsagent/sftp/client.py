"""File operations of SFTP v3 (and OpenSSH's extensions) over one SftpChannel.

Paths are remote POSIX paths as text (sent as UTF-8). Every refused request raises an SftpStatusError
subclass naming the operation, the path and the server (RemoteNoSuchFile, RemotePermissionDenied,
RemoteFailure, RemoteUnsupported); a broken session raises ConnectionLost.
"""

from __future__ import annotations

from collections.abc import Sequence

from zsagent.sftp import protocol as p
from zsagent.sftp.channel import SftpChannel
from zsagent.sftp.errors import RemoteNoSuchFile, SftpProtocolError, status_error
from zsagent.sftp.settings import SftpSettings


class SftpClient:
    """A connected SFTP session. Thread-safe; ``write`` is pipelined (see SftpChannel)."""

    def __init__(self, settings: SftpSettings, argv: Sequence[str] | None = None) -> None:
        self.settings = settings
        self.target = settings.target
        self.channel = SftpChannel(settings, argv)
        self.limits: p.Limits | None = None

    @classmethod
    def connect(cls, settings: SftpSettings) -> SftpClient:
        client = cls(settings)
        client.start()
        return client

    def start(self) -> None:
        self.channel.start()
        if p.EXT_LIMITS in self.channel.extensions:
            try:
                kind, reader = self.channel.request(p.FXP_EXTENDED, [p.string(p.EXT_LIMITS)], "limits")
                if kind == p.FXP_EXTENDED_REPLY:
                    self.limits = p.parse_limits(reader)
            except p.ProtocolError:
                self.limits = None

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> SftpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what the server offers ---------------------------------------------------------------------

    @property
    def extensions(self) -> dict[str, bytes]:
        return self.channel.extensions

    def offers(self, extension: str) -> bool:
        return extension in self.channel.extensions

    @property
    def write_bytes(self) -> int:
        """Data bytes per WRITE: the configured size, capped by the server's limits@openssh.com."""
        size = self.settings.request_bytes
        if self.limits and self.limits.max_write_bytes:
            size = min(size, self.limits.max_write_bytes)
        return size

    # -- plumbing -----------------------------------------------------------------------------------

    def _status(self, kind: int, reader: p.Reader, op: str, path: str) -> None:
        """Expect SSH_FX_OK."""
        if kind != p.FXP_STATUS:
            raise SftpProtocolError(f"{op} {path}: expected a status reply, got packet type {kind}",
                                    self.target)
        status = p.parse_status(reader)
        if status.code != p.FX_OK:
            raise status_error(op, path, status, self.target)

    def _expect(self, kind: int, reader: p.Reader, wanted: int, op: str, path: str) -> p.Reader:
        if kind == p.FXP_STATUS:
            status = p.parse_status(reader)
            raise status_error(op, path, status, self.target)
        if kind != wanted:
            raise SftpProtocolError(f"{op} {path}: expected packet type {wanted}, got {kind}", self.target)
        return reader

    def _simple(self, kind: int, op: str, path: str, *fields: bytes, patient: bool = False) -> None:
        k, reader = self.channel.request(kind, fields, op, path, patient)
        self._status(k, reader, op, path)

    # -- operations ---------------------------------------------------------------------------------

    def stat(self, path: str) -> p.Attrs:
        kind, reader = self.channel.request(p.FXP_STAT, [p.string(path)], "STAT", path)
        return self._expect(kind, reader, p.FXP_ATTRS, "STAT", path).attrs()

    def lstat(self, path: str) -> p.Attrs:
        kind, reader = self.channel.request(p.FXP_LSTAT, [p.string(path)], "LSTAT", path)
        return self._expect(kind, reader, p.FXP_ATTRS, "LSTAT", path).attrs()

    def exists(self, path: str) -> bool:
        """Whether anything (even a dangling symlink) has this name."""
        try:
            self.lstat(path)
        except RemoteNoSuchFile:
            return False
        return True

    def realpath(self, path: str) -> str:
        kind, reader = self.channel.request(p.FXP_REALPATH, [p.string(path)], "REALPATH", path)
        names = p.parse_name(self._expect(kind, reader, p.FXP_NAME, "REALPATH", path))
        if len(names) != 1:
            raise SftpProtocolError(f"REALPATH {path}: {len(names)} names in the reply", self.target)
        return names[0][0]

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        self._simple(p.FXP_MKDIR, "MKDIR", path, p.string(path), p.Attrs(permissions=mode).encode())

    def rmdir(self, path: str) -> None:
        self._simple(p.FXP_RMDIR, "RMDIR", path, p.string(path))

    def remove(self, path: str) -> None:
        self._simple(p.FXP_REMOVE, "REMOVE", path, p.string(path))

    def rename(self, old: str, new: str) -> None:
        """SSH_FXP_RENAME: refuses to replace an existing ``new`` (the draft says so; OpenSSH does it
        race-free for regular files with link() + unlink())."""
        self._simple(p.FXP_RENAME, "RENAME", f"{old} -> {new}", p.string(old), p.string(new))

    def posix_rename(self, old: str, new: str) -> None:
        """posix-rename@openssh.com: rename(2), atomic, and it REPLACES an existing ``new``."""
        self._simple(p.FXP_EXTENDED, "posix-rename", f"{old} -> {new}", p.string(p.EXT_POSIX_RENAME),
                     p.string(old), p.string(new))

    def open(self, path: str, flags: int, mode: int = 0o644) -> bytes:
        """SSH_FXP_OPEN with FXF_* ``flags``; returns the handle. ``mode`` applies when it creates."""
        attrs = p.Attrs(permissions=mode) if flags & p.FXF_CREAT else p.Attrs()
        kind, reader = self.channel.request(p.FXP_OPEN, [p.string(path), p.u32(flags), attrs.encode()],
                                            "OPEN", path)
        return self._expect(kind, reader, p.FXP_HANDLE, "OPEN", path).string()

    def close_handle(self, handle: bytes, path: str) -> None:
        self._simple(p.FXP_CLOSE, "CLOSE", path, p.string(handle), patient=True)

    def fstat(self, handle: bytes, path: str) -> p.Attrs:
        kind, reader = self.channel.request(p.FXP_FSTAT, [p.string(handle)], "FSTAT", path)
        return self._expect(kind, reader, p.FXP_ATTRS, "FSTAT", path).attrs()

    def fsetstat(self, handle: bytes, attrs: p.Attrs, path: str) -> None:
        self._simple(p.FXP_FSETSTAT, "FSETSTAT", path, p.string(handle), attrs.encode(), patient=True)

    def setstat(self, path: str, attrs: p.Attrs) -> None:
        self._simple(p.FXP_SETSTAT, "SETSTAT", path, p.string(path), attrs.encode(), patient=True)

    def fsync(self, handle: bytes, path: str) -> bool:
        """fsync@openssh.com on an open handle; False (and nothing done) when the server lacks it."""
        if not self.offers(p.EXT_FSYNC):
            return False
        self._simple(p.FXP_EXTENDED, "fsync", path, p.string(p.EXT_FSYNC), p.string(handle), patient=True)
        return True

    def write(self, handle: bytes, offset: int, data: bytes | memoryview, path: str) -> None:
        """Pipelined WRITEs of ``data`` at ``offset``, cut into requests of ``write_bytes``.

        Returns once everything is handed to ssh; a refusal surfaces in a later write or ``drain()``.
        """
        view = memoryview(data)
        step = self.write_bytes
        for start in range(0, len(view), step):
            self.channel.write(handle, offset + start, view[start:start + step], path)

    def drain(self) -> None:
        """Wait for the answers to every WRITE; raise the first failure."""
        self.channel.drain()
