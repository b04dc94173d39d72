"""SFTP backup storage: templates uploaded with OpenSSH's ssh carrying our own SFTP v3 client.

``SftpRawSink``  a raw template, written at offsets by the pipeline's threads; holes are never sent and
                 the size is set at the end, so the remote file is as sparse as the volume.
``SftpTarget``   a StreamTarget: a sequential byte stream (e.g. a qcow2 encoder's output) appended in order.

Both write ``<path>.part`` (creating missing parent directories), make it durable (fsync@openssh.com
when offered), optionally check the server's ``md5sum`` of it against the MD5 their caller already
computed (the pipeline's for raw content, the encoder's for a stream: no byte is hashed twice), and
publish it under ``<path>`` without ever replacing an existing file. On any failure the .part and the
directories they created are removed (over a fresh connection when the old one died). The install path
is the plain absolute remote path, as ZStack records it for SFTP backup storage.
"""

from __future__ import annotations

from collections.abc import Sequence

from zsagent.copy.extents import Extent
from zsagent.sftp.settings import SftpSettings
from zsagent.sftp.upload import RemoteUpload
from zsagent.sinks.base import NO_JOURNAL, Journal, SinkResult


def sftp_url(settings: SftpSettings, path: str) -> str:
    """``sftp://user@host:port/path``: names a remote file in messages."""
    return f"sftp://{settings.username}@{settings.hostname}:{settings.port}{path}"


class SftpRawSink:
    """A raw template at ``path`` (absolute) on the server of ``settings``; a Sink for the pipeline.

    ``write`` may be called from several threads at once; requests are pipelined over
    ``settings.connections`` ssh sessions. With ``settings.verify_md5`` the server's ``md5sum`` must equal
    the pipeline's content MD5 before the file is published. ``journal``/``journal_spec``: see
    zsagent.sftp.upload.RemoteUpload.
    """

    sequential = False

    def __init__(self, settings: SftpSettings, path: str, journal: Journal = NO_JOURNAL,
                 journal_spec: dict | None = None) -> None:
        self.settings = settings
        self._upload = RemoteUpload(settings, path, journal, journal_spec)
        self.path = self._upload.path
        self.description = sftp_url(settings, self.path)
        self._size = 0

    def open(self, size: int, extents: Sequence[Extent]) -> None:
        self._size = size
        self._upload.open()

    def write(self, offset: int, data: bytes) -> None:
        self._upload.write(offset, data)

    def commit(self, content_md5: str | None = None) -> SinkResult:
        if self.settings.verify_md5 and content_md5 is None:
            raise ValueError(f"{self.description}: verify_md5 needs the content MD5 of the copy")
        path, allocated = self._upload.commit(size=self._size, expected_md5=content_md5)
        return SinkResult(path, allocated)

    def abort(self) -> None:
        self._upload.abort()

    def interrupt(self) -> None:
        self._upload.interrupt()

    @property
    def upload(self) -> RemoteUpload:
        """The upload itself (its resume figures: ``bytes_resent``, ``resumes``)."""
        return self._upload

    @property
    def ssh_pids(self) -> list[int]:
        """Process ids of the ssh clients (for diagnostics and failure tests)."""
        return self._upload.ssh_pids


class SftpTarget:
    """A StreamTarget writing ``path`` (absolute) on the server of ``settings``, strictly appending.

    ``write`` has handed every byte to ssh when it returns, so the caller may reuse its buffer. With
    ``settings.verify_md5`` the commit's ``expected_md5`` (the encoder's MD5 of the stream) must equal the
    server's ``md5sum``.
    """

    def __init__(self, settings: SftpSettings, path: str, journal: Journal = NO_JOURNAL,
                 journal_spec: dict | None = None) -> None:
        self.settings = settings
        self._upload = RemoteUpload(settings, path, journal, journal_spec)
        self.path = self._upload.path
        self.description = sftp_url(settings, self.path)
        self.bytes_written = 0

    def open(self) -> None:
        self._upload.open()

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        self._upload.write(self.bytes_written, view)
        self.bytes_written += len(view)

    def commit(self, expected_md5: str | None = None) -> tuple[str, int]:
        if self.settings.verify_md5 and expected_md5 is None:
            raise ValueError(f"{self.description}: verify_md5 needs the MD5 of the stream")
        return self._upload.commit(expected_md5=expected_md5)

    def abort(self) -> None:
        self._upload.abort()

    def interrupt(self) -> None:
        self._upload.interrupt()

    @property
    def upload(self) -> RemoteUpload:
        """The upload itself (its resume figures: ``bytes_resent``, ``resumes``)."""
        return self._upload

    @property
    def ssh_pids(self) -> list[int]:
        """Process ids of the ssh clients (for diagnostics and failure tests)."""
        return self._upload.ssh_pids
