"""File volumes (raw, and qcow2 chains through qemu-nbd) into raw file templates, checked with
md5sum and qemu-img."""

import os
import subprocess
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import make_qcow2_chain, md5sum_file

from zsagent.copy.errors import AllSinksFailed, CopyCancelled, SourceError
from zsagent.copy.pipeline import PipelineConfig, run_copy
from zsagent.sinks.raw_file import RawFileSink
from zsagent.sources.qemu_nbd import QemuNbdSource
from zsagent.sources.raw_file import RawFileSource

KiB, MiB = 1024, 1024 * 1024
SMALL = PipelineConfig(chunk_bytes=64 * KiB, depth=4)


def run(*argv):
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout


def qemu_img_identical(a, b, fmt_a="raw", fmt_b="raw"):
    result = subprocess.run(["qemu-img", "compare", "-q", "-f", fmt_a, "-F", fmt_b, str(a), str(b)],
                            capture_output=True, text=True)
    return result.returncode == 0


def allocated(path):
    return os.stat(path).st_blocks * 512


def copy_file(src, dst, config=SMALL, source_cls=RawFileSource, **kw):
    source = source_cls(src, **kw)
    try:
        return run_copy(source, [RawFileSink(dst)], config)
    finally:
        source.close()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(0, 3 * MiB + 777),
       writes=st.lists(st.tuples(st.integers(0, 3 * MiB), st.integers(1, 300 * KiB), st.integers(0, 255)),
                       max_size=6))
def test_raw_file_copy_is_identical_sparse_and_md5_matches_md5sum(tmp_path_factory, size, writes):
    work = tmp_path_factory.mktemp("raw")
    src = work / "vol.raw"
    with open(src, "wb") as f:
        f.truncate(size)
        for offset, length, byte in writes:
            if offset < size:
                f.seek(offset)
                f.write(bytes([byte]) * min(length, size - offset))
    dst = work / "bs" / "dataVolumeTemplates" / "t.raw"

    result = copy_file(src, dst)

    assert result.md5 == md5sum_file(dst) == md5sum_file(src)
    assert result.size == size == os.path.getsize(dst)
    assert qemu_img_identical(src, dst)
    extents = max(1, len(writes))
    assert allocated(dst) <= allocated(src) + extents * SMALL.chunk_bytes
    assert result.published[0].actual_size == allocated(dst)
    assert not dst.with_name("t.raw.part").exists()


def test_holes_are_not_written(tmp_path):
    src = tmp_path / "sparse.raw"
    with open(src, "wb") as f:
        f.truncate(512 * MiB)
        f.seek(100 * MiB)
        f.write(b"\x42" * MiB)
    dst = tmp_path / "out.raw"
    result = copy_file(src, dst, PipelineConfig())
    assert result.stats.bytes_read == MiB
    assert allocated(dst) <= 4 * MiB
    assert result.md5 == md5sum_file(dst)


@pytest.fixture
def qcow2_chain(tmp_path):
    return make_qcow2_chain(tmp_path)


def test_qcow2_chain_template_equals_qemu_img_convert(tmp_path, qcow2_chain):
    reference = tmp_path / "reference.raw"
    run("qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(qcow2_chain), str(reference))
    dst = tmp_path / "bs" / "t.raw"

    result = copy_file(qcow2_chain, dst, source_cls=QemuNbdSource)

    assert result.md5 == md5sum_file(reference) == md5sum_file(dst)
    assert qemu_img_identical(qcow2_chain, dst, fmt_a="qcow2")
    assert result.size == 24 * MiB
    # the zero ranges and holes are not read: far less than the virtual size
    assert result.stats.bytes_read < 12 * MiB


def test_qemu_nbd_source_leaves_no_server_or_socket(qcow2_chain):
    source = QemuNbdSource(qcow2_chain)
    sock_dir = os.path.dirname(source._socket)
    source.read(0, 4096)
    source.close()
    assert not os.path.exists(sock_dir)
    assert source._server.returncode is not None  # qemu-nbd stopped and reaped


def test_unreadable_qcow2_is_a_clear_error(tmp_path):
    bogus = tmp_path / "bogus.qcow2"
    bogus.write_bytes(b"not a qcow2 at all" * 100)
    with pytest.raises(OSError, match="qemu-nbd could not open"):
        QemuNbdSource(bogus)


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
            raise OSError(5, "Input/output error")
        return super().read(offset, length)


@pytest.mark.parametrize("fail_at", [0, 7])
def test_read_failure_leaves_no_part_file_and_no_new_directories(tmp_path, fail_at):
    src = tmp_path / "vol.raw"
    src.write_bytes(os.urandom(2 * MiB))
    before = md5sum_file(src)
    dst = tmp_path / "bs" / "deep" / "t.raw"
    with pytest.raises(SourceError, match="Input/output error"):
        copy_file(src, dst, source_cls=FailingRead, fail_at=fail_at)
    assert not (tmp_path / "bs").exists()
    assert md5sum_file(src) == before


def test_cancel_leaves_nothing(tmp_path):
    src = tmp_path / "vol.raw"
    src.write_bytes(os.urandom(4 * MiB))
    (tmp_path / "bs").mkdir()
    dst = tmp_path / "bs" / "t.raw"
    cancel = threading.Event()
    source = RawFileSource(src)
    with pytest.raises(CopyCancelled):
        run_copy(source, [RawFileSink(dst)], SMALL, cancel=cancel,
                 progress=lambda done, total: cancel.set() if done >= MiB else None)
    source.close()
    assert list((tmp_path / "bs").iterdir()) == []


def test_existing_template_is_never_overwritten(tmp_path):
    src = tmp_path / "vol.raw"
    src.write_bytes(b"\x01" * MiB)
    dst = tmp_path / "t.raw"
    dst.write_bytes(b"precious")
    with pytest.raises(AllSinksFailed, match="already exists"):
        copy_file(src, dst)
    assert dst.read_bytes() == b"precious"
    assert not (tmp_path / "t.raw.part").exists()
