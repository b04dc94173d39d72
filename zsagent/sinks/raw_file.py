"""A sparse raw file, written under ``<name>.part`` and published by a no-clobber link in the same dir."""

from __future__ import annotations

import os
from collections.abc import Sequence

from zsagent.copy.extents import Extent
from zsagent.sinks.base import NO_JOURNAL, Journal, SinkResult
from zsagent.sinks.direct_io import DirectPositionalWriter, open_direct
from zsagent.sinks.local_files import LocalTemplateFile


class RawFileSink:
    """Write a raw template to ``path``: holes stay holes, data is fsynced before it is published.

    Parent directories that do not exist are created, and removed again on abort when still empty.
    ``journal``/``root``: see zsagent.sinks.local_files.LocalTemplateFile. ``direct_io``: write the
    aligned parts of the data with O_DIRECT where the file system allows it (zsagent.sinks.direct_io).
    """

    sequential = False

    def __init__(self, path: str | os.PathLike[str], journal: Journal = NO_JOURNAL,
                 root: str | os.PathLike[str] | None = None, direct_io: bool = True) -> None:
        self.file = LocalTemplateFile(path, journal, root=root)
        self.path, self.part = self.file.path, self.file.part
        self.description = str(self.path)
        self.direct_io = direct_io
        self._fd = -1
        self._direct_fd = -1
        self._writer: DirectPositionalWriter | None = None

    def open(self, size: int, extents: Sequence[Extent]) -> None:
        self._fd = self.file.create()
        os.ftruncate(self._fd, size)
        direct_fd = open_direct(self.part) if self.direct_io else None
        self._direct_fd = -1 if direct_fd is None else direct_fd
        self._writer = DirectPositionalWriter(self._fd, direct_fd)

    def write(self, offset: int, data: bytes) -> None:
        if self._writer is None:
            raise ValueError(f"{self.description}: write to a sink that is not open")
        self._writer.write(offset, data)

    def commit(self, content_md5: str | None = None) -> SinkResult:
        os.fsync(self._fd)
        self._close()
        return SinkResult(str(self.path), self.file.publish())

    def abort(self) -> None:
        try:
            self._close()
        except OSError:  # abort never raises; the file goes away next
            pass
        self.file.abort()

    def _close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()
        if self._direct_fd >= 0:
            fd, self._direct_fd = self._direct_fd, -1
            os.close(fd)
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)
