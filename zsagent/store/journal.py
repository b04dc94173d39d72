"""A job's view of the store's artifact journal (what zsagent.sinks.base.Journal expects)."""

from __future__ import annotations

import threading
from typing import Any

from zsagent.store.protocol import Store


class JobJournal:
    """One job's artifact journal in the store (a zsagent.sinks.base.Journal).

    ``scope()`` gives a journal that also remembers which of the entries are its own (``ids``): one per
    destination and one for the source, so that a successful job hands exactly the published
    destinations' entries to ``Store.put_image``.
    """

    def __init__(self, store: Store, job_uuid: str, volume_uuid: str | None = None,
                 image_uuid: str | None = None) -> None:
        self.store = store
        self.job_uuid = job_uuid
        self.volume_uuid = volume_uuid
        self.image_uuid = image_uuid

    def record(self, kind: str, spec: dict[str, Any]) -> int:
        return self.store.journal(self.job_uuid, kind, spec, self.volume_uuid, self.image_uuid)

    def forget(self, artifact_id: int) -> None:
        self.store.clear_artifact(artifact_id)

    def scope(self) -> JournalScope:
        return JournalScope(self)


class JournalScope:
    """A view of a JobJournal that knows its own entries still in the journal: ``ids`` maps each to its
    kind."""

    def __init__(self, journal: JobJournal) -> None:
        self.journal = journal
        self.ids: dict[int, str] = {}
        self._lock = threading.Lock()

    def record(self, kind: str, spec: dict[str, Any]) -> int:
        artifact_id = self.journal.record(kind, spec)
        with self._lock:
            self.ids[artifact_id] = kind
        return artifact_id

    def forget(self, artifact_id: int) -> None:
        self.journal.forget(artifact_id)
        with self._lock:
            self.ids.pop(artifact_id, None)
