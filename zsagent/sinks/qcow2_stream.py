"""A qcow2 template written in one sequential pass to a StreamTarget, with the MD5 of the file's bytes.

    pipeline MD5 thread                 writer thread (one per sink)            write-behind thread
    ───────────────────                 ────────────────────────────            ───────────────────
    write/zero: check order, ─queue──►  metadata first (planned at open), then  ─queue─► target.write,
    hand the chunk over                 the data area: encode, md5.update       strictly in file order

The pipeline's MD5 thread only hands chunks over (no hashing, no I/O there); the queue holds at most
``queue_chunks`` chunks, so memory stays bounded whatever the volume size (the pipeline's chunks are
immutable bytes, queued without a copy). Runs of zero() calls are merged before they are queued (up to
ZERO_RUN_MAX_BYTES). An error in the writer thread surfaces on the next write/zero or on commit; abort()
stops the thread and aborts the target.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterable, Sequence

from zsagent.copy.extents import Extent
from zsagent.copy.md5 import new_md5
from zsagent.qcow2 import DEFAULT_CLUSTER_BITS, DataEncoder, Qcow2Layout, metadata_chunks, plan_layout
from zsagent.sinks.base import SinkResult, StreamTarget
from zsagent.sinks.write_behind import WriteBehind, WriteBehindStopped

log = logging.getLogger(__name__)

QUEUE_CHUNKS = 4
"""Chunks handed over but not yet written, at most (each as large as the pipeline's chunk)."""
ZERO_RUN_MAX_BYTES = 64 * 1024 * 1024
"""zero() calls are merged into one queued item up to this many bytes (so that zeros inside allocated
clusters are written while the copy goes on, not all at commit)."""
_PUT_WAIT_S = 0.1
_END = None


class _Stopped(Exception):
    """The sink was aborted while its writer thread was busy."""


class Qcow2StreamSink:
    """Stream the volume as a qcow2 v3 image (see zsagent.qcow2 for the layout) into ``target``.

    ``commit()`` returns the target's install path and allocated size, and ``md5``: the MD5 of the image
    file's bytes (not of the volume's raw content, which the pipeline computes).
    ``layout`` is the planned image after ``open()``.
    """

    sequential = True

    def __init__(self, target: StreamTarget, cluster_bits: int = DEFAULT_CLUSTER_BITS,
                 queue_chunks: int = QUEUE_CHUNKS) -> None:
        if queue_chunks < 1:
            raise ValueError("queue_chunks must be at least 1")
        self.target = target
        self.description = target.description
        self.cluster_bits = cluster_bits
        self.layout: Qcow2Layout | None = None
        self.bytes_written = 0
        self._queue: queue.Queue = queue.Queue(maxsize=queue_chunks)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._md5 = new_md5()  # native where it is faster (zsagent.copy.md5)
        self._next = 0  # guest offset the next write/zero must start at
        self._zero_run: list[int] | None = None  # [offset, length] of zero() calls not queued yet
        self._committed = False

    # -- pipeline side (its MD5 thread) ---------------------------------------------------------------

    def open(self, size: int, extents: Sequence[Extent]) -> None:
        self.layout = plan_layout(size, extents, self.cluster_bits)
        self.target.open()
        self._thread = threading.Thread(target=self._write_all, name="zsagent-qcow2", daemon=True)
        self._thread.start()

    def write(self, offset: int, data: bytes) -> None:
        self._check(offset, len(data))
        self._flush_zeros()
        if type(data) is not bytes:  # only immutable bytes may be kept after returning
            data = bytes(data)
        self._put((offset, data))
        self._next = offset + len(data)

    def zero(self, offset: int, length: int) -> None:
        self._check(offset, length)
        if self._zero_run is None:
            self._zero_run = [offset, length]
        else:
            self._zero_run[1] += length
        self._next = offset + length
        if self._zero_run[1] >= ZERO_RUN_MAX_BYTES:
            self._flush_zeros()

    def commit(self, content_md5: str | None = None) -> SinkResult:
        if self._thread is None:
            raise ValueError(f"{self.description}: commit of a sink that is not open")
        self._raise_if_failed()
        self._flush_zeros()
        self._put(_END)
        self._thread.join()
        self._raise_if_failed()
        file_md5 = self._md5.hexdigest()
        install_path, actual_size = self.target.commit(expected_md5=file_md5)
        self._committed = True
        return SinkResult(install_path, actual_size, md5=file_md5)

    def interrupt(self) -> None:
        """The copy stopped: a target write that waits (an SFTP reconnection) gives up at once."""
        self._stop.set()
        interrupt = getattr(self.target, "interrupt", None)
        if interrupt is not None:
            interrupt()

    def abort(self) -> None:
        if self._committed:
            return
        self._stop.set()
        interrupt = getattr(self.target, "interrupt", None)
        if interrupt is not None and self._thread is not None and self._thread.is_alive():
            interrupt()
        try:
            thread = self._thread
            if thread is not None and thread.is_alive():
                while thread.is_alive():  # it drops whatever is queued once _stop is set
                    try:
                        self._queue.put(_END, timeout=_PUT_WAIT_S)
                        break
                    except queue.Full:
                        continue
                thread.join()
        except Exception:  # noqa: BLE001 - abort never raises
            log.exception("stopping the writer of %s failed", self.description)
        try:
            self.target.abort()
        except Exception:  # noqa: BLE001
            log.exception("abort of %s failed", self.description)

    def _check(self, offset: int, length: int) -> None:
        self._raise_if_failed()
        if self._thread is None:
            raise ValueError(f"{self.description}: write to a sink that is not open")
        if offset != self._next:
            raise ValueError(f"{self.description}: offset {offset} out of order, expected {self._next}")

    def _flush_zeros(self) -> None:
        if self._zero_run is not None:
            offset, length = self._zero_run
            self._zero_run = None
            self._put((offset, length))

    def _put(self, item: tuple[int, bytes | int] | None) -> None:
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(item, timeout=_PUT_WAIT_S)
                return
            except queue.Full:
                continue

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error
        if self._stop.is_set():
            raise _Stopped(f"{self.description}: aborted")

    # -- writer thread --------------------------------------------------------------------------------

    def _write_all(self) -> None:
        layout = self.layout
        assert layout is not None
        output_stop = threading.Event()
        self._output = WriteBehind(self.target, output_stop, name="zsagent-qcow2-write")
        try:
            self._emit_all(metadata_chunks(layout))
            encoder = DataEncoder(layout)
            while (item := self._queue.get()) is not _END:
                offset, piece = item
                if isinstance(piece, int):
                    self._emit_all(encoder.zeros(offset, piece))
                else:
                    self._emit_all(encoder.data(offset, piece))
            if self._stop.is_set():
                return
            self._emit_all(encoder.finish())
            self._output.close()
            if self.bytes_written != layout.file_size:
                raise RuntimeError(f"wrote {self.bytes_written} bytes where the layout has {layout.file_size}")
        except (_Stopped, WriteBehindStopped):
            pass
        except BaseException as e:  # noqa: BLE001 - handed to the pipeline's thread
            self._error = e
            output_stop.set()
            self._drain()
        finally:
            output_stop.set()  # the writes are done (closed), or nothing more is to be written
            self._output.cancel()

    def _emit_all(self, pieces: Iterable[bytes | memoryview]) -> None:
        """Hash each piece here and write it in the WriteBehind thread: MD5 and writes overlap."""
        for piece in pieces:
            if self._stop.is_set():
                raise _Stopped()
            self._md5.update(piece)
            self._output.put(piece)
            self.bytes_written += len(piece)

    def _drain(self) -> None:
        """After a failure: take what is queued (and comes) until the end, so no producer blocks."""
        while not self._stop.is_set():
            try:
                if self._queue.get(timeout=_PUT_WAIT_S) is _END:
                    return
            except queue.Empty:
                continue
