"""One layer of a backing chain, as guest ranges: what each part of a qcow2 or raw file holds, and where.

``pieces(offset, length)`` describes ``[offset, offset + length)`` of the layer (inside its size) as
``(start, length, state, where)`` tuples in order, neighbours of one kind merged:

    DATA         where = the file offset of ``start``'s bytes (contiguous for ``length`` bytes)
    COMPRESSED   where = (file offset, stored bytes, guest offset of the cluster): one compressed cluster
    ZERO         reads as zeros and hides the layers below (a zero cluster/subcluster, a hole of a raw file)
    UNALLOCATED  not in this layer: read the backing file (zeros when there is none)

L1/L2 entry formats are QEMU's docs/interop/qcow2.txt ("Cluster mapping", "Extended L2 Entries");
the classification follows qemu's block/qcow2.h ``qcow2_get_cluster_type``. L2 tables are read as they
are needed and kept in a bounded cache.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Iterator

from zsagent.sources.qcow2_header import COMPRESSION_ZSTD, SECTOR_BYTES, Qcow2Header

DATA, COMPRESSED, ZERO, UNALLOCATED = range(4)
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
        self._cache: OrderedDict[int, array] = OrderedDict()
        self._cache_max = max(16, L2_CACHE_BYTES // self.cluster_bytes)
        self._lock = threading.Lock()
        # compressed descriptor: offset in the low x bits, then the count of additional sectors
        self._compressed_bits = 62 - (self.cluster_bits - 8)
        self._compressed_sectors_mask = (1 << (self.cluster_bits - 8)) - 1

    def _l2_table(self, offset: int) -> array:
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
        table = _entries(raw)
        with self._lock:
            self._cache[offset] = table
            while len(self._cache) > self._cache_max:
                self._cache.popitem(last=False)
        return table

    def pieces(self, offset: int, length: int, precise: bool = False) -> Iterator[Piece]:
        return _merged(self._cluster_pieces(offset, offset + length))

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
            table = self._l2_table(l2_offset)
            table_end = min(end, (l1_index + 1) * per_table * cluster)
            while pos < table_end:
                cluster_start = (pos >> bits) << bits
                stop = min(table_end, cluster_start + cluster)
                entry = table[l2_index * words]
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
        try:
            if self.compression == COMPRESSION_ZSTD:
                import zstandard  # PyPI's zstandard: only images with zstd compression need it

                out = zstandard.ZstdDecompressor().decompressobj().decompress(stored)
            else:
                out = zlib.decompressobj(-15).decompress(stored, cluster)  # raw deflate, as qemu writes it
        except (zlib.error, Exception) as e:  # zstandard.ZstdError is an Exception
            raise CorruptImage(errno.EIO, f"{self.path}: a compressed cluster does not decompress: {e}") from e
        if len(out) < cluster:
            raise CorruptImage(errno.EIO, f"{self.path}: a compressed cluster gives {len(out)} bytes of {cluster}")
        return out[:cluster]


class RawLayer:
    """A raw file open on ``fd`` (not owned) as the bottom of a chain. ``pieces(..., precise=True)`` tells
    its holes (SEEK_HOLE) from its data, as qemu's block status does; reads take it all as data."""

    def __init__(self, path: str, fd: int) -> None:
        self.path, self.fd = path, fd
        length = os.lseek(fd, 0, os.SEEK_END)  # a block device has no st_size
        self.size = -(-length // SECTOR_BYTES) * SECTOR_BYTES  # qemu counts a partial last sector

    def pieces(self, offset: int, length: int, precise: bool = False) -> Iterator[Piece]:
        end = offset + length
        if not precise:
            yield offset, length, DATA, offset
            return
        pos = offset
        while pos < end:
            try:
                data = os.lseek(self.fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:  # only a hole after pos
                    data = end
                elif e.errno == errno.EINVAL:  # no SEEK_DATA here: all of it is data
                    yield pos, end - pos, DATA, pos
                    return
                else:
                    raise
            data = min(data, end)
            if data > pos:
                yield pos, data - pos, ZERO, None
            if data >= end:
                return
            hole = min(os.lseek(self.fd, data, os.SEEK_HOLE), end)
            yield data, hole - data, DATA, data
            pos = hole


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
