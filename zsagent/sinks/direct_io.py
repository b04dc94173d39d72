"""Writing a template file with O_DIRECT: its bytes go from our buffers to the disk, not through the page cache.

A template is written once and not read again soon. Written through the page cache, every byte is
copied into freshly allocated cache pages (measured on the bench's chain volume: more CPU than hashing
the template), and the final fsync then waits for all of it to reach the disk. With O_DIRECT the
writes are DMA from page-aligned staging buffers (one memcpy into memory that is reused), the disk works
while the copy goes on, and the fsync before publishing has only metadata left. ``qemu-img convert``
writes through the cache and never syncs; our templates stay durable before they are published.

O_DIRECT needs the file offset, the length and the memory address aligned (ALIGN_BYTES is safe for
512-byte and 4 KiB sector disks). What is not aligned (a file's tail, the edges of a raw piece) is
written through the page cache, and the fsync covers it. O_DIRECT is not used on network or FUSE file
systems (each direct write would be a synchronous round trip to the server) nor where the file system
refuses it (the flag or the first write gives EINVAL): those files are written through the page cache.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import mmap
import os
import queue
import threading

log = logging.getLogger(__name__)

ALIGN_BYTES = 4096
"""Alignment of offsets, lengths and buffers of direct writes."""
STAGING_BYTES = 8 * 1024 * 1024
"""One direct write of a stream (a qcow2 image): bytes gathered before they go to the disk."""
PIECE_BUFFER_BYTES = 2 * 1024 * 1024
"""Buffer of one positional direct write (a raw piece); longer pieces take several."""
BUFFERED_FS_TYPES = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "9p", "glusterfs", "lustre",
                               "afs", "ncpfs", "virtiofs"})
"""File system types written through the page cache (besides every ``fuse.*``)."""


def filesystem_type(path: str | os.PathLike[str]) -> str | None:
    """The type of the file system holding ``path`` (from /proc/self/mountinfo), None if unknown."""
    target = os.path.realpath(path)
    best, best_type = "", None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                try:
                    mount_point = _unescape(fields[4])
                    fs_type = fields[fields.index("-") + 1]
                except (IndexError, ValueError):
                    continue
                inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, best_type = mount_point, fs_type
    except OSError:
        return None
    return best_type


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    if "\\" not in field:
        return field
    return field.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", errors="replace")


def direct_io_wanted(path: str | os.PathLike[str]) -> bool:
    """Whether files under ``path`` should be written with O_DIRECT (local file systems only)."""
    fs_type = filesystem_type(os.path.dirname(os.path.abspath(path)) or "/")
    if fs_type is None:
        return False
    return fs_type not in BUFFERED_FS_TYPES and not fs_type.startswith("fuse")


def set_direct(fd: int, on: bool) -> bool:
    """Turn O_DIRECT on or off for ``fd``; False when the file system refuses it."""
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    try:
        fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT if on else flags & ~os.O_DIRECT)
    except OSError as e:
        if e.errno == errno.EINVAL and on:
            return False
        raise
    return True


def pwrite_all(fd: int, data, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (a short write goes on where it stopped)."""
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class DirectAppender:
    """Appends to the file open (for writing) on ``fd``: with O_DIRECT where it can, else buffered.

    ``write(data)`` copies into a staging buffer of ``staging_bytes`` (page-aligned) and writes it when
    full, so small pieces never make small writes; ``finish()`` writes what is left (the aligned part
    direct, an unaligned tail through the page cache) and leaves the fd without O_DIRECT. ``direct``
    tells whether the direct path is (still) in use: a file system that refuses the first direct write
    with EINVAL is written buffered from then on. ``position``: bytes written to the file so far. Used by
    one thread at a time; the caller owns and closes ``fd``; ``close()`` frees the buffer.
    """

    def __init__(self, fd: int, direct: bool, staging_bytes: int = STAGING_BYTES) -> None:
        if staging_bytes <= 0 or staging_bytes % ALIGN_BYTES:
            raise ValueError(f"staging_bytes must be a positive multiple of {ALIGN_BYTES}")
        self.fd = fd
        self.direct = direct and set_direct(fd, True)
        self.position = 0
        self._staging = mmap.mmap(-1, staging_bytes)  # page-aligned, as O_DIRECT wants
        self._filled = 0

    def write(self, data) -> None:
        view = memoryview(data).cast("B")
        staging = self._staging
        size = len(staging)
        while view:
            n = min(len(view), size - self._filled)
            staging[self._filled:self._filled + n] = view[:n]
            self._filled += n
            view = view[n:]
            if self._filled == size:
                self._write_staged(size)

    def write_aligned(self, data) -> None:
        """Append ``data``, which starts page-aligned in memory (e.g. an mmap, or a view at its start):
        written to the file straight from it, with no copy, when the file position allows; else as
        ``write()``."""
        view = memoryview(data).cast("B")
        if not self.direct or self._filled % ALIGN_BYTES or len(view) < ALIGN_BYTES:
            self.write(view)
            return
        if self._filled:
            self._write_staged(self._filled)
            if not self.direct:
                self.write(view)
                return
        n = len(view) - len(view) % ALIGN_BYTES
        pwrite_all(self.fd, view[:n], self.position)
        self.position += n
        if n < len(view):
            self.write(view[n:])

    def finish(self) -> None:
        """Write out what is staged; afterwards the fd is a plain buffered one."""
        if self.direct:
            aligned = self._filled - self._filled % ALIGN_BYTES
            if aligned:
                self._write_staged(aligned)
            if self.direct:
                set_direct(self.fd, False)
                self.direct = False
        if self._filled:
            self._write_staged(self._filled)

    @property
    def staged(self) -> int:
        """Bytes taken but not written to the file yet."""
        return self._filled

    def close(self) -> None:
        """Free the staging buffer (left to the garbage collector while an error's traceback holds a view
        of it)."""
        with contextlib.suppress(BufferError):
            self._staging.close()

    def _write_staged(self, length: int) -> None:
        """Write the first ``length`` staged bytes at ``position`` (aligned when direct); keep the rest."""
        staging = self._staging
        try:
            pwrite_all(self.fd, memoryview(staging)[:length], self.position)
        except OSError as e:
            if not (self.direct and e.errno == errno.EINVAL and self.position == 0):
                raise
            log.info("the file system refuses direct writes here; writing through the page cache")
            set_direct(self.fd, False)
            self.direct = False
            pwrite_all(self.fd, memoryview(staging)[:length], self.position)
        self.position += length
        rest = self._filled - length
        if rest:
            staging.move(0, length, rest)
        self._filled = rest


class DirectPositionalWriter:
    """Positional writes from several threads at once (a raw template): the aligned middle of each piece
    through ``direct_fd`` (O_DIRECT, from pooled aligned buffers), its unaligned edges through
    ``buffered_fd``. ``direct_fd`` None: everything buffered. The caller owns and closes both fds.
    """

    def __init__(self, buffered_fd: int, direct_fd: int | None,
                 buffer_bytes: int = PIECE_BUFFER_BYTES) -> None:
        self.buffered_fd = buffered_fd
        self.direct_fd = direct_fd
        self.buffer_bytes = buffer_bytes
        self._pool: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self._buffers: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def write(self, offset: int, data) -> None:
        view = memoryview(data).cast("B")
        if self.direct_fd is None:
            pwrite_all(self.buffered_fd, view, offset)
            return
        end = offset + len(view)
        start = -(-offset // ALIGN_BYTES) * ALIGN_BYTES
        stop = end - end % ALIGN_BYTES
        if stop <= start:
            pwrite_all(self.buffered_fd, view, offset)
            return
        if start > offset:
            pwrite_all(self.buffered_fd, view[:start - offset], offset)
        self._write_direct(start, view[start - offset:stop - offset])
        if end > stop:
            pwrite_all(self.buffered_fd, view[stop - offset:], stop)

    def _write_direct(self, offset: int, view: memoryview) -> None:
        buffer = self._take()
        try:
            for at in range(0, len(view), len(buffer)):
                n = min(len(buffer), len(view) - at)
                buffer[:n] = view[at:at + n]
                direct_fd = self.direct_fd
                try:
                    if direct_fd is None:
                        raise OSError(errno.EINVAL, "direct writes refused")
                    pwrite_all(direct_fd, memoryview(buffer)[:n], offset + at)
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    if self.direct_fd is not None:
                        log.info("the file system refuses direct writes here; writing through the page cache")
                        self.direct_fd = None  # the owner still closes the fd
                    pwrite_all(self.buffered_fd, view[at:], offset + at)
                    return
        finally:
            self._pool.put(buffer)

    def _take(self) -> mmap.mmap:
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            buffer = mmap.mmap(-1, self.buffer_bytes)
            with self._lock:
                self._buffers.append(buffer)
            return buffer

    def close(self) -> None:
        """Free the buffers (no write may be running)."""
        with self._lock:
            buffers, self._buffers = self._buffers, []
        for buffer in buffers:
            with contextlib.suppress(BufferError):
                buffer.close()


def open_direct(path: str | os.PathLike[str]) -> int | None:
    """A second, O_DIRECT, write-only fd on the existing file ``path``, or None where O_DIRECT is not used."""
    if not direct_io_wanted(path):
        return None
    try:
        return os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_DIRECT)
    except OSError as e:
        if e.errno == errno.EINVAL:
            return None
        raise
