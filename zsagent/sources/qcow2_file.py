"""A stopped qcow2 image with its backing chain, read by the agent itself: no qemu-nbd, no socket.

Each layer's header and L1/L2 tables give the allocation map (zsagent.sources.qcow2_layers); a guest
range is resolved top-down through the chain, a layer's unallocated parts going to its backing file,
which reads as zeros beyond its end. Data clusters are read with ``os.preadv`` straight into the
caller's buffer, compressed clusters (zlib or zstd) are decompressed, zero clusters are filled with
zeros. Images are locked as a read-only qemu locks them (zsagent.sources.qemu_locks).

What the reader does not handle raises ``Unsupported`` (zsagent.sources.qcow2_header) with the reason
when the source is opened, before anything is read: ``open_qcow2_source()`` then falls back to
qemu-nbd (zsagent.sources.qemu_nbd) and logs why.

The allocation map follows what qemu-nbd reports as NBD block status: data and compressed clusters
(and the data of a raw backing file) are DATA; zero clusters, ranges no layer allocates, holes of a
raw backing file and ranges beyond a backing file's end read as zeros and are HOLEs; in an image qemu
takes as preallocated, data clusters that are holes in the file are ZERO.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from zsagent.copy.extents import Extent, Kind, coalesce
from zsagent.sinks.base import NO_JOURNAL, Journal
from zsagent.sources.base import QemuInput, Source
from zsagent.sources.qcow2_header import MAGIC, Unsupported, read_header
from zsagent.sources.qcow2_layers import (
    ALLOCATED_ZERO,
    COMPRESSED,
    DATA,
    ZERO,
    CorruptImage,
    Qcow2Layer,
    RawLayer,
)
from zsagent.sources.qemu_locks import ImageInUse, hold_read_locks
from zsagent.sources.unchanged import FileIdentity

log = logging.getLogger(__name__)

MAX_CHAIN_LAYERS = 64
_ZEROS = memoryview(bytes(1 << 20))

_KIND_OF_STATE = {DATA: Kind.DATA, COMPRESSED: Kind.DATA, ZERO: Kind.HOLE, ALLOCATED_ZERO: Kind.ZERO}
"""A state's kind in the allocation map (anything else - unallocated everywhere - is a HOLE too)."""


class Qcow2FileSource:
    """Read the qcow2 image ``path`` and its backing chain (qcow2 or raw layers) that nobody writes.

    size: the virtual size in bytes (the top layer's). layers: the chain, top first. chain: its paths.
    cluster_bytes: the top layer's cluster size. qemu_input: ("qcow2", the image's absolute path).
    ``read()`` returns bytes; ``readinto()`` fills a caller's buffer (os.preadv straight into it).
    Both may be called from several threads at once. Raises Unsupported when the chain needs what this
    reader does not do, ImageInUse when a process has a layer open for writing.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.qemu_input: QemuInput | None = ("qcow2", os.path.abspath(self.path))
        self._identity = FileIdentity(self.path)  # the top image file (its backing files are not watched)
        self.layers: list[Qcow2Layer | RawLayer] = []
        self.chain: list[str] = []
        self._fds: list[int] = []
        try:
            self._open_chain()
        except BaseException:
            self.close()
            raise
        self.size = self.layers[0].size
        self.cluster_bytes = self.layers[0].cluster_bytes

    def _open_chain(self) -> None:
        path, image_format, seen = self.path, "qcow2", set()
        while True:
            if len(self.layers) == MAX_CHAIN_LAYERS:
                raise Unsupported(f"{self.path}: a backing chain of more than {MAX_CHAIN_LAYERS} layers")
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            self._fds.append(fd)
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) in seen:
                raise Unsupported(f"{self.path}: the backing chain loops at {path}")
            seen.add((st.st_dev, st.st_ino))
            hold_read_locks(fd, path)
            self.chain.append(path)
            if image_format == "raw":
                self.layers.append(RawLayer(path, fd))
                return
            header = read_header(fd, path)
            self.layers.append(Qcow2Layer(path, fd, header))
            if header.backing_name is None:
                return
            path = _backing_path(path, header.backing_name)
            image_format = header.backing_format or _probe_format(path)
            if image_format not in ("qcow2", "raw"):
                raise Unsupported(f"{path}: backing file format {image_format!r}")

    # -- the allocation map -------------------------------------------------------------------------

    def extents(self) -> Iterator[Extent]:
        return coalesce(Extent(start, length, _KIND_OF_STATE.get(state, Kind.HOLE))
                        for start, length, state, _layer, _where in self._resolve(0, 0, self.size, True))

    def _resolve(self, depth: int, offset: int, length: int, precise: bool) -> Iterator[tuple]:
        """``[offset, offset + length)`` as (start, length, state, layer index, where), through the
        chain from layer ``depth`` down; ``precise`` tells a raw layer's holes from its data."""
        layer = self.layers[depth]
        end = offset + length
        inside = min(end, layer.size)
        if offset < inside:
            for start, n, state, where in layer.pieces(offset, inside - offset, precise):
                if state in (DATA, COMPRESSED, ZERO, ALLOCATED_ZERO):
                    yield start, n, state, depth, where
                elif depth + 1 < len(self.layers):
                    yield from self._resolve(depth + 1, start, n, precise)
                else:
                    yield start, n, state, depth, None
        if inside < end:  # beyond this layer's end: zeros, whatever lies below
            start = max(offset, inside)
            yield start, end - start, ZERO, depth, None

    # -- reading ------------------------------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` as immutable bytes (sinks may keep them, librbd wants them).
        A range that one host run holds is read straight into the bytes object; others are put
        together in a buffer first (one copy)."""
        self._check_range(offset, length)
        pieces = list(self._resolve(0, offset, length, False))
        if len(pieces) == 1:
            _start, _n, state, depth, where = pieces[0]
            if state == DATA:
                return _pread_bytes(self.layers[depth].fd, length, where)
            if state != COMPRESSED:
                return bytes(length)
        buffer = bytearray(length)  # zero-filled: ranges that read as zeros are left alone
        self._fill(offset, memoryview(buffer), pieces, zeroed=True)
        return bytes(buffer)

    def readinto(self, offset: int, buffer) -> int:
        """Fill ``buffer`` (writable, any length) with the bytes at ``offset``; returns its length."""
        view = memoryview(buffer).cast("B")
        self._check_range(offset, len(view))
        self._fill(offset, view, self._resolve(0, offset, len(view), False), zeroed=False)
        return len(view)

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"read of {length} bytes at {offset} is outside the volume ({self.size} bytes)")

    def _fill(self, offset: int, view: memoryview, pieces, zeroed: bool) -> None:
        for start, n, state, depth, where in pieces:
            part = view[start - offset:start - offset + n]
            if state == DATA:
                _pread_into(self.layers[depth].fd, part, where)
            elif state == COMPRESSED:
                host, stored, cluster_start = where
                layer = self.layers[depth]
                cluster = layer.decompress(os.pread(layer.fd, stored, host))
                part[:] = cluster[start - cluster_start:start - cluster_start + n]
            elif not zeroed:
                _fill_zeros(part)

    def confirm_unchanged(self) -> None:
        """SourceChanged when the image file was deleted, replaced, resized or written while it was read."""
        self._identity.confirm()

    def close(self) -> None:
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)  # also drops its locks


def _pread_bytes(fd: int, length: int, offset: int) -> bytes:
    """``length`` bytes at ``offset`` (zeros beyond the end of the file)."""
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            return data + bytes(length - len(data))
        data += more
    return data


def _pread_into(fd: int, part: memoryview, offset: int) -> None:
    """Read ``len(part)`` bytes at ``offset`` into ``part``; bytes beyond the end of the file are zeros
    (as qemu reads a cluster the file ends inside)."""
    done = 0
    while done < len(part):
        n = os.preadv(fd, [part[done:]], offset + done)
        if n == 0:
            _fill_zeros(part[done:])
            return
        done += n


def _fill_zeros(part: memoryview) -> None:
    step = len(_ZEROS)
    for at in range(0, len(part), step):
        n = min(step, len(part) - at)
        part[at:at + n] = _ZEROS[:n]


def _backing_path(image: str, name: str) -> str:
    """Where qemu looks for backing file ``name`` of ``image``: relative names from the image's directory.
    Names that qemu would take as a protocol (``nbd:``, ``rbd:``, ``json:``: a colon before any slash)
    are refused."""
    if ":" in name.split("/", 1)[0]:
        raise Unsupported(f"{image}: backing file {name!r} is not a plain file name")
    return name if os.path.isabs(name) else os.path.join(os.path.dirname(image), name)


def _probe_format(path: str) -> str:
    """The format of a backing file whose overlay does not record one: qcow2 by its magic; anything
    else is left to qemu's own probing."""
    with open(path, "rb") as f:
        if f.read(4) == MAGIC:
            return "qcow2"
    raise Unsupported(f"{path}: backing file format not recorded and not qcow2")


def open_qcow2_source(path: str | os.PathLike[str], connections: int = 8, direct: bool = True,
                      journal: Journal = NO_JOURNAL) -> Source:
    """The direct reader for the qcow2 chain at ``path``, or qemu-nbd (``connections`` readers) when the
    chain needs something the direct reader does not do (the reason is logged) or ``direct`` is False;
    ``journal`` records qemu-nbd's socket directory while it exists."""
    if direct:
        try:
            return Qcow2FileSource(path)
        except (Unsupported, ImageInUse, CorruptImage) as e:
            log.warning("reading %s through qemu-nbd: %s", path, e)
    from zsagent.sources.qemu_nbd import QemuNbdSource

    return QemuNbdSource(path, "qcow2", connections=connections, journal=journal)
