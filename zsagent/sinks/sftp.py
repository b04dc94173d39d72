"""SFTP backup storage: templates uploaded with OpenSSH's ssh carrying our own SFTP v3 client.

``SftpRawSink``  a raw template, written at offsets by the pipeline's threads; holes are never sent and
                 the size is set at the end, so the remote file is as sparse as the volume.
``SftpTarget``   a StreamTarget: a sequential byte stream (e.g. a qcow2 encoder's output) appended in order.

Both write ``<path>.part`` (creating missing parent directories), make it durable (fsync@openssh.com
when offered), optionally check the server's ``md5sum`` of it, and publish it under ``<path>`` without
ever replacing an existing file. On any failure the .part and the directories they created are removed
(over a fresh connection when the old one died). The install path is the plain absolute remote path,
as ZStack records it for SFTP backup storage.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from zsagent.copy.extents import Extent
from zsagent.copy.md5 import new_md5
from zsagent.sftp.ordered_md5 import OrderedMd5
from zsagent.sftp.settings import SftpSettings
from zsagent.sftp.upload import RemoteUpload
from zsagent.sinks.base import SinkResult

OVERLAP_MIN_BYTES = 64 * 1024
"""Pieces this large are hashed on a helper thread while they are sent; smaller ones inline."""


def sftp_url(settings: SftpSettings, path: str) -> str:
    """``sftp://user@host:port/path``: names a remote file in messages."""
    return f"sftp://{settings.username}@{settings.hostname}:{settings.port}{path}"


class SftpRawSink:
    """A raw template at ``path`` (absolute) on the server of ``settings``; a Sink for the pipeline.

    ``write`` may be called from several threads at once; requests are pipelined over
    ``settings.connections`` ssh sessions. With ``settings.verify_md5`` the sink hashes what it is
    given in offset order (a second MD5 beside the pipeline's) and compares it with the server's
    ``md5sum`` before publishing.
    """

    sequential = False

    def __init__(self, settings: SftpSettings, path: str) -> None:
        self.settings = settings
        self._upload = RemoteUpload(settings, path)
        self.path = self._upload.path
        self.description = sftp_url(settings, self.path)
        self._size = 0
        self._md5: OrderedMd5 | None = None

    def open(self, size: int, extents: Sequence[Extent]) -> None:
        self._size = size
        self._md5 = OrderedMd5() if self.settings.verify_md5 else None
        self._upload.open()

    def write(self, offset: int, data: bytes) -> None:
        if self._md5 is not None:
            self._md5.add(offset, len(data), data)
        self._upload.write(offset, data)

    def zero(self, offset: int, length: int) -> None:
        """Nothing is sent: the file's size is set at commit, so the range stays a hole."""
        if self._md5 is not None:
            self._md5.add(offset, length, None)

    def commit(self) -> SinkResult:
        expected = self._md5.hexdigest(self._size) if self._md5 is not None else None
        path, allocated = self._upload.commit(size=self._size, expected_md5=expected)
        return SinkResult(path, allocated)

    def abort(self) -> None:
        self._upload.abort()

    @property
    def ssh_pids(self) -> list[int]:
        """Process ids of the ssh clients (for diagnostics and failure tests)."""
        return self._upload.ssh_pids


class SftpTarget:
    """A StreamTarget writing ``path`` (absolute) on the server of ``settings``, strictly appending.

    ``hash_md5``: keep the MD5 of the bytes written (``md5_hex``); always on with ``settings.verify_md5``,
    where it is compared with the server's ``md5sum`` before publishing. ``write`` has handed every byte
    to ssh when it returns, so the caller may reuse its buffer.
    """

    def __init__(self, settings: SftpSettings, path: str, *, hash_md5: bool = False) -> None:
        self.settings = settings
        self._upload = RemoteUpload(settings, path)
        self.path = self._upload.path
        self.description = sftp_url(settings, self.path)
        self._md5 = new_md5() if hash_md5 or settings.verify_md5 else None
        self._hasher: ThreadPoolExecutor | None = None
        self.bytes_written = 0

    def open(self) -> None:
        if self._md5 is not None:
            self._hasher = ThreadPoolExecutor(1, thread_name_prefix="zsagent-sftp-md5")
        self._upload.open()

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``. A large piece is hashed on a helper thread while it is sent (the MD5 and the
        socket both release the GIL), so the MD5 costs little wall time."""
        view = memoryview(data).cast("B")
        if self._md5 is not None and self._hasher is not None and len(view) >= OVERLAP_MIN_BYTES:
            hashed = self._hasher.submit(self._md5.update, view)
            try:
                self._upload.write(self.bytes_written, view)
            finally:
                hashed.result()
        else:
            if self._md5 is not None:
                self._md5.update(view)
            self._upload.write(self.bytes_written, view)
        self.bytes_written += len(view)

    def commit(self) -> tuple[str, int]:
        self._stop_hasher()
        return self._upload.commit(expected_md5=self.md5_hex)

    def abort(self) -> None:
        self._stop_hasher()
        self._upload.abort()

    def _stop_hasher(self) -> None:
        if self._hasher is not None:
            self._hasher.shutdown()
            self._hasher = None

    @property
    def md5_hex(self) -> str | None:
        """Hex MD5 of the bytes written so far, or None when not hashing."""
        return self._md5.hexdigest() if self._md5 is not None else None

    @property
    def ssh_pids(self) -> list[int]:
        """Process ids of the ssh clients (for diagnostics and failure tests)."""
        return self._upload.ssh_pids
