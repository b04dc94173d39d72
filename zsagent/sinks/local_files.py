"""What both local-file sinks do: create missing parent directories (and take them back), publish
``<name>.part`` under its final name without ever replacing a file, and make that durable."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def make_parents(path: Path, created: list[Path]) -> None:
    """Create the missing directories above ``path``, adding each to ``created`` (outermost first) as
    soon as it exists, so that a failure half-way still knows what to take back."""
    missing = []
    for parent in path.parents:
        if parent.exists():
            break
        missing.append(parent)
    for directory in reversed(missing):
        directory.mkdir()
        created.append(directory)


def remove_created(directories: list[Path]) -> None:
    """Remove directories ``make_parents`` created, innermost first, while they are empty."""
    for directory in reversed(directories):
        try:
            directory.rmdir()
        except OSError:
            break
    directories.clear()


def publish(part: Path, final: Path) -> None:
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
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
