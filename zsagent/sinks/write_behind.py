"""Writing a stream in a thread of its own, so that whoever produces it (and hashes it) goes on meanwhile.

The streaming qcow2 writer hashes every byte of the image and writes it: done in one thread, the file's
MD5 and its writes add up; with the writes here, they overlap (on two cores the MD5 is then the whole
critical path). At most ``max_pieces`` pieces wait; each must stay unchanged until written (immutable
bytes, or views of them). A write error stops the thread and surfaces on the next ``put`` or on
``close``; ``stop`` (an Event shared with the producer) makes it drop what is left.
"""

from __future__ import annotations

import queue
import threading

from zsagent.sinks.base import StreamTarget

MAX_PIECES = 8
_WAIT_S = 0.1
_END = None


class WriteBehindStopped(Exception):
    """``stop`` was set while a piece waited for room."""


class WriteBehind:
    """Appends pieces to ``target`` from a thread of its own; ``close()`` waits for the last one."""

    def __init__(self, target: StreamTarget, stop: threading.Event, max_pieces: int = MAX_PIECES,
                 name: str = "zsagent-write") -> None:
        self.target = target
        self.stop = stop
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=max_pieces)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, piece) -> None:
        """Queue ``piece`` for writing (blocks while ``max_pieces`` wait); raises a write error."""
        while True:
            if self.error is not None:
                raise self.error
            if self.stop.is_set():
                raise WriteBehindStopped()
            try:
                self._queue.put(piece, timeout=_WAIT_S)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Wait until everything queued is written; raises the write error, if any."""
        if self._thread.is_alive() and self.error is None:
            self.put(_END)
        self._thread.join()
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        """Stop writing (``stop`` must be set) and wait for the thread; never raises."""
        self._thread.join()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    piece = self._queue.get(timeout=_WAIT_S)
                except queue.Empty:
                    continue
                if piece is _END:
                    return
                self.target.write(piece)
        except BaseException as e:  # noqa: BLE001 - handed to the producer by put/close
            self.error = e
