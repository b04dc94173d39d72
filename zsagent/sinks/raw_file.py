"""A sparse raw file, written under ``<name>.part`` and published by a no-clobber link in the same dir."""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from pathlib import Path

from zsagent.copy.extents import Extent
from zsagent.sinks.base import SinkResult

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
        self._make_parents()
        self._fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        os.ftruncate(self._fd, size)

    def _make_parents(self) -> None:
        missing = []
        for parent in self.path.parents:
            if parent.exists():
                break
            missing.append(parent)
        for directory in reversed(missing):
            directory.mkdir()
            self._created_dirs.append(directory)

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
        _publish(self.part, self.path)
        _fsync_dir(self.path.parent)
        return SinkResult(str(self.path), os.stat(self.path).st_blocks * 512)

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self.part.unlink(missing_ok=True)
        for directory in reversed(self._created_dirs):
            try:
                directory.rmdir()
            except OSError:
                break
        self._created_dirs.clear()


def _publish(part: Path, final: Path) -> None:
    """Give ``part`` its final name atomically, never replacing an existing file."""
    try:
        os.link(part, final)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        # No hard links here (e.g. some FUSE/NFS setups): check, then rename; a tiny race remains.
        if final.exists():
            raise FileExistsError(errno.EEXIST, "template already exists", str(final)) from e
        os.rename(part, final)
        return
    part.unlink()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
