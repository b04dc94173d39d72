"""Small shared pieces of the benchmark: units, timing of commands, summaries, host facts."""

from __future__ import annotations

import os
import platform
import ssl
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "bench"
PYTHON = sys.executable


class BenchError(RuntimeError):
    """A step of the benchmark failed (a baseline tool, a worker, a digest mismatch)."""


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def run(argv: list[str], env: dict[str, str] | None = None, timeout_s: float = 1800, **kwargs) -> str:
    """Run argv (never through a shell), return its stdout as text; raise BenchError on failure."""
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout_s, check=False,
                          **kwargs)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def timed(argv: list[str], env: dict[str, str] | None = None, timeout_s: float = 1800) -> tuple[float, str]:
    """(wall seconds, stdout) of one command."""
    start = time.perf_counter()
    out = run(argv, env, timeout_s)
    return time.perf_counter() - start, out


@dataclass(frozen=True)
class Summary:
    """min / median / max of the repetitions of one measurement (seconds, or any unit)."""

    min: float
    median: float
    max: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        if not values:
            raise ValueError("no values")
        return cls(min(values), statistics.median(values), max(values), len(values))

    def as_dict(self) -> dict:
        return {"min": self.min, "median": self.median, "max": self.max, "n": self.n}


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as e:
        return f"unavailable ({e.strerror})"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def host_facts() -> dict:
    """What the numbers depend on: CPU, cores, memory, tool and library versions, load."""
    flags = cpu_flags()
    try:
        mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                           if line.startswith("MemTotal")))
    except (OSError, StopIteration, ValueError):
        mem_kib = 0
    try:
        from zsagent.copy import md5 as md5_mod
        from zsagent.copy import md5_choice

        # Measured fresh (no cache) with the agent's own start-up measurement: the figures of this run's host.
        choice = md5_choice.evaluate(None, env={})
        native_md5 = {"built": md5_mod.native is not None, "kernel": md5_mod.NATIVE_KERNEL,
                      "figures_mib_s": choice.figures, "choice": choice.impl, "method": md5_choice.METHOD,
                      "summary": choice.summary()}
    except ImportError:
        native_md5 = {"built": False}
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "cpu_features": sorted(f for f in flags if f in {"avx2", "avx512f", "avx512vl", "sha_ni", "bmi2"}),
        "memory_gib": round(mem_kib / MiB, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "ceph": _first_line(["ceph", "--version"]),
        "qemu_img": _first_line(["qemu-img", "--version"]),
        "nbdcopy": _first_line(["nbdcopy", "--version"]),
        "native_md5": native_md5,
        "loadavg_start": os.getloadavg(),
    }
