"""A qcow2 template made straight from the source's layout: one job, one qcow2 destination, nothing else.

    read workers (depth)                   caller thread                        writer thread
    ────────────────────                   ─────────────                        ─────────────
    readinto a page-aligned buffer  ──►    md5.update in file order,    ──►     pwrite (O_DIRECT) from that
    (os.preadv, GIL released)              progress, cancel, faults             very buffer, then free it

The allocation map of the volume, in the template's clusters, gives the whole layout up front
(zsagent.qcow2.plan_layout: header, L1, refcounts, L2 tables, then the data clusters in guest order), so
the data area is the allocated clusters read back to back: each run of clusters in chunks of about
``chunk_bytes``, read by the source into a buffer of a fixed pool (no new memory per chunk, no zero
check, no per-cluster Python), hashed there and written from there with no copy. The template is the
same file, byte for byte, as the streaming writer (Qcow2StreamSink) makes through the pipeline.

Used by zsagent.transfer when the only destination is a Qcow2StreamSink with a local FileStreamTarget,
no raw MD5 is wanted (raw templates need the pipeline's), and the source can ``readinto``. Cancel,
progress, the fault points, the source's ``confirm_unchanged`` and the errors are those of the pipeline.
"""

from __future__ import annotations

import logging
import mmap
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from zsagent import faults
from zsagent.copy.errors import AllSinksFailed, CopyCancelled, CopyError, SinkError, SourceError
from zsagent.copy.pipeline import CopyResult, CopyStats, PipelineConfig, ProgressCallback, plan
from zsagent.qcow2 import Qcow2Layout, metadata_chunks, plan_layout
from zsagent.sinks.base import SinkResult
from zsagent.sinks.file_stream import FileStreamTarget
from zsagent.sinks.qcow2_stream import Qcow2StreamSink

log = logging.getLogger(__name__)

READ_DEPTH = 4
"""Chunks read ahead of the hasher (more buys nothing from the page cache on 2 cores)."""
WRITE_QUEUE_CHUNKS = 4
"""Hashed chunks waiting for the writer, at most."""
_WAIT_S = 0.1


def applies(source: object, sinks: Sequence[object], converters: Sequence[object], hash_content: bool) -> bool:
    """Whether this copy can take the direct path (see the module's docstring)."""
    if converters or hash_content or len(sinks) != 1:
        return False
    sink = sinks[0]
    return (type(sink) is Qcow2StreamSink and type(sink.target) is FileStreamTarget
            and callable(getattr(source, "readinto", None)))


def chunk_runs(layout: Qcow2Layout, chunk_bytes: int) -> list[tuple[int, int]]:
    """The data area as (guest offset, bytes) chunks in file order: every allocated run cut into pieces of
    about ``chunk_bytes`` (whole clusters; at least one). The last cluster of a volume whose size is not a
    multiple of the cluster counts whole (its bytes past the end are written as zeros)."""
    cluster = layout.cluster_bytes
    step = max(cluster, chunk_bytes - chunk_bytes % cluster)
    out = []
    for first, count in layout.allocated_runs:
        start, end = first * cluster, (first + count) * cluster
        out.extend((at, min(step, end - at)) for at in range(start, end, step))
    return out


class _Buffers:
    """A fixed pool of page-aligned buffers (mmap), each ``size`` bytes."""

    def __init__(self, count: int, size: int) -> None:
        self.all = [mmap.mmap(-1, size) for _ in range(count)]
        self.free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        for buffer in self.all:
            self.free.put(buffer)

    def close(self) -> None:
        for buffer in self.all:
            try:
                buffer.close()
            except BufferError:  # a view is still held by an error's traceback: the collector frees it
                pass


class _DirectCopy:
    def __init__(self, source, sink: Qcow2StreamSink, config: PipelineConfig,
                 progress: ProgressCallback | None, cancel: threading.Event) -> None:
        self.source, self.sink, self.config = source, sink, config
        self.target: FileStreamTarget = sink.target
        self.progress, self.cancel = progress, cancel
        self.stats = CopyStats()
        self.stop = threading.Event()
        self.write_error: BaseException | None = None
        self.writes: queue.Queue = queue.Queue(maxsize=WRITE_QUEUE_CHUNKS)
        self.writer: threading.Thread | None = None

    def run(self) -> CopyResult:
        sink, source = self.sink, self.source
        try:
            layout = plan_layout(source.size, plan(source), sink.cluster_bits)
            sink.layout = layout
            self.target.open()
        except Exception as e:  # noqa: BLE001 - as the pipeline reports a sink that cannot be created
            sink.abort()
            raise AllSinksFailed([_sink_error(sink, "create", e)]) from e
        try:
            self._copy(layout)
            if self.cancel.is_set():
                raise CopyCancelled()
            confirm = getattr(source, "confirm_unchanged", None)
            if confirm is not None:
                try:
                    confirm()
                except Exception as e:  # noqa: BLE001 - SourceChanged, or the check itself failed
                    raise SourceError(f"the volume did not stay as it was while it was copied: {e}") from e
            file_md5 = sink._md5.hexdigest()
            try:
                install_path, actual_size = self.target.commit(expected_md5=file_md5)
            except Exception as e:  # noqa: BLE001
                raise AllSinksFailed([_sink_error(sink, "commit", e)]) from e
        except BaseException:
            sink.abort()
            raise
        sink._committed = True
        result = CopyResult(source.size, None, [], stats=self.stats)
        result.add(sink, SinkResult(install_path, actual_size, md5=file_md5))
        return result

    def _copy(self, layout: Qcow2Layout) -> None:
        md5 = self.sink._md5
        for chunk in metadata_chunks(layout):
            md5.update(chunk)
            self._sink_call("write", self.target.write, chunk)
        chunks = chunk_runs(layout, self.config.chunk_bytes)
        size = layout.virtual_size
        buffer_bytes = max((n for _, n in chunks), default=layout.cluster_bytes)
        buffers = _Buffers(READ_DEPTH + WRITE_QUEUE_CHUNKS + 2, buffer_bytes)
        writer = self.writer = threading.Thread(target=self._write_loop, args=(buffers,),
                                                name="zsagent-qcow2-write", daemon=True)
        writer.start()
        pending: list[tuple[int, int, Future]] = []
        try:
            with ThreadPoolExecutor(READ_DEPTH, thread_name_prefix="zsagent-read") as pool:
                try:
                    taken = 0
                    for offset, length in chunks:  # READ_DEPTH reads ahead of the hashing
                        pending.append((offset, length, pool.submit(self._read, buffers, offset, length, size)))
                        if len(pending) == READ_DEPTH:
                            self._take(pending.pop(0), first=taken == 0)
                            taken += 1
                    while pending:
                        self._take(pending.pop(0), first=taken == 0)
                        taken += 1
                except BaseException:
                    self.stop.set()
                    for _, _, future in pending:
                        future.cancel()
                    raise
            self._put_write(None)
            writer.join()
            self._raise_write_error()
            if self.target.position != layout.file_size:
                raise AllSinksFailed([_sink_error(self.sink, "write", RuntimeError(
                    f"wrote {self.target.position} bytes where the layout has {layout.file_size}"))])
            if self.progress is not None:
                self.progress(size, size)
        finally:
            self.stop.set()
            writer.join()
            buffers.close()

    def _read(self, buffers: _Buffers, offset: int, length: int, size: int) -> memoryview:
        """Read the guest bytes of one chunk into a free buffer (zeros past the volume's end)."""
        while True:
            if self.stop.is_set():
                raise CopyCancelled("copy stopped")
            try:
                buffer = buffers.free.get(timeout=_WAIT_S)
                break
            except queue.Empty:
                continue
        view = memoryview(buffer)[:length]
        inside = min(length, size - offset)
        try:
            self.source.readinto(offset, view[:inside])
        except Exception as e:
            buffers.free.put(buffer)
            raise SourceError(f"read of {inside} bytes at offset {offset} failed: {e}") from e
        if inside < length:
            view[inside:] = bytes(length - inside)
        return view

    def _take(self, item: tuple[int, int, Future], first: bool) -> None:
        """Hash one chunk (in file order) and hand it to the writer."""
        offset, length, future = item
        if self.cancel.is_set():
            raise CopyCancelled()
        self._raise_write_error()
        view = future.result()
        self.sink._md5.update(view)
        self._put_write(view)
        self.stats.bytes_read += length
        self.stats.bytes_written += length
        if first:
            faults.hit("copy-first-chunk")
        done = min(offset + length, self.source.size)
        faults.progressed("copy-mid", done, self.source.size)
        if self.progress is not None:
            self.progress(done, self.source.size)

    def _put_write(self, item: memoryview | None) -> None:
        """Queue a hashed chunk (or None: the end) for the writer thread."""
        while True:
            if item is not None:
                self._raise_write_error()
                if self.stop.is_set():
                    raise CopyCancelled("copy stopped")
            try:
                self.writes.put(item, timeout=_WAIT_S)
                return
            except queue.Full:
                if self.writer is not None and not self.writer.is_alive():
                    return
                continue

    def _raise_write_error(self) -> None:
        if self.write_error is not None:
            raise AllSinksFailed([_sink_error(self.sink, "write", self.write_error)]) from self.write_error

    def _write_loop(self, buffers: _Buffers) -> None:
        while True:
            try:
                view = self.writes.get(timeout=_WAIT_S)
            except queue.Empty:
                if self.stop.is_set():
                    return
                continue
            if view is None:
                return
            try:
                if self.write_error is None and not self.stop.is_set():
                    self.target.write_aligned(view)
            except BaseException as e:  # noqa: BLE001 - handed to the caller thread
                self.write_error = e
            finally:
                buffers.free.put(view.obj)

    def _sink_call(self, action: str, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001
            raise AllSinksFailed([_sink_error(self.sink, action, e)]) from e


def _sink_error(sink: Qcow2StreamSink, action: str, error: BaseException) -> SinkError:
    err = SinkError(sink.description, f"{action} failed: {error}", sink)
    err.__cause__ = error
    log.warning("destination %s dropped: %s failed: %s", sink.description, action, error)
    return err


def copy_direct(source, sink: Qcow2StreamSink, config: PipelineConfig | None = None, *,
                progress: ProgressCallback | None = None, cancel: threading.Event | None = None) -> CopyResult:
    """Copy ``source`` into the qcow2 template ``sink`` by the direct path; raises the pipeline's errors
    (CopyCancelled, SourceError, AllSinksFailed), with nothing left behind."""
    copy = _DirectCopy(source, sink, config or PipelineConfig(), progress, cancel or threading.Event())
    try:
        return copy.run()
    except CopyError:
        raise
    except Exception as e:  # noqa: BLE001 - anything else is this destination's failure
        raise AllSinksFailed([_sink_error(sink, "copy", e)]) from e
