"""The agent's records: images, jobs and a journal of temporary artifacts, behind one protocol
(``Store``), kept by ``SqliteStore`` (one local file)."""

from zsagent.store.journal import JobJournal, JournalScope
from zsagent.store.open import open_store
from zsagent.store.protocol import Store
from zsagent.store.records import Artifact, FrontCall, ImageRecord, JobRecord
from zsagent.store.sqlite import SCHEMA_VERSION, FrontRecords, SqliteStore

__all__ = ["SCHEMA_VERSION", "Artifact", "FrontCall", "FrontRecords", "ImageRecord", "JobJournal", "JobRecord",
           "JournalScope", "SqliteStore", "Store", "open_store"]
