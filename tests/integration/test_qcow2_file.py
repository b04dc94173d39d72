"""The direct qcow2 reader (zsagent.sources.qcow2_file) against qemu itself.

Random backing chains made by the real ``qemu-img create`` and ``qemu-io`` (1-4 layers, mixed cluster
sizes, backing files shorter and longer than their overlay, a raw bottom layer, zero writes, compressed
clusters in zlib and zstd, discards, extended L2 entries, metadata preallocation, version 2 images)
must read byte for byte, and map extent for extent, as qemu-nbd + libnbd (NbdSource) report them; the
qcow2 template made from the direct reader must be what ``qemu-img compare`` calls identical to the
chain. Plus what the reader refuses, and why.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import md5sum_file, run

from zsagent.catalog import Volume
from zsagent.config import PrimaryStorage
from zsagent.copy.errors import SourceError
from zsagent.copy.extents import coalesce
from zsagent.copy.pipeline import PipelineConfig, run_copy
from zsagent.sinks import qcow2_direct
from zsagent.sinks.base import NO_JOURNAL
from zsagent.sinks.file_stream import FileStreamTarget
from zsagent.sinks.qcow2_stream import Qcow2StreamSink
from zsagent.sinks.raw_file import RawFileSink
from zsagent.sources.open import open_source
from zsagent.sources.qcow2_file import Qcow2FileSource, open_qcow2_source
from zsagent.sources.qcow2_header import Unsupported
from zsagent.sources.qcow2_layers import COMPRESSED
from zsagent.sources.qemu_locks import ImageInUse
from zsagent.sources.qemu_nbd import QemuNbdSource
from zsagent.transfer import transfer

KiB, MiB = 1024, 1024 * 1024
CONFIG = PipelineConfig(chunk_bytes=256 * KiB, depth=4)


# -- random chains ----------------------------------------------------------------------------------


@dataclass
class Layer:
    """One layer to make: qemu-img create options and the qemu-io commands run on it."""

    image_format: str  # qcow2 | raw
    size: int
    cluster_bytes: int
    extended_l2: bool
    zstd: bool
    commands: list[str]
    preallocated: bool = False  # preallocation=metadata: qemu then maps file holes in data clusters as zeros
    version2: bool = False  # compat=0.10: no zero clusters, no extended L2, zlib only


@st.composite
def layers(draw, raw_allowed: bool, has_backing: bool) -> Layer:
    raw = raw_allowed and draw(st.booleans())
    extended_l2 = not raw and draw(st.booleans())
    cluster = draw(st.sampled_from([16 * KiB, 64 * KiB, 256 * KiB] if extended_l2 else
                                   [512, 4 * KiB, 64 * KiB, 2 * MiB]))
    size = draw(st.integers(1, 8 * 1024)) * 512  # up to 4 MiB, in sectors: not always whole clusters
    # qemu preallocates an overlay only with extended L2 entries
    preallocated = not raw and (extended_l2 or not has_backing) and draw(st.integers(0, 5)) == 0
    commands = []
    if not raw and not preallocated:  # compressed writes go to clusters nothing allocated yet in this layer
        clusters = -(-size // cluster)
        for index in sorted(draw(st.sets(st.integers(0, clusters - 1), max_size=3))):
            length = min(cluster, size - index * cluster)
            commands.append(f"write -c -P {draw(st.integers(1, 255))} {index * cluster} {length}")
    for _ in range(draw(st.integers(0, 6))):
        offset = draw(st.integers(0, size // 512 - 1)) * 512
        length = min(draw(st.integers(1, 2 * 1024)) * 512, size - offset)
        op = draw(st.sampled_from(["write", "write", "zero", "discard"]))
        if op == "write":
            commands.append(f"write -P {draw(st.integers(1, 255))} {offset} {length}")
        elif op == "zero":
            commands.append(f"write -z {offset} {length}")
        else:
            commands.append(f"discard {offset} {length}")
    zstd = not raw and draw(st.booleans())
    return Layer("raw" if raw else "qcow2", size, cluster, extended_l2, zstd, commands,
                 preallocated=preallocated,
                 version2=not raw and not extended_l2 and not zstd and draw(st.integers(0, 3)) == 0)


@st.composite
def chains(draw) -> list[Layer]:
    """Bottom first; only a bottom layer under another may be raw."""
    depth = draw(st.integers(1, 4))
    return [draw(layers(raw_allowed=i == 0 and depth > 1, has_backing=i > 0)) for i in range(depth)]


def make_chain(directory: Path, spec: list[Layer]) -> Path:
    """Create the layers bottom up; returns the top image."""
    below: tuple[Path, str] | None = None
    for index, layer in enumerate(spec):
        path = directory / f"layer{index}.{layer.image_format}"
        argv = ["qemu-img", "create", "-q", "-f", layer.image_format]
        if layer.image_format == "qcow2":
            options = [f"cluster_size={layer.cluster_bytes}"]
            if layer.extended_l2:
                options.append("extended_l2=on")
            if layer.zstd:
                options.append("compression_type=zstd")
            if layer.preallocated:
                options.append("preallocation=metadata")
            if layer.version2:
                options.append("compat=0.10")
            argv += ["-o", ",".join(options)]
            if below is not None:
                argv += ["-b", below[0].name, "-F", below[1]]  # relative: resolved from the overlay's directory
        run(*argv, str(path), str(layer.size))
        if layer.commands:
            io = ["qemu-io", "-f", layer.image_format]
            for command in layer.commands:
                io += ["-c", command]
            run(*io, str(path))
        below = (path, layer.image_format)
    assert below is not None
    return below[0]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chains(), st.sampled_from([9, 12, 16, 21]))
def test_random_chains_read_and_map_as_qemu_nbd_reports_them(spec, template_bits):
    with tempfile.TemporaryDirectory(prefix="zsagent-qcow2-") as tmp:
        directory = Path(tmp)
        top = make_chain(directory, spec)
        ours, oracle = Qcow2FileSource(top), QemuNbdSource(top, "qcow2", connections=2)
        try:
            assert ours.size == oracle.size
            assert list(coalesce(ours.extents())) == list(coalesce(oracle.extents()))
            assert ours.read(0, ours.size) == oracle.read(0, oracle.size)
            template, raw = directory / "template.qcow2", directory / "template.raw"
            result = run_copy(ours, [Qcow2StreamSink(FileStreamTarget(template)), RawFileSink(raw)], CONFIG)
        finally:
            ours.close()
            oracle.close()
        compare = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(template), str(top)],
                                 capture_output=True, text=True)
        assert compare.returncode == 0, compare.stdout + compare.stderr
        assert result.md5 == md5sum_file(raw)
        assert result.published[0].md5 == md5sum_file(template)
        # the direct path (a lone qcow2 template), with the template's clusters of another size than the chain's
        direct = directory / "direct.qcow2"
        source = Qcow2FileSource(top)
        try:
            sink = Qcow2StreamSink(FileStreamTarget(direct), cluster_bits=template_bits)
            assert qcow2_direct.applies(source, [sink], [], hash_content=False)
            published = transfer(source, [sink], [], CONFIG, hash_content=False).published[0]
        finally:
            source.close()
        check = subprocess.run(["qemu-img", "check", str(direct)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        compare = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(direct), str(top)],
                                 capture_output=True, text=True)
        assert compare.returncode == 0, compare.stdout + compare.stderr
        assert published.md5 == md5sum_file(direct)


# -- reads at any offset ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """zstd + extended L2 over 4 KiB clusters over a shorter raw file, every kind of cluster in it."""
    directory = tmp_path_factory.mktemp("chain")
    spec = [Layer("raw", 3 * MiB, 0, False, False, ["write -P 5 0 1M", "write -P 6 2M 4k"]),
            Layer("qcow2", 5 * MiB, 4 * KiB, False, False,
                  ["write -c -P 7 0 64k", "write -z 1M 8k", "discard 0 4k", "write -P 9 4M 100k"]),
            Layer("qcow2", 6 * MiB + 512, 64 * KiB, True, True,
                  ["write -c -P 3 3M 64k", "write -P 1 4096 2048", "write -z 8192 4096", "discard 4M 16k",
                   "write -P 4 5M 1M"])]
    return make_chain(directory, spec)


def test_readinto_fills_any_range_of_a_reused_buffer(chain):
    oracle = QemuNbdSource(chain, "qcow2", connections=2)
    ours = Qcow2FileSource(chain)
    try:
        whole = oracle.read(0, oracle.size)
        buffer = bytearray(b"\xee" * (700 * KiB))
        for offset, length in [(0, 700 * KiB), (1, 3), (4095, 8194), (3 * MiB - 100, 200 * KiB),
                               (ours.size - 513, 513), (4 * MiB + 7, 123 * KiB)]:
            view = memoryview(buffer)[:length]
            assert ours.readinto(offset, view) == length
            assert bytes(view) == whole[offset:offset + length]
            assert ours.read(offset, length) == whole[offset:offset + length]
        with pytest.raises(ValueError):
            ours.read(ours.size - 1, 2)
    finally:
        ours.close()
        oracle.close()


def test_layers_are_locked_as_qemu_locks_them(chain):
    source = Qcow2FileSource(chain)
    try:
        # a writer (a VM starting, qemu-io) cannot open the image while it is read
        refused = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 1 0 4k", str(chain)],
                                 capture_output=True, text=True)
        assert refused.returncode != 0 and "lock" in (refused.stdout + refused.stderr)
        # readers can: the qemu-img engine reads the same chain
        run("qemu-img", "info", str(chain))
    finally:
        source.close()
    run("qemu-io", "-f", "qcow2", "-c", "read 0 4k", str(chain))


def test_an_image_open_for_writing_is_refused_and_left_to_qemu(chain, caplog):
    writer = subprocess.Popen(["qemu-io", "-f", "qcow2", str(chain)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        writer.stdin.write(b"read 0 512\n")  # qemu-io has the image open (for writing) once it answers
        writer.stdin.flush()
        writer.stdout.readline()
        with pytest.raises(ImageInUse):
            Qcow2FileSource(chain)
        with caplog.at_level(logging.WARNING), pytest.raises(OSError, match="lock"):
            open_qcow2_source(chain, connections=1)  # and qemu-nbd says why it cannot either
        assert "open for writing" in caplog.text
    finally:
        writer.stdin.close()
        writer.wait(10)


# -- what the reader refuses ---------------------------------------------------------------------------


def _set_incompatible_bit(path: Path, bit: int) -> None:
    with open(path, "r+b") as f:
        f.seek(72)
        (features,) = struct.unpack(">Q", f.read(8))
        f.seek(72)
        f.write(struct.pack(">Q", features | 1 << bit))


@pytest.mark.parametrize(("bit", "reason"), [(0, "dirty"), (1, "corrupt"), (9, "unknown incompatible")])
def test_dirty_corrupt_and_unknown_features_are_refused(tmp_path, bit, reason):
    image = tmp_path / "v.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(image), "1M")
    _set_incompatible_bit(image, bit)
    with pytest.raises(Unsupported, match=reason):
        Qcow2FileSource(image)


def test_an_external_data_file_falls_back_to_qemu_nbd_with_the_reason_logged(tmp_path, caplog):
    image = tmp_path / "v.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'v.data'}", str(image), "1M")
    run("qemu-io", "-f", "qcow2", "-c", "write -P 3 0 64k", str(image))
    with caplog.at_level(logging.WARNING):
        source = open_qcow2_source(image, connections=1)
    try:
        assert isinstance(source, QemuNbdSource)
        assert source.read(0, 4) == b"\x03" * 4
    finally:
        source.close()
    assert "external data file" in caplog.text


def test_encryption_and_protocol_backing_names_are_refused(tmp_path):
    encrypted = tmp_path / "e.qcow2"
    run("qemu-img", "create", "-q", "--object", "secret,id=s0,data=pw", "-f", "qcow2",
        "-o", "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10", str(encrypted), "1M")
    with pytest.raises(Unsupported, match="encrypted"):
        Qcow2FileSource(encrypted)
    overlay = tmp_path / "o.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "nbd://127.0.0.1:1/x", "-F", "raw",
        str(overlay), "1M")
    with pytest.raises(Unsupported, match="not a plain file name"):
        Qcow2FileSource(overlay)


def test_a_stopped_qcow2_volume_is_read_directly_unless_its_storage_says_qemu_nbd(chain):
    info = json.loads(run("qemu-img", "info", "--output=json", str(chain)))
    volume = Volume("0" * 32, None, "file", info["virtual-size"], path=str(chain), format="qcow2")
    with open_source(volume, NO_JOURNAL) as source:
        assert isinstance(source, Qcow2FileSource)
        assert len(source.chain) == 3 and source.qemu_input == ("qcow2", os.path.abspath(chain))
        direct = source.read(0, source.size)
    storage = PrimaryStorage("1" * 32, "filesystem", path=str(chain.parent), qcow2_reader="qemu-nbd")
    with open_source(replace(volume, primary_storage=storage), NO_JOURNAL) as source:
        assert isinstance(source, QemuNbdSource)
        assert source.read(0, source.size) == direct


def test_a_bitmap_left_in_use_is_refused_a_clean_one_is_not(tmp_path):
    image = tmp_path / "b.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(image), "1M")
    run("qemu-img", "bitmap", "--add", str(image), "b0")
    Qcow2FileSource(image).close()  # a persistent bitmap alone says nothing about the data
    holder = subprocess.Popen(["qemu-io", "-f", "qcow2", str(image)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        holder.stdin.write(b"read 0 512\n")
        holder.stdin.flush()
        holder.stdout.readline()  # qemu-io opened the image for writing: the bitmap is marked in use
    finally:
        holder.kill()  # a crash: the flag stays
        holder.wait(10)
    with pytest.raises(Unsupported, match="bitmap 'b0' is in use"):
        Qcow2FileSource(image)


@pytest.mark.parametrize("compression", ["zlib", "zstd"])
def test_a_damaged_compressed_cluster_fails_the_copy_and_publishes_nothing(tmp_path, compression):
    image = tmp_path / "c.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", f"compression_type={compression}", str(image), "1M")
    run("qemu-io", "-f", "qcow2", "-c", "write -c -P 7 0 64k", str(image))
    probe = Qcow2FileSource(image)
    try:
        (_start, _n, state, (host, stored, _cluster)), *_ = probe.layers[0].pieces(0, 64 * KiB)
        assert state == COMPRESSED and probe.read(0, 4) == b"\x07" * 4
    finally:
        probe.close()
    with open(image, "r+b") as f:
        f.seek(host)
        f.write(b"\xff" * stored)
    source = Qcow2FileSource(image)
    try:
        with pytest.raises(SourceError, match="compressed cluster"):
            run_copy(source, [RawFileSink(tmp_path / "t.raw")], CONFIG)
    finally:
        source.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.qcow2"]
