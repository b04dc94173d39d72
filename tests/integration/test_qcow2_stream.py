"""File volumes (raw, and qcow2 chains through qemu-nbd) into streamed qcow2 templates, checked with
qemu-img check/compare/convert and md5sum; failures and cancels leave nothing behind."""

import errno
import json
import os
import subprocess
import threading
import time

import pytest
from support import md5sum_file

from zsagent.copy.errors import AllSinksFailed, CopyCancelled, SourceError
from zsagent.copy.pipeline import PipelineConfig, run_copy
from zsagent.sinks.file_stream import FileStreamTarget
from zsagent.sinks.qcow2_stream import QUEUE_CHUNKS, Qcow2StreamSink
from zsagent.sinks.raw_file import RawFileSink
from zsagent.sinks.write_behind import MAX_PIECES as WRITE_BEHIND_PIECES
from zsagent.sources.qemu_nbd import QemuNbdSource
from zsagent.sources.raw_file import RawFileSource

KiB, MiB, GiB = 1024, 1024 * 1024, 1024 * 1024 * 1024
SMALL = PipelineConfig(chunk_bytes=64 * KiB, depth=4)


def run(*argv):
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout


def assert_valid_qcow2(image, virtual_size, cluster_bytes=64 * KiB):
    check = subprocess.run(["qemu-img", "check", "--output=json", str(image)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert report["check-errors"] == 0 and report.get("leaks", 0) == 0 and report.get("corruptions", 0) == 0
    info = json.loads(run("qemu-img", "info", "--output=json", str(image)))
    assert info["format"] == "qcow2" and info["format-specific"]["data"]["compat"] == "1.1"
    assert info["virtual-size"] == virtual_size and info["cluster-size"] == cluster_bytes
    assert "backing-filename" not in info


def identical(a, b, fmt_a="raw", fmt_b="qcow2"):
    result = subprocess.run(["qemu-img", "compare", "-q", "-f", fmt_a, "-F", fmt_b, str(a), str(b)],
                            capture_output=True, text=True)
    return result.returncode == 0


def md5_of_raw_content(image, tmp_path):
    """md5sum of what `qemu-img convert -O raw` makes of the template."""
    raw = tmp_path / "converted.raw"
    run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(raw))
    try:
        return md5sum_file(raw)
    finally:
        raw.unlink()


def stream(source, image, config=SMALL, **kw):
    try:
        return run_copy(source, [Qcow2StreamSink(FileStreamTarget(image))], config, **kw)
    finally:
        source.close()


@pytest.fixture
def qcow2_chain(tmp_path):
    """base.qcow2 (compressed data, zero clusters, a partial cluster) <- top.qcow2 (overwrites, zeroes)."""
    seed = tmp_path / "seed.raw"
    with open(seed, "wb") as f:
        f.truncate(32 * MiB)
        f.seek(4 * MiB)
        f.write(os.urandom(3 * MiB))
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    run("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(seed), str(base))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x61 0 2M", "-c", "write -z 5M 1M",
        "-c", "write -P 0x62 17M 100000", str(base))
    run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top))
    run("qemu-io", "-f", "qcow2", "-c", "write -P 0x63 1M 2M", "-c", "write -z 4M 256k",
        "-c", "write -P 0x64 31M 1M", "-c", "write -P 0x65 20M 4097", str(top))
    return top


def test_qcow2_chain_becomes_a_valid_standalone_qcow2_template(tmp_path, qcow2_chain):
    dst = tmp_path / "bs" / "dataVolumeTemplates" / "t.qcow2"

    result = stream(QemuNbdSource(qcow2_chain), dst)

    assert_valid_qcow2(dst, 32 * MiB)
    assert identical(qcow2_chain, dst, fmt_a="qcow2")
    published = result.published[0]
    assert published.install_path == str(dst)
    assert published.md5 == md5sum_file(dst)  # the sink hashes the file's bytes
    assert result.md5 == md5_of_raw_content(dst, tmp_path)  # the pipeline hashes the raw content
    assert published.actual_size == os.stat(dst).st_blocks * 512
    # Only what the chain has as data is stored: far less than the virtual size.
    assert os.path.getsize(dst) < 10 * MiB
    assert not dst.with_name("t.qcow2.part").exists()


def test_mostly_empty_1gib_volume_gives_a_small_template(tmp_path):
    src = tmp_path / "vol.raw"
    with open(src, "wb") as f:
        f.truncate(GiB)
        for offset in (0, 300 * MiB + 12345, GiB - MiB):
            f.seek(offset)
            f.write(os.urandom(MiB))
    dst = tmp_path / "t.qcow2"

    result = stream(RawFileSource(src), dst, PipelineConfig())

    assert_valid_qcow2(dst, GiB)
    assert identical(src, dst)
    assert result.stats.bytes_read <= 4 * MiB
    # header + L1 + refcount table + one refcount block + 2 L2 tables + 3 MiB of data (+1 straddling)
    assert os.path.getsize(dst) <= 7 * 64 * KiB + 3 * MiB + 64 * KiB
    assert result.published[0].md5 == md5sum_file(dst)


def test_a_raw_and_a_qcow2_template_in_one_pass(tmp_path):
    src = tmp_path / "vol.raw"
    with open(src, "wb") as f:
        f.truncate(6 * MiB + 512)
        f.seek(MiB)
        f.write(os.urandom(2 * MiB))
        f.write(bytes(MiB))  # allocated zeros: zero() inside data clusters
    raw_dst, qcow2_dst = tmp_path / "t.raw", tmp_path / "t.qcow2"
    source = RawFileSource(src)
    try:
        result = run_copy(source, [RawFileSink(raw_dst), Qcow2StreamSink(FileStreamTarget(qcow2_dst))], SMALL)
    finally:
        source.close()
    assert [p.install_path for p in result.published] == [str(raw_dst), str(qcow2_dst)]
    assert result.md5 == md5sum_file(src) == md5sum_file(raw_dst)
    assert result.published[0].md5 is None  # raw: the pipeline's md5 is the template's
    assert result.published[1].md5 == md5sum_file(qcow2_dst)
    assert_valid_qcow2(qcow2_dst, 6 * MiB + 512)
    assert identical(src, qcow2_dst)


def test_the_pipeline_thread_never_writes_or_hashes(tmp_path):
    src = tmp_path / "vol.raw"
    src.write_bytes(os.urandom(2 * MiB))
    writers = set()

    class Recording(FileStreamTarget):
        def write(self, data):
            writers.add(threading.current_thread().name)
            super().write(data)

    source = RawFileSource(src)
    try:
        run_copy(source, [Qcow2StreamSink(Recording(tmp_path / "t.qcow2"))], SMALL)
    finally:
        source.close()
    assert writers == {"zsagent-qcow2-write"}  # the write-behind thread of the sink's writer


def test_memory_stays_bounded_when_the_target_is_slow(tmp_path):
    src = tmp_path / "vol.raw"
    src.write_bytes(os.urandom(4 * MiB))
    chunk, depth = SMALL.chunk_bytes, SMALL.depth
    read_bytes = written = peak = 0
    lock = threading.Lock()

    class Counting(RawFileSource):
        def read(self, offset, length):
            nonlocal read_bytes, peak
            data = super().read(offset, length)
            with lock:
                read_bytes += length
                peak = max(peak, read_bytes - written)
            return data

    class Slow(FileStreamTarget):
        total = 0

        def write(self, data):
            nonlocal written
            time.sleep(0.004)
            super().write(data)
            self.total += len(data)
            with lock:
                written = max(0, self.total - sink.layout.data_offset)  # data bytes only

    source = Counting(src)
    sink = Qcow2StreamSink(Slow(tmp_path / "t.qcow2"))
    try:
        run_copy(source, [sink], SMALL)
    finally:
        source.close()
    # read but not yet in the file: the pipeline's window, the sink's queue, the pieces waiting for the
    # write-behind thread (each at most a chunk), the chunk being handed over
    assert peak <= (depth + QUEUE_CHUNKS + WRITE_BEHIND_PIECES + 2) * chunk
    assert written == sink.layout.file_size - sink.layout.data_offset == 4 * MiB


class FailingRead(RawFileSource):
    def __init__(self, path, fail_at):
        super().__init__(path)
        self.calls = 0
        self.fail_at = fail_at
        self.lock = threading.Lock()

    def read(self, offset, length):
        with self.lock:
            n, self.calls = self.calls, self.calls + 1
        if n == self.fail_at:
            raise OSError(errno.EIO, "Input/output error")
        return super().read(offset, length)


@pytest.mark.parametrize("fail_at", [0, 20])
def test_read_failure_leaves_no_part_file_and_no_new_directories(tmp_path, fail_at):
    src = tmp_path / "vol.raw"
    src.write_bytes(os.urandom(4 * MiB))
    dst = tmp_path / "bs" / "deep" / "t.qcow2"
    with pytest.raises(SourceError, match="Input/output error"):
        stream(FailingRead(src, fail_at), dst)
    assert not (tmp_path / "bs").exists()


class FullDisk(FileStreamTarget):
    """Runs out of space after ``fail_after`` writes."""

    def __init__(self, path, fail_after):
        super().__init__(path)
        self.writes = 0
        self.fail_after = fail_after

    def write(self, data):
        self.writes += 1
        if self.writes > self.fail_after:
            raise OSError(errno.ENOSPC, "No space left on device")
        super().write(data)


@pytest.mark.parametrize("fail_after", [0, 3, 60])
def test_write_failure_in_the_writer_thread_fails_the_sink_and_leaves_nothing(tmp_path, fail_after):
    src = tmp_path / "vol.raw"
    src.write_bytes(os.urandom(4 * MiB))
    (tmp_path / "bs").mkdir()
    good = tmp_path / "bs" / "t.raw"
    bad = tmp_path / "bs" / "new" / "t.qcow2"
    source = RawFileSource(src)
    try:
        result = run_copy(source, [RawFileSink(good), Qcow2StreamSink(FullDisk(bad, fail_after))], SMALL)
    finally:
        source.close()
    assert [p.install_path for p in result.published] == [str(good)]
    assert [f.description for f in result.failed] == [str(bad)]
    assert "No space left" in str(result.failed[0])
    assert sorted(p.name for p in (tmp_path / "bs").iterdir()) == ["t.raw"]


def test_cancel_mid_stream_leaves_nothing(tmp_path):
    src = tmp_path / "vol.raw"
    src.write_bytes(os.urandom(8 * MiB))
    dst = tmp_path / "bs" / "deep" / "t.qcow2"
    cancel = threading.Event()
    with pytest.raises(CopyCancelled):
        stream(RawFileSource(src), dst, cancel=cancel,
               progress=lambda done, total: cancel.set() if done >= 2 * MiB else None)
    assert not (tmp_path / "bs").exists()


def test_existing_template_is_never_overwritten(tmp_path):
    src = tmp_path / "vol.raw"
    src.write_bytes(b"\x01" * MiB)
    dst = tmp_path / "t.qcow2"
    dst.write_bytes(b"precious")
    with pytest.raises(AllSinksFailed, match="already exists"):
        stream(RawFileSource(src), dst)
    assert dst.read_bytes() == b"precious"
    assert not (tmp_path / "t.qcow2.part").exists()


def test_template_that_appears_during_the_copy_is_not_overwritten(tmp_path):
    src = tmp_path / "vol.raw"
    src.write_bytes(os.urandom(2 * MiB))
    dst = tmp_path / "t.qcow2"

    def someone_else_publishes(done, total):
        if done == total:
            dst.write_bytes(b"theirs")

    with pytest.raises(AllSinksFailed, match="exists"):
        stream(RawFileSource(src), dst, progress=someone_else_publishes)
    assert dst.read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.qcow2", "vol.raw"]


def test_a_part_file_it_did_not_create_is_left_alone(tmp_path):
    src = tmp_path / "vol.raw"
    src.write_bytes(b"\x01" * MiB)
    part = tmp_path / "t.qcow2.part"
    part.write_bytes(b"another writer's")
    with pytest.raises(AllSinksFailed, match="exists"):
        stream(RawFileSource(src), tmp_path / "t.qcow2")
    assert part.read_bytes() == b"another writer's"
    assert not (tmp_path / "t.qcow2").exists()


def test_abort_is_safe_before_open_and_twice(tmp_path):
    Qcow2StreamSink(FileStreamTarget(tmp_path / "x" / "t.qcow2")).abort()
    sink = Qcow2StreamSink(FileStreamTarget(tmp_path / "x" / "t.qcow2"))
    sink.open(MiB, [])
    sink.zero(0, MiB // 2)
    sink.abort()
    sink.abort()
    assert list(tmp_path.iterdir()) == []
