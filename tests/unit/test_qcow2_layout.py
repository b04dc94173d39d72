"""The qcow2 layout planner and encoder: structural invariants over random allocation maps (checked by a
small reader written here from the format spec), then end to end through the pipeline into files that
qemu-img checks and compares."""

import json
import os
import struct
import subprocess

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support import md5sum_file

from zsagent.copy.extents import Extent, Kind, covering
from zsagent.copy.pipeline import PipelineConfig, run_copy
from zsagent.qcow2 import DataEncoder, encode, metadata_chunks, plan_layout
from zsagent.sinks.file_stream import FileStreamTarget
from zsagent.sinks.qcow2_stream import Qcow2StreamSink
from zsagent.sources.raw_file import RawFileSource

KiB, MiB = 1024, 1024 * 1024
COPIED = 1 << 63
OFFSET_MASK = ((1 << 56) - 1) & ~511


# ------------------------------------------------------------------------------ a reader for the checks


def parse_image(image: bytes) -> dict:
    """Read back what a qcow2 v3 image says (no compression, no snapshots): header fields, the guest ->
    host map, the host cluster of every structure, and the refcount of every host cluster."""
    (magic, version, backing_offset, _, cluster_bits, size, crypt, l1_size, l1_offset, rt_offset,
     rt_clusters, nb_snapshots, _, incompatible, compatible, autoclear, refcount_order,
     header_length) = struct.unpack_from(">4sIQIIQIIQQIIQQQQII", image)
    assert (magic, version, backing_offset, crypt, nb_snapshots) == (b"QFI\xfb", 3, 0, 0, 0)
    assert (incompatible, compatible, autoclear, refcount_order) == (0, 0, 0, 4)
    assert header_length == 104 and image[104:112] == bytes(8)  # end of header extensions
    cluster = 1 << cluster_bits

    def entries(offset, count):
        return struct.unpack_from(f">{count}Q", image, offset)

    def clusters_of(offset, nbytes):
        assert offset % cluster == 0
        return list(range(offset // cluster, (offset + nbytes + cluster - 1) // cluster))

    owners = {0: "header"}  # host cluster -> what lives there

    def own(host_cluster, what):
        assert host_cluster not in owners, f"{what} and {owners[host_cluster]} share cluster {host_cluster}"
        owners[host_cluster] = what

    for c in clusters_of(l1_offset, l1_size * 8) if l1_size else []:
        own(c, "L1")
    for c in clusters_of(rt_offset, rt_clusters * cluster):
        own(c, "refcount table")
    refcounts = {}
    block_entries = cluster * 8 // 16
    for i, entry in enumerate(entries(rt_offset, rt_clusters * cluster // 8)):
        if entry:
            assert entry & ~OFFSET_MASK == 0
            own(entry // cluster, f"refcount block {i}")
            for j, count in enumerate(struct.unpack_from(f">{block_entries}H", image, entry)):
                if count:
                    refcounts[i * block_entries + j] = count
    guest_map, l1_map = {}, {}
    l2_entries = cluster // 8
    for i, l1 in enumerate(entries(l1_offset, l1_size) if l1_size else ()):
        if not l1:
            continue
        assert l1 & COPIED and l1 & ~(OFFSET_MASK | COPIED) == 0
        l1_map[i] = l1 & OFFSET_MASK
        own(l1_map[i] // cluster, f"L2 table {i}")
        for j, l2 in enumerate(entries(l1 & OFFSET_MASK, l2_entries)):
            if l2:
                assert l2 & COPIED and l2 & ~(OFFSET_MASK | COPIED) == 0  # standard, no zero flag
                guest = i * l2_entries + j
                guest_map[guest] = l2 & OFFSET_MASK
                own(guest_map[guest] // cluster, f"guest cluster {guest}")
    return {"cluster_bits": cluster_bits, "size": size, "l1_size": l1_size, "l1_map": l1_map,
            "guest_map": guest_map, "owners": owners, "refcounts": refcounts}


# ------------------------------------------------------------------------------ random allocation maps


@st.composite
def allocation_maps(draw, max_size=3 * MiB):
    """(size, extents, cluster_bits): DATA, ZERO and HOLE extents covering a volume of random size."""
    cluster_bits = draw(st.sampled_from([9, 12, 16, 17, 21]))
    size = draw(st.one_of(st.just(0), st.integers(1, max_size),
                          st.integers(1, 64).map(lambda n: n << cluster_bits)))  # whole clusters
    ranges = draw(st.lists(st.tuples(st.integers(0, max(size - 1, 0)), st.integers(1, 400 * KiB)),
                           max_size=6))
    if size and draw(st.booleans()):  # something in the last (maybe partial) cluster
        ranges.append((size - draw(st.integers(1, min(size, 4096))), 4096))
    gap = draw(st.sampled_from([Kind.HOLE, Kind.ZERO]))
    return size, list(covering(size, ranges, gap)), cluster_bits


def touched_clusters(size, extents, cluster_bits):
    """The allocated guest clusters, the slow and obvious way."""
    cluster = 1 << cluster_bits
    return {c for e in extents if e.kind is Kind.DATA
            for c in range(e.offset // cluster, (min(e.end, size) - 1) // cluster + 1)}


@settings(max_examples=150, deadline=None)
@given(allocation_maps())
@example((0, [], 16))
@example((3 * MiB + 1, [Extent(0, 3 * MiB + 1, Kind.DATA)], 9))  # fully allocated, many tables
@example((10 * MiB, [Extent(0, 10 * MiB - 1, Kind.HOLE), Extent(10 * MiB - 1, 1, Kind.DATA)], 16))
def test_layout_is_consistent_and_maps_exactly_the_data_clusters(allocation):
    size, extents, cluster_bits = allocation
    layout = plan_layout(size, extents, cluster_bits)
    cluster = layout.cluster_bytes
    wanted = touched_clusters(size, extents, cluster_bits)

    # the planner's own numbers
    assert cluster == 1 << cluster_bits and layout.file_size == layout.file_clusters * cluster
    assert layout.guest_clusters == -(-size // cluster) and layout.data_clusters == len(wanted)
    assert layout.image_size % 512 == 0 and size <= layout.image_size < size + 512
    for offset in (layout.l1_offset, layout.refcount_table_offset, layout.refcount_block_offset,
                   layout.l2_offset, layout.data_offset):
        assert offset % cluster == 0
    assert layout.data_offset + layout.data_clusters * cluster == layout.file_size
    assert layout.refcount_blocks * layout.refcount_block_entries >= layout.file_clusters
    assert {g for g, _ in layout.guest_to_host()} == wanted
    for guest in range(layout.guest_clusters + 1):
        assert (layout.host_offset(guest) is None) == (guest not in wanted)

    # what the bytes say, read back independently
    metadata = b"".join(metadata_chunks(layout))
    assert len(metadata) == layout.data_offset
    parsed = parse_image(metadata)  # the tables all lie before the data area
    assert parsed["size"] == layout.image_size and parsed["cluster_bits"] == cluster_bits
    assert parsed["l1_size"] * (cluster // 8) >= layout.guest_clusters  # L1 covers the whole volume
    assert parsed["guest_map"] == dict(layout.guest_to_host())
    assert parsed["l1_map"] == {i: layout.l2_table_offset(i) for i in range(layout.l1_entries)
                                if layout.l2_table_offset(i) is not None}
    assert len(parsed["l1_map"]) == layout.l2_tables
    hosts = sorted(parsed["guest_map"].values())
    assert hosts == [layout.data_offset + i * cluster for i in range(len(hosts))]  # guest order, packed
    # every cluster of the file belongs to exactly one thing and has refcount 1; nothing else has one
    assert sorted(parsed["owners"]) == list(range(layout.file_clusters))
    assert parsed["refcounts"] == dict.fromkeys(range(layout.file_clusters), 1)


def test_huge_sparse_volume_is_planned_cheaply():
    size = 16 * 1024**4  # 16 TiB, three small extents
    extents = list(covering(size, [(0, MiB), (5 * 1024**4, 3), (size - 4096, 4096)]))
    layout = plan_layout(size, extents)
    assert layout.data_clusters == 16 + 1 + 1 and layout.l2_tables == 3
    assert layout.l1_entries == size // (64 * KiB * 8192)
    assert layout.file_size < 2 * MiB
    assert sum(len(c) for c in metadata_chunks(layout)) == layout.data_offset


def test_limits_and_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="cluster_bits"):
        plan_layout(MiB, [], 8)
    with pytest.raises(ValueError, match="cluster_bits"):
        plan_layout(MiB, [], 22)
    with pytest.raises(ValueError, match="negative"):
        plan_layout(-1, [])
    with pytest.raises(ValueError, match="L1 table larger"):
        plan_layout(1 << 50, [], 9)


def test_encoder_insists_on_the_planned_stream():
    size = 256 * KiB
    layout = plan_layout(size, [Extent(0, 64 * KiB, Kind.DATA), Extent(64 * KiB, 192 * KiB, Kind.HOLE)])
    encoder = DataEncoder(layout)
    with pytest.raises(ValueError, match="out of order"):
        list(encoder.zeros(4096, 10))
    list(encoder.data(0, b"\x01" * 64 * KiB))
    list(encoder.data(64 * KiB, bytes(4096)))  # zeros where nothing is allocated: fine, dropped
    with pytest.raises(ValueError, match="did not report as data"):
        list(encoder.data(68 * KiB, b"\x01"))
    with pytest.raises(ValueError, match="ended at guest offset"):
        list(DataEncoder(layout).finish())
    with pytest.raises(ValueError, match="beyond the virtual size"):
        list(DataEncoder(layout).zeros(0, size + 1))


def test_encode_in_memory_gives_the_data_back():
    size = 200 * KiB + 7
    content = bytearray(size)
    content[70 * KiB:90 * KiB] = os.urandom(20 * KiB)
    content[-7:] = b"the end"
    extents = list(covering(size, [(70 * KiB, 20 * KiB), (size - 7, 7)]))
    layout = plan_layout(size, extents, 12)
    pieces = [(e.offset, bytes(content[e.offset:e.end]) if e.kind is Kind.DATA else e.length)
              for e in extents]
    image = b"".join(encode(layout, pieces))
    assert len(image) == layout.file_size
    cluster = layout.cluster_bytes
    readback = bytearray(layout.guest_clusters * cluster)
    for guest, host in parse_image(image)["guest_map"].items():
        readback[guest * cluster:(guest + 1) * cluster] = image[host:host + cluster]
    assert readback[:size] == content and not any(readback[size:])


# ------------------------------------------------------------------------------ end to end with qemu-img


def qemu_img(*argv, check=True):
    return subprocess.run(["qemu-img", *argv], capture_output=True, text=True, check=check)


def assert_qemu_accepts(raw, image, size, cluster_bits):
    check = qemu_img("check", "--output=json", str(image), check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert report["check-errors"] == 0
    assert report.get("leaks", 0) == report.get("corruptions", 0) == 0
    info = json.loads(qemu_img("info", "--output=json", str(image)).stdout)
    assert info["format"] == "qcow2" and info["format-specific"]["data"]["compat"] == "1.1"
    assert info["virtual-size"] == -(-size // 512) * 512 and info["cluster-size"] == 1 << cluster_bits
    compare = qemu_img("compare", "-f", "raw", "-F", "qcow2", str(raw), str(image), check=False)
    assert compare.returncode == 0, compare.stdout + compare.stderr


def write_volume(path, size, writes):
    """A sparse raw file: (offset, length, byte) writes; byte 0 writes allocated zeros."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, length, byte in writes:
            if offset < size:
                f.seek(offset)
                f.write(bytes([byte]) * min(length, size - offset))


SMALL = PipelineConfig(chunk_bytes=64 * KiB, depth=4)


def stream_to_qcow2(raw, image, cluster_bits=16):
    source = RawFileSource(raw)
    try:
        return run_copy(source, [Qcow2StreamSink(FileStreamTarget(image), cluster_bits)], SMALL)
    finally:
        source.close()


CASES = {
    "empty": (0, []),
    "fully allocated": (MiB + 512, [(0, MiB + 512, 0x5A)]),
    "one cluster at the end": (4 * MiB, [(4 * MiB - 64 * KiB, 64 * KiB, 0x11)]),
    "data in the last partial cluster": (MiB + 4096 + 512, [(MiB + 4096, 512, 0x22)]),
    "odd size, allocated zeros": (777 * KiB + 1, [(100 * KiB, 300 * KiB, 0), (500 * KiB, 3, 0x33)]),
}


@pytest.mark.parametrize("cluster_bits", [9, 16, 21])
@pytest.mark.parametrize("case", CASES)
def test_edge_cases_through_qemu_img(tmp_path, case, cluster_bits):
    size, writes = CASES[case]
    raw, image = tmp_path / "vol.raw", tmp_path / "t.qcow2"
    write_volume(raw, size, writes)
    result = stream_to_qcow2(raw, image, cluster_bits)
    assert_qemu_accepts(raw, image, size, cluster_bits)
    assert result.md5 == md5sum_file(raw) and result.published[0].md5 == md5sum_file(image)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(0, 3 * MiB),
       writes=st.lists(st.tuples(st.integers(0, 3 * MiB), st.integers(1, 300 * KiB), st.integers(0, 255)),
                       max_size=6),
       cluster_bits=st.sampled_from([9, 12, 16, 20]))
def test_random_volumes_through_qemu_img(tmp_path_factory, size, writes, cluster_bits):
    work = tmp_path_factory.mktemp("q")
    raw, image = work / "vol.raw", work / "bs" / "t.qcow2"
    write_volume(raw, size, writes)
    result = stream_to_qcow2(raw, image, cluster_bits)
    assert_qemu_accepts(raw, image, size, cluster_bits)
    assert result.md5 == md5sum_file(raw)
    assert result.published[0].md5 == md5sum_file(image)
    source = RawFileSource(raw)
    extents = list(source.extents())
    source.close()
    assert os.path.getsize(image) == plan_layout(size, extents, cluster_bits).file_size
    assert not (work / "bs" / "t.qcow2.part").exists()
