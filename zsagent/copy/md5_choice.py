"""Which MD5 implementation is fastest on this CPU: measured at start-up, cached per CPU and library version.

An implementation is named ``"hashlib"`` (OpenSSL's assembly MD5) or ``"native(<kernel>)"`` (zsagent._md5
with one of its kernels, e.g. ``native(avx512)``). Figures are MiB/s of random data, one update stream.

How it is measured (``measure``): a 1 MiB random buffer hashed twice per run (2 MiB a run), runs of every
implementation interleaved so that a frequency or load drift hits all of them alike, best of
``MEASURE_RUNS`` runs, timed with the calling thread's CPU time (``time.thread_time``). Thread CPU time and
not perf_counter because this host is shared (2 cores, Ceph OSDs beside the agent): a run preempted by
another process would look slower on a wall clock, and best-of-N only hides that when one run of each
implementation escaped preemption. Both implementations hash in the calling thread (they release the GIL
but do not hand the work to another thread), so its CPU time is all of their cost. Total: about 3 x 5
runs x 2 MiB, tens of milliseconds.

The rule (``decide``): native only when its best kernel is measured at least ``NATIVE_MARGIN`` faster
than hashlib, so that noise between two near-equal figures never picks the slower one.

The cache (``CACHE_FILE_NAME`` in the agent's data dir, JSON)::

    {"format": 1,
     "key": {"cpu_model": "...", "cpu_flags_sha256": "<16 hex>", "openssl": "OpenSSL 3.0.19 ...",
             "python": "3.11.2", "native_kernels": ["avx512", "scalar"] | null,
             "native_sha256": "<16 hex of the built extension>" | null, "zsagent": "0.1.0"},
     "figures_mib_s": {"hashlib": 688.0, "native(avx512)": 519.0, "native(scalar)": 601.0},
     "method": "...", "measured_at": "2026-01-31T12:00:00Z"}

It is used only when ``key`` equals this process' key (another CPU model or flags, another OpenSSL,
Python, extension build or zsagent version measure again) and its figures name exactly the
implementations available; anything else (missing, corrupt, other key) is measured and rewritten.
The choice itself is not stored: it is recomputed from the figures, so a new margin applies at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import zsagent

try:
    from zsagent import _md5 as native
except ImportError:  # not built (no compiler at install time): hashlib only
    native = None

HASHLIB = "hashlib"
NATIVE_MARGIN = 0.03
"""Native must be measured this much faster than hashlib (0.03: 3 %) to be chosen."""
MEASURE_BUFFER_BYTES = 1024 * 1024
"""Random bytes hashed per update while measuring (fits in L2, like the pipeline's zero buffer)."""
MEASURE_UPDATES_PER_RUN = 2
MEASURE_RUNS = 5
"""Runs per implementation; the best (shortest CPU time) counts."""
CACHE_FILE_NAME = "md5-choice.json"
CACHE_FORMAT = 1
ENV_OVERRIDE = "ZSAGENT_MD5"
"""``hashlib``, ``native`` (the fastest native kernel cached, else the extension's first) or one named
implementation such as ``native(scalar)`` forces it, without measuring (benchmarks)."""

Figures = dict[str, float]
"""Implementation name -> MiB/s."""


def native_name(kernel: str) -> str:
    return f"native({kernel})"


def kernel_of(name: str) -> str | None:
    """``"native(avx512)"`` -> ``"avx512"``; hashlib -> None."""
    return name[len("native("):-1] if name.startswith("native(") else None


def available() -> list[str]:
    """The implementations this process can use, hashlib first."""
    return [HASHLIB] + ([native_name(k) for k in native.KERNELS] if native is not None else [])


@dataclass(frozen=True)
class Md5Choice:
    """impl: the implementation new_md5() uses (``hashlib`` or ``native(<kernel>)``); resumable_impl: the
    native one a caller needing ``state()`` gets (the fastest native kernel measured; None when the
    extension is not built); figures: MiB/s per implementation (empty when not measured: forced by the
    environment with no valid cache); source: ``measured``, ``cached`` or ``ZSAGENT_MD5=<value>``."""

    impl: str
    resumable_impl: str | None
    figures: Figures = field(default_factory=dict)
    source: str = "measured"

    @property
    def native(self) -> bool:
        return self.impl != HASHLIB

    @property
    def kernel(self) -> str | None:
        return kernel_of(self.impl)

    @property
    def resumable_cost(self) -> float | None:
        """How much slower the resumable (native) stream hashes than the chosen one: 0.25 means 25 % fewer
        MiB/s; None when not measured or not built."""
        if self.resumable_impl is None or self.resumable_impl not in self.figures or self.impl not in self.figures:
            return None
        return max(0.0, 1.0 - self.figures[self.resumable_impl] / self.figures[self.impl])

    def summary(self) -> str:
        """One line: ``MD5: hashlib 688 MiB/s, native(avx512) 519 MiB/s — using hashlib``."""
        figures = ", ".join(f"{name} {mib_s:.0f} MiB/s" for name, mib_s in self.figures.items()) or "not measured"
        line = f"MD5: {figures} — using {self.impl}"
        if self.source.startswith(ENV_OVERRIDE):
            line += f" ({self.source})"
        elif native is None:
            line += " (zsagent._md5 is not built)"
        return line


def decide(figures: Mapping[str, float], margin: float = NATIVE_MARGIN) -> tuple[str, str | None]:
    """(the implementation to use, the fastest native one) from measured MiB/s; pure.

    Native only when its best kernel beats hashlib by more than ``margin`` (a fraction); a tie or noise
    keeps hashlib, so the choice is never measurably slower than hashlib."""
    natives = {name: mib_s for name, mib_s in figures.items() if kernel_of(name) is not None}
    best_native = max(natives, key=natives.__getitem__) if natives else None
    hashlib_mib_s = figures.get(HASHLIB, 0.0)
    if best_native is not None and natives[best_native] >= hashlib_mib_s * (1.0 + margin):
        return best_native, best_native
    return HASHLIB, best_native


def forced(env: Mapping[str, str]) -> str | None:
    """``native``, ``hashlib`` or an available ``native(<kernel>)`` from ZSAGENT_MD5, else None (unset or
    an unknown value)."""
    value = env.get(ENV_OVERRIDE, "").strip().lower()
    return value if value in ("native", HASHLIB) or (kernel_of(value) and value in available()) else None


# ---------------------------------------------------------------- measuring


def _new(name: str):
    kernel = kernel_of(name)
    if kernel is None:
        return hashlib.md5(usedforsecurity=False)
    return native.MD5(kernel=kernel)


def measure(runs: int = MEASURE_RUNS, buffer_bytes: int = MEASURE_BUFFER_BYTES,
            updates_per_run: int = MEASURE_UPDATES_PER_RUN) -> Figures:
    """MiB/s of every available implementation on random data; see the module docstring for the method."""
    data = memoryview(os.urandom(buffer_bytes))
    names = available()
    for name in names:  # warm-up: page in the buffer, the code, and let the clock ramp before any run counts
        _new(name).update(data)
    best_s = dict.fromkeys(names, float("inf"))
    for _ in range(runs):
        for name in names:
            md5 = _new(name)
            start_s = time.thread_time()
            for _ in range(updates_per_run):
                md5.update(data)
            md5.digest()
            best_s[name] = min(best_s[name], time.thread_time() - start_s)
    mib = buffer_bytes * updates_per_run / (1024 * 1024)
    # A run shorter than the clock's tick reads 0 s: count it as one tick rather than infinitely fast.
    tick_s = time.get_clock_info("thread_time").resolution
    return {name: round(mib / max(seconds, tick_s), 1) for name, seconds in best_s.items()}


METHOD = (f"thread CPU time, best of {MEASURE_RUNS} interleaved runs of "
          f"{MEASURE_UPDATES_PER_RUN} x {MEASURE_BUFFER_BYTES // 1024} KiB random data")


# ---------------------------------------------------------------- the cache


def _short_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def cpu_identity(cpuinfo: str | None = None) -> tuple[str, str]:
    """(model name, sha256 prefix of the sorted CPU flags) from /proc/cpuinfo."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags = "", ""
    for line in cpuinfo.splitlines():  # the first CPU's lines: every core of one host is the same model
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:  # Features: arm64's name for them
            flags = " ".join(sorted(value.split()))
    return model or platform.processor() or "unknown", _short_sha256(flags.encode())


def _native_build() -> str | None:
    """Which build of the extension: a digest of its file (a rebuild with other code measures again)."""
    if native is None:
        return None
    try:
        return _short_sha256(Path(native.__file__).read_bytes())
    except (OSError, AttributeError, TypeError):
        return "unknown"


def cache_key() -> dict:
    """What the figures depend on: the CPU and every library version involved."""
    model, flags_digest = cpu_identity()
    return {"cpu_model": model, "cpu_flags_sha256": flags_digest, "openssl": ssl.OPENSSL_VERSION,
            "python": platform.python_version(),
            "native_kernels": list(native.KERNELS) if native is not None else None,
            "native_sha256": _native_build(), "zsagent": zsagent.__version__}


def load_cached(path: Path, key: Mapping) -> Figures | None:
    """The cached figures when the file is intact and measured for ``key`` on these implementations."""
    try:
        document = json.loads(path.read_text())
        if document["format"] != CACHE_FORMAT or document["key"] != dict(key):
            return None
        figures = {str(name): float(mib_s) for name, mib_s in document["figures_mib_s"].items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # missing or corrupt: measured again and rewritten
    if sorted(figures) != sorted(available()) or not all(mib_s > 0 for mib_s in figures.values()):
        return None
    return figures


def store_cached(path: Path, key: Mapping, figures: Mapping[str, float]) -> bool:
    """Write the cache atomically (temp file + rename); False when the directory is not writable."""
    document = {"format": CACHE_FORMAT, "key": dict(key), "figures_mib_s": dict(figures), "method": METHOD,
                "measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(document, f, indent=1)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        return False
    return True


def figures_for(cache_dir: str | os.PathLike | None,
                measure_fn: Callable[[], Figures] | None = None) -> tuple[Figures, str]:
    """(figures, ``cached`` or ``measured``): from the cache in ``cache_dir`` when valid, else measured
    now (and stored there when ``cache_dir`` is given); ``measure_fn`` None: ``measure``."""
    measure_fn = measure_fn or measure  # looked up now, so that tests can replace the module's measure
    if cache_dir is None:
        return measure_fn(), "measured"
    path = Path(cache_dir) / CACHE_FILE_NAME
    key = cache_key()
    figures = load_cached(path, key)
    if figures is not None:
        return figures, "cached"
    figures = measure_fn()
    store_cached(path, key, figures)
    return figures, "measured"


def evaluate(cache_dir: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
             measure_fn: Callable[[], Figures] | None = None, measure_when_forced: bool = False) -> Md5Choice:
    """The choice for this process: ZSAGENT_MD5 when set (figures only from a valid cache, unless
    ``measure_when_forced``), else by ``decide`` on the cached or measured figures."""
    env = os.environ if env is None else env
    force = forced(env)
    if native is None:
        force = "hashlib" if force == "native" else force  # nothing else to force
    if force is not None and not measure_when_forced:
        cached = load_cached(Path(cache_dir) / CACHE_FILE_NAME, cache_key()) if cache_dir is not None else None
        figures = cached or {}
    else:
        figures, source = figures_for(cache_dir, measure_fn)
    impl, best_native = decide(figures)
    if best_native is None and native is not None:
        best_native = native_name(native.KERNELS[0])  # not measured: the extension's own preference
    if force is not None and kernel_of(force) is not None:
        impl = best_native = force  # one kernel by name: the bench hands its workers the host's choice
        source = f"{ENV_OVERRIDE}={force}"
    elif force is not None:
        impl = HASHLIB if force == "hashlib" or best_native is None else best_native
        source = f"{ENV_OVERRIDE}={force}"
    return Md5Choice(impl, best_native, figures, source)


__all__ = ["CACHE_FILE_NAME", "HASHLIB", "NATIVE_MARGIN", "Figures", "Md5Choice", "available", "cache_key",
           "decide", "evaluate", "figures_for", "forced", "load_cached", "measure", "native_name",
           "store_cached"]
