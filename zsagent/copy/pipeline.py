"""The one copy loop: parallel chunked reads, one MD5 fed strictly in offset order, writes to every sink.

    caller thread            read workers (depth)              hasher thread
    ─────────────            ────────────────────              ─────────────
    plan chunks ──submit──►  read, zero-check, write  ──FIFO──► md5.update in offset order,
    (waits for a free slot)  to random-access sinks             feed sequential sinks, free the slot

At most ``depth`` data chunks are in flight or waiting for the hasher, so memory is bounded by
``depth * chunk_bytes`` (about three times that in practice: librados' receive buffer, the Python bytes and
the write buffer of each chunk) whatever the volume size. The FIFO of futures in submission (= offset) order is
the reorder buffer: reads complete in any order, the hasher takes them in order. Holes and zero extents
are never read; they are hashed with update_zeros() (no buffer at all with the native MD5).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from zsagent import faults
from zsagent.copy.errors import AllSinksFailed, CopyCancelled, CopyError, SinkError, SourceError
from zsagent.copy.extents import Extent, Kind, chunked, coalesce
from zsagent.copy.md5 import new_md5
from zsagent.sinks.base import Sink, SinkResult
from zsagent.sources.base import Source

log = logging.getLogger(__name__)

MiB = 1024 * 1024

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(bytes_done, bytes_total)`` from the hasher thread after each chunk."""


@dataclass(frozen=True)
class PipelineConfig:
    """chunk_bytes: size of one read (and of the zero check); depth: reads in flight at once.
    rbd_server_side_copy: an RBD volume copied into a pool of its own cluster has its data objects copied
    by the OSDs (zsagent.ceph.server_copy) where that is provably identical; False (the default): through
    librbd. Off by default because on a host whose OSD shares the agent's cores it made the copy slower
    (the OSD pulls each object from itself): 1.40x against 1.83x ZStack's path (bench/README.md)."""

    chunk_bytes: int = 2 * MiB  # 2 MiB x 16 measured best on a 2-core bluestore host (make bench SWEEP=1)
    depth: int = 16
    rbd_server_side_copy: bool = False

    def __post_init__(self) -> None:
        if self.chunk_bytes < 4096 or self.chunk_bytes % 4096:
            raise ValueError("chunk_bytes must be a positive multiple of 4096")
        if not 1 <= self.depth <= 256:
            raise ValueError("depth must be between 1 and 256")


@dataclass
class CopyStats:
    """bytes_read: bytes actually read from the source; bytes_written: data bytes written to sinks
    (once, however many sinks); zero_bytes_skipped: read bytes found all-zero and not written."""

    bytes_read: int = 0
    bytes_written: int = 0
    zero_bytes_skipped: int = 0


@dataclass
class CopyResult:
    """size: virtual bytes; md5: hex digest of the full virtual content (what a raw reader gets), None
    when the copy was asked not to hash it;
    published: one result per sink that committed, in the order the sinks were given;
    published_by: the sink (or converter) each of ``published`` came from, same order;
    failed: the sinks that failed while others succeeded (each SinkError carries its ``sink``)."""

    size: int
    md5: str | None
    published: list[SinkResult]
    failed: list[SinkError] = field(default_factory=list)
    stats: CopyStats = field(default_factory=CopyStats)
    published_by: list[object] = field(default_factory=list)

    def add(self, sink: object, result: SinkResult) -> None:
        self.published.append(result)
        self.published_by.append(sink)

    def result_of(self, sink: object) -> SinkResult | None:
        """What ``sink`` published, or None when it did not (identity, never a name)."""
        return next((r for s, r in zip(self.published_by, self.published, strict=True) if s is sink), None)


def plan(source: Source) -> list[Extent]:
    """The source's extents, normalised to cover ``[0, size)`` exactly, neighbours merged."""
    size = source.size
    pieces: list[Extent] = []
    pos = 0
    for ext in sorted(source.extents(), key=lambda e: e.offset):
        start, end = max(ext.offset, pos), min(ext.end, size)
        if end <= start:
            continue
        if start > pos:
            pieces.append(Extent(pos, start - pos, Kind.HOLE))
        pieces.append(Extent(start, end - start, ext.kind))
        pos = end
    if pos < size:
        pieces.append(Extent(pos, size - pos, Kind.HOLE))
    return list(coalesce(pieces))


class _Copy:
    """State of one running copy, shared by the caller, the read workers and the hasher thread."""

    def __init__(self, source: Source, sinks: Sequence[Sink], config: PipelineConfig,
                 progress: ProgressCallback | None, cancel: threading.Event | None, hash_content: bool) -> None:
        self.source = source
        self.hash_content = hash_content
        self.sinks = list(sinks)
        self.config = config
        self.progress = progress
        self.cancel = cancel or threading.Event()
        self.zero_chunk = bytes(config.chunk_bytes)
        self.md5 = new_md5()  # zsagent._md5 where it is built and faster here, else hashlib
        self.stats = CopyStats()
        self.stop = threading.Event()  # set on the first fatal error or cancel: everyone winds down
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.live: list[Sink] = []
        self.failed: dict[int, SinkError] = {}  # id(sink) -> why it was dropped
        self.slots = threading.Semaphore(config.depth)
        self.fifo: queue.SimpleQueue[tuple[Extent, Future | None] | None] = queue.SimpleQueue()

    # -- errors -----------------------------------------------------------------------------------

    def fail(self, error: BaseException) -> None:
        """Record the first fatal error and stop everything (sinks with ``interrupt()`` are told, so that
        none keeps a writer waiting)."""
        with self.lock:
            first = self.error is None
            if first:
                self.error = error
        self.stop.set()
        if first:
            for sink in self.sinks:
                interrupt = getattr(sink, "interrupt", None)
                if interrupt is not None:
                    try:
                        interrupt()
                    except Exception:  # noqa: BLE001 - the first error is what the caller gets
                        log.exception("interrupt of %s failed", sink.description)

    def drop_sink(self, sink: Sink, error: BaseException, action: str) -> None:
        """Take a failed sink out of the copy; the copy goes on while another sink is alive."""
        with self.lock:
            if sink not in self.live:
                return
            self.live.remove(sink)
            err = SinkError(sink.description, f"{action} failed: {error}", sink)
            err.__cause__ = error
            self.failed[id(sink)] = err
            none_left = not self.live
        log.warning("destination %s dropped: %s failed: %s", sink.description, action, error)
        if none_left:
            self.fail(AllSinksFailed(list(self.failed.values())))

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise CopyCancelled()

    def _write_all(self, offset: int, data: bytes, *, sequential: bool) -> None:
        """Write ``data`` to the live sinks that are (or are not) sequential."""
        for sink in [s for s in self.live if s.sequential is sequential]:
            try:
                sink.write(offset, data)
            except Exception as e:  # noqa: BLE001 - any storage error takes this sink out
                self.drop_sink(sink, e, "write")

    def _zero_all(self, offset: int, length: int) -> None:
        """Tell the sequential sinks that ``[offset, offset+length)`` reads as zeros (random-access sinks
        start out as zeros and are not told)."""
        for sink in [s for s in self.live if s.sequential]:
            try:
                sink.zero(offset, length)
            except Exception as e:  # noqa: BLE001 - any storage error takes this sink out
                self.drop_sink(sink, e, "zero")

    # -- read workers -----------------------------------------------------------------------------

    def read_chunk(self, piece: Extent) -> bytes | None:
        """Read one data chunk and write it to the random-access sinks; None means all zeros."""
        if self.stop.is_set():
            raise CopyCancelled("copy stopped")
        try:
            data = self.source.read(piece.offset, piece.length)
        except Exception as e:
            raise SourceError(f"read of {piece.length} bytes at offset {piece.offset} failed: {e}") from e
        if len(data) != piece.length:
            raise SourceError(f"short read at offset {piece.offset}: {len(data)} of {piece.length} bytes")
        # bytes == bytes is a memcmp; comparing with a memoryview would go byte by byte under the GIL
        if data == (self.zero_chunk if piece.length == len(self.zero_chunk) else bytes(piece.length)):
            return None
        self._write_all(piece.offset, data, sequential=False)
        return data

    # -- hasher thread ----------------------------------------------------------------------------

    def hash_in_order(self) -> None:
        done, total = 0, self.source.size
        while (item := self.fifo.get()) is not None:
            piece, future = item
            if self.stop.is_set():
                if future is not None:
                    future.cancel()
                    self.slots.release()
                continue
            try:
                self.check_cancel()
                data = future.result() if future is not None else None
                if self.hash_content:
                    if data is None:
                        self.md5.update_zeros(piece.length)
                    else:
                        self.md5.update(data)
                self._count(piece, read=future is not None, zero=data is None)
                if data is None:
                    self._zero_all(piece.offset, piece.length)
                else:
                    self._write_all(piece.offset, data, sequential=True)
                if not done:
                    faults.hit("copy-first-chunk")
                done += piece.length
                faults.progressed("copy-mid", done, total)
                if self.progress is not None:
                    self.progress(done, total)
            except BaseException as e:  # noqa: BLE001 - handed to the caller through fail()
                self.fail(e)
            finally:
                if future is not None:
                    self.slots.release()

    def _count(self, piece: Extent, *, read: bool, zero: bool) -> None:
        if not read:
            return
        with self.lock:
            self.stats.bytes_read += piece.length
            if zero:
                self.stats.zero_bytes_skipped += piece.length
            else:
                self.stats.bytes_written += piece.length

    # -- caller thread ----------------------------------------------------------------------------

    def run(self) -> CopyResult:
        extents = plan(self.source)
        self._open_sinks(extents)
        hasher = threading.Thread(target=self.hash_in_order, name="zsagent-md5", daemon=True)
        hasher.start()
        try:
            with ThreadPoolExecutor(self.config.depth, thread_name_prefix="zsagent-read") as pool:
                try:
                    self._submit_all(pool, extents)
                finally:
                    self.fifo.put(None)
                    hasher.join()
        except BaseException as e:  # noqa: BLE001 - e.g. KeyboardInterrupt in the caller
            self.fail(e)
        if self.error is None:
            try:
                self.check_cancel()
            except CopyCancelled as e:
                self.fail(e)
        if self.error is None:
            self._confirm_source_unchanged()
        if self.error is not None:
            self._abort_all()
            raise self.error
        return self._commit_all()

    def _confirm_source_unchanged(self) -> None:
        """After the last read, before anything is published: the source held still (see Source)."""
        confirm = getattr(self.source, "confirm_unchanged", None)
        if confirm is None:
            return
        try:
            confirm()
        except Exception as e:  # noqa: BLE001 - SourceChanged, or the check itself failed
            self.fail(SourceError(f"the volume did not stay as it was while it was copied: {e}"))

    def _open_sinks(self, extents: list[Extent]) -> None:
        self.live = list(self.sinks)
        for sink in self.sinks:
            try:
                sink.open(self.source.size, extents)
            except Exception as e:  # noqa: BLE001
                self.drop_sink(sink, e, "create")
        if self.error is not None:
            self._abort_all()
            raise self.error

    def _submit_all(self, pool: ThreadPoolExecutor, extents: list[Extent]) -> None:
        for piece in chunked(extents, self.config.chunk_bytes):
            if self.stop.is_set():
                return
            if self.cancel.is_set():
                self.fail(CopyCancelled())
                return
            if piece.kind is not Kind.DATA:
                self.fifo.put((piece, None))
                continue
            while not self.slots.acquire(timeout=0.1):
                if self.cancel.is_set():
                    self.fail(CopyCancelled())
                if self.stop.is_set():
                    return
            self.fifo.put((piece, pool.submit(self.read_chunk, piece)))

    def _abort_all(self) -> None:
        for sink in self.sinks:
            _abort(sink)

    def _commit_all(self) -> CopyResult:
        content_md5 = self.md5.hexdigest() if self.hash_content else None
        result = CopyResult(self.source.size, content_md5, [], stats=self.stats)
        for sink in self.sinks:
            if sink not in self.live:
                _abort(sink)
                continue
            try:
                result.add(sink, sink.commit(content_md5))
            except Exception as e:  # noqa: BLE001
                self.drop_sink(sink, e, "commit")
                _abort(sink)
        result.failed = list(self.failed.values())
        if self.sinks and not result.published:
            raise AllSinksFailed(result.failed)
        return result


def _abort(sink: Sink) -> None:
    """``sink.abort()``, which must not raise; if it does, the original error still wins."""
    try:
        sink.abort()
    except Exception:  # noqa: BLE001 - abort must not hide the original error
        log.exception("abort of %s failed", sink.description)


def run_copy(source: Source, sinks: Sequence[Sink], config: PipelineConfig | None = None, *,
             progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
             hash_content: bool = True) -> CopyResult:
    """Copy ``source`` into every sink in one read pass and return the MD5 of the full virtual content.

    With no sinks it only hashes. ``hash_content=False`` skips that MD5 when no one needs it (every sink
    stores another format and hashes its own bytes): zero ranges then cost nothing at all.
    A source error, a cancel, or the failure of every sink stops the copy, aborts all sinks and raises
    (SourceError, CopyCancelled, AllSinksFailed); a sink that fails while others go on is aborted and
    listed in ``CopyResult.failed``.
    """
    return _Copy(source, sinks, config or PipelineConfig(), progress, cancel, hash_content).run()


__all__ = ["CopyError", "CopyResult", "CopyStats", "PipelineConfig", "ProgressCallback", "plan", "run_copy"]
