"""Removes what failed and interrupted jobs left behind (journalled artifacts), until it is gone.

A removal can fail for a while: Ceph keeps a dead process' watch on an image for up to 30 s
(``rbd.ImageBusy``), an OSD or the SFTP server is down. The entry then stays in the journal, with its
attempt count and last error (shown by `zsagent check` and ``zsagent_cleanup_pending``), and is retried
in the background with exponential backoff. A new request for the same volume or template first
settles what earlier attempts left (``settle``), so it never trips over it.

Only artifacts of jobs that are over are touched: a job running in this process (``active``), or one
whose stored state is still queued/running (another process, e.g. `zsagent copy`), keeps its own. With a
store several agents share (``owner`` set), only this agent's own artifacts are; another agent's are
removed by a live agent's takeover once it stopped (zsagent.cluster.takeover, through ``remove_due``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from zsagent import cleanup, errors, faults
from zsagent.errors import ZsError
from zsagent.storages import Runtime
from zsagent.store import Artifact, Store

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 60.0


class Janitor:
    """``active()``: uuids of the jobs running in this process; ``started_epoch``: when this process
    started (artifacts of jobs that have no stored state are another process' unless older than that);
    ``owner``: this agent's id when the store is shared by several agents (only its artifacts are its
    to clean), None (an unshared store): every artifact in it."""

    def __init__(self, store: Store, runtime: Runtime, active: Callable[[], set[str]], metrics=None,
                 first_backoff_s: float = FIRST_BACKOFF_S, max_backoff_s: float = MAX_BACKOFF_S) -> None:
        self.store = store
        self.runtime = runtime
        self.active = active
        self.metrics = metrics
        self.first_backoff_s = first_backoff_s
        self.max_backoff_s = max_backoff_s
        self.started_epoch = time.time()
        self._due: dict[int, float] = {}  # artifact id -> monotonic time of its next attempt
        self._removing = threading.Lock()  # one removal at a time: the background and a settle() alike
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.idle = threading.Event()  # set while nothing cleanable is pending
        self.before_first_sweep: Callable[[list[Artifact]], None] | None = None
        self._ended_here: set[str] = set()  # jobs of this process that are over, whatever the store says yet
        self.foreign: Callable[[], set[str]] | None = None  # jobs another part cleans itself (`zsagent front`)
        self.owner: str | None = store.owner if getattr(store, "shared", False) else None

    # -- background -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="zsagent-janitor", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 5) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def wake(self, ended_job: str | None = None) -> None:
        """Look again now: ``ended_job``, a job of this process, is over and left something (its stored
        state may still say running for a moment)."""
        if ended_job is not None:
            with self._removing:
                self._ended_here.add(ended_job)
        self._wake.set()

    def _loop(self) -> None:
        faults.hit("reconcile")
        if self.before_first_sweep is not None:
            try:
                self.before_first_sweep(self.cleanable())
            except Exception:  # noqa: BLE001 - an optimisation only
                log.exception("preparing the cleanup failed")
        while not self._stop.is_set():
            self._wake.clear()
            try:
                left = self.sweep(lambda artifact: True)
            except Exception:  # noqa: BLE001 - the janitor must live on (e.g. the store is busy)
                log.exception("cleanup sweep failed")
                left = [0.0]
            if not left:
                self.idle.set()
            # nothing pending: look again now and then (a job of another process may have left some)
            wait = min(left) - time.monotonic() if left else self.max_backoff_s
            self._wake.wait(max(0.05, min(wait, self.max_backoff_s)))

    # -- one pass ---------------------------------------------------------------------------------

    def cleanable(self) -> list[Artifact]:
        """Journalled artifacts of jobs that are over."""
        artifacts = self._own_artifacts()
        active = self.active() | (self.foreign() if self.foreign is not None and artifacts else set())
        states: dict[str, str | None] = {}
        found = []
        for artifact in artifacts:
            if artifact.job_uuid in active:
                continue
            if artifact.job_uuid not in states:
                record = self.store.get_job(artifact.job_uuid)
                states[artifact.job_uuid] = record.state if record is not None else None
            state = states[artifact.job_uuid]
            if state in ("queued", "running") and artifact.job_uuid not in self._ended_here:
                continue
            if state is None and artifact.created_epoch >= self.started_epoch:
                continue  # no stored job: another process' (the CLI), unless it predates this one
            found.append(artifact)
        return found

    def sweep(self, wanted: Callable[[Artifact], bool], force: bool = False) -> list[float]:
        """Try to remove every cleanable artifact ``wanted`` picks whose retry is due (all of them with
        ``force``), newest first; returns the retry times of those left (monotonic seconds)."""
        left = []
        now = time.monotonic()
        pending = [a for a in self.cleanable() if wanted(a)]
        for artifact in reversed(pending):
            due = self._due.get(artifact.id, 0.0)
            if not force and due > now:
                left.append(due)
                continue
            if not self.remove(artifact):
                left.append(self._due[artifact.id])
        self._count_pending()
        return left

    def remove(self, artifact: Artifact) -> bool:
        """One attempt; True when the artifact is gone (and forgotten)."""
        with self._removing:
            if not any(a.id == artifact.id for a in self.store.artifacts(artifact.job_uuid)):
                return True  # removed meanwhile by another attempt
            try:
                faults.hit("cleanup")
                cleanup.remove(artifact.kind, artifact.spec, self.runtime)
            except Exception as e:  # noqa: BLE001 - kept in the journal and retried
                self._failed(artifact, e)
                return False
            self.store.clear_artifact(artifact.id)
            if not self.store.artifacts(artifact.job_uuid):
                self._ended_here.discard(artifact.job_uuid)
        self._due.pop(artifact.id, None)
        if artifact.attempts:
            log.info("job %s: removed %s %s after %d failed attempts", artifact.job_uuid, artifact.kind,
                     _name(artifact), artifact.attempts)
        return True

    def _failed(self, artifact: Artifact, error: Exception) -> None:
        attempts = artifact.attempts + 1
        reason = f"{type(error).__name__}: {error}"
        self.store.artifact_failed(artifact.id, reason)
        backoff = min(self.max_backoff_s, self.first_backoff_s * 2 ** min(attempts - 1, 16))
        self._due[artifact.id] = time.monotonic() + backoff
        if self.metrics is not None:
            self.metrics.cleanup_failures.inc()
        level = logging.WARNING if attempts == 1 or attempts % 10 == 0 else logging.INFO
        log.log(level, "job %s: could not remove %s %s (attempt %d, next in %.1f s): %s", artifact.job_uuid,
                artifact.kind, _name(artifact), attempts, backoff, reason)

    def _own_artifacts(self) -> list[Artifact]:
        return self.store.artifacts() if self.owner is None else self.store.artifacts(owner=self.owner)

    def remove_due(self, artifacts: list[Artifact]) -> list[Artifact]:
        """One attempt at each of ``artifacts`` whose retry is due, newest first (for artifacts this janitor
        does not pick itself: another agent's, zsagent.cluster.takeover); returns those still there."""
        now = time.monotonic()
        return [a for a in reversed(artifacts) if self._due.get(a.id, 0.0) > now or not self.remove(a)]

    def _count_pending(self) -> None:
        if self.metrics is not None:
            self.metrics.cleanup_pending.set(len(self._own_artifacts()))

    # -- for a new request ------------------------------------------------------------------------

    def settle(self, volume_uuid: str, image_uuid: str, timeout_s: float,
               cancel: threading.Event | None = None) -> None:
        """Remove what earlier jobs left of ``volume_uuid`` or of the template ``image_uuid`` before a new
        job starts on them, retrying with backoff for up to ``timeout_s``; ZsError SYS.1006 naming what
        is still there when it cannot."""
        def wanted(artifact: Artifact) -> bool:
            return volume_uuid in (artifact.volume_uuid,) or image_uuid in (artifact.image_uuid,)

        deadline = time.monotonic() + timeout_s
        force = True
        while True:
            left = self.sweep(wanted, force=force)
            if not left:
                return
            force = False
            now = time.monotonic()
            if now >= deadline or (cancel is not None and cancel.is_set()):
                still = [a for a in self.cleanable() if wanted(a)]
                raise errors.operation_failed(
                    f"what an earlier attempt left of volume[uuid:{volume_uuid}] cannot be removed yet; "
                    "it is retried in the background",
                    errors.ErrorCode(errors.OPERATION_FAILURE,
                                     "; ".join(f"{a.kind} {_name(a)}: {a.last_error}" for a in still)))
            pause = max(0.05, min(min(left), deadline) - now)
            if cancel is not None:
                if cancel.wait(pause):
                    raise ZsError(errors.CANCELLED, "the job was cancelled while earlier leftovers were removed")
            else:
                time.sleep(pause)


def _name(artifact: Artifact) -> str:
    """What the artifact is called in messages: pool/image[@snapshot] or a path."""
    spec = artifact.spec
    if "pool" in spec:
        return f"{spec['pool']}/{spec['image']}" + (f"@{spec['snapshot']}" if "snapshot" in spec else "")
    return str(spec.get("path") or spec)
