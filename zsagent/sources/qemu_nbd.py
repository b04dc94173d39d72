"""A qcow2 (or any qemu-readable) image with its backing chain, served by ``qemu-nbd --read-only``.

qemu resolves the chain, compression and zero clusters; we read it over a unix socket with libnbd, one
connection per read thread, and take the allocation map from NBD block status (base:allocation).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator

from zsagent.copy.extents import Extent
from zsagent.processes import stop_process
from zsagent.sources.base import QemuInput
from zsagent.sources.nbd_status import nbd_extents


class QemuNbdSource:
    """Serve ``path`` read-only with qemu-nbd (at most ``connections`` clients) and read it."""

    def __init__(self, path: str | os.PathLike[str], image_format: str = "qcow2", connections: int = 8,
                 start_timeout_s: float = 10.0) -> None:
        import nbd  # Debian's python3-libnbd; imported here so that other sources work without it

        self._nbd = nbd
        self.path = os.fspath(path)
        self.qemu_input: QemuInput | None = (image_format, os.path.abspath(self.path))
        self._dir = tempfile.mkdtemp(prefix="zsagent-nbd-")
        self._socket = os.path.join(self._dir, "nbd.sock")
        self._handles: list = []
        self._local = threading.local()
        self._lock = threading.Lock()
        argv = ["qemu-nbd", "--read-only", "--persistent", f"--shared={connections + 1}",
                f"--socket={self._socket}", f"--format={image_format}", self.path]
        self._server = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        try:
            self._main = self._connect_when_ready(start_timeout_s)
            self.size = self._main.get_size()
        except BaseException:
            self.close()
            raise

    def _connect_when_ready(self, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while True:
            if self._server.poll() is not None:
                err = self._server.stderr.read().decode(errors="replace").strip()
                raise OSError(f"qemu-nbd could not open {self.path}: {err or 'exited'}")
            if os.path.exists(self._socket):
                try:
                    return self._connect()
                except self._nbd.Error:
                    pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"qemu-nbd did not start serving {self.path} within {timeout_s} s")
            time.sleep(0.02)

    def _connect(self):
        handle = self._nbd.NBD()
        handle.add_meta_context(self._nbd.CONTEXT_BASE_ALLOCATION)
        handle.connect_unix(self._socket)
        with self._lock:
            self._handles.append(handle)
        return handle

    def extents(self) -> Iterator[Extent]:
        return nbd_extents(self._nbd, self._main, self.size)

    def read(self, offset: int, length: int) -> bytes:
        handle = getattr(self._local, "handle", None)
        if handle is None:
            handle = self._local.handle = self._connect()
        return handle.pread(length, offset)

    def close(self) -> None:
        with self._lock:
            handles, self._handles = self._handles, []
        for handle in handles:
            with contextlib.suppress(Exception):  # the server goes away next anyway
                handle.shutdown()
        stop_process(self._server)
        if self._server.stderr:
            self._server.stderr.close()
        shutil.rmtree(self._dir, ignore_errors=True)

