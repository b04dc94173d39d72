"""Hands the rest of the agent either the real Ceph bindings or the fake, by configuration.

Everything above this package talks to Ceph only through ``CephBackend``: its ``rados`` and ``rbd``
attributes are the python-rados / python-rbd modules (Debian's) or ``zsagent.ceph.fake`` modules with
the same API subset, and ``connect()`` gives a connected ``Rados`` cluster handle.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class CephConfig:
    """Where and how to reach Ceph.

    backend: "rados" (real cluster through librados/librbd) or "fake" (files under ``fake_root``).
    conf: path of ceph.conf (real backend). keyring: path of the client keyring (real backend).
    client: the cephx client name without "client." (real backend).
    fake_root: directory holding the fake cluster's state (fake backend).
    rados_osd_op_timeout: seconds one read or write may wait for an OSD before it fails (ETIMEDOUT):
        a stopped OSD or a full pool fails the copy instead of hanging it (librados' default: forever).
    rados_mon_op_timeout: seconds a monitor command (pool lookups, snapshots' map updates) may take.
    client_mount_timeout: seconds connecting may take before the monitors count as unreachable.
    All three are librados' own options of the same names, given to the agent's cluster handle only.
    """

    backend: str = "rados"
    conf: str | None = "/etc/ceph/ceph.conf"
    keyring: str | None = "/etc/ceph/ceph.client.admin.keyring"
    client: str = "admin"
    fake_root: str | None = None
    rados_osd_op_timeout: int = 30
    rados_mon_op_timeout: int = 30
    client_mount_timeout: int = 30

    def __post_init__(self) -> None:
        for name in ("rados_osd_op_timeout", "rados_mon_op_timeout", "client_mount_timeout"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1 second")


@dataclass(frozen=True)
class CephBackend:
    """The rados/rbd modules in use and the config to connect with."""

    config: CephConfig
    rados: ModuleType
    rbd: ModuleType

    @property
    def is_fake(self) -> bool:
        return self.config.backend == "fake"

    def connect(self, timeout_s: int | None = None):
        """Return a connected ``rados.Rados``; the caller calls ``shutdown()``. ``timeout_s``: how long
        connecting may take (default: ``client_mount_timeout``)."""
        c = self.config
        timeout_s = timeout_s or c.client_mount_timeout
        if self.is_fake:
            cluster = self.rados.Rados(conf={"fake_root": c.fake_root})
        else:
            cluster = self.rados.Rados(conffile=c.conf, rados_id=c.client, conf=self.client_options(timeout_s))
        cluster.connect(timeout=timeout_s)
        return cluster

    def client_options(self, timeout_s: int | None = None) -> dict[str, str]:
        """librados options (name -> value) of the agent's handles on the real cluster: the keyring and
        the timeouts of CephConfig, ``timeout_s`` for connecting (default: ``client_mount_timeout``)."""
        c = self.config
        conf = {"client_mount_timeout": str(timeout_s or c.client_mount_timeout),
                "rados_osd_op_timeout": str(c.rados_osd_op_timeout),
                "rados_mon_op_timeout": str(c.rados_mon_op_timeout),
                # librbd's flatten with its default of 10 ops in flight alone takes ~240 MiB
                "rbd_concurrent_management_ops": "4",
                # the only locks the agent breaks are its own stale ones (zsagent.ceph.images), and
                # blocklisting their owner would cut off the agent itself
                "rbd_blocklist_on_break_lock": "false"}
        if c.keyring:
            conf["keyring"] = c.keyring
        return conf


def open_backend(config: CephConfig) -> CephBackend:
    """Load the modules ``config.backend`` names."""
    if config.backend == "fake":
        if not config.fake_root:
            raise ValueError("ceph backend 'fake' needs fake_root")
        from zsagent.ceph.fake import rados as fake_rados
        from zsagent.ceph.fake import rbd as fake_rbd

        return CephBackend(config, fake_rados, fake_rbd)
    if config.backend == "rados":
        import rados
        import rbd

        return CephBackend(config, rados, rbd)
    raise ValueError(f"unknown ceph backend {config.backend!r} (expected 'rados' or 'fake')")
