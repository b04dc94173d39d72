"""The agent's records in SQLite (WAL): images and their inventories, jobs, and a journal of temporary
artifacts so that a restart can clean up after a crash."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from zsagent import errors
from zsagent.filemodes import private_dir, private_file
from zsagent.store.records import Artifact, FrontCall, ImageRecord, JobRecord

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    uuid         TEXT PRIMARY KEY,
    account_uuid TEXT NOT NULL,
    volume_uuid  TEXT NOT NULL,
    fingerprint  TEXT NOT NULL,   -- the request's parameters, for idempotent retries
    inventory    TEXT NOT NULL,   -- ImageInventory as JSON
    refs         TEXT NOT NULL,   -- per backup storage: what to remove on delete (JSON list)
    tags         TEXT NOT NULL,   -- systemTags, userTags, tagUuids as given (JSON)
    created_s    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    uuid         TEXT PRIMARY KEY,
    volume_uuid  TEXT,
    image_uuid   TEXT,            -- unused (kept for existing databases)
    state        TEXT NOT NULL,   -- queued | running | done | failed | cancelled (zsagent.jobs; older: succeeded)
    result       TEXT,            -- the response body (JSON) once finished
    http_status  INTEGER,
    errors       TEXT,            -- per backup storage errors (JSON), also on success
    point_in_time TEXT,           -- how consistent the copy is (JSON), see zsagent.virt
    created_s    REAL NOT NULL,
    finished_s   REAL,
    account_uuid TEXT,            -- who started it (zsagent.ownership); NULL: not identified
    readable_by_uuid INTEGER NOT NULL DEFAULT 0, -- 1: its uuid alone is enough to read it (see may_read_job)
    webhook      TEXT,            -- where the result is POSTed (also after a restart ended the job)
    owner        TEXT,            -- the agent that runs it (zsagent.store.open.agent_id)
    progress     TEXT             -- its progress_json() as last saved (JSON)
);
CREATE TABLE IF NOT EXISTS journal (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    job_uuid     TEXT NOT NULL,
    kind         TEXT NOT NULL,   -- a storage kind, ceph-snapshot, spool or virt-* (zsagent.cleanup)
    spec         TEXT NOT NULL,   -- where the artifact is (JSON)
    created_s    REAL NOT NULL,
    volume_uuid  TEXT,            -- the job's volume and template: a retry cleans what an earlier
    image_uuid   TEXT,            -- attempt left (zsagent.janitor)
    attempts     INTEGER NOT NULL DEFAULT 0,  -- failed removals so far
    last_error   TEXT,            -- why the last removal failed
    owner        TEXT             -- the agent whose job made it
);
CREATE TABLE IF NOT EXISTS front_calls (
    job_uuid     TEXT PRIMARY KEY,  -- a job of `zsagent front` (zsagent.front): the MN waits for its result
    task_uuid    TEXT NOT NULL,     -- the MN's taskuuid header
    callback_url TEXT NOT NULL,     -- the MN's callbackurl header
    path         TEXT NOT NULL,     -- the command's path
    expires_s    REAL NOT NULL      -- when the MN stops waiting (its deadline), seconds since 1970
);
CREATE TABLE IF NOT EXISTS front_intents (
    install_path TEXT PRIMARY KEY,  -- the temp template path a local/NFS createtemplate named
    api_id       TEXT,              -- threadContext.api of the command
    spec         TEXT NOT NULL,     -- volume, planned layout, state (JSON; zsagent.front.intents)
    expires_s    REAL NOT NULL
);
"""

_ADDED_COLUMNS = {
    "jobs": (("account_uuid", "TEXT"), ("readable_by_uuid", "INTEGER NOT NULL DEFAULT 0"), ("webhook", "TEXT"),
             ("owner", "TEXT"), ("progress", "TEXT")),
    "journal": (("volume_uuid", "TEXT"), ("image_uuid", "TEXT"), ("attempts", "INTEGER NOT NULL DEFAULT 0"),
                ("last_error", "TEXT"), ("owner", "TEXT")),
}
"""Columns newer than the first schema: added to a database made before them (its old jobs then have no
owner, and only the admin reads them; its journal entries no volume, so only a restart's cleanup takes them)."""


class SqliteStore:
    """One SQLite database; safe to use from several threads. ``owner``: this agent's id, stamped on the
    jobs and journal entries it writes (None: none, as before agents had ids)."""

    shared = False
    """Only this host uses these records (zsagent.store.protocol.Store.shared)."""

    def __init__(self, path: str | Path, owner: str | None = None) -> None:
        self.path = str(path)
        self.owner = owner
        private_dir(Path(path).parent)
        private_file(path)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{path}: store schema {version} is newer than this agent ({SCHEMA_VERSION})")
            self._db.executescript(_SCHEMA)
            _add_missing_columns(self._db)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def local(self) -> SqliteStore:
        return self

    def describe(self) -> dict[str, Any]:
        return {"backend": "sqlite", "path": self.path, "owner": self.owner}

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- images ------------------------------------------------------------------------------------

    def put_image(self, record: ImageRecord, artifacts: Iterable[int] = ()) -> None:
        """Record the image and forget the journalled ``artifacts`` it now owns, in one transaction: a
        crash leaves either both (the template is the image's) or neither (reconcile removes it)."""
        try:
            with self._tx() as db:
                db.execute("INSERT INTO images VALUES (?,?,?,?,?,?,?,?)",
                           (record.uuid, record.account_uuid, record.volume_uuid, record.fingerprint,
                            json.dumps(record.inventory), json.dumps(record.refs), json.dumps(record.tags),
                            time.time()))
                db.executemany("DELETE FROM journal WHERE id=?", [(i,) for i in artifacts])
        except sqlite3.IntegrityError:
            raise errors.invalid(f"resourceUuid {record.uuid} is already used by another image") from None

    def get_image(self, uuid: str) -> ImageRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM images WHERE uuid=?", (uuid,)).fetchone()
        return _image(row) if row else None

    def list_images(self) -> list[ImageRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM images ORDER BY created_s, uuid").fetchall()
        return [_image(r) for r in rows]

    def delete_image(self, uuid: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM images WHERE uuid=?", (uuid,))

    # -- jobs --------------------------------------------------------------------------------------

    def add_job(self, uuid: str, volume_uuid: str | None, account_uuid: str | None = None,
                readable_by_uuid: bool = False, webhook: str | None = None) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO jobs (uuid, volume_uuid, state, created_s, account_uuid, readable_by_uuid, "
                       "webhook, owner) VALUES (?,?,?,?,?,?,?,?)",
                       (uuid, volume_uuid, "queued", time.time(), account_uuid, int(readable_by_uuid), webhook,
                        self.owner))

    def set_job_account(self, uuid: str, account_uuid: str, readable_by_uuid: bool) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET account_uuid=?, readable_by_uuid=? WHERE uuid=?",
                       (account_uuid, int(readable_by_uuid), uuid))

    def set_job_state(self, uuid: str, state: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET state=? WHERE uuid=?", (state, uuid))

    def finish_job(self, uuid: str, state: str, http_status: int, result: dict[str, Any],
                   errors: list[dict[str, Any]] | None = None, point_in_time: dict[str, Any] | None = None) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET state=?, http_status=?, result=?, errors=?, point_in_time=?, finished_s=? "
                       "WHERE uuid=?", (state, http_status, json.dumps(result), json.dumps(errors or []),
                                        json.dumps(point_in_time), time.time(), uuid))

    def fail_job_if_unfinished(self, uuid: str, result: dict[str, Any], http_status: int = 503) -> bool:
        with self._tx() as db:
            return db.execute("UPDATE jobs SET state='failed', http_status=?, result=?, errors='[]', finished_s=? "
                              "WHERE uuid=? AND state IN ('queued','running')",
                              (http_status, json.dumps(result), time.time(), uuid)).rowcount > 0

    def set_job_progress(self, uuid: str, progress: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute("UPDATE jobs SET progress=? WHERE uuid=?", (json.dumps(progress), uuid))

    def get_job(self, uuid: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE uuid=?", (uuid,)).fetchone()
        return _job(row) if row else None

    def unfinished_jobs(self, owner: str | None = None) -> list[JobRecord]:
        with self._lock:
            if owner is None:
                rows = self._db.execute("SELECT * FROM jobs WHERE state IN ('queued','running')").fetchall()
            else:
                rows = self._db.execute("SELECT * FROM jobs WHERE state IN ('queued','running') AND owner=?",
                                        (owner,)).fetchall()
        return [_job(r) for r in rows]

    def forget_jobs_before(self, finished_before_s: float) -> int:
        with self._tx() as db:
            return db.execute("DELETE FROM jobs WHERE finished_s IS NOT NULL AND finished_s < ?",
                              (finished_before_s,)).rowcount

    # -- journal of temporary artifacts ------------------------------------------------------------

    def journal(self, job_uuid: str, kind: str, spec: dict[str, Any], volume_uuid: str | None = None,
                image_uuid: str | None = None) -> int:
        """Record an artifact *before* it is created (temporary or final name); returns its id."""
        with self._tx() as db:
            return db.execute("INSERT INTO journal (job_uuid, kind, spec, created_s, volume_uuid, image_uuid, owner) "
                              "VALUES (?,?,?,?,?,?,?)", (job_uuid, kind, json.dumps(spec, sort_keys=True),
                                                         time.time(), volume_uuid, image_uuid, self.owner)).lastrowid

    def artifact_failed(self, artifact_id: int, error: str) -> None:
        """Count a failed removal of the artifact and keep why."""
        with self._tx() as db:
            db.execute("UPDATE journal SET attempts=attempts+1, last_error=? WHERE id=?", (error, artifact_id))

    def clear_journal(self, job_uuid: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM journal WHERE job_uuid=?", (job_uuid,))

    def clear_artifact(self, artifact_id: int) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM journal WHERE id=?", (artifact_id,))

    def artifacts(self, job_uuid: str | None = None, owner: str | None = None) -> list[Artifact]:
        where, args = [], []
        for column, value in (("job_uuid", job_uuid), ("owner", owner)):
            if value is not None:
                where.append(f"{column}=?")
                args.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM journal{clause} ORDER BY id", args).fetchall()
        return [Artifact(r["id"], r["job_uuid"], r["kind"], json.loads(r["spec"]), r["volume_uuid"],
                         r["image_uuid"], r["created_s"], r["attempts"], r["last_error"], r["owner"]) for r in rows]


class FrontRecords:
    """The front's rows in the store: calls the management node waits for, and local/NFS intents. They are
    about this host (its management-node connection, its local files), so they live in the local SQLite
    file whatever the store's backend (``store.local()``)."""

    def __init__(self, store) -> None:
        self.store: SqliteStore = store.local()

    def add_call(self, call: FrontCall) -> None:
        with self.store._tx() as db:
            db.execute("INSERT INTO front_calls VALUES (?,?,?,?,?)",
                       (call.job_uuid, call.task_uuid, call.callback_url, call.path, call.expires_epoch))

    def calls(self) -> list[FrontCall]:
        with self.store._lock:
            rows = self.store._db.execute("SELECT * FROM front_calls").fetchall()
        return [FrontCall(r["job_uuid"], r["task_uuid"], r["callback_url"], r["path"], r["expires_s"]) for r in rows]

    def forget_call(self, job_uuid: str) -> None:
        with self.store._tx() as db:
            db.execute("DELETE FROM front_calls WHERE job_uuid=?", (job_uuid,))

    def put_intent(self, install_path: str, api_id: str | None, spec: dict[str, Any], expires_epoch: float) -> None:
        with self.store._tx() as db:
            db.execute("INSERT OR REPLACE INTO front_intents VALUES (?,?,?,?)",
                       (install_path, api_id, json.dumps(spec, sort_keys=True), expires_epoch))

    def intent(self, install_path: str) -> dict[str, Any] | None:
        with self.store._lock:
            row = self.store._db.execute("SELECT * FROM front_intents WHERE install_path=? AND expires_s>=?",
                                         (install_path, time.time())).fetchone()
        return json.loads(row["spec"]) if row else None

    def intents_of_api(self, api_id: str) -> list[str]:
        with self.store._lock:
            rows = self.store._db.execute("SELECT install_path FROM front_intents WHERE api_id=?",
                                          (api_id,)).fetchall()
        return [r["install_path"] for r in rows]

    def forget_intent(self, install_path: str) -> bool:
        with self.store._tx() as db:
            return db.execute("DELETE FROM front_intents WHERE install_path=?", (install_path,)).rowcount > 0

    def expire_intents(self, now_epoch: float | None = None) -> list[str]:
        """Forget the intents whose upload never came; returns their paths."""
        now = time.time() if now_epoch is None else now_epoch
        with self.store._tx() as db:
            rows = db.execute("SELECT install_path FROM front_intents WHERE expires_s<?", (now,)).fetchall()
            db.execute("DELETE FROM front_intents WHERE expires_s<?", (now,))
        return [r["install_path"] for r in rows]


def _image(row: sqlite3.Row) -> ImageRecord:
    return ImageRecord(row["uuid"], row["account_uuid"], row["volume_uuid"], row["fingerprint"],
                       json.loads(row["inventory"]), json.loads(row["refs"]), json.loads(row["tags"]))


def _job(row: sqlite3.Row) -> JobRecord:
    return JobRecord(row["uuid"], row["volume_uuid"], row["state"],
                     json.loads(row["result"]) if row["result"] else None, row["http_status"],
                     json.loads(row["errors"]) if row["errors"] else [], row["created_s"], row["finished_s"],
                     json.loads(row["point_in_time"]) if row["point_in_time"] else None,
                     row["account_uuid"], bool(row["readable_by_uuid"]), row["webhook"], row["owner"],
                     json.loads(row["progress"]) if row["progress"] else None)


def _add_missing_columns(db: sqlite3.Connection) -> None:
    for table, columns in _ADDED_COLUMNS.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, declaration in columns:
            if name not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
