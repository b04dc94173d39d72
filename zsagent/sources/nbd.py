"""A Source over an NBD export on a unix socket, whoever serves it (qemu-nbd, QEMU's pull-mode backup).

Each reading thread gets a libnbd handle of its own, so reads run in parallel. The size and the allocation
map come from one main handle; the map from NBD block status (the ``base:allocation`` context), or, when
the server offers no block status, one data extent over the whole export. ``close()`` disconnects every
handle, and no handle connects after it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from urllib.parse import quote

from zsagent.copy.extents import Extent, Kind, coalesce
from zsagent.sources.base import QemuInput

# NBD servers may refuse block status requests much larger than this; we loop anyway.
STATUS_REQUEST_BYTES = 1 << 30


def nbd_unix_url(socket_path: str, export_name: str = "") -> str:
    """The NBD URI of ``export_name`` on ``socket_path``, as qemu (and libnbd's ``connect_uri``) take it."""
    return f"nbd+unix:///{quote(export_name, safe='')}?socket={quote(socket_path)}"


class NbdSource:
    """Read export ``export_name`` ("": the server's default export) served on the unix socket
    ``socket_path``. The export is only read.

    size: the export's size in bytes. has_block_status: the server offers ``base:allocation`` (else
    ``extents()`` reports all of it as data). qemu_input: ("raw", the export's ``nbd+unix`` URL).
    Connection errors are libnbd's ``nbd.Error``.
    """

    def __init__(self, socket_path: str | os.PathLike[str], export_name: str = "") -> None:
        import nbd  # Debian's python3-libnbd; imported here so that the other sources work without it

        self._nbd = nbd
        self.socket_path = os.fspath(socket_path)
        self.export_name = export_name
        self.qemu_input: QemuInput | None = ("raw", nbd_unix_url(self.socket_path, export_name))
        self._handles: list = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._main = self._connect()
            self.size: int = self._main.get_size()
            self.has_block_status = bool(self._main.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION))
        except BaseException:
            self.close()
            raise

    def _connect(self):
        if self._closed:
            raise OSError(f"NBD source {self.socket_path} is closed")
        handle = self._nbd.NBD()
        handle.add_meta_context(self._nbd.CONTEXT_BASE_ALLOCATION)
        handle.set_export_name(self.export_name)
        handle.connect_unix(self.socket_path)
        with self._lock:
            if self._closed:  # closed while we connected
                with contextlib.suppress(Exception):
                    handle.shutdown()
                raise OSError(f"NBD source {self.socket_path} is closed")
            self._handles.append(handle)
        return handle

    def extents(self) -> Iterator[Extent]:
        if not self.has_block_status:
            return iter([Extent(0, self.size, Kind.DATA)] if self.size else [])
        return block_status_extents(self._nbd, self._main, self.size)

    def read(self, offset: int, length: int) -> bytes:
        handle = getattr(self._local, "handle", None)
        if handle is None:
            handle = self._local.handle = self._connect()
        return handle.pread(length, offset)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            handles, self._handles = self._handles, []
        for handle in handles:
            with contextlib.suppress(Exception):  # the server may be gone already
                handle.shutdown()


def nbd_kind(nbd_module, flags: int) -> Kind:
    """A block status entry's kind. A hole without the zero flag may read as anything, so it is data."""
    if not flags & nbd_module.STATE_ZERO:
        return Kind.DATA
    return Kind.HOLE if flags & nbd_module.STATE_HOLE else Kind.ZERO


def block_status_extents(nbd_module, handle, size: int) -> Iterator[Extent]:
    """Extents of ``[0, size)`` from block status on ``handle`` (connected with ``base:allocation``)."""
    found: list[Extent] = []
    offset = 0
    while offset < size:
        start = offset

        def on_status(_context: str, at: int, entries: list[int], _error) -> int:
            pos = at
            for length, flags in zip(entries[::2], entries[1::2], strict=True):
                length = min(length, size - pos)
                if length <= 0:
                    break
                found.append(Extent(pos, length, nbd_kind(nbd_module, flags)))
                pos += length
            return 0

        handle.block_status(min(STATUS_REQUEST_BYTES, size - start), start, on_status)
        reached = found[-1].end if found else start
        if reached <= start:
            raise OSError(f"NBD block status made no progress at offset {start}")
        offset = reached
    return coalesce(found)
