"""SFTP version 3 on the wire (draft-ietf-secsh-filexfer-02) plus the OpenSSH extensions we use.

Every packet is ``uint32 length`` followed by ``length`` bytes: ``byte type`` and a type-specific payload.
Integers are big-endian; a ``string`` is ``uint32 length`` + bytes. Requests after INIT carry a ``uint32
request id`` that the server echoes in its reply. This module only encodes and decodes; it does no I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

PROTOCOL_VERSION = 3

# Packet types (section 3 of the draft).
FXP_INIT = 1
FXP_VERSION = 2
FXP_OPEN = 3
FXP_CLOSE = 4
FXP_READ = 5
FXP_WRITE = 6
FXP_LSTAT = 7
FXP_FSTAT = 8
FXP_SETSTAT = 9
FXP_FSETSTAT = 10
FXP_OPENDIR = 11
FXP_READDIR = 12
FXP_REMOVE = 13
FXP_MKDIR = 14
FXP_RMDIR = 15
FXP_REALPATH = 16
FXP_STAT = 17
FXP_RENAME = 18
FXP_STATUS = 101
FXP_HANDLE = 102
FXP_DATA = 103
FXP_NAME = 104
FXP_ATTRS = 105
FXP_EXTENDED = 200
FXP_EXTENDED_REPLY = 201

# OPEN pflags.
FXF_READ = 0x01
FXF_WRITE = 0x02
FXF_APPEND = 0x04
FXF_CREAT = 0x08
FXF_TRUNC = 0x10
FXF_EXCL = 0x20

# ATTRS flags.
ATTR_SIZE = 0x01
ATTR_UIDGID = 0x02
ATTR_PERMISSIONS = 0x04
ATTR_ACMODTIME = 0x08
ATTR_EXTENDED = 0x80000000

# STATUS codes.
FX_OK = 0
FX_EOF = 1
FX_NO_SUCH_FILE = 2
FX_PERMISSION_DENIED = 3
FX_FAILURE = 4
FX_BAD_MESSAGE = 5
FX_NO_CONNECTION = 6
FX_CONNECTION_LOST = 7
FX_OP_UNSUPPORTED = 8

STATUS_NAMES = {
    FX_OK: "SSH_FX_OK",
    FX_EOF: "SSH_FX_EOF",
    FX_NO_SUCH_FILE: "SSH_FX_NO_SUCH_FILE",
    FX_PERMISSION_DENIED: "SSH_FX_PERMISSION_DENIED",
    FX_FAILURE: "SSH_FX_FAILURE",
    FX_BAD_MESSAGE: "SSH_FX_BAD_MESSAGE",
    FX_NO_CONNECTION: "SSH_FX_NO_CONNECTION",
    FX_CONNECTION_LOST: "SSH_FX_CONNECTION_LOST",
    FX_OP_UNSUPPORTED: "SSH_FX_OP_UNSUPPORTED",
}

# OpenSSH extensions (OpenSSH's PROTOCOL file, section 4), announced in VERSION as name -> version string.
EXT_POSIX_RENAME = "posix-rename@openssh.com"
EXT_FSYNC = "fsync@openssh.com"
EXT_LIMITS = "limits@openssh.com"

MAX_PACKET_BYTES = 256 * 1024
"""OpenSSH's sftp-server drops the connection on a packet longer than this (SFTP_MAX_MSG_LENGTH)."""

MAX_WRITE_DATA_BYTES = 261120
"""Largest WRITE payload OpenSSH accepts: 256 KiB minus 1 KiB of headroom (what its limits@ reply says)."""

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HEAD = struct.Struct(">IBI")  # length, type, request id


class ProtocolError(ValueError):
    """A packet that does not parse as SFTP v3."""


def u32(value: int) -> bytes:
    return _U32.pack(value)


def u64(value: int) -> bytes:
    return _U64.pack(value)


def string(value: bytes | str) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return _U32.pack(len(raw)) + raw


def packet(kind: int, request_id: int, *fields: bytes) -> bytes:
    """A whole request packet: length, type, request id, then the already encoded fields."""
    body = b"".join(fields)
    return _HEAD.pack(5 + len(body), kind, request_id) + body


def init_packet() -> bytes:
    """SSH_FXP_INIT: the only packet without a request id."""
    return u32(5) + bytes([FXP_INIT]) + u32(PROTOCOL_VERSION)


def write_header(request_id: int, handle: bytes, offset: int, data_len: int) -> bytes:
    """Everything of an SSH_FXP_WRITE packet before its data, so the data itself is never copied."""
    return (_HEAD.pack(1 + 4 + 4 + len(handle) + 8 + 4 + data_len, FXP_WRITE, request_id)
            + string(handle) + _U64.pack(offset) + _U32.pack(data_len))


@dataclass(frozen=True)
class Attrs:
    """File attributes as SFTP v3 carries them; None where the server did not send the field.

    size: bytes; uid/gid: numeric ids; permissions: st_mode bits (type and mode);
    atime/mtime: seconds since the epoch; extended: name -> data pairs.
    """

    size: int | None = None
    uid: int | None = None
    gid: int | None = None
    permissions: int | None = None
    atime: int | None = None
    mtime: int | None = None
    extended: dict[bytes, bytes] = field(default_factory=dict)

    @property
    def is_dir(self) -> bool:
        return self.permissions is not None and (self.permissions & 0o170000) == 0o040000

    @property
    def is_regular(self) -> bool:
        return self.permissions is not None and (self.permissions & 0o170000) == 0o100000

    def encode(self) -> bytes:
        flags, parts = 0, []
        if self.size is not None:
            flags |= ATTR_SIZE
            parts.append(u64(self.size))
        if self.uid is not None or self.gid is not None:
            if self.uid is None or self.gid is None:
                raise ValueError("uid and gid go together")
            flags |= ATTR_UIDGID
            parts += [u32(self.uid), u32(self.gid)]
        if self.permissions is not None:
            flags |= ATTR_PERMISSIONS
            parts.append(u32(self.permissions))
        if self.atime is not None or self.mtime is not None:
            if self.atime is None or self.mtime is None:
                raise ValueError("atime and mtime go together")
            flags |= ATTR_ACMODTIME
            parts += [u32(self.atime), u32(self.mtime)]
        if self.extended:
            flags |= ATTR_EXTENDED
            parts.append(u32(len(self.extended)))
            for name, data in self.extended.items():
                parts += [string(name), string(data)]
        return u32(flags) + b"".join(parts)


class Reader:
    """Reads fields front to back from one packet body; raises ProtocolError when it runs short."""

    def __init__(self, data: bytes | memoryview) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def _take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise ProtocolError(f"packet too short: wanted {n} bytes at {self.pos} of {len(self.data)}")
        piece = self.data[self.pos:self.pos + n]
        self.pos += n
        return piece

    def byte(self) -> int:
        return self._take(1)[0]

    def u32(self) -> int:
        return _U32.unpack(self._take(4))[0]

    def u64(self) -> int:
        return _U64.unpack(self._take(8))[0]

    def string(self) -> bytes:
        return bytes(self._take(self.u32()))

    def text(self) -> str:
        return self.string().decode("utf-8", errors="replace")

    def attrs(self) -> Attrs:
        flags = self.u32()
        size = self.u64() if flags & ATTR_SIZE else None
        uid = gid = atime = mtime = permissions = None
        if flags & ATTR_UIDGID:
            uid, gid = self.u32(), self.u32()
        if flags & ATTR_PERMISSIONS:
            permissions = self.u32()
        if flags & ATTR_ACMODTIME:
            atime, mtime = self.u32(), self.u32()
        extended = {}
        if flags & ATTR_EXTENDED:
            for _ in range(self.u32()):
                name = self.string()
                extended[name] = self.string()
        return Attrs(size, uid, gid, permissions, atime, mtime, extended)

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos


def parse_version(body: bytes | memoryview) -> tuple[int, dict[str, bytes]]:
    """SSH_FXP_VERSION (without its length): (version, {extension name: extension data})."""
    reader = Reader(body)
    if reader.byte() != FXP_VERSION:
        raise ProtocolError("the server's first packet is not SSH_FXP_VERSION")
    version = reader.u32()
    extensions = {}
    while reader.remaining:
        name = reader.text()
        extensions[name] = reader.string()
    return version, extensions


@dataclass(frozen=True)
class Status:
    """An SSH_FXP_STATUS reply: code (FX_*), message from the server (may be empty)."""

    code: int
    message: str

    @property
    def name(self) -> str:
        return STATUS_NAMES.get(self.code, f"status {self.code}")


@dataclass(frozen=True)
class Limits:
    """The limits@openssh.com reply, in bytes (0 = no limit announced)."""

    max_packet_bytes: int
    max_read_bytes: int
    max_write_bytes: int
    max_open_handles: int


def parse_limits(reader: Reader) -> Limits:
    return Limits(reader.u64(), reader.u64(), reader.u64(), reader.u64())


def parse_status(reader: Reader) -> Status:
    code = reader.u32()
    message = reader.text() if reader.remaining >= 4 else ""  # some old servers stop after the code
    return Status(code, message)


def parse_name(reader: Reader) -> list[tuple[str, Attrs]]:
    """SSH_FXP_NAME payload after the request id: [(filename, attrs)] (the long name is dropped)."""
    names = []
    for _ in range(reader.u32()):
        filename = reader.text()
        reader.string()  # longname, for humans
        names.append((filename, reader.attrs()))
    return names
