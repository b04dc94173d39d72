"""The records every store keeps: images, jobs, journalled artifacts, and the front's calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ImageRecord:
    uuid: str
    account_uuid: str
    volume_uuid: str
    fingerprint: str
    inventory: dict[str, Any]
    refs: list[dict[str, Any]]
    tags: dict[str, Any]


@dataclass(frozen=True)
class JobRecord:
    """A job as stored; created_epoch / finished_epoch: seconds since 1970; owner: the id of the agent that
    runs it (zsagent.store.open.agent_id; None: recorded before agents had ids); progress: the job's
    ``progress_json()`` as last saved (zsagent.jobs, at most once per PROGRESS_SAVE_S), None before."""

    uuid: str
    volume_uuid: str | None
    state: str
    result: dict[str, Any] | None
    http_status: int | None
    errors: list[dict[str, Any]]
    created_epoch: float
    finished_epoch: float | None
    point_in_time: dict[str, Any] | None = None
    account_uuid: str | None = None
    readable_by_uuid: bool = False
    webhook: str | None = None
    owner: str | None = None
    progress: dict[str, Any] | None = None


@dataclass(frozen=True)
class Artifact:
    """A temporary thing a job creates: ``kind`` and where it is (``spec``); ``created_epoch``: seconds since
    1970; ``attempts``: failed removals so far, ``last_error`` why the last failed; ``owner``: the agent
    whose job made it (None: recorded before agents had ids)."""

    id: int
    job_uuid: str
    kind: str
    spec: dict[str, Any]
    volume_uuid: str | None = None
    image_uuid: str | None = None
    created_epoch: float = 0.0
    attempts: int = 0
    last_error: str | None = None
    owner: str | None = None


@dataclass(frozen=True)
class FrontCall:
    """A management-node command `zsagent front` took over and has not answered yet."""

    job_uuid: str
    task_uuid: str
    callback_url: str
    path: str
    expires_epoch: float
