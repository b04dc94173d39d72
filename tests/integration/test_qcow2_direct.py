"""The direct path for a lone qcow2 template (zsagent.sinks.qcow2_direct), against the real qemu-img:
the template is valid, equals the chain, is the streaming writer's file byte for byte, has the md5sum it
reports; template clusters of any size over the chain's; zero clusters, a backing file shorter than its
overlay, a partial last cluster, an empty volume; reads, writes, cancels and a changed volume fail the
copy and leave nothing behind."""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from pathlib import Path

import pytest
from support import md5sum_file, run

from zsagent.copy.errors import AllSinksFailed, CopyCancelled, SourceError
from zsagent.copy.pipeline import PipelineConfig, run_copy
from zsagent.sinks import qcow2_direct
from zsagent.sinks.file_stream import FileStreamTarget
from zsagent.sinks.qcow2_stream import Qcow2StreamSink
from zsagent.sinks.raw_file import RawFileSink
from zsagent.sources.qcow2_file import Qcow2FileSource
from zsagent.transfer import transfer

KiB, MiB = 1024, 1024 * 1024
CONFIG = PipelineConfig(chunk_bytes=256 * KiB, depth=4)


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Path:
    """4 KiB-cluster base, 3 MiB, with compressed data and zero clusters <- 64 KiB-cluster top of 9 MiB + 512
    (longer than its backing file, not a whole number of clusters) with data, zeros over base data and data
    in its last, partial cluster."""
    directory = tmp_path_factory.mktemp("direct")
    base, top = directory / "base.qcow2", directory / "top.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", str(base), str(3 * MiB))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 1M", "-c", "write -c -P 0x12 1M 64k",
        "-c", "write -z 256k 64k", "-c", "write -P 0x13 2M 4097", str(base))
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", base.name, "-F", "qcow2", str(top), str(9 * MiB + 512))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x21 512k 1M", "-c", "write -z 2M 128k",
        "-c", "write -P 0x22 5M 3M", "-c", "write -P 0x23 9M 512", str(top))
    return top


def direct_template(chain: Path, dst: Path, cluster_bits: int = 16, config: PipelineConfig = CONFIG, **kw):
    source = Qcow2FileSource(chain)
    try:
        sink = Qcow2StreamSink(FileStreamTarget(dst), cluster_bits=cluster_bits)
        assert qcow2_direct.applies(source, [sink], [], hash_content=False)
        return transfer(source, [sink], [], config, hash_content=False, **kw)
    finally:
        source.close()


def assert_template_of(template: Path, chain: Path, cluster_bytes: int) -> None:
    check = subprocess.run(["qemu-img", "check", str(template)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    compare = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(template), str(chain)],
                             capture_output=True, text=True)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert f"cluster_size: {cluster_bytes}" in run("qemu-img", "info", str(template))


@pytest.mark.parametrize("cluster_bits", [9, 12, 16, 21])
def test_the_direct_template_is_the_streamed_one_byte_for_byte(tmp_path, chain, cluster_bits):
    direct, streamed = tmp_path / "direct.qcow2", tmp_path / "streamed.qcow2"
    result = direct_template(chain, direct, cluster_bits)
    source = Qcow2FileSource(chain)
    try:
        run_copy(source, [Qcow2StreamSink(FileStreamTarget(streamed), cluster_bits=cluster_bits)], CONFIG,
                 hash_content=False)
    finally:
        source.close()
    assert_template_of(direct, chain, 1 << cluster_bits)
    assert direct.read_bytes() == streamed.read_bytes()
    published = result.published[0]
    assert published.md5 == md5sum_file(direct) and result.md5 is None
    assert published.install_path == str(direct)
    assert published.actual_size == os.stat(direct).st_blocks * 512
    assert result.stats.bytes_read > 0 and not direct.with_name("direct.qcow2.part").exists()


def test_progress_reaches_the_volume_size(tmp_path, chain):
    seen = []
    direct_template(chain, tmp_path / "t.qcow2", progress=lambda done, total: seen.append((done, total)))
    size = 9 * MiB + 512
    assert seen[-1] == (size, size)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_an_empty_volume_gives_a_valid_empty_template(tmp_path):
    empty = tmp_path / "empty.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(empty), str(5 * MiB + 512))
    template = tmp_path / "t.qcow2"
    result = direct_template(empty, template)
    assert_template_of(template, empty, 64 * KiB)
    assert result.published[0].md5 == md5sum_file(template)


def test_only_a_lone_local_qcow2_template_without_a_raw_md5_takes_the_direct_path(tmp_path, chain):
    source = Qcow2FileSource(chain)
    try:
        qcow2 = Qcow2StreamSink(FileStreamTarget(tmp_path / "a.qcow2"))
        assert qcow2_direct.applies(source, [qcow2], [], hash_content=False)
        assert not qcow2_direct.applies(source, [qcow2], [], hash_content=True)
        assert not qcow2_direct.applies(source, [qcow2, RawFileSink(tmp_path / "b.raw")], [], hash_content=False)
        assert not qcow2_direct.applies(source, [RawFileSink(tmp_path / "b.raw")], [], hash_content=False)
        assert not qcow2_direct.applies(object(), [qcow2], [], hash_content=False)  # no readinto
    finally:
        source.close()


class FullDisk(FileStreamTarget):
    """Runs out of space after ``fail_after`` data writes."""

    def __init__(self, path, fail_after):
        super().__init__(path)
        self.writes, self.fail_after = 0, fail_after

    def write_aligned(self, data):
        self.writes += 1
        if self.writes > self.fail_after:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().write_aligned(data)


@pytest.mark.parametrize("fail_after", [0, 5])
def test_a_full_disk_fails_the_template_and_leaves_no_file(tmp_path, chain, fail_after):
    dst = tmp_path / "bs" / "deep" / "t.qcow2"
    source = Qcow2FileSource(chain)
    try:
        with pytest.raises(AllSinksFailed, match="No space left"):
            qcow2_direct.copy_direct(source, Qcow2StreamSink(FullDisk(dst, fail_after)), CONFIG)
    finally:
        source.close()
    assert not (tmp_path / "bs").exists()


class FailingRead(Qcow2FileSource):
    def __init__(self, path, fail_at_offset):
        super().__init__(path)
        self.fail_at_offset = fail_at_offset

    def readinto(self, offset, buffer):
        if offset >= self.fail_at_offset:
            raise OSError(errno.EIO, "Input/output error")
        return super().readinto(offset, buffer)


@pytest.mark.parametrize("fail_at_offset", [0, 5 * MiB])
def test_a_read_failure_fails_the_copy_and_leaves_no_file(tmp_path, chain, fail_at_offset):
    dst = tmp_path / "bs" / "t.qcow2"
    source = FailingRead(chain, fail_at_offset)
    try:
        with pytest.raises(SourceError, match="Input/output error"):
            transfer(source, [Qcow2StreamSink(FileStreamTarget(dst))], [], CONFIG, hash_content=False)
    finally:
        source.close()
    assert not (tmp_path / "bs").exists()


def test_cancel_mid_copy_leaves_nothing(tmp_path, chain):
    cancel = threading.Event()
    with pytest.raises(CopyCancelled):
        direct_template(chain, tmp_path / "bs" / "t.qcow2", config=PipelineConfig(chunk_bytes=64 * KiB, depth=4),
                        cancel=cancel, progress=lambda done, total: cancel.set() if done >= 2 * MiB else None)
    assert not (tmp_path / "bs").exists()


def test_a_volume_written_during_the_copy_fails_it_and_nothing_is_published(tmp_path):
    volume = tmp_path / "vol.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", str(volume), str(4 * MiB))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 7 0 4M", str(volume))
    dst = tmp_path / "bs" / "t.qcow2"
    touched = threading.Event()

    def touch(done, total):
        if not touched.is_set():
            touched.set()
            os.utime(volume, ns=(1, 1))  # as a writer would change it

    with pytest.raises(SourceError, match="did not stay"):
        direct_template(volume, dst, config=PipelineConfig(chunk_bytes=64 * KiB, depth=4), progress=touch)
    assert not (tmp_path / "bs").exists()
