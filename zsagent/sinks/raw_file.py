"""A sparse raw file, written under ``<name>.part`` and published by a no-clobber link in the same dir."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

from zsagent.copy.extents import Extent
from zsagent.sinks.base import SinkResult
from zsagent.sinks.local_files import fsync_dir, make_parents, publish, remove_created

PART_SUFFIX = ".part"


class RawFileSink:
    """Write a raw template to ``path``: holes stay holes, data is fsynced before it is published.

    Parent directories that do not exist are created, and removed again on abort when still empty.
    """

    sequential = False

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + PART_SUFFIX)
        self.description = str(self.path)
        self._fd = -1
        self._created_dirs: list[Path] = []

    def open(self, size: int, extents: Sequence[Extent]) -> None:
        if self.path.exists():
            raise FileExistsError(errno.EEXIST, "template already exists", str(self.path))
        make_parents(self.path, self._created_dirs)
        self._fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        os.ftruncate(self._fd, size)

    def write(self, offset: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self._fd, view, offset)
            view, offset = view[written:], offset + written

    def zero(self, offset: int, length: int) -> None:
        """Nothing to do: the file was created sparse at full size."""

    def commit(self) -> SinkResult:
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = -1
        publish(self.part, self.path)
        fsync_dir(self.path.parent)
        return SinkResult(str(self.path), os.stat(self.path).st_blocks * 512)

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.part.unlink(missing_ok=True)
        remove_created(self._created_dirs)

