"""A local file as a StreamTarget: appended to under ``<name>.part``, published by a no-clobber link."""

from __future__ import annotations

import contextlib
import os

from zsagent.sinks.base import NO_JOURNAL, Journal
from zsagent.sinks.direct_io import DirectAppender, direct_io_wanted
from zsagent.sinks.local_files import LocalTemplateFile


class FileStreamTarget:
    """Write a stream (e.g. a qcow2 image) to the file ``path`` with sequential writes.

    ``open()`` creates missing parent directories and ``<name>.part`` (never an existing one);
    ``commit()`` writes what is left, fsyncs and publishes it (zsagent.sinks.local_files) and returns
    ``(path, bytes allocated on disk)``. ``abort()`` removes everything it made, also a file a failed
    commit had published. ``direct_io``: write with O_DIRECT where the file system allows it
    (zsagent.sinks.direct_io); ``direct`` tells, after ``open()``, whether it does. The target is used by
    one thread at a time.
    """

    def __init__(self, path: str | os.PathLike[str], journal: Journal = NO_JOURNAL,
                 root: str | os.PathLike[str] | None = None, direct_io: bool = True) -> None:
        self.file = LocalTemplateFile(path, journal, root=root)
        self.path, self.part = self.file.path, self.file.part
        self.description = str(self.path)
        self.direct_io = direct_io
        self._fd = -1
        self._appender: DirectAppender | None = None

    @property
    def direct(self) -> bool:
        return self._appender is not None and self._appender.direct

    def open(self) -> None:
        self._fd = self.file.create()
        self._appender = DirectAppender(self._fd, self.direct_io and direct_io_wanted(self.part))

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._appender is None:
            raise ValueError(f"{self.description}: write to a target that is not open")
        self._appender.write(data)

    def write_aligned(self, data: bytes | bytearray | memoryview) -> None:
        """As ``write``, for data that starts page-aligned in memory (see DirectAppender.write_aligned)."""
        if self._appender is None:
            raise ValueError(f"{self.description}: write to a target that is not open")
        self._appender.write_aligned(data)

    @property
    def position(self) -> int:
        """Bytes taken so far (written, or staged to be written)."""
        return 0 if self._appender is None else self._appender.position + self._appender.staged

    def commit(self, expected_md5: str | None = None) -> tuple[str, int]:
        if self._appender is None:
            raise ValueError(f"{self.description}: commit of a target that is not open")
        appender, self._appender = self._appender, None
        try:
            appender.finish()
            os.fsync(self._fd)
        finally:
            appender.close()
            self._close()
        return str(self.path), self.file.publish()

    def abort(self) -> None:
        if self._appender is not None:
            appender, self._appender = self._appender, None
            appender.close()
        with contextlib.suppress(OSError):
            self._close()
        self.file.abort()

    def _close(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
