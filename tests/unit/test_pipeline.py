"""The pipeline against in-memory doubles: md5, sparseness, ordering, memory bound, failures, cancel."""

import hashlib
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import MemorySink, MemorySource, md5_bytes

from zsagent.copy.errors import AllSinksFailed, CopyCancelled, SourceError
from zsagent.copy.pipeline import PipelineConfig, run_copy

KiB = 1024
EMPTY_MD5 = hashlib.md5(b"").hexdigest()


@st.composite
def volumes(draw):
    """A volume of random size with data, zero-filled data and unallocated ranges."""
    size = draw(st.integers(0, 300 * KiB))
    content = bytearray(size)
    ranges = []
    for _ in range(draw(st.integers(0, 6))):
        offset = draw(st.integers(0, max(size - 1, 0)))
        length = draw(st.integers(1, 80 * KiB))
        length = min(length, size - offset)
        if length <= 0:
            continue
        ranges.append((offset, length))
        if draw(st.booleans()):  # allocated but written with zeros
            continue
        fill = draw(st.integers(1, 255))
        content[offset:offset + length] = bytes([fill]) * length
    return bytes(content), ranges


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(volumes(), st.sampled_from([4 * KiB, 12 * KiB, 64 * KiB]), st.integers(1, 5), st.booleans())
def test_copy_reproduces_the_volume_and_its_md5(volume, chunk, depth, sequential):
    content, ranges = volume
    source = MemorySource(content, ranges)
    sink = MemorySink(sequential=sequential)
    result = run_copy(source, [sink], PipelineConfig(chunk_bytes=chunk, depth=depth))

    assert result.md5 == md5_bytes(content)
    assert result.size == len(content)
    assert bytes(sink.buf) == content
    assert sink.committed and not sink.aborted
    # Only allocated ranges are read, and all-zero chunks are never written.
    allocated = {b for o, n in ranges for b in range(o, o + n)}
    for offset, length in source.reads:
        assert set(range(offset, offset + length)) <= allocated
    for offset, length in sink.writes:
        assert any(content[offset:offset + length])
    assert result.stats.bytes_read == sum(n for _, n in source.reads)


def test_sequential_sink_sees_every_byte_once_in_offset_order():
    content = bytes(range(256)) * 4096  # 1 MiB
    source = MemorySource(content, [(0, 300 * KiB), (600 * KiB, 200 * KiB)], read_delay_s=0.001)
    sink = MemorySink(sequential=True)
    run_copy(source, [sink], PipelineConfig(chunk_bytes=16 * KiB, depth=6))
    pos = 0
    for offset, length in sorted(sink.writes + sink.zeros):
        assert offset == pos
        pos += length
    assert pos == len(content)


def test_sequential_calls_arrive_in_offset_order():
    content = bytes(range(256)) * 1024
    calls = []

    class Recorder(MemorySink):
        def write(self, offset, data):
            calls.append(offset)
            super().write(offset, data)

        def zero(self, offset, length):
            calls.append(offset)
            super().zero(offset, length)

    source = MemorySource(content, [(0, 100 * KiB), (150 * KiB, 90 * KiB)], read_delay_s=0.002)
    run_copy(source, [Recorder(sequential=True)], PipelineConfig(chunk_bytes=8 * KiB, depth=8))
    assert calls == sorted(calls) and len(calls) == len(set(calls))


def test_memory_stays_bounded_by_depth_when_the_consumer_is_slow():
    content = b"\x01" * (2 * 1024 * KiB)
    source = MemorySource(content)
    slow = MemorySink(sequential=True, write_delay_s=0.002)
    depth = 3
    peak = 0

    original_read = source.read

    def read(offset, length):
        nonlocal peak
        # chunks read or being read that the (slow, in-order) sink has not received yet
        pending = len(source.reads) - len(slow.writes)
        peak = max(peak, pending)
        return original_read(offset, length)

    source.read = read
    run_copy(source, [slow], PipelineConfig(chunk_bytes=16 * KiB, depth=depth))
    assert len(source.reads) == 128
    assert peak <= depth


def test_empty_volume_gives_the_md5_of_nothing():
    sink = MemorySink()
    result = run_copy(MemorySource(b""), [sink])
    assert result.md5 == EMPTY_MD5 and sink.committed and bytes(sink.buf) == b""


def test_hash_only_copy_with_no_sinks():
    content = b"abc" * 100_000
    assert run_copy(MemorySource(content), []).md5 == md5_bytes(content)


@pytest.mark.parametrize("fail_at", [0, 3, 9])
def test_read_error_at_chunk_k_aborts_every_sink(fail_at):
    source = MemorySource(b"\x07" * (160 * KiB), fail_at_read=fail_at)
    sinks = [MemorySink("a"), MemorySink("b", sequential=True)]
    with pytest.raises(SourceError, match="injected read error"):
        run_copy(source, sinks, PipelineConfig(chunk_bytes=16 * KiB, depth=4))
    assert all(s.aborted and not s.committed for s in sinks)


@pytest.mark.parametrize("sequential", [False, True])
def test_one_failing_sink_is_dropped_and_the_other_still_publishes(sequential):
    content = b"\x09" * (128 * KiB)
    good, bad = MemorySink("good"), MemorySink("bad", sequential=sequential, fail_at_write=2)
    result = run_copy(MemorySource(content), [good, bad], PipelineConfig(chunk_bytes=16 * KiB, depth=4))
    assert result.md5 == md5_bytes(content)
    assert [p.install_path for p in result.published] == ["good"] and result.published_by == [good]
    assert [f.sink for f in result.failed] == [bad] and result.result_of(bad) is None
    assert good.committed and bytes(good.buf) == content
    assert bad.aborted and not bad.committed


def test_every_sink_failing_fails_the_copy():
    sinks = [MemorySink("a", fail_at_write=1), MemorySink("b", fail_commit=True)]
    with pytest.raises(AllSinksFailed) as info:
        run_copy(MemorySource(b"\x01" * (64 * KiB)), sinks, PipelineConfig(chunk_bytes=16 * KiB, depth=2))
    assert {e.description for e in info.value.errors} == {"a", "b"}
    assert [e.sink for e in info.value.errors] == sinks
    assert all(s.aborted and not s.committed for s in sinks)


def test_sink_that_cannot_be_created_fails_fast():
    source = MemorySource(b"\x01" * (64 * KiB))
    sink = MemorySink(fail_open=True)
    with pytest.raises(AllSinksFailed, match="no space left"):
        run_copy(source, [sink])
    assert source.reads == [] and sink.aborted


@pytest.mark.parametrize("cancel_after_chunks", [1, 5])
def test_cancel_stops_within_a_chunk_window_and_aborts(cancel_after_chunks):
    chunk, depth = 16 * KiB, 3
    source = MemorySource(b"\x05" * (1024 * KiB), read_delay_s=0.001)
    sink = MemorySink()
    cancel = threading.Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        if len(seen) == cancel_after_chunks:
            cancel.set()

    with pytest.raises(CopyCancelled):
        run_copy(source, [sink], PipelineConfig(chunk_bytes=chunk, depth=depth), progress=progress,
                 cancel=cancel)
    assert sink.aborted and not sink.committed
    # Nothing new is started after the cancel beyond what was already in flight.
    assert len(source.reads) <= cancel_after_chunks + depth + 1
    assert len(seen) == cancel_after_chunks


def test_progress_reaches_the_total():
    content = b"\x02" * (100 * KiB + 3)
    seen = []
    run_copy(MemorySource(content, [(0, 10 * KiB)]), [MemorySink()],
             PipelineConfig(chunk_bytes=8 * KiB, depth=2), progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (len(content), len(content))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_config_rejects_nonsense():
    with pytest.raises(ValueError):
        PipelineConfig(chunk_bytes=1000)
    with pytest.raises(ValueError):
        PipelineConfig(depth=0)


def test_content_hash_can_be_skipped_when_no_sink_needs_it():
    content = b"\x03" * (64 * KiB)
    sink = MemorySink()
    result = run_copy(MemorySource(content, [(0, 16 * KiB)]), [sink], PipelineConfig(chunk_bytes=16 * KiB),
                      hash_content=False)
    assert result.md5 is None and bytes(sink.buf[:16 * KiB]) == content[:16 * KiB] and sink.committed


def test_sinks_with_the_same_description_stay_apart():
    """Identity is the sink object: two destinations that print alike are never confused."""
    content = b"\x05" * (64 * KiB)
    twins = [MemorySink("sftp://root@h:22/backup/t.raw"), MemorySink("sftp://root@h:22/backup/t.raw", fail_commit=True)]
    result = run_copy(MemorySource(content), twins, PipelineConfig(chunk_bytes=16 * KiB, depth=2))
    assert result.published_by == [twins[0]] and [f.sink for f in result.failed] == [twins[1]]


def test_commit_receives_the_content_md5_and_random_access_sinks_get_no_zero_calls():
    content = bytes(32 * KiB) + b"\x03" * (32 * KiB)
    sink, stream = MemorySink("a"), MemorySink("b", sequential=True)
    result = run_copy(MemorySource(content), [sink, stream], PipelineConfig(chunk_bytes=16 * KiB, depth=2))
    assert sink.content_md5 == stream.content_md5 == result.md5 == md5_bytes(content)
    assert sink.zeros == [] and stream.zeros
