"""Did a volume hold still while it was copied? A stopped file volume is read in place and an RBD volume
at a snapshot: if someone deletes, replaces, resizes or writes the file, or removes the snapshot, while
the copy runs, the template would not be the volume at one point in time. Sources call these checks
after their last read (``Source.confirm_unchanged``) and the copy fails instead of publishing."""

from __future__ import annotations

import os


class SourceChanged(Exception):
    """The volume did not stay as it was when the copy began; the message says how."""


class FileIdentity:
    """What a file was when the copy began: device, inode, size, modification time (ns)."""

    def __init__(self, path: str, fd: int | None = None) -> None:
        self.path = path
        self._fd = fd
        self._at_start = os.fstat(fd) if fd is not None else os.stat(path)

    def confirm(self) -> None:
        """Raise SourceChanged when the file was deleted, replaced, resized or written since."""
        start = self._at_start
        if self._fd is not None and os.fstat(self._fd).st_nlink == 0:
            raise SourceChanged(f"{self.path} was deleted during the copy")
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            raise SourceChanged(f"{self.path} was deleted or renamed during the copy") from None
        if (now.st_dev, now.st_ino) != (start.st_dev, start.st_ino):
            raise SourceChanged(f"{self.path} was replaced by another file during the copy")
        if now.st_size != start.st_size:
            raise SourceChanged(f"{self.path} was resized during the copy ({start.st_size} -> {now.st_size} bytes)")
        if now.st_mtime_ns != start.st_mtime_ns:
            raise SourceChanged(f"{self.path} was written during the copy (a stopped volume must not change)")
