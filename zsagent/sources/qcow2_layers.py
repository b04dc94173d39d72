"""One layer of a backing chain, as guest ranges: what each part of a qcow2 or raw file holds, and where.

``pieces(offset, length)`` describes ``[offset, offset + length)`` of the layer (inside its size) as
``(start, length, state, where)`` tuples in order, neighbours of one kind merged:

    DATA         where = the file offset of ``start``'s bytes (contiguous for ``length`` bytes)
    COMPRESSED   where = (file offset, stored bytes, guest offset of the cluster): one compressed cluster
    ZERO         reads as zeros and hides the layers below (a zero cluster/subcluster, a hole of a raw file)
    UNALLOCATED  not in this layer: read the backing file (zeros when there is none)
    ALLOCATED_ZERO  (maps only) a data cluster whose bytes in the file are a hole or beyond its end, in
                 an image qemu takes as preallocated (see ``Qcow2Layer.metadata_preallocated``)

L1/L2 entry formats are QEMU's docs/interop/qcow2.txt ("Cluster mapping", "Extended L2 Entries");
the classification follows qemu's block/qcow2.h ``qcow2_get_cluster_type``. L2 tables are read as they
are needed and kept in a bounded cache.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import threading
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Iterator

from zsagent.sources.qcow2_header import COMPRESSION_ZSTD, SECTOR_BYTES, Qcow2Header, Unsupported

DATA, COMPRESSED, ZERO, UNALLOCATED, ALLOCATED_ZERO = range(5)
Piece = tuple[int, int, int, object]

OFFSET_MASK = 0x00FF_FFFF_FFFF_FE00
"""Bits 9-55 of an L1 or standard L2 entry: a host offset."""
COMPRESSED_FLAG = 1 << 62
ZERO_FLAG = 1
SUBCLUSTERS = 32
L2_CACHE_BYTES = 32 * 1024 * 1024
"""L2 tables kept per layer (qemu's default L2 cache is at most 32 MiB too)."""


class CorruptImage(OSError):
    """An L1/L2 entry that no valid image has (qemu reports the image corrupt)."""


def _entries(data: bytes) -> array:
    table = array("Q", data)
    if sys.byteorder == "little":
        table.byteswap()
    return table


class Qcow2Layer:
    """A qcow2 file open on ``fd`` (not owned) with its parsed ``header``."""

    def __init__(self, path: str, fd: int, header: Qcow2Header) -> None:
        self.path, self.fd, self.header = path, fd, header
        self.size = header.size
        self.cluster_bits = header.cluster_bits
        self.cluster_bytes = header.cluster_bytes
        self.entry_words = 2 if header.extended_l2 else 1
        self.l2_entries = self.cluster_bytes // (8 * self.entry_words)
        self.subcluster_bytes = self.cluster_bytes // SUBCLUSTERS
        self.compression = header.compression
        raw = os.pread(fd, header.l1_entries * 8, header.l1_offset) if header.l1_entries else b""
        if len(raw) != header.l1_entries * 8:
            raise CorruptImage(errno.EIO, f"{path}: the L1 table is cut short")
        self.l1 = _entries(raw)
        self._cache: OrderedDict[int, tuple[array, bytes]] = OrderedDict()
        self._cache_max = max(16, L2_CACHE_BYTES // self.cluster_bytes)
        self._lock = threading.Lock()
        # compressed descriptor: offset in the low x bits, then the count of additional sectors
        self._compressed_bits = 62 - (self.cluster_bits - 8)
        self._compressed_sectors_mask = (1 << (self.cluster_bits - 8)) - 1
        self._preallocated: bool | None = None
        self._zstd = None
        if self.compression == COMPRESSION_ZSTD:
            try:
                import zstandard  # PyPI's zstandard: only images with zstd compression need it
            except ImportError as e:
                raise Unsupported(f"{path}: zstd-compressed clusters need the zstandard package") from e
            self._zstd = zstandard

    def _l2_table(self, offset: int) -> tuple[array, bytes]:
        """The L2 table at ``offset``: its entries, and its bytes as stored (for run searches)."""
        with self._lock:
            table = self._cache.get(offset)
            if table is not None:
                self._cache.move_to_end(offset)
                return table
        if offset % self.cluster_bytes:
            raise CorruptImage(errno.EIO, f"{self.path}: L2 table at unaligned offset {offset}")
        raw = os.pread(self.fd, self.cluster_bytes, offset)
        if len(raw) != self.cluster_bytes:
            raise CorruptImage(errno.EIO, f"{self.path}: L2 table at {offset} is beyond the end of the file")
        table = (_entries(raw), raw)
        with self._lock:
            self._cache[offset] = table
            while len(self._cache) > self._cache_max:
                self._cache.popitem(last=False)
        return table

    def pieces(self, offset: int, length: int, precise: bool = False) -> Iterator[Piece]:
        pieces = _merged(self._cluster_pieces(offset, offset + length))
        if precise and self.metadata_preallocated():
            return _merged(self._file_holes(pieces))
        return pieces

    def _file_holes(self, pieces: Iterator[Piece]) -> Iterator[Piece]:
        """DATA pieces split where their bytes in the file are holes (ALLOCATED_ZERO)."""
        for start, length, state, where in pieces:
            if state != DATA:
                yield start, length, state, where
                continue
            for host, n, is_data in file_ranges(self.fd, where, where + length):
                yield start + host - where, n, DATA if is_data else ALLOCATED_ZERO, host

    def metadata_preallocated(self) -> bool:
        """Whether qemu takes this image as preallocated with metadata: far more clusters have a
        refcount than the file has blocks allocated. qemu then asks the file which data clusters are
        holes, and reports them as zeros (block/qcow2-refcount.c qcow2_detect_metadata_preallocation,
        block/qcow2.c qcow2_co_block_status, block/io.c BDRV_BLOCK_RECURSE)."""
        if self._preallocated is None:
            st = os.fstat(self.fd)
            real_clusters = st.st_blocks * 512 // self.cluster_bytes
            threshold = max(real_clusters * 10 // 9, real_clusters + 2)
            end_cluster = -(-st.st_size // self.cluster_bytes)
            self._preallocated = self._refcounted_clusters(end_cluster, threshold) >= threshold
        return self._preallocated

    def _refcounted_clusters(self, end_cluster: int, enough: int) -> int:
        """Clusters below ``end_cluster`` with a refcount other than 0 (counting stops at ``enough``)."""
        header, cluster = self.header, self.cluster_bytes
        bits = 1 << header.refcount_order
        per_block = cluster * 8 // bits
        table = _entries(os.pread(self.fd, header.refcount_table_clusters * cluster, header.refcount_table_offset))
        count = 0
        for index, entry in enumerate(table):
            first = index * per_block
            if first >= end_cluster or count >= enough:
                break
            block_offset = entry & ~0x1FF
            if not block_offset:
                continue
            n = min(per_block, end_cluster - first)
            block = os.pread(self.fd, -(-n * bits // 8), block_offset)
            count += _nonzero_entries(block, bits)
        return count

    def _cluster_pieces(self, pos: int, end: int) -> Iterator[Piece]:
        bits, cluster, per_table = self.cluster_bits, self.cluster_bytes, self.l2_entries
        words = self.entry_words
        while pos < end:
            index = pos >> bits
            l1_index, l2_index = divmod(index, per_table)
            l2_offset = self.l1[l1_index] & OFFSET_MASK
            if not l2_offset:  # the whole table's range is unallocated
                stop = min(end, (l1_index + 1) * per_table * cluster)
                yield pos, stop - pos, UNALLOCATED, None
                pos = stop
                continue
            table, raw = self._l2_table(l2_offset)
            table_end = min(end, (l1_index + 1) * per_table * cluster)
            last = ((table_end - 1) >> bits) - l1_index * per_table + 1  # entries up to table_end
            while pos < table_end:
                cluster_start = (pos >> bits) << bits
                entry = table[l2_index * words]
                if words == 1 and (not entry or not entry & (COMPRESSED_FLAG | ZERO_FLAG) and entry & OFFSET_MASK):
                    # a run of unallocated entries, or of data clusters back to back in the file: one piece
                    count = _zero_run(raw, l2_index, last) if not entry else _data_run(raw, l2_index, last, entry,
                                                                                         cluster)
                    stop = min(table_end, cluster_start + count * cluster)
                    if entry:
                        yield self._cluster_piece(pos, stop, cluster_start, entry)
                    else:
                        yield pos, stop - pos, UNALLOCATED, None
                    pos, l2_index = stop, l2_index + count
                    continue
                stop = min(table_end, cluster_start + cluster)
                if words == 2 and not entry & COMPRESSED_FLAG:
                    yield from self._subcluster_pieces(pos, stop, cluster_start, entry, table[l2_index * 2 + 1])
                else:
                    yield self._cluster_piece(pos, stop, cluster_start, entry)
                pos = stop
                l2_index += 1

    def _cluster_piece(self, pos: int, stop: int, cluster_start: int, entry: int) -> Piece:
        if entry & COMPRESSED_FLAG:
            host = entry & ((1 << self._compressed_bits) - 1)
            sectors = ((entry >> self._compressed_bits) & self._compressed_sectors_mask) + 1
            stored = (host & ~(SECTOR_BYTES - 1)) + sectors * SECTOR_BYTES - host
            return pos, stop - pos, COMPRESSED, (host, stored, cluster_start)
        if entry & ZERO_FLAG:
            return pos, stop - pos, ZERO, None
        host = entry & OFFSET_MASK
        if not host:
            return pos, stop - pos, UNALLOCATED, None
        if host % self.cluster_bytes:
            raise CorruptImage(errno.EIO, f"{self.path}: data cluster at unaligned offset {host}")
        return pos, stop - pos, DATA, host + pos - cluster_start

    def _subcluster_pieces(self, pos: int, stop: int, cluster_start: int, entry: int,
                           bitmap: int) -> Iterator[Piece]:
        allocated, zeros = bitmap & 0xFFFF_FFFF, bitmap >> 32
        if allocated & zeros:
            raise CorruptImage(errno.EIO, f"{self.path}: a subcluster both allocated and zero")
        host = entry & OFFSET_MASK
        if allocated and (not host or host % self.cluster_bytes):
            raise CorruptImage(errno.EIO, f"{self.path}: allocated subclusters at host offset {host}")
        if not allocated and not zeros:
            yield pos, stop - pos, UNALLOCATED, None
            return
        sub = self.subcluster_bytes
        while pos < stop:
            k = (pos - cluster_start) // sub
            piece_stop = min(stop, cluster_start + (k + 1) * sub)
            bit = 1 << k
            if allocated & bit:
                yield pos, piece_stop - pos, DATA, host + pos - cluster_start
            elif zeros & bit:
                yield pos, piece_stop - pos, ZERO, None
            else:
                yield pos, piece_stop - pos, UNALLOCATED, None
            pos = piece_stop

    def decompress(self, stored: bytes) -> bytes:
        """The cluster that ``stored`` (a compressed cluster's bytes, maybe with others' after it) holds."""
        cluster = self.cluster_bytes
        errors = (zlib.error,) if self._zstd is None else (zlib.error, self._zstd.ZstdError)
        try:
            if self._zstd is not None:  # one zstd frame; what follows belongs to other clusters
                out = self._zstd.ZstdDecompressor().decompressobj().decompress(stored)
            else:
                out = zlib.decompressobj(-15).decompress(stored, cluster)  # raw deflate, as qemu writes it
        except errors as e:
            raise CorruptImage(errno.EIO, f"{self.path}: a compressed cluster does not decompress: {e}") from e
        if len(out) < cluster:
            raise CorruptImage(errno.EIO, f"{self.path}: a compressed cluster gives {len(out)} bytes of {cluster}")
        return out[:cluster]


_NONZERO_BYTE = re.compile(rb"[^\x00]")


def _zero_run(raw: bytes, first: int, last: int) -> int:
    """Entries from ``first`` (which is 0) before the next non-zero one, at most up to ``last``."""
    found = _NONZERO_BYTE.search(raw, first * 8, last * 8)
    return (found.start() // 8 if found else last) - first


def _series(first: int, count: int, step: int) -> bytes:
    """``count`` big-endian 8-byte values first, first + step, ..."""
    values = array("Q", range(first, first + count * step, step))
    if sys.byteorder == "little":
        values.byteswap()
    return values.tobytes()


def _data_run(raw: bytes, first: int, last: int, entry: int, cluster: int) -> int:
    """Entries from ``first`` (which is ``entry``) that each point one cluster further in the file, with
    the same flags, at most up to ``last``: compared as bytes, in blocks that double, then halve."""
    count, block = 1, 1
    while count < last - first:
        n = min(block, last - first - count)
        at = (first + count) * 8
        expected = _series(entry + count * cluster, n, cluster)
        if raw[at:at + n * 8] == expected:
            count, block = count + n, block * 2
            continue
        low, high = 0, n  # the first ``low`` entries match, the first ``high`` do not
        while high - low > 1:
            middle = (low + high) // 2
            if raw[at:at + middle * 8] == expected[:middle * 8]:
                low = middle
            else:
                high = middle
        return count + low
    return count


_NONZERO_PER_BYTE = {width: bytes(sum(1 for k in range(0, 8, width) if (byte >> k) & ((1 << width) - 1))
                                    for byte in range(256)) for width in (1, 2, 4)}


def _nonzero_entries(block: bytes, bits: int) -> int:
    """Entries other than 0 in a refcount block of ``bits``-bit entries."""
    if bits < 8:
        return sum(block.translate(_NONZERO_PER_BYTE[bits]))
    if bits == 8:
        return len(block) - block.count(0)
    values = array({16: "H", 32: "I", 64: "Q"}[bits], block[:len(block) - len(block) % (bits // 8)])
    return len(values) - values.count(0)


def file_ranges(fd: int, start: int, end: int) -> Iterator[tuple[int, int, bool]]:
    """``[start, end)`` of the file as (offset, length, is data) by SEEK_DATA/SEEK_HOLE; beyond the end
    of the file is a hole; a file system without SEEK_DATA reports it all as data."""
    pos = start
    while pos < end:
        try:
            data = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # only a hole after pos
                data = end
            elif e.errno == errno.EINVAL:
                yield pos, end - pos, True
                return
            else:
                raise
        data = min(data, end)
        if data > pos:
            yield pos, data - pos, False
        if data >= end:
            return
        hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
        yield data, hole - data, True
        pos = hole


class RawLayer:
    """A raw file open on ``fd`` (not owned) as the bottom of a chain. ``pieces(..., precise=True)`` tells
    its holes (SEEK_HOLE) from its data, as qemu's block status does; reads take it all as data."""

    def __init__(self, path: str, fd: int) -> None:
        self.path, self.fd = path, fd
        length = os.lseek(fd, 0, os.SEEK_END)  # a block device has no st_size
        self.size = -(-length // SECTOR_BYTES) * SECTOR_BYTES  # qemu counts a partial last sector

    def pieces(self, offset: int, length: int, precise: bool = False) -> Iterator[Piece]:
        if not precise:
            yield offset, length, DATA, offset
            return
        for start, n, is_data in file_ranges(self.fd, offset, offset + length):
            yield start, n, DATA if is_data else ZERO, start if is_data else None


def _merged(pieces: Iterator[Piece]) -> Iterator[Piece]:
    """Join neighbours of one state (DATA only when contiguous in the file; COMPRESSED never)."""
    pending: list | None = None
    for start, length, state, where in pieces:
        if pending is not None and pending[2] == state and state != COMPRESSED and (
                state != DATA or pending[3] + pending[1] == where):
            pending[1] += length
            continue
        if pending is not None:
            yield tuple(pending)
        pending = [start, length, state, where]
    if pending is not None:
        yield tuple(pending)
