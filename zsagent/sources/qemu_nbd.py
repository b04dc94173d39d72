"""A qcow2 (or any qemu-readable) image with its backing chain, served by ``qemu-nbd --read-only``.

qemu resolves the chain, compression and zero clusters; an NbdSource reads the export over a unix socket
(one libnbd connection per read thread, the allocation map from NBD block status).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

from zsagent.copy.extents import Extent
from zsagent.processes import dies_with_agent, stop_process
from zsagent.sinks.base import NO_JOURNAL, Journal
from zsagent.sources.base import QemuInput
from zsagent.sources.nbd import NbdSource
from zsagent.sources.unchanged import FileIdentity

TEMP_DIR_KIND = "temp-dir"
"""Journal entries of a local temporary directory: ``{"path"}`` (zsagent.cleanup removes it)."""
TEMP_DIR_PREFIX = "zsagent-nbd-"


class QemuNbdSource:
    """Serve ``path`` (in ``image_format``) read-only with qemu-nbd for at most ``connections`` reading
    threads, and read it as an NbdSource.

    ``qemu_input`` names the image file itself, not the export: the qemu-img engine reads the chain directly.
    ``close()`` disconnects, stops qemu-nbd and removes its socket directory.
    """

    def __init__(self, path: str | os.PathLike[str], image_format: str = "qcow2", connections: int = 8,
                 start_timeout_s: float = 10.0, journal: Journal = NO_JOURNAL) -> None:
        """``journal``: where the socket directory is recorded (kind TEMP_DIR_KIND) while it exists."""
        self.path = os.fspath(path)
        self.qemu_input: QemuInput | None = (image_format, os.path.abspath(self.path))
        self._identity = FileIdentity(self.path)  # the top image file (its backing files are not watched)
        self._dir = tempfile.mkdtemp(prefix=TEMP_DIR_PREFIX)
        self._journal = journal
        self._dir_id: int | None = journal.record(TEMP_DIR_KIND, {"path": self._dir})
        self._socket = os.path.join(self._dir, "nbd.sock")
        self._server: subprocess.Popen | None = None
        self._export: NbdSource | None = None
        argv = ["qemu-nbd", "--read-only", "--persistent", f"--shared={connections + 1}",  # + the main handle
                f"--socket={self._socket}", f"--format={image_format}", self.path]
        try:
            self._server = subprocess.Popen(dies_with_agent(argv), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE)
            self._export = self._connect_when_ready(self._server, start_timeout_s)
        except BaseException:
            self.close()
            raise
        self.size = self._export.size

    def _connect_when_ready(self, server: subprocess.Popen, timeout_s: float) -> NbdSource:
        import nbd  # Debian's python3-libnbd, for its error type (NbdSource imports it the same way)

        deadline = time.monotonic() + timeout_s
        while True:
            if server.poll() is not None:
                err = server.stderr.read().decode(errors="replace").strip()
                raise OSError(f"qemu-nbd could not open {self.path}: {err or 'exited'}")
            if os.path.exists(self._socket):
                try:
                    return NbdSource(self._socket)
                except nbd.Error:
                    pass  # bound but not yet listening
            if time.monotonic() > deadline:
                raise TimeoutError(f"qemu-nbd did not start serving {self.path} within {timeout_s} s")
            time.sleep(0.02)

    def extents(self) -> Iterator[Extent]:
        return self._export.extents()

    def read(self, offset: int, length: int) -> bytes:
        return self._export.read(offset, length)

    def confirm_unchanged(self) -> None:
        """SourceChanged when the image file was deleted, replaced, resized or written while it was read."""
        self._identity.confirm()

    def close(self) -> None:
        if self._export is not None:
            self._export.close()
        if self._server is not None:
            stop_process(self._server)
            self._server.stderr.close()
        shutil.rmtree(self._dir, ignore_errors=True)
        if self._dir_id is not None:
            self._journal.forget(self._dir_id)
            self._dir_id = None
