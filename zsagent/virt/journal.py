"""The undo journal: every change made to a running domain, recorded *before* it is made.

A step is a ``(kind, spec)`` pair; ``spec`` is JSON-serializable and names everything needed to undo the
step in another process after a crash (URI, domain UUID, disk, file paths). The journal hands each new
step to an optional ``record(kind, spec) -> token`` hook and each finished one to ``clear(token)``, which
is the shape of the service's artifact journal:

    journal = UndoJournal(record=lambda kind, spec: store.journal(job_uuid, kind, spec),
                          clear=store.clear_artifact)

and after a restart ``undo_step(kind, spec)`` (undo.py) undoes a recorded step. Undo is idempotent: it
looks at the domain first and does only what is still needed.

Kinds:
  virt-fsfreeze  the guest's filesystems were (being) frozen: undo thaws them.
  virt-backup    a pull-mode backup job was (being) started: undo aborts it when it is still ours and
                 removes its NBD socket, scratch file and socket directory.
  virt-overlay   an external disk-only snapshot put the disk on an overlay: undo commits the overlay back
                 into the original image (active commit + pivot while the domain runs, ``qemu-img
                 commit`` when it does not), restores a persistent definition, and deletes the overlay.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FSFREEZE = "virt-fsfreeze"
BACKUP = "virt-backup"
OVERLAY = "virt-overlay"
KINDS = (FSFREEZE, BACKUP, OVERLAY)


@dataclass
class UndoStep:
    """kind: one of KINDS; spec: what undoing needs (JSON-serializable); token: what ``record`` returned."""

    kind: str
    spec: dict[str, Any]
    token: Any = field(default=None, compare=False)


class UndoJournal:
    """The pending steps of one point-in-time view, oldest first (thread-safe)."""

    def __init__(self, record: Callable[[str, dict[str, Any]], Any] | None = None,
                 clear: Callable[[Any], None] | None = None) -> None:
        self._record = record
        self._clear = clear
        self._steps: list[UndoStep] = []
        self._lock = threading.Lock()

    def add(self, kind: str, spec: dict[str, Any]) -> UndoStep:
        """Record a step about to be taken (call it *before* touching the domain)."""
        if kind not in KINDS:
            raise ValueError(f"unknown undo step kind {kind!r}")
        step = UndoStep(kind, dict(spec))
        if self._record is not None:
            step.token = self._record(kind, step.spec)
        with self._lock:
            self._steps.append(step)
        return step

    def done(self, step: UndoStep) -> None:
        """The step was undone (or turned out to need no undo): forget it."""
        with self._lock:
            if step not in self._steps:
                return
            self._steps.remove(step)
        if self._clear is not None and step.token is not None:
            self._clear(step.token)

    @property
    def pending(self) -> list[UndoStep]:
        """Steps not undone yet, oldest first (a copy)."""
        with self._lock:
            return list(self._steps)
