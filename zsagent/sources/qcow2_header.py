"""The header of one qcow2 image file (versions 2 and 3), read for a reader that maps and reads it itself.

Field offsets, feature bits and header extension types are QEMU's docs/interop/qcow2.txt ("Header",
"Header extensions", "Bitmaps extension", "Bitmap directory"). Anything this reader does not handle
raises :class:`Unsupported` with the reason, so that the caller can let qemu read the image instead:
encryption, an external data file, the dirty or corrupt bits, an unknown incompatible feature or
compression type, a bitmap marked in use, a backing file given as a protocol or of another format.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

MAGIC = b"QFI\xfb"
SECTOR_BYTES = 512
MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 21  # qemu opens clusters from 512 bytes up to 2 MiB
MAX_L1_BYTES = 32 * 1024 * 1024  # qemu's limit on the L1 table
MAX_BACKING_NAME_BYTES = 1023

_V2 = struct.Struct(">4sIQIIQIIQQIIQ")  # up to snapshots_offset: 72 bytes
_V3 = struct.Struct(">QQQII")  # incompatible, compatible, autoclear features, refcount_order, header_length
_EXTENSION = struct.Struct(">II")
_BITMAPS_EXTENSION = struct.Struct(">IIQQ")
_BITMAP_ENTRY = struct.Struct(">QIIBBHI")

# incompatible_features bits
INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
_INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_DATA_FILE | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2
AUTOCLEAR_BITMAPS = 1 << 0

# header extension types
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

COMPRESSION_ZLIB, COMPRESSION_ZSTD = 0, 1
BITMAP_IN_USE = 1 << 0
MAX_BITMAP_DIRECTORY_BYTES = 64 * 1024 * 1024  # qemu's limit


class Unsupported(Exception):
    """The image needs something this reader does not do; str() says what (qemu may still read it)."""


@dataclass(frozen=True)
class Qcow2Header:
    """What a reader needs from one qcow2 file's header. Sizes and offsets in bytes.

    size: virtual size as qemu sees it (the header's size in whole 512-byte sectors).
    cluster_bits: log2 of the cluster size. extended_l2: L2 entries are 16 bytes with 32 subclusters.
    l1_entries, l1_offset: the active L1 table.
    compression: COMPRESSION_ZLIB or COMPRESSION_ZSTD (for compressed clusters).
    backing_name: the backing file name as stored (None: no backing file);
    backing_format: "qcow2", "raw" or None when the header does not say.
    refcount_table_offset, refcount_table_clusters, refcount_order: the refcount table (entries of
    ``1 << refcount_order`` bits).
    """

    version: int
    size: int
    cluster_bits: int
    l1_entries: int
    l1_offset: int
    extended_l2: bool
    compression: int
    backing_name: str | None
    backing_format: str | None
    refcount_table_offset: int = 0
    refcount_table_clusters: int = 0
    refcount_order: int = 4

    @property
    def cluster_bytes(self) -> int:
        return 1 << self.cluster_bits


def read_header(fd: int, path: str) -> Qcow2Header:
    """Parse the header of the qcow2 file open on ``fd`` (``path`` names it in messages)."""
    head = os.pread(fd, 4096, 0)
    if len(head) < _V2.size or head[:4] != MAGIC:
        raise Unsupported(f"{path} is not a qcow2 image")
    (_, version, backing_offset, backing_size, cluster_bits, size, crypt, l1_entries, l1_offset,
     refcount_offset, refcount_clusters, _snapshots, _snapshots_offset) = _V2.unpack_from(head)
    if version not in (2, 3):
        raise Unsupported(f"{path}: qcow2 version {version}")
    if not MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
        raise Unsupported(f"{path}: cluster_bits {cluster_bits}")
    if crypt:
        raise Unsupported(f"{path} is encrypted (crypt_method {crypt})")
    cluster = 1 << cluster_bits
    if cluster > len(head):
        head += os.pread(fd, cluster - len(head), len(head))
    head = head.ljust(cluster, b"\0")  # a file may end inside its first cluster
    incompatible = autoclear = 0
    header_length, compression, refcount_order = _V2.size, COMPRESSION_ZLIB, 4
    if version == 3:
        incompatible, _compatible, autoclear, refcount_order, header_length = _V3.unpack_from(head, _V2.size)
        if refcount_order > 6:
            raise Unsupported(f"{path}: refcount_order {refcount_order}")
        if header_length < 104 or header_length % 8 or header_length > cluster:
            raise Unsupported(f"{path}: header_length {header_length}")
        if header_length > 104:
            compression = head[104]
    _check_features(path, incompatible, compression)
    if l1_entries * 8 > MAX_L1_BYTES or l1_offset % cluster:
        raise Unsupported(f"{path}: L1 table of {l1_entries} entries at {l1_offset}")
    entry_bytes = 16 if incompatible & INCOMPAT_EXTL2 else 8
    if incompatible & INCOMPAT_EXTL2 and cluster_bits < 14:
        raise Unsupported(f"{path}: extended L2 entries with {cluster}-byte clusters")
    guest_clusters = -(-size // cluster)
    if l1_entries < -(-guest_clusters // (cluster // entry_bytes)):
        raise Unsupported(f"{path}: L1 table too small for the virtual size")

    backing_format = _read_extensions(fd, path, head, header_length, cluster, autoclear)
    backing_name = None
    if backing_offset:
        if backing_size > MAX_BACKING_NAME_BYTES or backing_offset + backing_size > cluster:
            raise Unsupported(f"{path}: backing file name of {backing_size} bytes at {backing_offset}")
        try:
            backing_name = head[backing_offset:backing_offset + backing_size].decode()
        except UnicodeDecodeError as e:
            raise Unsupported(f"{path}: backing file name is not UTF-8") from e
    return Qcow2Header(version=version, size=size // SECTOR_BYTES * SECTOR_BYTES, cluster_bits=cluster_bits,
                       l1_entries=l1_entries, l1_offset=l1_offset, extended_l2=bool(incompatible & INCOMPAT_EXTL2),
                       compression=compression, backing_name=backing_name or None, backing_format=backing_format,
                       refcount_table_offset=refcount_offset, refcount_table_clusters=refcount_clusters,
                       refcount_order=refcount_order)


def _check_features(path: str, incompatible: int, compression: int) -> None:
    if incompatible & INCOMPAT_DIRTY:
        raise Unsupported(f"{path} is marked dirty (open in a QEMU, or not closed cleanly)")
    if incompatible & INCOMPAT_CORRUPT:
        raise Unsupported(f"{path} is marked corrupt")
    if incompatible & INCOMPAT_DATA_FILE:
        raise Unsupported(f"{path} keeps its data in an external data file")
    unknown = incompatible & ~_INCOMPAT_KNOWN
    if unknown:
        raise Unsupported(f"{path}: unknown incompatible features {unknown:#x}")
    if compression not in (COMPRESSION_ZLIB, COMPRESSION_ZSTD):
        raise Unsupported(f"{path}: compression type {compression}")
    if bool(incompatible & INCOMPAT_COMPRESSION) != (compression != COMPRESSION_ZLIB):
        raise Unsupported(f"{path}: compression type {compression} and its feature bit disagree")


def _read_extensions(fd: int, path: str, head: bytes, start: int, cluster: int, autoclear: int) -> str | None:
    """Walk the header extensions; returns the backing file format (None when not recorded)."""
    backing_format = None
    pos = start
    while True:
        if pos + _EXTENSION.size > cluster:
            raise Unsupported(f"{path}: header extensions run past the first cluster")
        kind, length = _EXTENSION.unpack_from(head, pos)
        pos += _EXTENSION.size
        if kind == EXT_END:
            return backing_format
        if pos + length > cluster:
            raise Unsupported(f"{path}: header extension {kind:#x} runs past the first cluster")
        data = head[pos:pos + length]
        if kind == EXT_BACKING_FORMAT:
            backing_format = data.decode(errors="replace")
        elif kind == EXT_CRYPTO:
            raise Unsupported(f"{path} is encrypted")
        elif kind == EXT_DATA_FILE:
            raise Unsupported(f"{path} names an external data file")
        elif kind == EXT_BITMAPS and autoclear & AUTOCLEAR_BITMAPS:
            _check_bitmaps(fd, path, data)
        pos += (length + 7) & ~7


def _check_bitmaps(fd: int, path: str, extension: bytes) -> None:
    """A persistent bitmap marked in use means a QEMU has (or had, before a crash) the image open for
    writing: this image is not a stopped volume's."""
    if len(extension) < _BITMAPS_EXTENSION.size:
        raise Unsupported(f"{path}: short bitmaps extension")
    count, _, directory_bytes, directory_offset = _BITMAPS_EXTENSION.unpack_from(extension)
    if directory_bytes > MAX_BITMAP_DIRECTORY_BYTES:
        raise Unsupported(f"{path}: bitmap directory of {directory_bytes} bytes")
    directory = os.pread(fd, directory_bytes, directory_offset)
    pos = 0
    for _ in range(count):
        if pos + _BITMAP_ENTRY.size > len(directory):
            raise Unsupported(f"{path}: truncated bitmap directory")
        _table, _table_size, flags, _type, _granularity, name_size, extra = _BITMAP_ENTRY.unpack_from(directory, pos)
        name_at = pos + _BITMAP_ENTRY.size + extra
        name = directory[name_at:name_at + name_size].decode(errors="replace")
        if flags & BITMAP_IN_USE:
            raise Unsupported(f"{path}: bitmap {name!r} is in use (open in a QEMU, or not closed cleanly)")
        pos = (name_at + name_size + 7) & ~7
