"""The MD5 the copy pipeline feeds: the native zsagent._md5 where it is built and measured faster, else hashlib.

``new_md5()`` returns an object with ``update(buffer)``, ``update_zeros(n)`` (hash ``n`` zero bytes),
``digest()``, ``hexdigest()`` and ``copy()``; both implementations give hashlib's digest for every input.

Which one is decided once per process, lazily: by ``choose(cache_dir)`` (the daemon and the CLI call it at
start with the agent's data dir) or else at the first ``new_md5()`` (measured, not cached). It measures
every available implementation on the running CPU (hashlib, and native with each of its kernels), caches
the figures per CPU model and library version, and uses native only when measured faster by a margin;
method, rule and cache format in zsagent.copy.md5_choice. ``ZSAGENT_MD5=hashlib|native|native(<kernel>)`` in the
environment overrides the choice (for benchmarks). ``USE_NATIVE`` (read lazily) says what was chosen.

Why measured and not by CPU flag: MD5 is one dependency chain, so a kernel is as fast as one step is
short. The avx512 kernel evaluates F, G, H and I with one vpternlogd each (4 dependent operations per
step instead of 4.5 on average): on the Intel Xeon bench host (OpenSSL 3.0.19) start-up measurement
gives hashlib 665-680, native(avx512) 818-821, native(scalar) 698-706 MiB/s (1.22x; avx512 chosen), but
on AMD EPYC Zen 4 the same avx512 kernel ran at 0.75x hashlib (519 vs 688 MiB/s, issue 16), so a flag
says nothing about which is faster.

Resumable state: only the native object can export and import its running state (``state()``,
``resume_md5()``), so that a copy could resume mid-stream; hashlib cannot. ``new_md5(resumable=True)``
gives the fastest native kernel measured, whatever the choice. No production code asks for it today
(the pipeline and the qcow2 writer hash with ``new_md5()``); where hashlib is faster it costs the figure
difference (``Md5Choice.resumable_cost``): on the Zen 4 host 25 % fewer MiB/s (519 vs 688 MiB/s, i.e.
1.33x the CPU seconds per GiB for hashing) if the avx512 kernel were the best native one there; on the
Intel bench host it costs nothing (native is the choice). ``zsagent check`` prints the figures.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from typing import Protocol

from zsagent.copy import md5_choice
from zsagent.copy.md5_choice import Md5Choice, native

log = logging.getLogger(__name__)

NATIVE_KERNEL: str | None = native.KERNELS[0] if native is not None else None
"""The kernel a native object uses by default here (the extension's preference), or None when not built."""

_choice: Md5Choice | None = None
_choice_lock = threading.Lock()


def choose(cache_dir: str | os.PathLike | None = None) -> Md5Choice:
    """This process' MD5 choice, decided (and logged, one line) at the first call: figures from
    ``<cache_dir>/md5-choice.json`` when valid for this CPU and these libraries, else measured (tens of
    milliseconds) and written there; ``cache_dir`` None measures without caching. Later calls return the
    same choice whatever their argument: one process, one implementation."""
    global _choice
    with _choice_lock:
        if _choice is None:
            _choice = md5_choice.evaluate(cache_dir)
            log.info("%s (%s)", _choice.summary(), _choice.source)
        return _choice


def __getattr__(name: str):
    # USE_NATIVE was a constant decided at import; it is now read lazily so that importing measures nothing.
    if name == "USE_NATIVE":
        return choose().native
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def new_md5(*, use_native: bool | None = None, resumable: bool = False) -> Hasher:
    """A fresh MD5 stream; ``use_native`` None means the process' choice (``choose()``), True needs the
    extension; ``resumable`` asks for a stream with ``state()``: always native (see the module docstring)."""
    if (resumable or use_native) and native is None:
        raise RuntimeError("zsagent._md5 is not built")
    if resumable:
        return native.MD5(kernel=md5_choice.kernel_of(choose().resumable_impl or ""))
    if use_native is None:
        choice = choose()
        return native.MD5(kernel=choice.kernel) if choice.native else HashlibMD5()
    return native.MD5() if use_native else HashlibMD5()


def resume_md5(state: bytes) -> Hasher:
    """The native stream saved by ``new_md5(use_native=True).state()``; needs the extension."""
    if native is None:
        raise RuntimeError("zsagent._md5 is not built: no MD5 state to resume from")
    return native.MD5.from_state(state, kernel=md5_choice.kernel_of(choose().resumable_impl or ""))


__all__ = ["NATIVE_KERNEL", "USE_NATIVE", "Hasher", "HashlibMD5", "Md5Choice", "choose", "new_md5",  # noqa: F822
           "resume_md5"]
