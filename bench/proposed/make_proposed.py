# ruff: noqa: E501 - the module's lines are matched verbatim
"""Regenerate bench/proposed/: the proposed changes to zsagent/copy/pipeline.py, from its current text.

    .venv/bin/python bench/proposed/make_proposed.py

P1 (native MD5): the hasher comes from zsagent.copy.md5.new_md5() and zero ranges are hashed with
    update_zeros(); writes p1-native-md5.diff.
P2 (hash on read, on top of P1): a read worker hands its chunk to the hasher as soon as it is read and
    writes it to the random-access sinks afterwards; a chunk's slot is released by the later of the two;
    writes p2-hash-on-read.diff.
pipeline.py here is P1+P2, loaded in place of the module by bench/worker.py (variant "proposed");
BASE_MD5 records which pipeline.py it was made from (the worker warns when that one has changed).
Fails loudly when a piece of the module it edits is no longer there.
"""

import difflib
import hashlib
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
base_path = HERE.parent.parent / "zsagent" / "copy" / "pipeline.py"
base = base_path.read_text()



def rep(s, old, new):
    assert s.count(old) == 1, old[:80]
    return s.replace(old, new)

# ---- P1: native md5 through zsagent.copy.md5, holes with update_zeros
p1 = base
p1 = rep(p1, "import hashlib\n", "")
p1 = rep(p1, "from zsagent.copy.extents import Extent, Kind, chunked, coalesce\n",
         "from zsagent.copy.extents import Extent, Kind, chunked, coalesce\nfrom zsagent.copy.md5 import new_md5\n")
p1 = rep(p1, "        self.zeros = memoryview(self.zero_chunk)  # slices for hashing, without copies\n        self.md5 = hashlib.md5()\n",
         "        self.md5 = new_md5()  # zsagent._md5 where it is built and faster here, else hashlib\n")
p1 = rep(p1, "                elif data is None:\n                    self._hash_zeros(piece.length)\n",
         "                elif data is None:\n                    self.md5.update_zeros(piece.length)\n")
p1 = rep(p1, '''    def _hash_zeros(self, length: int) -> None:
        step = len(self.zeros)
        while length:
            n = min(step, length)
            self.md5.update(self.zeros[:n])
            length -= n

''', "")
p1 = rep(p1, "are never read; they are hashed from a shared buffer of zeros.", "are never read; they are hashed with update_zeros() (no buffer at all with the native MD5).")

# ---- P2: the hasher gets a chunk when it is read; writes to random-access sinks run meanwhile
p2 = p1
p2 = rep(p2, '''    caller thread            read workers (depth)              hasher thread
    ─────────────            ────────────────────              ─────────────
    plan chunks ──submit──►  read, zero-check, write  ──FIFO──► md5.update in offset order,
    (waits for a free slot)  to random-access sinks             feed sequential sinks, free the slot
''', '''    caller thread            read workers (depth)              hasher thread
    ─────────────            ────────────────────              ─────────────
    plan chunks ──submit──►  read, zero-check, hand  ──FIFO──► md5.update in offset order,
    (waits for a free slot)  over; then write to               feed sequential sinks
                             random-access sinks               (a slot is free when both are done)
''')
p2 = rep(p2, '''class _Copy:
    """State''', '''class _Slot:
    """One in-flight chunk's claim on the depth semaphore, released after both its hashing and its writes."""

    __slots__ = ("_lock", "_left", "_slots")

    def __init__(self, slots: threading.Semaphore) -> None:
        self._lock = threading.Lock()
        self._left = 2
        self._slots = slots

    def done(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self._slots.release()


class _Copy:
    """State''')
p2 = rep(p2, "        self.fifo: queue.SimpleQueue[tuple[Extent, Future | None] | None] = queue.SimpleQueue()\n",
         "        self.fifo: queue.SimpleQueue[tuple[Extent, Future | None, _Slot | None] | None]\n        self.fifo = queue.SimpleQueue()\n")
p2 = rep(p2, '''    def read_chunk(self, piece: Extent) -> bytes | None:
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
        is_zero = data == (self.zero_chunk if piece.length == len(self.zero_chunk) else bytes(piece.length))
        self._to_sinks(False, piece.offset, None if is_zero else data, piece.length)
        return None if is_zero else data
''', '''    def read_chunk(self, piece: Extent, ready: Future, slot: _Slot) -> None:
        """Read one data chunk, hand it to the hasher through ``ready`` (None means all zeros), then write it
        to the random-access sinks; ``slot`` is released by the later of this and the hasher."""
        try:
            if self.stop.is_set():
                raise CopyCancelled("copy stopped")
            try:
                data = self.source.read(piece.offset, piece.length)
            except Exception as e:
                raise SourceError(f"read of {piece.length} bytes at offset {piece.offset} failed: {e}") from e
            if len(data) != piece.length:
                raise SourceError(f"short read at offset {piece.offset}: {len(data)} of {piece.length} bytes")
            # bytes == bytes is a memcmp; comparing with a memoryview would go byte by byte under the GIL
            is_zero = data == (self.zero_chunk if piece.length == len(self.zero_chunk) else bytes(piece.length))
        except BaseException as e:  # noqa: BLE001 - raised by the hasher, in offset order
            ready.set_exception(e)
            slot.done()
            return
        ready.set_result(None if is_zero else data)
        try:
            self._to_sinks(False, piece.offset, None if is_zero else data, piece.length)
        finally:
            slot.done()
''')
p2 = rep(p2, '''            piece, future = item
            if self.stop.is_set():
                if future is not None:
                    future.cancel()
                    self.slots.release()
                continue''', '''            piece, future, slot = item
            if self.stop.is_set():
                if slot is not None:
                    slot.done()
                continue''')
p2 = rep(p2, '''            finally:
                if future is not None:
                    self.slots.release()
''', '''            finally:
                if slot is not None:
                    slot.done()
''')
p2 = rep(p2, '''                self.fifo.put((piece, None))
                continue''', '''                self.fifo.put((piece, None, None))
                continue''')
p2 = rep(p2, '''            self.fifo.put((piece, pool.submit(self.read_chunk, piece)))''', '''            ready: Future = Future()
            slot = _Slot(self.slots)
            self.fifo.put((piece, ready, slot))
            pool.submit(self.read_chunk, piece, ready, slot)''')

digest = hashlib.md5(base.encode()).hexdigest()
out = HERE
header = (f'# Private copy of zsagent/copy/pipeline.py (md5 {digest}) with proposals P1 (native MD5) and P2\n'
          f'# (hash on read). For bench/worker.py only; see bench/proposed/README.md.\n')
(out / "pipeline.py").write_text(header + p2)
(out / "BASE_MD5").write_text(digest + "\n")


def udiff(a, b, name_a, name_b):
    return "".join(difflib.unified_diff(a.splitlines(True), b.splitlines(True), name_a, name_b))


(out / "p1-native-md5.diff").write_text(udiff(base, p1, "a/zsagent/copy/pipeline.py", "b/zsagent/copy/pipeline.py"))
(out / "p2-hash-on-read.diff").write_text(udiff(p1, p2, "a/zsagent/copy/pipeline.py", "b/zsagent/copy/pipeline.py"))
print(digest)
