"""What the pipeline needs from a destination, and how a destination records what it creates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from zsagent.copy.extents import Extent

PART_SUFFIX = ".part"
"""A template lives under ``<final name>.part`` until it is published (files, RBD images, SFTP)."""


@dataclass(frozen=True)
class SinkResult:
    """A published template.

    install_path: where it lives (``ceph://<pool>/<image>`` or a file path).
    actual_size: bytes allocated for it on the destination.
    parent: for a copy-on-write clone, the ``pool/image@snapshot`` it depends on, else None.
    md5: hex MD5 of the stored bytes when they differ from the volume's raw content (e.g. a qcow2
        file); None when the template is stored raw and the pipeline's MD5 is the template's.
    """

    install_path: str
    actual_size: int
    parent: str | None = None
    md5: str | None = None


class Journal(Protocol):
    """Where a destination records each thing it creates, *before* creating it, so that a restart after a
    crash can remove it: ``record(kind, spec)`` returns an id; ``forget(id)`` once the thing is gone (or
    handed over, e.g. a ``.part`` renamed to its final name, whose own entry was recorded first).

    ``kind`` is the storage kind's name (zsagent.storages: "ceph", "filesystem", "sftp") or another
    artifact kind zsagent.cleanup knows; ``spec`` (JSON) says where the thing is.
    """

    def record(self, kind: str, spec: dict[str, Any]) -> int: ...

    def forget(self, artifact_id: int) -> None: ...


class NoJournal:
    """A journal that keeps nothing (library use, tests, benchmarks)."""

    def __init__(self) -> None:
        self._next = 0

    def record(self, kind: str, spec: dict[str, Any]) -> int:
        self._next += 1
        return self._next

    def forget(self, artifact_id: int) -> None:
        pass


NO_JOURNAL = NoJournal()


class Sink(Protocol):
    """One destination of a copy.

    ``description``: names it in messages and logs (e.g. ``sftp://user@host:22/path``); identity is the
    object itself, never this string.
    ``sequential``: True when writes must come in offset order (streams); False when ``write`` may be
    called from several threads in any order.
    Life cycle: ``open(size, extents)`` creates everything under a temporary name (the planned extents
    let stream formats lay out their metadata first), then ``write`` covers every data byte once
    (sequential sinks also get ``zero`` for every other byte, in order; random-access sinks start out
    reading as zeros and get no ``zero`` calls), then ``commit(content_md5)`` publishes under the final
    name atomically, or ``abort()`` removes all it created. ``content_md5`` is the pipeline's hex MD5 of
    the raw content (None when the copy did not hash it); a sink that checks what it stored compares with
    it instead of hashing again. ``abort()`` may be called at any point, also after a failed ``open`` or
    ``commit``, removes a template the failed commit had already published, and never raises.
    A sink may also have ``interrupt()``: called (from any thread) when the copy stops on a cancel or an
    error, it makes a write that waits (e.g. for a reconnection) give up at once; ``abort()`` follows.
    """

    description: str
    sequential: bool

    def open(self, size: int, extents: Sequence[Extent]) -> None: ...

    def write(self, offset: int, data: bytes) -> None: ...

    def zero(self, offset: int, length: int) -> None: ...

    def commit(self, content_md5: str | None) -> SinkResult: ...

    def abort(self) -> None: ...


class StreamTarget(Protocol):
    """Where a sequential format encoder (e.g. the streaming qcow2 writer) puts its bytes.

    ``open()`` creates a temporary object (``<name>.part``); ``write(data)`` appends, strictly in order,
    never seeking; ``commit(expected_md5)`` makes it durable and publishes it under the final name
    atomically, never replacing an existing one, and returns (install_path, actual_size);
    ``expected_md5`` is the encoder's MD5 of every byte written, for targets that check what they stored.
    ``abort()`` removes what was created (also a template a failed commit published) and never raises.
    """

    description: str

    def open(self) -> None: ...

    def write(self, data: bytes) -> None: ...

    def commit(self, expected_md5: str | None = None) -> tuple[str, int]: ...

    def abort(self) -> None: ...
