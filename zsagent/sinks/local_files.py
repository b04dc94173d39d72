"""One local template file from creation to publication, shared by every sink that writes a local file.

    create()   the final name must be free; missing parent directories are made (and remembered);
               ``<name>.part`` is journalled, then created (O_EXCL)
    publish()  the final name is journalled, then ``.part`` is linked to it (never replacing a file) and
               unlinked; the directory is fsynced; returns the bytes allocated
    abort()    removes the ``.part``, the final file when publish() failed after linking it, and the
               directories create() made (when empty); never raises

Every removal also clears the journal entry, so after a crash the journal names exactly what is left.
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

from zsagent import faults
from zsagent.sinks.base import NO_JOURNAL, PART_SUFFIX, Journal

log = logging.getLogger(__name__)


def make_parents(path: Path, created: list[Path]) -> None:
    """Create the missing directories above ``path``, adding each to ``created`` (outermost first) as
    soon as it exists, so that a failure half-way still knows what to take back."""
    missing = []
    for parent in path.parents:
        if parent.exists():
            break
        missing.append(parent)
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            if directory.is_dir():
                continue  # made by a concurrent job meanwhile: not ours to remove
            raise
        created.append(directory)


def remove_created(directories: list[Path]) -> None:
    """Remove directories ``make_parents`` created, innermost first, while they are empty."""
    for directory in reversed(directories):
        try:
            directory.rmdir()
        except OSError:
            break
    directories.clear()


def link_no_clobber(part: Path, final: Path) -> None:
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


def fsync_dir(directory: Path) -> None:
    """Make the directory's entries (a new name) durable."""
    fsync_path(directory, os.O_DIRECTORY)


def fsync_path(path: Path, flags: int = 0) -> None:
    """Make a file that is not open here durable."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalTemplateFile:
    """``path`` on a local (or NFS) filesystem, written as ``<path>.part`` and then published.

    ``journal``/``kind``: where each name is recorded before it exists (spec ``{"path", "root"}``);
    ``root``: the directory above which cleanup never removes empty directories (the backup storage's
    root; default: the directory the file is in).
    """

    def __init__(self, path: str | os.PathLike[str], journal: Journal = NO_JOURNAL, kind: str = "filesystem",
                 root: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + PART_SUFFIX)
        self.journal = journal
        self.kind = kind
        self.root = str(root) if root is not None else str(self.path.parent)
        self._created_dirs: list[Path] = []
        self._part_id: int | None = None
        self._final_id: int | None = None
        self._published = False
        self._committed = False

    def create(self) -> int:
        """Create ``<path>.part`` (empty, mode 0644) and return a write-only fd the caller closes."""
        if self.path.exists():
            raise FileExistsError(errno.EEXIST, "template already exists", str(self.path))
        make_parents(self.path, self._created_dirs)
        self._part_id = self.journal.record(self.kind, {"path": str(self.part), "root": self.root})
        try:
            return os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:  # someone else's .part: not ours to remove
            self._forget_part()
            raise

    def publish(self) -> int:
        """Publish the (durable) ``.part`` under the final name; returns the bytes allocated for it."""
        self._final_id = self.journal.record(self.kind, {"path": str(self.path), "root": self.root})
        faults.hit("publish-before-rename")
        try:
            link_no_clobber(self.part, self.path)
        except FileExistsError:  # another file has the name: it is not ours to remove
            self.journal.forget(self._final_id)
            self._final_id = None
            raise
        self._published = True
        faults.hit("publish-after-rename")
        self._forget_part()
        fsync_dir(self.path.parent)
        allocated = os.stat(self.path).st_blocks * 512
        self._committed = True
        return allocated

    def abort(self) -> None:
        if self._committed:
            return
        try:
            if self._part_id is not None:
                self.part.unlink(missing_ok=True)
                self._forget_part()
            if self._published:  # linked, but the commit failed after that: it was never reported
                self.path.unlink(missing_ok=True)
                self._published = False
            if self._final_id is not None:
                self.journal.forget(self._final_id)
                self._final_id = None
            remove_created(self._created_dirs)
        except Exception:  # noqa: BLE001 - abort never raises; the journal still names what is left
            log.exception("abort of %s failed", self.path)

    def _forget_part(self) -> None:
        if self._part_id is not None:
            self.journal.forget(self._part_id)
            self._part_id = None
