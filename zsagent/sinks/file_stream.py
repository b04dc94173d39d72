"""A local file as a StreamTarget: appended to under ``<name>.part``, published by a no-clobber link."""

from __future__ import annotations

import contextlib
import io
import os

from zsagent.sinks.base import NO_JOURNAL, Journal
from zsagent.sinks.local_files import LocalTemplateFile

WRITE_BUFFER_BYTES = 1024 * 1024
"""Small writes are gathered up to this size; larger ones go to the file as they are."""


class FileStreamTarget:
    """Write a stream (e.g. a qcow2 image) to the file ``path`` with plain sequential writes.

    ``open()`` creates missing parent directories and ``<name>.part`` (never an existing one);
    ``commit()`` flushes, fsyncs and publishes it (zsagent.sinks.local_files) and returns
    ``(path, bytes allocated on disk)``. ``abort()`` removes everything it made, also a file a failed
    commit had published. The target is used by one thread at a time.
    """

    def __init__(self, path: str | os.PathLike[str], journal: Journal = NO_JOURNAL,
                 root: str | os.PathLike[str] | None = None) -> None:
        self.file = LocalTemplateFile(path, journal, root=root)
        self.path, self.part = self.file.path, self.file.part
        self.description = str(self.path)
        self._file: io.BufferedWriter | None = None

    def open(self) -> None:
        fd = self.file.create()
        self._file = open(fd, "wb", buffering=WRITE_BUFFER_BYTES)  # noqa: SIM115 - closed by commit/abort

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._file is None:
            raise ValueError(f"{self.description}: write to a target that is not open")
        self._file.write(data)

    def commit(self, expected_md5: str | None = None) -> tuple[str, int]:
        if self._file is None:
            raise ValueError(f"{self.description}: commit of a target that is not open")
        file, self._file = self._file, None
        try:
            file.flush()
            os.fsync(file.fileno())
        finally:
            file.close()
        return str(self.path), self.file.publish()

    def abort(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):
                file.close()  # flushes what is buffered: harmless, the file goes away next
        self.file.abort()
