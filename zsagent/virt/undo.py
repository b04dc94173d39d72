"""Undoing journalled steps (see journal.py for the kinds), in this process or in another one after a crash.

    undo_step(kind, spec)    one recorded step; idempotent: it looks at the domain and does what is left
    undo_all(journal)        every pending step of an UndoJournal, newest first

``UNDO`` maps each step kind to the function that undoes it; each lives next to the code that takes the
step (quiesce, backup, overlay), which imports only journal.py, never this module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from zsagent.virt.backup import undo_backup
from zsagent.virt.journal import BACKUP, FSFREEZE, OVERLAY, UndoJournal
from zsagent.virt.overlay import undo_overlay
from zsagent.virt.quiesce import undo_freeze

log = logging.getLogger(__name__)

UNDO: dict[str, Callable[[dict[str, Any]], None]] = {FSFREEZE: undo_freeze, BACKUP: undo_backup,
                                                     OVERLAY: undo_overlay}
"""kind (journal.KINDS) -> ``undo(spec)``."""


def undo_step(kind: str, spec: dict[str, Any]) -> None:
    """Undo one recorded step (idempotent). Raises when it cannot be undone now (libvirt down, ...)."""
    try:
        undo = UNDO[kind]
    except KeyError:
        raise ValueError(f"unknown undo step kind {kind!r}") from None
    undo(spec)


def undo_all(journal: UndoJournal) -> list[BaseException]:
    """Undo every pending step of ``journal``, newest first; returns the errors of the steps that stay
    pending (each is logged)."""
    errors = []
    for step in reversed(journal.pending):
        try:
            undo_step(step.kind, step.spec)
        except Exception as e:  # noqa: BLE001 - the step stays pending; the next undo retries
            log.exception("could not undo %s %s", step.kind, step.spec)
            errors.append(e)
            continue
        journal.done(step)
    return errors
