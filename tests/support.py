"""Test doubles and independent checks shared by the suites."""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from zsagent.copy.extents import Extent, Kind, coalesce
from zsagent.sinks.base import SinkResult

KNOWN_SECRETS: set[str] = set()
"""Secrets a test uses that no file under the run's directory names (tests/secret_scan.py looks for
them in everything the agent wrote or said during the run)."""


def register_secret(value: str) -> str:
    """Have the end-of-run scan look for ``value`` (a session id, a key, a password); returns it."""
    KNOWN_SECRETS.add(value)
    return value


def run(*argv: str) -> str:
    """Run a tool (argv, no shell) that must succeed; its stdout."""
    done = subprocess.run(list(argv), capture_output=True, text=True)
    assert done.returncode == 0, f"{argv}: {done.stdout}{done.stderr}"
    return done.stdout


def unavailable(reason: str):
    """A needed service cannot be had: fail under CI=true (never skip there), skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def md5sum_file(path) -> str:
    """md5 of a file by the coreutils tool, not by our code."""
    out = subprocess.run(["md5sum", str(path)], check=True, capture_output=True, text=True).stdout
    return out.split()[0]


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


class MemorySource:
    """A volume held in memory with an explicit allocation map.

    ``fail_at_read``: the n-th read call (0-based) raises OSError. ``read_delay_s`` slows each read.
    Records every read range and the most reads it saw in flight at once.
    """

    def __init__(self, data: bytes, data_ranges: Sequence[tuple[int, int]] | None = None,
                 zero_ranges: Sequence[tuple[int, int]] = (), fail_at_read: int | None = None,
                 read_delay_s: float = 0.0) -> None:
        self.data = data
        self.size = len(data)
        self.qemu_input = None  # qemu-img cannot read memory
        ranges = [(0, self.size)] if data_ranges is None else data_ranges
        self._extents = [Extent(o, n, Kind.DATA) for o, n in ranges] + [
            Extent(o, n, Kind.ZERO) for o, n in zero_ranges]
        self.fail_at_read = fail_at_read
        self.read_delay_s = read_delay_s
        self.reads: list[tuple[int, int]] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed = False

    def extents(self):
        return sorted(self._extents, key=lambda e: e.offset)

    def read(self, offset: int, length: int) -> bytes:
        with self.lock:
            index = len(self.reads)
            self.reads.append((offset, length))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.read_delay_s:
                time.sleep(self.read_delay_s)
            if self.fail_at_read is not None and index == self.fail_at_read:
                raise OSError(5, "injected read error")
            return self.data[offset:offset + length]
        finally:
            with self.lock:
                self.in_flight -= 1

    def close(self) -> None:
        self.closed = True


class MemorySink:
    """A destination in memory that records what happened to it.

    ``fail_at_write``: the n-th write call raises. ``write_delay_s`` slows each write (and, for a
    sequential sink, holds up the hasher thread, which feeds it).
    """

    def __init__(self, name: str = "mem://t", sequential: bool = False, fail_at_write: int | None = None,
                 fail_open: bool = False, fail_commit: bool = False, write_delay_s: float = 0.0) -> None:
        self.description = name
        self.sequential = sequential
        self.fail_at_write = fail_at_write
        self.fail_open = fail_open
        self.fail_commit = fail_commit
        self.write_delay_s = write_delay_s
        self.buf = bytearray()
        self.writes: list[tuple[int, int]] = []
        self.zeros: list[tuple[int, int]] = []
        self.opened = self.committed = self.aborted = False
        self.planned: list[Extent] = []
        self.lock = threading.Lock()

    def open(self, size: int, extents: Sequence[Extent]) -> None:
        if self.fail_open:
            raise OSError(28, "injected: no space left")
        self.buf = bytearray(size)
        self.planned = list(extents)
        self.opened = True

    def write(self, offset: int, data: bytes) -> None:
        with self.lock:
            index = len(self.writes)
            self.writes.append((offset, len(data)))
        if self.write_delay_s:
            time.sleep(self.write_delay_s)
        if self.fail_at_write is not None and index == self.fail_at_write:
            raise OSError(5, "injected write error")
        self.buf[offset:offset + len(data)] = data

    def zero(self, offset: int, length: int) -> None:
        with self.lock:
            self.zeros.append((offset, length))

    def commit(self, content_md5: str | None = None) -> SinkResult:
        self.content_md5 = content_md5
        if self.fail_commit:
            raise OSError(5, "injected commit error")
        self.committed = True
        return SinkResult(self.description, sum(n for _, n in self.writes))

    def abort(self) -> None:
        self.aborted = True


def data_extents(extents) -> list[tuple[int, int]]:
    return [(e.offset, e.length) for e in coalesce(extents) if e.kind is Kind.DATA]


def make_qcow2_chain(directory: Path) -> Path:
    """base.qcow2 (data, a zero-written range, a compressed part) <- top.qcow2 (overwrites); 24 MiB."""
    mib = 1024 * 1024
    raw = directory / "seed.raw"
    with open(raw, "wb") as f:
        f.truncate(24 * mib)
        f.seek(8 * mib)
        f.write(os.urandom(2 * mib))
    base, top = directory / "base.qcow2", directory / "top.qcow2"
    _run("qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(base))  # compressed clusters
    _run("qemu-io", "-f", "qcow2", "-c", "write -P 0x11 0 3M", "-c", "write -z 3M 1M",
         "-c", "write -P 0x33 20M 65537", str(base))
    _run("qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top))
    _run("qemu-io", "-f", "qcow2", "-c", "write -P 0x22 1M 1M", "-c", "write -z 9M 512k",
         "-c", "write -P 0x44 23M 1M", str(top))
    return top


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


class RecordingJournal:
    """A Journal (zsagent.sinks.base) in memory: ``live`` maps each id to (kind, spec) until forgotten.

    ``fail_forget_after_final``: the first forget of a ``.part`` entry that comes after a final name was
    recorded raises once: a commit that fails right after publishing, wherever the kind publishes.
    """

    def __init__(self, fail_forget_after_final: bool = False) -> None:
        self.live: dict[int, tuple[str, dict]] = {}
        self.recorded: list[tuple[str, dict]] = []
        self.fail_forget_after_final = fail_forget_after_final
        self._final_seen = False
        self._next = 0
        self._lock = threading.Lock()

    def record(self, kind: str, spec: dict) -> int:
        with self._lock:
            self._next += 1
            self.live[self._next] = (kind, dict(spec))
            self.recorded.append((kind, dict(spec)))
            name = spec.get("path") or spec.get("image") or ""
            if not name.endswith(".part") and kind != "spool":
                self._final_seen = True
            return self._next

    def forget(self, artifact_id: int) -> None:
        with self._lock:
            kind, spec = self.live[artifact_id]
            name = spec.get("path") or spec.get("image") or ""
            if self.fail_forget_after_final and self._final_seen and name.endswith(".part"):
                self.fail_forget_after_final = False
                raise OSError(5, "injected failure right after publishing")
            del self.live[artifact_id]

    def names(self) -> set[str]:
        """What the live entries name: ``pool/image`` for RBD images, else the path."""
        with self._lock:
            return {f"{s['pool']}/{s['image']}" if "pool" in s else s["path"] for _, s in self.live.values()}
