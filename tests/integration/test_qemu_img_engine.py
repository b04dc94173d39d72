"""The qemu-img engine (compressed qcow2, and the reference engine) with real qemu-img, checked by
md5sum and qemu-img check/compare/info."""

from __future__ import annotations

import json
import os
import subprocess
import threading

import pytest
from support import MemorySink, MemorySource, make_qcow2_chain, md5sum_file

from zsagent.copy.errors import AllSinksFailed, CopyCancelled
from zsagent.copy.pipeline import PipelineConfig
from zsagent.qemu_img import ConvertFailed, ConvertOptions, EngineUnavailable, convert, convert_argv, rbd_filename
from zsagent.sinks.converted import ConvertedFile, ConvertedUpload
from zsagent.sinks.raw_file import RawFileSink
from zsagent.sources.qemu_nbd import QemuNbdSource
from zsagent.sources.raw_file import RawFileSource
from zsagent.transfer import transfer

KiB, MiB = 1024, 1024 * 1024
SMALL = PipelineConfig(chunk_bytes=64 * KiB, depth=4)
ZSTD = ConvertOptions(compression="zstd")


def qemu_img(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True)


def info(path) -> dict:
    return json.loads(qemu_img("info", "--output=json", str(path)).stdout)


def assert_same_image(template, source, source_format="raw"):
    check = qemu_img("check", str(template))
    assert check.returncode == 0, check.stdout + check.stderr
    compare = qemu_img("compare", "-f", source_format, "-F", "qcow2", str(source), str(template))
    assert compare.returncode == 0, compare.stdout + compare.stderr


@pytest.fixture
def compressible(tmp_path):
    """A 16 MiB raw volume: text-like data (compresses well), random data, holes."""
    path = tmp_path / "volume.raw"
    with open(path, "wb") as f:
        f.truncate(16 * MiB)
        f.write(b"zsagent data volume template\n" * (4 * MiB // 29))
        f.seek(9 * MiB)
        f.write(os.urandom(MiB))
    return path


def test_compressed_qcow2_equals_the_volume_and_is_smaller(tmp_path, compressible):
    fractions = []
    out = tmp_path / "out.qcow2"
    convert(("raw", str(compressible)), out, ZSTD, progress=fractions.append)
    assert_same_image(out, compressible)
    details = info(out)
    assert details["virtual-size"] == 16 * MiB
    assert details["format-specific"]["data"]["compression-type"] == "zstd"
    plain = tmp_path / "plain.qcow2"
    convert(("raw", str(compressible)), plain, ConvertOptions())
    assert os.path.getsize(out) < os.path.getsize(plain) - 3 * MiB  # the text compressed
    assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0


def test_argv_uses_out_of_order_writes_only_without_compression():
    compressed = convert_argv(("raw", "/v"), "/o.part", ZSTD)
    plain = convert_argv(("raw", "/v"), "/o.part", ConvertOptions())
    assert "-c" in compressed and "-W" not in compressed and "compat=1.1,compression_type=zstd" in compressed
    assert "-W" in plain and "-c" not in plain
    assert compressed[-2:] == plain[-2:] == ["/v", "/o.part"]
    raw = convert_argv(("qcow2", "/v"), "/o.part", ConvertOptions(output_format="raw"))
    assert "-o" not in raw and raw[raw.index("-O") + 1] == "raw"
    with pytest.raises(ValueError, match="qcow2"):
        ConvertOptions(output_format="raw", compression="zstd")


def test_rbd_filenames_escape_what_qemu_would_split_on():
    name = rbd_filename("pool", "img", "snap", conf="/etc/ceph/a:b.conf", client="admin", keyring=None)
    assert name == r"rbd:pool/img@snap:id=admin:conf=\/etc\/ceph\/a\:b.conf"
    assert "keyring=" in rbd_filename("p", "i", "s", conf=None, client="c", keyring="/k")


def test_a_qemu_img_failure_is_reported_with_its_message(tmp_path):
    with pytest.raises(ConvertFailed, match="qemu-img convert failed: .*(No such file|Could not open)"):
        convert(("qcow2", str(tmp_path / "missing.qcow2")), tmp_path / "out.qcow2", ZSTD)


def test_cancel_stops_qemu_img(tmp_path):
    big = tmp_path / "big.raw"
    with open(big, "wb") as f:
        for _ in range(96):
            f.write(os.urandom(MiB))
    cancel = threading.Event()
    with pytest.raises(CopyCancelled):
        convert(("raw", str(big)), tmp_path / "out.qcow2", ZSTD, progress=lambda f: cancel.set(), cancel=cancel)
    running = subprocess.run(["pgrep", "-f", f"qemu-img convert.*{tmp_path}"], capture_output=True)
    assert running.returncode == 1  # no qemu-img left


def test_converted_file_of_a_qcow2_chain(tmp_path):
    chain = make_qcow2_chain(tmp_path)
    target = tmp_path / "bs" / "t" / "t.qcow2"
    source = QemuNbdSource(chain, "qcow2", connections=4)
    try:
        result = transfer(source, [], [ConvertedFile(target, ZSTD, SMALL)], SMALL)
    finally:
        source.close()
    [published] = result.published
    assert published.install_path == str(target)
    assert published.md5 == md5sum_file(target)
    assert published.actual_size == os.stat(target).st_blocks * 512
    assert_same_image(target, chain, "qcow2")
    assert os.listdir(target.parent) == ["t.qcow2"]


def test_raw_output_stays_sparse(tmp_path, compressible):
    target = tmp_path / "t.raw"
    source = RawFileSource(compressible)
    try:
        result = transfer(source, [], [ConvertedFile(target, ConvertOptions(output_format="raw"), SMALL)], SMALL)
    finally:
        source.close()
    assert result.published[0].md5 == md5sum_file(target) == md5sum_file(compressible)
    assert os.stat(target).st_blocks * 512 < 8 * MiB


def test_one_job_feeds_the_pipeline_and_a_converter(tmp_path, compressible):
    raw_target, qcow2_target = tmp_path / "a" / "t.raw", tmp_path / "b" / "t.qcow2"
    progress = []
    source = RawFileSource(compressible)
    try:
        result = transfer(source, [RawFileSink(raw_target)], [ConvertedFile(qcow2_target, ZSTD, SMALL)], SMALL,
                          progress=lambda done, total: progress.append((done, total)))
    finally:
        source.close()
    assert {p.install_path for p in result.published} == {str(raw_target), str(qcow2_target)}
    assert result.md5 == md5sum_file(raw_target) == md5sum_file(compressible)
    assert_same_image(qcow2_target, compressible)
    assert progress[-1] == (32 * MiB, 32 * MiB)  # two passes over 16 MiB
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)


def test_a_failing_converter_fails_alone_and_leaves_nothing(tmp_path):
    sink = MemorySink()
    target = tmp_path / "bs" / "x" / "t.qcow2"
    source = MemorySource(b"\x07" * MiB)  # qemu-img cannot read it
    result = transfer(source, [sink], [ConvertedFile(target, ZSTD, SMALL)], SMALL)
    assert sink.committed and [f.description for f in result.failed] == [str(target)]
    assert "qemu-img cannot read" in str(result.failed[0])
    assert not (tmp_path / "bs").exists()
    with pytest.raises(AllSinksFailed):
        transfer(MemorySource(b"\x07" * MiB), [], [ConvertedFile(target, ZSTD, SMALL)], SMALL)


def test_nothing_is_published_when_the_pipeline_pass_is_cancelled(tmp_path, compressible):
    qcow2_target = tmp_path / "b" / "t.qcow2"
    cancel = threading.Event()
    sink = MemorySink(write_delay_s=0.01)
    source = RawFileSource(compressible)

    def on_progress(done, total):
        if done > 16 * MiB:  # the converter is ready, the pipeline pass has begun
            cancel.set()

    try:
        with pytest.raises(CopyCancelled):
            transfer(source, [sink], [ConvertedFile(qcow2_target, ZSTD, SMALL)], SMALL, progress=on_progress,
                     cancel=cancel)
    finally:
        source.close()
    assert not sink.committed and sink.aborted
    assert not (tmp_path / "b").exists()


def test_converted_upload_goes_through_a_sink_and_the_spool_is_emptied(tmp_path, compressible):
    spool = tmp_path / "spool"
    target = tmp_path / "remote" / "t.qcow2"
    source = RawFileSource(compressible)
    try:
        result = transfer(source, [], [ConvertedUpload(spool / "t.qcow2", RawFileSink(target), ZSTD, SMALL)],
                          SMALL)
    finally:
        source.close()
    [published] = result.published
    assert published.md5 == md5sum_file(target)
    assert_same_image(target, compressible)
    assert list(spool.iterdir()) == []


def test_engine_unavailable_names_the_reason():
    from zsagent.qemu_img import qemu_input_of

    with pytest.raises(EngineUnavailable, match="qemu-img cannot read"):
        qemu_input_of(MemorySource(b""))


def test_sizes_qemu_would_round_are_refused_not_padded(tmp_path):
    odd = tmp_path / "odd.raw"
    odd.write_bytes(b"\x01" * (MiB + 100))
    target = tmp_path / "t.qcow2"
    source = RawFileSource(odd)
    try:
        with pytest.raises(AllSinksFailed, match="512-byte sectors .* 1048676 bytes"):
            transfer(source, [], [ConvertedFile(target, ZSTD, SMALL)], SMALL)
    finally:
        source.close()
    assert list(tmp_path.iterdir()) == [odd]
