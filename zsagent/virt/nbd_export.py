"""A Source over an NBD export that someone else serves on a unix socket (QEMU's backup export).

Like ``zsagent.sources.qemu_nbd.QemuNbdSource`` but without a server of its own: the size and the
allocation map (NBD block status, ``base:allocation``) come from one handle, and each reading thread gets
a libnbd handle of its own, so reads run in parallel. ``close()`` disconnects every handle.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from urllib.parse import quote

from zsagent.copy.extents import Extent, Kind
from zsagent.sources.nbd_status import nbd_extents


class NbdExportSource:
    """Read export ``export_name`` served on the unix socket ``socket_path`` (read-only use)."""

    def __init__(self, socket_path: str, export_name: str) -> None:
        import nbd  # Debian's python3-libnbd

        self._nbd = nbd
        self.socket_path = socket_path
        self.export_name = export_name
        # how qemu-img reads the same export (zsagent.qemu_img)
        self.qemu_input = ("raw", f"nbd+unix:///{quote(export_name, safe='')}?socket={quote(socket_path)}")
        self._handles: list = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self._closed = False
        self._main = self._connect()
        self.size = self._main.get_size()
        self._has_status = bool(self._main.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION))

    def _connect(self):
        handle = self._nbd.NBD()
        handle.add_meta_context(self._nbd.CONTEXT_BASE_ALLOCATION)
        handle.set_export_name(self.export_name)
        handle.connect_unix(self.socket_path)
        with self._lock:
            if self._closed:
                handle.shutdown()
                raise OSError(f"NBD source {self.socket_path} is closed")
            self._handles.append(handle)
        return handle

    def extents(self) -> Iterator[Extent]:
        if not self._has_status:
            return iter([Extent(0, self.size, Kind.DATA)]) if self.size else iter([])
        return nbd_extents(self._nbd, self._main, self.size)

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
            with contextlib.suppress(Exception):  # the export may be gone already
                handle.shutdown()
