"""What every store offers the agent (zsagent.service, zsagent.jobs, zsagent.janitor): images, jobs and
the journal of temporary artifacts. ``SqliteStore`` (zsagent.store.sqlite) keeps them in one local file,
``RadosStore`` (zsagent.store.rados) in a RADOS pool that every agent on the cluster shares."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

from zsagent.store.records import Artifact, ImageRecord, JobRecord

if TYPE_CHECKING:
    from zsagent.store.sqlite import SqliteStore


class Store(Protocol):
    """The agent's records; every method is safe to call from several threads, and each change is atomic.
    A store that cannot be reached or written raises zsagent.errors.ZsError (SYS.1006) saying why.

    owner: this agent's id, stamped on the jobs and journal entries it writes. shared: other agents use
    the same records (then a job or artifact of another owner is not this agent's to fail or remove)."""

    owner: str | None
    shared: bool

    def close(self) -> None: ...

    def describe(self) -> dict[str, Any]:
        """Where the records are, e.g. {"backend": "rados", "pool": ..., "namespace": ...}."""

    def local(self) -> SqliteStore:
        """The local SQLite store of this host's own records (zsagent.store.sqlite.FrontRecords)."""

    # -- images ------------------------------------------------------------------------------------

    def put_image(self, record: ImageRecord, artifacts: Iterable[int] = ()) -> None:
        """Record the image and forget the journalled ``artifacts`` it now owns, atomically; ZsError
        SYS.1007 when an image of that uuid is there already."""

    def get_image(self, uuid: str) -> ImageRecord | None: ...

    def list_images(self) -> list[ImageRecord]:
        """All images, oldest first."""

    def delete_image(self, uuid: str) -> None: ...

    # -- jobs --------------------------------------------------------------------------------------

    def add_job(self, uuid: str, volume_uuid: str | None, account_uuid: str | None = None,
                readable_by_uuid: bool = False, webhook: str | None = None) -> None:
        """Record a new job in state "queued", owned by ``owner``."""

    def set_job_account(self, uuid: str, account_uuid: str, readable_by_uuid: bool) -> None: ...

    def set_job_state(self, uuid: str, state: str) -> None: ...

    def finish_job(self, uuid: str, state: str, http_status: int, result: dict[str, Any],
                   errors: list[dict[str, Any]] | None = None,
                   point_in_time: dict[str, Any] | None = None) -> None: ...

    def fail_job_if_unfinished(self, uuid: str, result: dict[str, Any], http_status: int = 503) -> bool:
        """If the job is still queued or running, mark it failed with ``result`` and return True; of several
        concurrent callers (in any agent) exactly one gets True."""

    def set_job_progress(self, uuid: str, progress: dict[str, Any]) -> None:
        """Save the job's progress_json() (zsagent.jobs); JobRecord.progress returns it."""

    def get_job(self, uuid: str) -> JobRecord | None: ...

    def unfinished_jobs(self, owner: str | None = None) -> list[JobRecord]:
        """Jobs still queued or running (of ``owner`` only, when given)."""

    def forget_jobs_before(self, finished_before_s: float) -> int:
        """Remove jobs finished before that time (seconds since 1970); returns how many."""

    # -- journal of temporary artifacts ------------------------------------------------------------

    def journal(self, job_uuid: str, kind: str, spec: dict[str, Any], volume_uuid: str | None = None,
                image_uuid: str | None = None) -> int:
        """Record an artifact *before* it is created; returns its id."""

    def artifact_failed(self, artifact_id: int, error: str) -> None:
        """Count a failed removal of the artifact and keep why."""

    def clear_journal(self, job_uuid: str) -> None: ...

    def clear_artifact(self, artifact_id: int) -> None: ...

    def artifacts(self, job_uuid: str | None = None, owner: str | None = None) -> list[Artifact]:
        """Journalled artifacts, oldest first: all, or of one job and/or of one owner."""
