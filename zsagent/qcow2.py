"""A qcow2 v3 (compat 1.1) image laid out in full before its first byte is written, so it can be streamed.

Streaming means: one pass, strictly sequential output, no seek, no temporary file, so the MD5 of the exact
file bytes comes for free and the output may be a pipe or an SFTP stream. That works because everything
qcow2 needs to know up front follows from the volume's allocation map (its extents):

    cluster 0                     header (104 bytes, version 3) + end-of-extensions marker, zero padded
    l1_offset                     L1 table            (l1_clusters)
    refcount_table_offset         refcount table      (refcount_table_clusters)
    refcount_block_offset         refcount blocks     (refcount_blocks)
    l2_offset                     L2 tables           (l2_tables, one per L1 entry that maps any data)
    data_offset                   data clusters       (data_clusters, in guest order)
    file_size                     end of file = file_clusters * cluster_bytes

Decisions (kept simple, and ``qemu-img check`` clean):

- A guest cluster is *allocated* when any DATA extent touches it; ZERO and HOLE extents leave their clusters
  unallocated. The image has no backing file, so unallocated clusters read as zeros. No zero flags, no
  compression, no extended L2 entries; all feature bits 0; no header extension but the end marker.
- Allocated guest clusters are stored in guest order, so a run of consecutive guest clusters is a run of
  consecutive host clusters and the guest byte stream maps onto the data area piece by piece.
- The layout is fixed when it is planned. Bytes of an allocated cluster that turn out to be zeros (the
  pipeline reports an all-zero DATA chunk with ``zero()``, or a DATA extent covers only part of a cluster,
  or the last cluster is partial because the virtual size is not a multiple of the cluster size) are
  written as zeros: the map stays what the metadata already said.
- qemu counts a qcow2 image's size in 512-byte sectors and drops a partial last one, so the size field
  of the header is the virtual size rounded up to a whole sector (as ``qemu-img create``/``convert``
  do); the added bytes read as zeros.
- refcount_order 4 (16-bit refcounts). Every cluster of the file - metadata and data - has refcount 1 and
  nothing else has any, so there are no leaks; the COPIED flag (bit 63) is set in every L1 and L2 entry.

``plan_layout()`` computes a :class:`Qcow2Layout`; ``metadata_chunks()`` yields the bytes from offset 0 to
``data_offset``; a :class:`DataEncoder` turns the guest byte stream into the data area; ``encode()``
chains both for callers that have the whole stream at hand (tests). Memory stays a few clusters whatever
the volume size: metadata is produced one cluster at a time and the map is kept as runs.
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from zsagent.copy.extents import Extent, Kind

MAGIC = b"QFI\xfb"
VERSION = 3
HEADER_BYTES = 104
"""Length of the version 3 header up to and including header_length (no optional fields)."""
REFCOUNT_ORDER = 4
REFCOUNT_ENTRY_BYTES = (1 << REFCOUNT_ORDER) // 8
COPIED = 1 << 63
"""L1/L2 entry flag: the cluster it points to has refcount exactly one."""
SECTOR_BYTES = 512
MIN_CLUSTER_BITS, MAX_CLUSTER_BITS = 9, 21
DEFAULT_CLUSTER_BITS = 16
MAX_L1_TABLE_BYTES = 32 * 1024 * 1024
"""qemu refuses images with a larger L1 table."""
MAX_REFCOUNT_TABLE_BYTES = 8 * 1024 * 1024
"""qemu refuses images with a larger refcount table."""
MAX_HOST_OFFSET = 1 << 56
"""L1/L2 entries hold host offsets below 64 PiB only."""

_HEADER = struct.Struct(">4sIQIIQIIQQIIQQQQII")
_ENTRY = struct.Struct(">Q")
_ZEROS = memoryview(bytes(1 << 20))


@dataclass(frozen=True)
class Qcow2Layout:
    """Where everything of one qcow2 image lives. Offsets and sizes are in bytes unless named clusters.

    virtual_size: size of the volume (of the guest byte stream the encoder takes).
    image_size: the size field of the header: virtual_size rounded up to a multiple of 512.
    cluster_bits: log2 of the cluster size; cluster_bytes: the cluster size.
    guest_clusters: clusters the virtual size spans (the last one may be partial).
    l2_entries: 8-byte entries per L2 table (guest clusters one L2 table maps).
    l1_entries: entries of the L1 table (one per L2 table the virtual size needs, mapped or not);
        l1_offset: where the L1 table starts (0 when it has no entry); l1_clusters: clusters it occupies.
    refcount_table_offset, refcount_table_clusters: the refcount table.
    refcount_block_offset, refcount_blocks: the refcount blocks, one cluster each, back to back;
        refcount_block_entries: 16-bit refcounts per block (host clusters one block covers).
    l2_offset, l2_tables: the L2 tables, one cluster each, in L1 order.
    data_offset, data_clusters: the allocated guest clusters, in guest order.
    file_clusters, file_size: the whole image; every one of its clusters has refcount 1.
    allocated_runs: the guest -> host map as runs ``(first guest cluster, count)``, sorted, neither
        overlapping nor touching; run k's first cluster is stored at
        ``data_offset + (clusters in runs before k) * cluster_bytes``. See ``host_offset()``.
    l2_runs: L1 indexes that have an L2 table, as runs ``(first L1 index, count)``, in the same way.
    """

    virtual_size: int
    image_size: int
    cluster_bits: int
    cluster_bytes: int
    guest_clusters: int
    l2_entries: int
    l1_entries: int
    l1_offset: int
    l1_clusters: int
    refcount_table_offset: int
    refcount_table_clusters: int
    refcount_block_offset: int
    refcount_blocks: int
    refcount_block_entries: int
    l2_offset: int
    l2_tables: int
    data_offset: int
    data_clusters: int
    file_clusters: int
    file_size: int
    allocated_runs: tuple[tuple[int, int], ...]
    l2_runs: tuple[tuple[int, int], ...]
    _run_starts: tuple[int, ...] = field(repr=False, compare=False)
    _run_ranks: tuple[int, ...] = field(repr=False, compare=False)
    _l2_starts: tuple[int, ...] = field(repr=False, compare=False)
    _l2_ranks: tuple[int, ...] = field(repr=False, compare=False)

    def host_offset(self, guest_cluster: int) -> int | None:
        """File offset of guest cluster ``guest_cluster``'s data, or None when it is unallocated."""
        rank = _rank(self.allocated_runs, self._run_starts, self._run_ranks, guest_cluster)
        return None if rank is None else self.data_offset + rank * self.cluster_bytes

    def l2_table_offset(self, l1_index: int) -> int | None:
        """File offset of the L2 table of L1 entry ``l1_index``, or None when that entry is empty."""
        rank = _rank(self.l2_runs, self._l2_starts, self._l2_ranks, l1_index)
        return None if rank is None else self.l2_offset + rank * self.cluster_bytes

    def guest_to_host(self) -> Iterator[tuple[int, int]]:
        """(guest cluster, file offset) of every allocated guest cluster, in guest (= file) order."""
        host = self.data_offset
        for first, count in self.allocated_runs:
            for guest in range(first, first + count):
                yield guest, host
                host += self.cluster_bytes


def _rank(runs: Sequence[tuple[int, int]], starts: Sequence[int], ranks: Sequence[int],
          index: int) -> int | None:
    """Position of ``index`` among all indexes of ``runs`` (None when no run holds it)."""
    k = bisect_right(starts, index) - 1
    if k < 0:
        return None
    first, count = runs[k]
    return ranks[k] + index - first if index < first + count else None


def _runs_with_ranks(runs: list[tuple[int, int]]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    ranks, total = [], 0
    for _, count in runs:
        ranks.append(total)
        total += count
    return tuple(first for first, _ in runs), tuple(ranks)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def allocated_cluster_runs(size: int, extents: Iterable[Extent], cluster_bits: int) -> list[tuple[int, int]]:
    """Guest clusters touched by DATA extents (clipped to ``[0, size)``) as merged runs (first, count)."""
    spans = []
    for ext in extents:
        if ext.kind is not Kind.DATA:
            continue
        start, end = max(ext.offset, 0), min(ext.end, size)
        if end > start:
            spans.append((start >> cluster_bits, ((end - 1) >> cluster_bits) + 1))
    runs: list[list[int]] = []
    for first, stop in sorted(spans):
        if runs and first <= runs[-1][1]:
            runs[-1][1] = max(runs[-1][1], stop)
        else:
            runs.append([first, stop])
    return [(first, stop - first) for first, stop in runs]


def plan_layout(size: int, extents: Iterable[Extent],
                cluster_bits: int = DEFAULT_CLUSTER_BITS) -> Qcow2Layout:
    """Lay out a qcow2 image of ``size`` virtual bytes whose allocated clusters are those DATA touches.

    Raises ValueError for a negative size, a cluster_bits outside 9..21, or a volume whose tables would
    exceed qemu's limits (use larger clusters then).
    """
    if size < 0:
        raise ValueError("virtual size must not be negative")
    if not MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
        raise ValueError(f"cluster_bits must be between {MIN_CLUSTER_BITS} and {MAX_CLUSTER_BITS}")
    cluster = 1 << cluster_bits
    l2_entries = cluster // _ENTRY.size
    guest_clusters = _ceil_div(size, cluster)
    l1_entries = _ceil_div(guest_clusters, l2_entries)
    if l1_entries * _ENTRY.size > MAX_L1_TABLE_BYTES:
        raise ValueError(f"a {size}-byte volume needs an L1 table larger than qemu accepts with "
                         f"{cluster}-byte clusters; use larger clusters")
    l1_clusters = _ceil_div(l1_entries * _ENTRY.size, cluster)

    runs = allocated_cluster_runs(size, extents, cluster_bits)
    data_clusters = sum(count for _, count in runs)
    l2_runs: list[tuple[int, int]] = []
    for first, count in runs:
        lo, hi = first // l2_entries, (first + count - 1) // l2_entries + 1
        if l2_runs and lo < sum(l2_runs[-1]):  # shares its first table with the previous run
            lo = sum(l2_runs[-1])
        if hi <= lo:
            continue
        if l2_runs and lo == sum(l2_runs[-1]):
            l2_runs[-1] = (l2_runs[-1][0], hi - l2_runs[-1][0])
        else:
            l2_runs.append((lo, hi - lo))
    l2_tables = sum(count for _, count in l2_runs)

    # The refcount structures count themselves: grow them until they cover the whole file.
    block_entries = cluster * 8 >> REFCOUNT_ORDER
    fixed = 1 + l1_clusters + l2_tables + data_clusters
    table_clusters = blocks = 1
    while True:
        total = fixed + table_clusters + blocks
        need_blocks = _ceil_div(total, block_entries)
        need_table = _ceil_div(need_blocks * _ENTRY.size, cluster)
        if (need_blocks, need_table) == (blocks, table_clusters):
            break
        blocks, table_clusters = max(blocks, need_blocks), max(table_clusters, need_table)
    if table_clusters * cluster > MAX_REFCOUNT_TABLE_BYTES:
        raise ValueError(f"a {size}-byte volume needs a refcount table larger than qemu accepts with "
                         f"{cluster}-byte clusters; use larger clusters")
    file_clusters = fixed + table_clusters + blocks
    if file_clusters * cluster > MAX_HOST_OFFSET:
        raise ValueError("the image would be larger than qcow2 can address")

    l1_offset = cluster if l1_entries else 0
    refcount_table_offset = (1 + l1_clusters) * cluster
    refcount_block_offset = refcount_table_offset + table_clusters * cluster
    l2_offset = refcount_block_offset + blocks * cluster
    data_offset = l2_offset + l2_tables * cluster
    run_starts, run_ranks = _runs_with_ranks(runs)
    l2_starts, l2_ranks = _runs_with_ranks(l2_runs)
    return Qcow2Layout(
        virtual_size=size, image_size=_ceil_div(size, SECTOR_BYTES) * SECTOR_BYTES,
        cluster_bits=cluster_bits, cluster_bytes=cluster, guest_clusters=guest_clusters,
        l2_entries=l2_entries, l1_entries=l1_entries, l1_offset=l1_offset, l1_clusters=l1_clusters,
        refcount_table_offset=refcount_table_offset, refcount_table_clusters=table_clusters,
        refcount_block_offset=refcount_block_offset, refcount_blocks=blocks,
        refcount_block_entries=block_entries, l2_offset=l2_offset, l2_tables=l2_tables,
        data_offset=data_offset, data_clusters=data_clusters, file_clusters=file_clusters,
        file_size=file_clusters * cluster, allocated_runs=tuple(runs), l2_runs=tuple(l2_runs),
        _run_starts=run_starts, _run_ranks=run_ranks, _l2_starts=l2_starts, _l2_ranks=l2_ranks)


# ------------------------------------------------------------------------------------------- metadata


def metadata_chunks(layout: Qcow2Layout) -> Iterator[bytes]:
    """The image bytes from offset 0 up to ``layout.data_offset``, one cluster (at most) per chunk."""
    yield header_cluster(layout)
    yield from _l1_table(layout)
    yield from _refcount_table(layout)
    yield from _refcount_blocks(layout)
    yield from _l2_tables(layout)


def header_cluster(layout: Qcow2Layout) -> bytes:
    """Cluster 0: the version 3 header, an end-of-extensions marker (8 zero bytes), zero padding."""
    header = _HEADER.pack(
        MAGIC, VERSION,
        0, 0,  # backing file offset, name length: none
        layout.cluster_bits, layout.image_size,
        0,  # crypt method: none
        layout.l1_entries, layout.l1_offset,
        layout.refcount_table_offset, layout.refcount_table_clusters,
        0, 0,  # snapshots: count, offset
        0, 0, 0,  # incompatible, compatible, autoclear features
        REFCOUNT_ORDER, HEADER_BYTES)
    end_of_extensions = bytes(8)
    return (header + end_of_extensions).ljust(layout.cluster_bytes, b"\0")


def _big_endian_series(first: int, count: int, step: int) -> bytes:
    """``count`` 8-byte big-endian values first, first + step, ... (fast: no per-entry Python code)."""
    values = array("Q", range(first, first + count * step, step))
    if sys.byteorder == "little":
        values.byteswap()
    return values.tobytes()


def _table_clusters(layout: Qcow2Layout, entries: int, runs: Sequence[tuple[int, int]],
                    first_target: int, flags: int = COPIED) -> Iterator[bytes]:
    """The clusters of a table of ``entries`` 8-byte entries: the entries in ``runs`` (first, count)
    point, in order, at consecutive clusters from ``first_target``, with ``flags`` set; the others are 0."""
    cluster = layout.cluster_bytes
    per_cluster = cluster // _ENTRY.size
    k, target = 0, first_target
    for table_index in range(_ceil_div(entries, per_cluster)):
        lo, hi = table_index * per_cluster, (table_index + 1) * per_cluster
        table = bytearray(cluster)
        while k < len(runs) and runs[k][0] < hi:
            first, count = runs[k]
            start, stop = max(first, lo), min(first + count, hi)
            skipped = start - first
            if stop > start:
                host = target + skipped * cluster
                entries_bytes = _big_endian_series(host | flags, stop - start, cluster)
                table[(start - lo) * 8:(stop - lo) * 8] = entries_bytes
            if first + count > hi:
                break  # the run goes on in the next cluster of the table
            target += count * cluster
            k += 1
        yield bytes(table)


def _l1_table(layout: Qcow2Layout) -> Iterator[bytes]:
    return _table_clusters(layout, layout.l1_entries, layout.l2_runs, layout.l2_offset)


def _l2_tables(layout: Qcow2Layout) -> Iterator[bytes]:
    """One L2 table per mapped L1 entry, in L1 order, each mapping its share of the allocated runs."""
    per_table = layout.l2_entries
    runs = layout.allocated_runs
    for first_table, count in layout.l2_runs:
        for table_index in range(first_table, first_table + count):
            lo = table_index * per_table
            # the runs of this table, cut to it and shifted to table-relative indexes
            k = max(bisect_right(layout._run_starts, lo) - 1, 0)
            local, host = [], None
            while k < len(runs) and runs[k][0] < lo + per_table:
                first, n = runs[k]
                start, stop = max(first, lo), min(first + n, lo + per_table)
                if stop > start:
                    if host is None:
                        rank = layout._run_ranks[k] + start - first
                        host = layout.data_offset + rank * layout.cluster_bytes
                    local.append((start - lo, stop - start))
                k += 1
            yield from _table_clusters(layout, per_table, local, host or 0)


def _refcount_table(layout: Qcow2Layout) -> Iterator[bytes]:
    runs = [(0, layout.refcount_blocks)]
    return _table_clusters(layout, layout.refcount_table_clusters * layout.l2_entries, runs,
                           layout.refcount_block_offset, flags=0)


def _refcount_blocks(layout: Qcow2Layout) -> Iterator[bytes]:
    """Refcount 1 for every cluster of the file, 0 past its end."""
    one = (1).to_bytes(REFCOUNT_ENTRY_BYTES, "big")
    full = one * layout.refcount_block_entries
    left = layout.file_clusters
    for _ in range(layout.refcount_blocks):
        n = min(left, layout.refcount_block_entries)
        yield full if n == layout.refcount_block_entries else (one * n).ljust(layout.cluster_bytes, b"\0")
        left -= n


# ------------------------------------------------------------------------------------------- data


def zero_pieces(length: int) -> Iterator[memoryview]:
    """``length`` zero bytes as slices of one shared buffer (no allocation per call)."""
    step = len(_ZEROS)
    while length > 0:
        n = min(step, length)
        yield _ZEROS[:n]
        length -= n


class DataEncoder:
    """Turns the guest byte stream into the data area of the image (the bytes from ``data_offset``).

    Feed it every byte of ``[0, virtual_size)`` exactly once, in offset order, as data (``data()``) or as
    zeros (``zeros()``), then call ``finish()``. Bytes of allocated clusters come out as given (zeros as
    slices of a shared zero buffer, data as memoryviews of the caller's buffer, never copied); bytes of
    unallocated clusters are dropped, and must be zeros. ``position`` is the next guest offset expected.
    When the data given is ``bytes``, every piece is a view of an immutable buffer, so a consumer may keep
    it after the next one comes.
    """

    def __init__(self, layout: Qcow2Layout) -> None:
        self.layout = layout
        self.position = 0
        self._run = 0  # index of the first allocated run that ends after position

    def data(self, offset: int, data: bytes | bytearray | memoryview) -> Iterator[memoryview]:
        view = memoryview(data).cast("B")
        for start, stop, allocated in self._split(offset, len(view)):
            piece = view[start - offset:stop - offset]
            if allocated:
                yield piece
            elif bytes(piece) != bytes(len(piece)):
                raise ValueError(f"data at guest offset {start} falls in a cluster the extents did not "
                                 "report as data")
        self.position = offset + len(view)

    def zeros(self, offset: int, length: int) -> Iterator[memoryview]:
        for start, stop, allocated in self._split(offset, length):
            if allocated:
                yield from zero_pieces(stop - start)
        self.position = offset + length

    def finish(self) -> Iterator[memoryview]:
        """Zero padding of a partial last cluster; checks that the whole stream was fed."""
        layout = self.layout
        if self.position != layout.virtual_size:
            raise ValueError(f"the stream ended at guest offset {self.position} of {layout.virtual_size}")
        runs = layout.allocated_runs
        if runs and sum(runs[-1]) == layout.guest_clusters:
            yield from zero_pieces(layout.guest_clusters * layout.cluster_bytes - layout.virtual_size)

    def _split(self, offset: int, length: int) -> Iterator[tuple[int, int, bool]]:
        """``[offset, offset + length)`` as (start, stop, allocated) pieces, in order."""
        if offset != self.position:
            raise ValueError(f"guest offset {offset} out of order: expected {self.position}")
        end = offset + length
        if end > self.layout.virtual_size:
            raise ValueError(f"guest range {offset}+{length} ends beyond the virtual size")
        runs, bits = self.layout.allocated_runs, self.layout.cluster_bits
        pos = offset
        while pos < end:
            while self._run < len(runs) and sum(runs[self._run]) << bits <= pos:
                self._run += 1
            if self._run == len(runs):
                yield pos, end, False
                return
            first, count = runs[self._run]
            run_start, run_stop = first << bits, (first + count) << bits
            if pos < run_start:
                stop = min(run_start, end)
                yield pos, stop, False
            else:
                stop = min(run_stop, end)
                yield pos, stop, True
            pos = stop


def encode(layout: Qcow2Layout,
           pieces: Iterable[tuple[int, bytes | bytearray | memoryview | int]],
           ) -> Iterator[bytes | memoryview]:
    """The whole image: metadata, then the data area made of ``pieces`` - ``(offset, data)`` or
    ``(offset, zero length)`` covering the volume in order (see :class:`DataEncoder`)."""
    yield from metadata_chunks(layout)
    encoder = DataEncoder(layout)
    for offset, piece in pieces:
        if isinstance(piece, int):
            yield from encoder.zeros(offset, piece)
        else:
            yield from encoder.data(offset, piece)
    yield from encoder.finish()
