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
    """

    backend: str = "rados"
    conf: str | None = "/etc/ceph/ceph.conf"
    keyring: str | None = "/etc/ceph/ceph.client.admin.keyring"
    client: str = "admin"
    fake_root: str | None = None


@dataclass(frozen=True)
class CephBackend:
    """The rados/rbd modules in use and the config to connect with."""

    config: CephConfig
    rados: ModuleType
    rbd: ModuleType

    @property
    def is_fake(self) -> bool:
        return self.config.backend == "fake"

    def connect(self, timeout_s: int = 30):
        """Return a connected ``rados.Rados``; the caller calls ``shutdown()``."""
        if self.is_fake:
            cluster = self.rados.Rados(conf={"fake_root": self.config.fake_root})
        else:
            conf = {"client_mount_timeout": str(timeout_s), "rados_osd_op_timeout": str(timeout_s),
                    "rados_mon_op_timeout": str(timeout_s),
                    # librbd's flatten with its default of 10 ops in flight alone takes ~240 MiB
                    "rbd_concurrent_management_ops": "4"}
            if self.config.keyring:
                conf["keyring"] = self.config.keyring
            cluster = self.rados.Rados(conffile=self.config.conf, rados_id=self.config.client, conf=conf)
        cluster.connect(timeout=timeout_s)
        return cluster


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
