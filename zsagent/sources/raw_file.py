"""A raw image file (or block device) read in place; extents from SEEK_DATA/SEEK_HOLE."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

from zsagent.copy.extents import Extent, covering
from zsagent.sources.base import QemuInput
from zsagent.sources.unchanged import FileIdentity


class RawFileSource:
    """A raw file that nobody writes while it is copied (a stopped volume)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.qemu_input: QemuInput | None = ("raw", os.path.abspath(self.path))
        self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.size = os.lseek(self._fd, 0, os.SEEK_END)
            self._identity = FileIdentity(self.path, self._fd)
        except BaseException:
            os.close(self._fd)
            raise

    def extents(self) -> Iterator[Extent]:
        return covering(self.size, self._data_ranges())

    def _data_ranges(self) -> Iterator[tuple[int, int]]:
        pos = 0
        while pos < self.size:
            try:
                start = os.lseek(self._fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # no data after pos
                    return
                if e.errno == errno.EINVAL:  # SEEK_DATA unsupported here: all of it is data
                    yield pos, self.size - pos
                    return
                raise
            end = os.lseek(self._fd, start, os.SEEK_HOLE)
            yield start, end - start
            pos = end

    def read(self, offset: int, length: int) -> bytes:
        data = os.pread(self._fd, length, offset)
        while len(data) < length:
            more = os.pread(self._fd, length - len(data), offset + len(data))
            if not more:
                break
            data += more
        return data

    def confirm_unchanged(self) -> None:
        """SourceChanged when the file was deleted, replaced, resized or written while it was read."""
        self._identity.confirm()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
