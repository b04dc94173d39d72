"""A local file as a StreamTarget: appended to under ``<name>.part``, published by a no-clobber link."""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
from pathlib import Path

from zsagent.sinks.local_files import fsync_dir, make_parents, publish, remove_created
from zsagent.sinks.raw_file import PART_SUFFIX

log = logging.getLogger(__name__)

WRITE_BUFFER_BYTES = 1024 * 1024
"""Small writes are gathered up to this size; larger ones go to the file as they are."""


class FileStreamTarget:
    """Write a stream (e.g. a qcow2 image) to the file ``path`` with plain sequential writes.

    ``open()`` creates missing parent directories and ``<name>.part`` (never an existing one);
    ``commit()`` flushes, fsyncs, links the part file to ``path`` (failing if ``path`` exists), removes
    the part name and fsyncs the directory; it returns ``(path, bytes allocated on disk)``.
    ``abort()`` removes the part file, the published file when a commit failed half way, and the
    directories ``open()`` created (when empty). The target is used by one thread at a time.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + PART_SUFFIX)
        self.description = str(self.path)
        self._file: io.BufferedWriter | None = None
        self._created_dirs: list[Path] = []
        self._created_part = False
        self._published = False
        self._committed = False

    def open(self) -> None:
        if self.path.exists():
            raise FileExistsError(errno.EEXIST, "template already exists", str(self.path))
        make_parents(self.path, self._created_dirs)
        fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._created_part = True
        self._file = open(fd, "wb", buffering=WRITE_BUFFER_BYTES)  # noqa: SIM115 - closed by commit/abort

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._file is None:
            raise ValueError(f"{self.description}: write to a target that is not open")
        self._file.write(data)

    def commit(self) -> tuple[str, int]:
        if self._file is None:
            raise ValueError(f"{self.description}: commit of a target that is not open")
        file, self._file = self._file, None
        try:
            file.flush()
            os.fsync(file.fileno())
        finally:
            file.close()
        publish(self.part, self.path)
        self._published = True
        self._created_part = False
        fsync_dir(self.path.parent)
        self._committed = True
        return str(self.path), os.stat(self.path).st_blocks * 512

    def abort(self) -> None:
        if self._committed:
            return
        try:
            if self._file is not None:
                file, self._file = self._file, None
                with contextlib.suppress(OSError):
                    file.close()  # flushes what is buffered: harmless, the file goes away next
            if self._created_part:
                self.part.unlink(missing_ok=True)
                self._created_part = False
            if self._published:  # linked, but the commit failed after that: it was never reported
                self.path.unlink(missing_ok=True)
                self._published = False
            remove_created(self._created_dirs)
        except Exception:  # noqa: BLE001 - abort never raises
            log.exception("abort of %s failed", self.description)
