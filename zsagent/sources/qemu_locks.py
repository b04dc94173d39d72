"""QEMU's image locks, so that reading an image file ourselves is as safe as letting qemu read it.

Every qemu process (a VM, qemu-img, qemu-nbd) that opens an image takes shared open-file-description
locks on single bytes of it: byte ``100 + bit`` for each permission it holds and ``200 + bit`` for each
permission it refuses to share (QEMU block/file-posix.c: RAW_LOCK_PERM_BASE 100, RAW_LOCK_SHARED_BASE
200; the bits are include/block/block-common.h's BLK_PERM_CONSISTENT_READ = bit 0, BLK_PERM_WRITE =
bit 1). A running VM holds byte 101 (it writes); a reader that needs the image to stay still holds byte
201 (it does not share writing), which makes a VM that starts meanwhile fail to open the disk.

``hold_read_locks(fd, path)`` does what a read-only qemu-img does: it refuses (ImageInUse) when a
process holds the write permission, then holds bytes 100 and 201 until ``fd`` is closed.
"""

from __future__ import annotations

import errno
import fcntl
import struct

PERM_BASE, SHARED_BASE = 100, 200
PERM_CONSISTENT_READ_BIT, PERM_WRITE_BIT = 0, 1

# struct flock on Linux: short l_type, short l_whence, (pad), off_t l_start, off_t l_len, pid_t l_pid, (pad)
_FLOCK = struct.Struct("@hhqqi4x")


class ImageInUse(OSError):
    """Another process has the image open for writing (a running VM, qemu-img commit, ...)."""


def _lock(fd: int, command: int, kind: int, byte: int) -> int:
    """fcntl on one byte; returns the l_type the kernel gives back."""
    answer = fcntl.fcntl(fd, command, _FLOCK.pack(kind, 0, byte, 1, 0))
    return _FLOCK.unpack(answer)[0]


def writer_holds(fd: int) -> bool:
    """Whether some process holds the write permission byte of the image open on ``fd``."""
    return _lock(fd, fcntl.F_OFD_GETLK, fcntl.F_WRLCK, PERM_BASE + PERM_WRITE_BIT) != fcntl.F_UNLCK


def hold_read_locks(fd: int, path: str) -> None:
    """Lock the image on ``fd`` as a read-only qemu does; raises ImageInUse when a writer has it open.
    The locks last as long as ``fd``'s open file description. Where the filesystem has no such locks,
    nothing is locked (as qemu's ``locking=auto`` does)."""
    try:
        held = writer_holds(fd)
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP):
            return
        raise
    if held:
        raise ImageInUse(errno.EBUSY, f"{path} is open for writing by another process (a running VM?)")
    try:
        _lock(fd, fcntl.F_OFD_SETLK, fcntl.F_RDLCK, PERM_BASE + PERM_CONSISTENT_READ_BIT)
        _lock(fd, fcntl.F_OFD_SETLK, fcntl.F_RDLCK, SHARED_BASE + PERM_WRITE_BIT)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):  # someone holds a write lock on the bytes
            raise ImageInUse(errno.EBUSY, f"{path} is locked by another process") from e
        raise
    if writer_holds(fd):  # a writer came between the check and the locks
        raise ImageInUse(errno.EBUSY, f"{path} is open for writing by another process (a running VM?)")
