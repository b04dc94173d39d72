"""Template files written with O_DIRECT (zsagent.sinks.direct_io): the file holds exactly what was written,
whatever the alignment of the pieces, also where the file system refuses direct writes."""

from __future__ import annotations

import errno
import fcntl
import os
import random
import threading
from pathlib import Path

import pytest

from zsagent.sinks import direct_io
from zsagent.sinks.direct_io import DirectAppender, DirectPositionalWriter, filesystem_type, open_direct
from zsagent.sinks.file_stream import FileStreamTarget

KiB = 1024


def pieces(seed: int, sizes: list[int]) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(n) for n in sizes]


def has_direct_flag(fd: int) -> bool:
    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)


@pytest.mark.parametrize("direct", [True, False])
def test_appended_pieces_of_any_size_make_the_file_and_the_fd_ends_buffered(tmp_path, direct):
    data = pieces(1, [1, 4095, 5000, 64 * KiB, 3 * 1024 * KiB + 7, 12 * KiB, 333])
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        appender = DirectAppender(fd, direct, staging_bytes=16 * KiB)
        for piece in data:
            appender.write(memoryview(piece))
        appender.finish()
        appender.close()
        assert not has_direct_flag(fd)
        assert appender.position == sum(map(len, data))
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(data)


def test_a_file_system_that_refuses_the_first_direct_write_gets_a_buffered_file(tmp_path, monkeypatch):
    real_pwrite, calls = os.pwrite, []

    def refuse_direct(fd, data, offset):
        calls.append(offset)
        if has_direct_flag(fd):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(direct_io.os, "pwrite", refuse_direct)
    data = pieces(2, [40 * KiB, 9])
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        appender = DirectAppender(fd, True, staging_bytes=16 * KiB)
        for piece in data:
            appender.write(piece)
        appender.finish()
        assert not appender.direct
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(data)


def test_positional_writes_from_threads_at_unaligned_offsets(tmp_path):
    size = 6 * 1024 * KiB
    rng = random.Random(3)
    cuts = sorted({0, size, *(rng.randrange(size) for _ in range(40))})
    spans = list(zip(cuts, cuts[1:], strict=False))
    expected = bytearray(size)
    jobs = []
    for start, stop in spans[::2]:  # every other span stays a hole
        data = rng.randbytes(stop - start)
        expected[start:stop] = data
        jobs.append((start, data))
    path = tmp_path / "raw"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.ftruncate(fd, size)
    direct_fd = open_direct(path)
    try:
        writer = DirectPositionalWriter(fd, direct_fd, buffer_bytes=64 * KiB)
        threads = [threading.Thread(target=lambda part: [writer.write(o, d) for o, d in part], args=(jobs[k::4],))
                   for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        writer.close()
        os.fsync(fd)
    finally:
        os.close(fd)
        if direct_fd is not None:
            os.close(direct_fd)
    assert path.read_bytes() == bytes(expected)


def test_the_file_system_of_a_path_is_read_from_the_mount_table(tmp_path):
    assert filesystem_type("/proc/self") == "proc"
    assert filesystem_type(tmp_path) is not None


@pytest.mark.parametrize("direct_io_on", [True, False])
def test_file_stream_target_publishes_what_was_written(tmp_path, direct_io_on):
    data = pieces(4, [64 * KiB, 8 * 1024 * KiB, 512, 100])
    target = FileStreamTarget(tmp_path / "t" / "image.qcow2", direct_io=direct_io_on)
    target.open()
    if not direct_io_on:
        assert not target.direct
    for piece in data:
        target.write(piece)
    path, allocated = target.commit()
    assert Path(path).read_bytes() == b"".join(data)
    assert allocated >= sum(map(len, data)) - 4 * KiB
    assert not (tmp_path / "t" / "image.qcow2.part").exists()
