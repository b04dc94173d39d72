"""The agent's configuration: one TOML file, every key documented in systemd/zsagent.toml.example.

A bad file fails at start with one line naming the file, the key and the reason.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zsagent.ceph import CephConfig
from zsagent.copy.pipeline import PipelineConfig
from zsagent.storages import KINDS

UUID_RE = re.compile(r"^[0-9a-f]{32}$")
DEFAULT_CONFIG_PATH = "/etc/zsagent/zsagent.toml"


class ConfigError(ValueError):
    """``<file>: <key>: <reason>``"""


@dataclass(frozen=True)
class AgentSettings:
    """listen: "host:port" of the HTTP API; data_dir: SQLite store and job state; max_jobs: copies
    running at once (more queue); job_retention_s: how long async job results stay pollable;
    drain_s: on shutdown, how long running copies may finish before they are cancelled;
    spool_dir: where qemu-img converts templates bound for SFTP before they are uploaded (empty:
    ``<data_dir>/spool``); it needs room for the largest such template; cleanup_wait_s: how long a new
    request waits for what an earlier attempt on its volume left to be removed (e.g. while Ceph still
    holds a crashed agent's watch on an image, up to 30 s) before it fails. tls_cert_file / tls_key_file:
    PEM files; both set: the API is served over HTTPS (one without the other is a configuration error).
    max_body_bytes: the largest request body the HTTP API reads, larger ones are refused with 413
    (zsagent.api.body_limit)."""

    listen: str = "127.0.0.1:7762"
    data_dir: str = "/var/lib/zsagent"
    max_jobs: int = 2
    job_retention_s: int = 3 * 3600
    drain_s: int = 60
    spool_dir: str = ""
    cleanup_wait_s: int = 90
    tls_cert_file: str = ""
    tls_key_file: str = ""
    max_body_bytes: int = 1024 * 1024

    def __post_init__(self) -> None:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            missing = "tls_key_file" if self.tls_cert_file else "tls_cert_file"
            raise ValueError(f"{missing}: required when the other of tls_cert_file / tls_key_file is set")

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert_file)

    @property
    def spool_path(self) -> str:
        return self.spool_dir or os.path.join(self.data_dir, "spool")


@dataclass(frozen=True)
class AuthSettings:
    """sessions_file: "<sessionUuid> <accountUuid>" per line; zstack_url: ask this management node
    instead; session_cache_s: how long a management node's answer is trusted; access_keys_file:
    "<AccessKeyId> <secret> <accountUuid>" per line for ``Authorization: ZStack <id>:<signature>`` (None:
    no access keys); check_time_zone: compare an access key request's Date with its zone (ZStack's
    ``rest.checkTimeZone``; false compares wall clocks, as ZStack does by default);
    unknown_volume_owner: who may use a volume whose owner the agent cannot tell (zsagent.volume_owner):
    "deny" only the admin account, "allow" every account."""

    sessions_file: str | None = "/etc/zsagent/sessions"
    zstack_url: str | None = None
    session_cache_s: int = 30
    access_keys_file: str | None = None
    check_time_zone: bool = False
    unknown_volume_owner: str = "deny"


@dataclass(frozen=True)
class ImageDefaults:
    """Inventory fields of a template whose volume's metadata does not record them (None: null).

    The defaults are ZStack's own for data volume templates: platform, architecture and guestOsType
    null, virtio false. Its CreateDataVolumeTemplateMessage hard-codes them (zstackio/zstack
    header/src/main/java/org/zstack/header/image/CreateDataVolumeTemplateMessage.java l.12-45: the
    getters return null/false and the setters are no-ops), and ImageManagerImpl.createImageInDb stores
    them as they are (image/src/main/java/org/zstack/image/ImageManagerImpl.java l.670-673); nothing is
    inherited from the volume or its VM (image/.../ImageMessageFiller.java fillDefault l.21-24 returns at
    once for a DataVolumeTemplate). An operator may still set them."""

    platform: str | None = None
    architecture: str | None = None
    guest_os_type: str | None = None
    virtio: bool = False


@dataclass(frozen=True)
class VirtSettings:
    """Volumes attached to libvirt domains on this host.

    enabled: look for domains using a volume (false on storage-only hosts saves the lookup);
    uri: the libvirt connection; runtime_dir: where QEMU's NBD export socket goes (QEMU must be able to
    reach it: not under a private /tmp); freeze_timeout_s: longest a guest stays frozen."""

    enabled: bool = True
    uri: str = "qemu:///system"
    runtime_dir: str = "/run/zsagent"
    freeze_timeout_s: int = 30


FRONTS = ("ceph", "kvm")
"""The agents `zsagent front` can stand in front of: ZStack's Ceph primary-storage agent (7762) or kvmagent
(7070, local and NFS primary storage)."""


@dataclass(frozen=True)
class FrontSettings:
    """`zsagent front`: where the management node's agent commands arrive (zsagent.front).

    fronts: which ZStack agent it stands in front of, "ceph" or "kvm" (what it takes over follows);
    listen: "host:port" the management node sends to (see README "Behind an unmodified ZStack management
    node"); upstream_url: ZStack's own agent, which gets every other command byte for byte;
    upstream_timeout_s: longest wait for that agent's answer (the management node waits 300 s);
    known_hosts / accept_new_host_keys: host keys of the SFTP backup storages the commands name (their
    hostname and port); intent_ttl_s: how long a local/NFS ``createtemplate`` waits for its upload before
    it is forgotten; callback_retry_s: how long a result is offered to the management node (ZStack's
    agents: 60 s); data_dir: its store and job state (empty: ``<agent.data_dir>``, shared with `serve`)."""

    fronts: str = ""
    listen: str = "0.0.0.0:7764"
    upstream_url: str = ""
    upstream_timeout_s: int = 300
    known_hosts: str = "/etc/zsagent/front_known_hosts"
    accept_new_host_keys: bool = False
    intent_ttl_s: int = 3600
    callback_retry_s: int = 60
    data_dir: str = ""

    def __post_init__(self) -> None:
        if self.fronts and self.fronts not in FRONTS:
            raise ValueError(f"fronts: {self.fronts!r} is not one of {', '.join(FRONTS)}")
        if self.upstream_url and not re.match(r"^https?://[^/\s]+$", self.upstream_url):
            raise ValueError(f"upstream_url: {self.upstream_url!r} is not http://host:port (no path)")
        for name in ("upstream_timeout_s", "intent_ttl_s", "callback_retry_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1")

    @property
    def configured(self) -> bool:
        return bool(self.fronts and self.upstream_url)


AGENT_ID_MAX_CHARS = 128


@dataclass(frozen=True)
class ClusterSettings:
    """Several agents on one Ceph cluster (zsagent.cluster; used with ``[store] backend = "rados"``).

    agent_id: this agent's name among them, stamped on its jobs and journal entries (empty: "<hostname>:<port
    of agent.listen>"); printable, no "/", at most 128 characters. lease_s: seconds an agent's liveness lease
    and a volume lock last on the OSDs without renewal (renewed every lease_s/3): after an agent stops,
    another one takes over its jobs about this long later. volume_lock_wait_s: how long a request waits
    for another agent's copy of the same volume before it fails with SYS.1001 (timeout); 0: no limit of
    its own, it waits as long as the request's API timeout allows, like ZStack's per-volume queue (the
    chain task with sync signature "volume-<uuid>", storage/.../volume/VolumeBase.java l.103, whose
    queued messages time out with ``touterr``, core/.../cloudbus/CloudBusImpl3.java l.289-290)."""

    agent_id: str = ""
    lease_s: float = 30.0
    volume_lock_wait_s: float = 0.0

    def __post_init__(self) -> None:
        if self.agent_id and (not self.agent_id.isprintable() or "/" in self.agent_id
                              or len(self.agent_id) > AGENT_ID_MAX_CHARS or self.agent_id.strip() != self.agent_id):
            raise ValueError(f"agent_id: {self.agent_id!r} must be printable, without '/' or surrounding "
                             f"spaces, at most {AGENT_ID_MAX_CHARS} characters")
        for name in ("lease_s", "volume_lock_wait_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name}: must be a number of seconds, not {type(value).__name__}")
        if self.lease_s < 1:
            raise ValueError("lease_s: must be at least 1 second")
        if self.volume_lock_wait_s < 0:
            raise ValueError("volume_lock_wait_s: must not be negative")


STORE_BACKENDS = ("sqlite", "rados")


@dataclass(frozen=True)
class StoreSettings:
    """Where the agent keeps its images, jobs and journal (zsagent.store).

    backend: "sqlite" (one file in ``[agent] data_dir``, this host only) or "rados" (an object in a Ceph
    pool that every agent on the cluster shares; the connection is the ``[ceph]`` one); pool: that pool
    (required for "rados"; it must exist); namespace: the RADOS namespace in it (agents with different
    namespaces do not see each other's records)."""

    backend: str = "sqlite"
    pool: str = ""
    namespace: str = "zsagent"

    def __post_init__(self) -> None:
        if self.backend not in STORE_BACKENDS:
            raise ValueError(f"backend: {self.backend!r} is not one of {', '.join(STORE_BACKENDS)}")
        if self.backend == "rados" and not self.pool:
            raise ValueError("pool: required when backend is \"rados\"")


@dataclass(frozen=True)
class PrimaryStorage:
    """Where volumes live: Ceph pools (image named by the volume uuid) or a file root in ZStack's
    layout (``<path>/{dataVolumes,rootVolumes}/acct-<account>/vol-<uuid>/<uuid>.{qcow2,raw}``).

    qcow2_reader: how a stopped qcow2 volume is read: "direct" (the agent reads the chain itself,
    qemu-nbd only for what it does not handle) or "qemu-nbd" (always through qemu-nbd)."""

    uuid: str
    type: str  # "ceph" | "filesystem"
    pools: tuple[str, ...] = ()
    path: str | None = None
    qcow2_reader: str = "direct"


@dataclass(frozen=True)
class BackupStorage:
    """Where templates go.

    type: the storage kind (zsagent.storages.KINDS: "ceph", "filesystem", "sftp"); settings: that kind's
    own settings (every key of the table but uuid, type and default), checked when the file loads.
    default: used when a request names no backup storage.
    """

    uuid: str
    type: str
    settings: Any
    default: bool = False


@dataclass(frozen=True)
class Config:
    agent: AgentSettings = field(default_factory=AgentSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    ceph: CephConfig = field(default_factory=CephConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    image: ImageDefaults = field(default_factory=ImageDefaults)
    virt: VirtSettings = field(default_factory=VirtSettings)
    front: FrontSettings = field(default_factory=FrontSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    primary_storage: tuple[PrimaryStorage, ...] = ()
    backup_storage: tuple[BackupStorage, ...] = ()
    source: str = "<defaults>"
    store: StoreSettings = field(default_factory=StoreSettings)

    def backup_storage_by_uuid(self, uuid: str) -> BackupStorage | None:
        return next((bs for bs in self.backup_storage if bs.uuid == uuid), None)


_CHOICES = {
    ("primary_storage", "type"): ("ceph", "filesystem"),
    ("primary_storage", "qcow2_reader"): ("direct", "qemu-nbd"),
    ("ceph", "backend"): ("rados", "fake"),
    ("auth", "unknown_volume_owner"): ("deny", "allow"),
}

_REQUIRED = {
    ("primary_storage", "ceph"): ("pools",),
    ("primary_storage", "filesystem"): ("path",),
}


def load_config(path: str | Path) -> Config:
    """Read and check the TOML file at ``path``."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: cannot read: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return parse_config(raw, str(path))


def parse_config(raw: dict[str, Any], source: str = "<config>") -> Config:
    """Check a parsed TOML document and build the Config."""
    known = {"agent", "auth", "ceph", "pipeline", "image", "virt", "front", "primary_storage", "backup_storage",
             "store", "cluster"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{source}: {key}: unknown section (expected one of {', '.join(sorted(known))})")
    agent = _section(raw, "agent", AgentSettings, source)
    auth = _section(raw, "auth", AuthSettings, source)
    ceph = _section(raw, "ceph", CephConfig, source)
    pipeline = _section(raw, "pipeline", PipelineConfig, source)
    image = _section(raw, "image", ImageDefaults, source)
    virt = _section(raw, "virt", VirtSettings, source)
    front = _section(raw, "front", FrontSettings, source)
    store = _section(raw, "store", StoreSettings, source)
    cluster = _section(raw, "cluster", ClusterSettings, source)
    if agent.max_jobs < 1:
        raise ConfigError(f"{source}: agent.max_jobs: must be at least 1")
    if agent.max_body_bytes < 64 * 1024:
        raise ConfigError(f"{source}: agent.max_body_bytes: must be at least 65536 (a create call with long tags "
                          "needs tens of KiB)")
    if ceph.backend == "fake" and not ceph.fake_root:
        raise ConfigError(f"{source}: ceph.fake_root: required when ceph.backend is \"fake\"")
    primaries = tuple(_storage(raw, "primary_storage", i, PrimaryStorage, source)
                      for i in range(len(raw.get("primary_storage", []))))
    backups = tuple(_backup_storage(raw, i, source) for i in range(len(raw.get("backup_storage", []))))
    seen: set[str] = set()
    for kind, items in (("primary_storage", primaries), ("backup_storage", backups)):
        for i, item in enumerate(items):
            if item.uuid in seen:
                raise ConfigError(f"{source}: {kind}[{i}].uuid: {item.uuid} is used twice")
            seen.add(item.uuid)
    if sum(bs.default for bs in backups) > 1:
        raise ConfigError(f"{source}: backup_storage.default: only one backup storage can be the default")
    return Config(agent, auth, ceph, pipeline, image, virt, front, primary_storage=primaries, backup_storage=backups,
                  source=source, store=store, cluster=cluster)


def _section(raw: dict[str, Any], name: str, cls, source: str):
    values = raw.get(name, {})
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: {name}: must be a table")
    return _build(cls, values, name, source, _choices_of(name))


def _table(raw: dict[str, Any], kind: str, index: int, source: str) -> dict[str, Any]:
    items = raw[kind]
    if not isinstance(items, list):
        raise ConfigError(f"{source}: {kind}: must be an array of tables ([[{kind}]])")
    values = items[index]
    where = f"{kind}[{index}]"
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: {where}: must be a table")
    for key in ("uuid", "type"):
        if key not in values:
            raise ConfigError(f"{source}: {where}.{key}: required")
    if not isinstance(values["uuid"], str) or not UUID_RE.match(values["uuid"]):
        raise ConfigError(f"{source}: {where}.uuid: {values['uuid']!r} is not 32 lowercase hex digits")
    return values


def _storage(raw: dict[str, Any], kind: str, index: int, cls, source: str):
    values = _table(raw, kind, index, source)
    where = f"{kind}[{index}]"
    item = _build(cls, values, where, source, _choices_of(kind))
    for key in _REQUIRED[(kind, item.type)]:
        if not values.get(key):
            raise ConfigError(f"{source}: {where}.{key}: required for type \"{item.type}\"")
    return item


def _backup_storage(raw: dict[str, Any], index: int, source: str) -> BackupStorage:
    """The kind's own settings class checks every key but uuid, type and default (zsagent.storages)."""
    values = _table(raw, "backup_storage", index, source)
    where = f"backup_storage[{index}]"
    kind = KINDS.get(values["type"])
    if kind is None:
        raise ConfigError(f"{source}: {where}.type: {values['type']!r} is not one of {', '.join(KINDS)}")
    default = values.get("default", False)
    if not isinstance(default, bool):
        raise ConfigError(f"{source}: {where}.default: must be bool, not {type(default).__name__}")
    for key in kind.settings.REQUIRED:
        if not values.get(key):
            raise ConfigError(f"{source}: {where}.{key}: required for type \"{kind.name}\"")
    own = {k: v for k, v in values.items() if k not in ("uuid", "type", "default")}
    settings = _build(kind.settings, own, where, source, kind.settings.CHOICES)
    return BackupStorage(values["uuid"], kind.name, settings, default)


def _choices_of(section: str) -> dict[str, tuple[str, ...]]:
    return {key: choices for (name, key), choices in _CHOICES.items() if name == section}


def _build(cls, values: dict[str, Any], where: str, source: str, choices_of: dict[str, tuple[str, ...]]):
    """``cls(**values)`` with every key known, of its field's type and, where listed, one of its choices;
    a ValueError of ``cls`` ("<key>: <reason>" or a reason) becomes a ConfigError naming ``where``."""
    defaults = {f.name: f for f in cls.__dataclass_fields__.values()}
    kwargs = {}
    for key, value in values.items():
        if key not in defaults or key == "source":
            raise ConfigError(f"{source}: {where}.{key}: unknown key")
        expected = _expected_type(cls, key)
        if key == "pools":
            if not (isinstance(value, list) and value and all(isinstance(p, str) and p for p in value)):
                raise ConfigError(f"{source}: {where}.pools: must be a non-empty list of pool names")
            value = tuple(value)
        elif expected is not None and not _is(value, expected):
            raise ConfigError(f"{source}: {where}.{key}: must be {expected.__name__}, not {type(value).__name__}")
        choices = choices_of.get(key)
        if choices and value not in choices:
            raise ConfigError(f"{source}: {where}.{key}: {value!r} is not one of {', '.join(choices)}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        reason = str(e)
        key = reason.split(":", 1)[0]
        if key in defaults:  # "<key>: <reason>"
            raise ConfigError(f"{source}: {where}.{reason}") from None
        raise ConfigError(f"{source}: {where}: {reason}") from None


def _expected_type(cls, key: str):
    annotation = str(cls.__dataclass_fields__[key].type)
    for name, typ in (("bool", bool), ("int", int), ("str", str)):
        if annotation.startswith(name):
            return typ
    return None


def _is(value: Any, expected: type) -> bool:
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)
