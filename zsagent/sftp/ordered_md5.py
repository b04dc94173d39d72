"""MD5 of a file whose pieces arrive out of order from several threads (the raw sink's verification)."""

from __future__ import annotations

import threading

from zsagent.copy.md5 import new_md5


class OrderedMd5:
    """Feed ``add(offset, length, data)`` in any order from any thread; pieces are hashed in offset order.

    ``data`` None means ``length`` zero bytes. Pieces must tile ``[0, size)`` exactly once. Pieces ahead
    of the hashed frontier are kept (by reference) until the gap before them is filled, so memory is
    bounded by how far writers run ahead (for the pipeline: its depth times its chunk size).
    """

    def __init__(self) -> None:
        self._md5 = new_md5()  # native where it is faster; zero pieces cost no buffer
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[int, bytes | memoryview | None]] = {}
        self._next = 0
        self._hashing = False

    @property
    def hashed_bytes(self) -> int:
        return self._next

    def add(self, offset: int, length: int, data: bytes | memoryview | None) -> None:
        if data is not None and len(data) != length:
            raise ValueError("length does not match the data")
        if length == 0:
            return
        with self._lock:
            if offset < self._next or offset in self._waiting:
                raise ValueError(f"bytes at offset {offset} were already added")
            self._waiting[offset] = (length, data)
            if self._hashing:
                return  # the thread that is hashing will get to it
            self._hashing = True
        while True:
            with self._lock:
                piece = self._waiting.pop(self._next, None)
                if piece is None:
                    self._hashing = False
                    return
                self._next += piece[0]
            self._update(*piece)

    def _update(self, length: int, data: bytes | memoryview | None) -> None:
        if data is None:
            self._md5.update_zeros(length)
        else:
            self._md5.update(data)

    def hexdigest(self, size: int) -> str:
        """The MD5 of ``[0, size)``; ValueError when pieces are missing."""
        with self._lock:
            if self._next != size or self._waiting:
                raise ValueError(f"only {self._next} of {size} bytes hashed in order "
                                 f"({len(self._waiting)} pieces waiting for a gap)")
            return self._md5.hexdigest()
