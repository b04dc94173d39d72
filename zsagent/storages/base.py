"""What every backup-storage kind provides, and what it is given.

A kind is one module of this package with one ``StorageKind`` object, listed in ``KINDS``
(zsagent/storages/__init__.py). Its ``name`` is the config ``type``, the journal kind of what its
destinations create and the ``kind`` of the templates it records: one name everywhere.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from zsagent.copy.pipeline import PipelineConfig
from zsagent.sinks.base import Journal, Sink

if TYPE_CHECKING:
    from zsagent.catalog import Volume
    from zsagent.config import BackupStorage, Config
    from zsagent.sinks.converted import Converter

Finding = tuple[bool, str, str]
"""(ok, what was checked / what is wrong, how to fix it), for `zsagent check`."""


@dataclass(frozen=True)
class TemplateTags:
    """The request's system tags that shape templates (None: the backup storage's setting)."""

    mode: str | None = None
    format: str | None = None
    compression: str | None = None
    bandwidth: str | None = None


@dataclass(frozen=True)
class TemplateJob:
    """What a destination is made for: the template ``image_uuid`` of ``volume`` for ``account_uuid``.

    snapshot: the RBD snapshot the volume is read at (a clone's parent), None for file volumes.
    spool_dir: where templates converted for upload are staged.
    """

    volume: Volume
    image_uuid: str
    account_uuid: str
    tags: TemplateTags = TemplateTags()
    snapshot: str | None = None
    pipeline: PipelineConfig = PipelineConfig()
    spool_dir: str = "/var/lib/zsagent/spool"


@dataclass
class Destination:
    """One backup storage's part of a job.

    install_path: where the published template will be. format: "raw" | "qcow2".
    sink: what the copy pipeline writes, or converter: what the qemu-img engine makes (one of the two).
    ref: what deleting the image needs (``{"kind": <kind name>, ...}``, given back to the kind's ``remove``).
    handles: things to close after the copy (e.g. rados ioctxs).
    journal: the journal its sink records into, when the caller keeps one per destination.
    """

    bs: BackupStorage
    install_path: str
    format: str
    sink: Sink | None = None
    converter: Converter | None = None
    ref: dict[str, Any] = field(default_factory=dict)
    handles: list[Any] = field(default_factory=list)
    journal: Any = None

    @property
    def endpoint(self) -> Sink | Converter:
        """The sink or converter: the object results and failures are matched by."""
        return self.sink if self.sink is not None else self.converter

    def close(self) -> None:
        for handle in self.handles:
            handle.close()
        self.handles.clear()


class Runtime:
    """What kinds need at run time: the config and, for Ceph, the backend and one lazily connected
    cluster handle shared by the agent (a file-only agent never connects)."""

    def __init__(self, config: Config, ceph=None, connect_timeout_s: int | None = None, cluster=None) -> None:
        """``cluster``: an already connected handle to use instead (its owner shuts it down)."""
        self.config = config
        self.ceph = ceph
        self.connect_timeout_s = connect_timeout_s
        self._cluster = cluster
        self._owns_cluster = cluster is None
        self._lock = threading.Lock()
        self._failure: Exception | None = None
        self._failed_at = 0.0
        self.unreachable: str | None = None  # why the last connect failed, in plain words; None: fine
        self.on_connect = None  # called with the handle once connected (the daemon records its address)

    @property
    def cluster(self):
        """The connected handle; after a failed connect, the next attempt comes only ``RECONNECT_S``
        later (until then the failure is raised at once: requests do not each wait for the monitors)."""
        if self.ceph is None:
            raise ValueError("no Ceph is configured on this agent")
        with self._lock:
            if self._cluster is None:
                if self._failure is not None and time.monotonic() < self._failed_at + RECONNECT_S:
                    raise self._failure
                try:
                    self._cluster = self.ceph.connect(timeout_s=self.connect_timeout_s)
                except Exception as e:
                    self._failure, self._failed_at = e, time.monotonic()
                    timeout_s = self.connect_timeout_s or self.ceph.config.client_mount_timeout
                    self.unreachable = unreachable_message(self.ceph, e, timeout_s)
                    raise
                self._failure, self.unreachable = None, None
                if self.on_connect is not None:
                    self.on_connect(self._cluster)
            return self._cluster

    @property
    def connected(self):
        """The cluster handle when connected already, else None (never connects)."""
        return self._cluster

    def close(self) -> None:
        with self._lock:
            if self._cluster is not None and self._owns_cluster:
                self._cluster.shutdown()
                self._cluster = None


RECONNECT_S = 10.0
"""After a failed connect to Ceph, how long requests get that failure at once before the next try."""


def unreachable_message(ceph, error: Exception, timeout_s: int) -> str:
    """Why Ceph cannot be used, in plain words for operators and API clients."""
    c = ceph.config
    if c.backend == "fake":
        return f"Ceph (fake backend at {c.fake_root}) cannot be opened: {error}"
    if isinstance(error, ceph.rados.TimedOut):
        why = f"no monitor in {c.conf} answered within {timeout_s} s (client_mount_timeout)"
    else:
        why = f"connecting as client.{c.client} with {c.conf} failed: {type(error).__name__}: {error}"
    return f"Ceph is unreachable: {why}; file and SFTP backup storage keep working"


class StorageKind(Protocol):
    """One kind of backup storage.

    name: the config ``type`` and journal/template kind. settings: the dataclass of its config keys (all
    but uuid, type and default), checked when the config loads: ``REQUIRED`` keys must be given,
    ``CHOICES`` maps a key to its allowed values, ``__post_init__`` raises ValueError for the rest.
    destination(): the sink or converter for one job, its install path and delete ref; every artifact its
    sink creates is recorded in ``journal``. remove(): removes a journalled artifact or a template (given its
    ref); removing what is gone is no error. check(): findings for `zsagent check`. free_bytes(): room left,
    None when the kind cannot tell.
    """

    name: str
    settings: type

    def destination(self, bs: BackupStorage, job: TemplateJob, journal: Journal, runtime: Runtime) -> Destination:
        ...

    def remove(self, spec: dict[str, Any], runtime: Runtime) -> None: ...

    def check(self, bs: BackupStorage, runtime: Runtime) -> Iterator[Finding]: ...

    def free_bytes(self, bs: BackupStorage) -> int | None: ...
