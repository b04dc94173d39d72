"""What every store offers the agent (zsagent.service, zsagent.jobs, zsagent.janitor): images, jobs and
the journal of temporary artifacts. ``SqliteStore`` (zsagent.store.sqlite) keeps them in one local file."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from zsagent.store.records import Artifact, ImageRecord, JobRecord


class Store(Protocol):
    """The agent's records; every method is safe to call from several threads."""

    def close(self) -> None: ...

    # -- images ------------------------------------------------------------------------------------

    def put_image(self, record: ImageRecord, artifacts: Iterable[int] = ()) -> None:
        """Record the image and forget the journalled ``artifacts`` it now owns, atomically."""

    def get_image(self, uuid: str) -> ImageRecord | None: ...

    def list_images(self) -> list[ImageRecord]:
        """All images, oldest first."""

    def delete_image(self, uuid: str) -> None: ...

    # -- jobs --------------------------------------------------------------------------------------

    def add_job(self, uuid: str, volume_uuid: str | None, account_uuid: str | None = None,
                readable_by_uuid: bool = False, webhook: str | None = None) -> None:
        """Record a new job in state "queued"."""

    def set_job_account(self, uuid: str, account_uuid: str, readable_by_uuid: bool) -> None: ...

    def set_job_state(self, uuid: str, state: str) -> None: ...

    def finish_job(self, uuid: str, state: str, http_status: int, result: dict[str, Any],
                   errors: list[dict[str, Any]] | None = None,
                   point_in_time: dict[str, Any] | None = None) -> None: ...

    def get_job(self, uuid: str) -> JobRecord | None: ...

    def unfinished_jobs(self) -> list[JobRecord]:
        """Jobs still queued or running."""

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

    def artifacts(self, job_uuid: str | None = None) -> list[Artifact]:
        """Journalled artifacts (of one job, or all), oldest first."""
