"""The MD5 the copy pipeline feeds: the native zsagent._md5 where it is built and faster, else hashlib.

``new_md5()`` returns an object with ``update(buffer)``, ``update_zeros(n)`` (hash ``n`` zero bytes),
``digest()``, ``hexdigest()`` and ``copy()``; both implementations give hashlib's digest for every input.

Which one: ``USE_NATIVE`` (module-level, decided at import). The native module compiles two kernels and
picks the fastest the CPU runs (``native.KERNELS[0]``). Measured on the bench host (Intel Xeon with
AVX-512, OpenSSL 3.0.19), speed relative to hashlib (OpenSSL's assembly MD5), 4 MiB updates:

    kernel   random data   zero blocks   update_zeros(n)   (C harness bench/native/md5bench.c, thread CPU
    avx512   1.18x         1.19x         1.18x              time, median of per-rep ratios; pytest-benchmark
    scalar   0.98x         1.02x         1.04x              bench/micro agrees: 1.15x / 1.21x / 1.27x and
                                                            0.99x / 1.08x / 1.09x)

MD5 is one dependency chain, so a kernel is as fast as one step is short: the avx512 kernel evaluates
F, G, H and I with one vpternlogd each (4 dependent operations per step instead of 4.5 on average); the
scalar kernel only ties with OpenSSL's assembly, so hashlib stays in use where it is the only kernel.
``ZSAGENT_MD5=native|hashlib`` in the environment overrides the choice (for benchmarks).

Only the native object can export and import its running state (``state()``, ``resume_md5()``), so that a
copy could resume mid-stream; hashlib cannot.
"""

from __future__ import annotations

import hashlib
import os
from typing import Protocol

try:
    from zsagent import _md5 as native
except ImportError:  # not built (no compiler at install time): hashlib only
    native = None

FASTER_NATIVE_KERNELS = frozenset({"avx512"})
"""Native kernels measured faster than hashlib on random data (see the module docstring)."""

NATIVE_KERNEL: str | None = native.KERNELS[0] if native is not None else None
"""The kernel a native object uses here, or None when the extension is not built."""


def _choose() -> bool:
    forced = os.environ.get("ZSAGENT_MD5", "").strip().lower()
    if forced == "hashlib" or native is None:
        return False
    if forced == "native":
        return True
    return NATIVE_KERNEL in FASTER_NATIVE_KERNELS


USE_NATIVE: bool = _choose()
"""True when new_md5() returns the native implementation."""

ZERO_BUFFER_BYTES = 1024 * 1024
"""hashlib has no update_zeros: zeros are hashed from one shared buffer of this size (fits in L2)."""
_ZEROS = memoryview(bytes(ZERO_BUFFER_BYTES))


class Hasher(Protocol):
    """One MD5 stream."""

    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def update_zeros(self, n: int, /) -> None: ...

    def digest(self) -> bytes: ...

    def hexdigest(self) -> str: ...

    def copy(self) -> Hasher: ...


class HashlibMD5:
    """hashlib.md5 with ``update_zeros``."""

    __slots__ = ("_md5",)
    name = "md5"
    digest_size = 16
    block_size = 64

    def __init__(self, data: bytes | bytearray | memoryview | None = None) -> None:
        self._md5 = hashlib.md5(usedforsecurity=False)
        if data is not None:
            self._md5.update(data)

    def update(self, data: bytes | bytearray | memoryview, /) -> None:
        self._md5.update(data)

    def update_zeros(self, n: int, /) -> None:
        if n < 0:
            raise ValueError("update_zeros() needs a count >= 0")
        step = len(_ZEROS)
        while n >= step:
            self._md5.update(_ZEROS)
            n -= step
        if n:
            self._md5.update(_ZEROS[:n])

    def digest(self) -> bytes:
        return self._md5.digest()

    def hexdigest(self) -> str:
        return self._md5.hexdigest()

    def copy(self) -> HashlibMD5:
        other = HashlibMD5.__new__(HashlibMD5)
        other._md5 = self._md5.copy()
        return other


def new_md5(*, use_native: bool | None = None) -> Hasher:
    """A fresh MD5 stream; ``use_native`` None means ``USE_NATIVE`` (True needs the extension)."""
    if use_native is None:
        use_native = USE_NATIVE
    if use_native:
        if native is None:
            raise RuntimeError("zsagent._md5 is not built")
        return native.MD5()
    return HashlibMD5()


def resume_md5(state: bytes) -> Hasher:
    """The native stream saved by ``new_md5(use_native=True).state()``; needs the extension."""
    if native is None:
        raise RuntimeError("zsagent._md5 is not built: no MD5 state to resume from")
    return native.MD5.from_state(state)


__all__ = ["FASTER_NATIVE_KERNELS", "NATIVE_KERNEL", "USE_NATIVE", "Hasher", "HashlibMD5", "new_md5",
           "resume_md5"]
