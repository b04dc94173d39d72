"""A stand-in for python-rados (the subset zsagent uses), backed by files under ``conf["fake_root"]``.

Same class names, signatures, states and exceptions as Ceph Pacific's ``rados`` module::

    cluster = Rados(conf={"fake_root": "/tmp/fake-ceph"})
    cluster.connect(timeout=5)
    cluster.create_pool("volumes")
    with cluster.open_ioctx("volumes") as ioctx:   # rados.ObjectNotFound for a missing pool
        ...                                        # pass ioctx to zsagent.ceph.fake.rbd
        ioctx.set_namespace("zsagent")             # RADOS objects, xattrs, omap, write ops, locks:
        op = ioctx.create_write_op()               # see _rados_ops (the calls) and _objects (the model)
        op.new(LIBRADOS_CREATE_EXCLUSIVE)
        ioctx.set_omap(op, ("state",), (b"queued",))
        ioctx.operate_write_op(op, "job.1")        # rados.ObjectExists when it exists; nothing applied
        ioctx.release_write_op(op)
    cluster.shutdown()

Every Rados handle on the same directory, in any thread or process, sees the same cluster. Each
connection is its own client (``get_instance_id``): cls_lock lockers are (client, cookie) pairs.
"""

from __future__ import annotations

import builtins
import os
import secrets
from typing import NamedTuple

from . import _store
from ._rados_errors import (
    ConnectionShutdown,
    Error,
    ExtendMismatch,
    InProgress,
    InterruptedOrTimeoutError,
    InvalidArgumentError,
    IoctxStateError,
    IOError,
    IsConnected,
    LogicError,
    NoData,
    NoSpace,
    NotConnected,
    ObjectBusy,
    ObjectExists,
    ObjectNotFound,
    ObjectStateError,
    OSError,
    PermissionDeniedError,
    PermissionError,
    RadosStateError,
    TimedOut,
)
from ._rados_ops import (
    LIBRADOS_ALL_NSPACES,
    LIBRADOS_CMPXATTR_OP_EQ,
    LIBRADOS_CMPXATTR_OP_GT,
    LIBRADOS_CMPXATTR_OP_GTE,
    LIBRADOS_CMPXATTR_OP_LT,
    LIBRADOS_CMPXATTR_OP_LTE,
    LIBRADOS_CMPXATTR_OP_NE,
    LIBRADOS_CREATE_EXCLUSIVE,
    LIBRADOS_CREATE_IDEMPOTENT,
    LIBRADOS_OPERATION_NOFLAG,
    ObjectsMixin,
    OmapIterator,
    ReadOp,
    WriteOp,
)

__all__ = [
    "ConnectionShutdown",
    "Error",
    "ExtendMismatch",
    "InProgress",
    "InterruptedOrTimeoutError",
    "InvalidArgumentError",
    "IoctxStateError",
    "IOError",
    "IsConnected",
    "LogicError",
    "NoData",
    "NoSpace",
    "NotConnected",
    "ObjectBusy",
    "ObjectExists",
    "ObjectNotFound",
    "ObjectStateError",
    "OSError",
    "PermissionDeniedError",
    "PermissionError",
    "RadosStateError",
    "TimedOut",
    "Rados",
    "Ioctx",
    "Version",
    "WriteOp",
    "ReadOp",
    "OmapIterator",
    "LIBRADOS_ALL_NSPACES",
    "LIBRADOS_CMPXATTR_OP_EQ",
    "LIBRADOS_CMPXATTR_OP_GT",
    "LIBRADOS_CMPXATTR_OP_GTE",
    "LIBRADOS_CMPXATTR_OP_LT",
    "LIBRADOS_CMPXATTR_OP_LTE",
    "LIBRADOS_CMPXATTR_OP_NE",
    "LIBRADOS_CREATE_EXCLUSIVE",
    "LIBRADOS_CREATE_IDEMPOTENT",
    "LIBRADOS_OPERATION_NOFLAG",
]

#: Configuration values the fake answers for ``conf_get`` unless set otherwise.
_DEFAULT_CONF = {
    "rbd_default_features": "61",
    "rbd_default_order": "22",
    "rbd_default_clone_format": "1",
    "rbd_skip_partial_discard": "true",
    "rbd_discard_granularity_bytes": "65536",
}


class Version(NamedTuple):
    major: int
    minor: int
    extra: int


def _require_str(value, what: str) -> str:
    if isinstance(value, bytes):
        return value.decode()
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string")
    return value


class Rados:
    """A cluster handle. ``conf["fake_root"]`` names the directory holding the fake cluster (created on
    connect if missing); the other arguments are accepted for signature compatibility and ignored."""

    def __init__(
        self,
        rados_id=None,
        name=None,
        clustername=None,
        conf_defaults=None,
        conffile=None,
        conf=None,
        flags=0,
        context=None,
    ):
        self.rados_id = rados_id
        self.conffile = conffile
        self._conf = dict(_DEFAULT_CONF)
        self._conf.update({str(k): str(v) for k, v in (conf_defaults or {}).items()})
        self._conf.update({str(k): str(v) for k, v in (conf or {}).items()})
        self.state = "configuring"
        self._store: _store.Store | None = None
        self._instance_id = 0

    # ---- lifecycle

    def require_state(self, *states) -> None:
        if self.state not in states:
            raise RadosStateError(f"You cannot perform that operation on a Rados object in state {self.state}.")

    def connect(self, timeout: int = 0) -> None:
        self.require_state("configuring")
        root = self._conf.get("fake_root")
        if not root:
            raise ObjectNotFound("error calling conf_read_file: conf has no fake_root", errno=2)
        try:
            os.makedirs(root, exist_ok=True)
            self._store = _store.open_store(root)
        except builtins.PermissionError as e:
            raise PermissionError(f"error connecting to the cluster: {e}", errno=1) from e
        # the client instance: cls_lock lockers are (instance, cookie), so a new connection is a new locker
        self._instance_id = secrets.randbits(62) or 1
        self.state = "connected"

    def shutdown(self) -> None:
        if self.state != "shutdown":
            self.state = "shutdown"
            self._store = None

    def __enter__(self):
        self.connect()
        return self

    def __exit__(self, type_, value, traceback):
        self.shutdown()
        return False

    def __del__(self):
        try:
            self.shutdown()
        except Exception:  # pragma: no cover
            pass

    # ---- configuration

    def conf_get(self, option: str) -> str | None:
        return self._conf.get(_require_str(option, "option"))

    def conf_set(self, option: str, val: str) -> None:
        self._conf[_require_str(option, "option")] = _require_str(val, "val")

    def version(self) -> Version:
        return Version(16, 2, 15)

    def get_instance_id(self) -> int:
        """This connection's client id (unique among the connections to the fake cluster)."""
        self.require_state("connected")
        return self._instance_id

    def get_fsid(self) -> str:
        self.require_state("connected")
        return self.store.cluster()["fsid"]

    @property
    def store(self) -> _store.Store:
        self.require_state("connected")
        assert self._store is not None
        return self._store

    # ---- pools

    def pool_exists(self, pool_name: str) -> bool:
        name = _require_str(pool_name, "pool_name")
        store = self.store
        with store.lock(exclusive=False):
            return store.pool_id(name) is not None

    def list_pools(self) -> list[str]:
        store = self.store
        with store.lock(exclusive=False):
            pools = store.cluster()["pools"]
            return sorted(pools, key=pools.get)

    def create_pool(self, pool_name: str, crush_rule=None, auid=None) -> None:
        name = _require_str(pool_name, "pool_name")
        store = self.store
        if not name:
            raise InvalidArgumentError(f"error creating pool '{name}'", errno=22)
        with store.lock(exclusive=True):
            if store.pool_id(name) is not None:
                raise ObjectExists(f"error creating pool '{name}'", errno=17)
            store.create_pool(name)

    def delete_pool(self, pool_name: str) -> None:
        name = _require_str(pool_name, "pool_name")
        store = self.store
        with store.lock(exclusive=True):
            if store.pool_id(name) is None:
                raise ObjectNotFound(f"error deleting pool '{name}'", errno=2)
            store.delete_pool(name)

    def pool_lookup(self, pool_name: str) -> int | None:
        store = self.store
        with store.lock(exclusive=False):
            return store.pool_id(_require_str(pool_name, "pool_name"))

    def open_ioctx(self, ioctx_name: str) -> Ioctx:
        name = _require_str(ioctx_name, "ioctx_name")
        store = self.store
        with store.lock(exclusive=False):
            pool_id = store.pool_id(name)
        if pool_id is None:
            raise ObjectNotFound(f"error opening pool '{name}'", errno=2)
        return Ioctx(self, name, pool_id)


class Ioctx(ObjectsMixin):
    """An I/O context on one pool (what the fake rbd module takes as ``ioctx``), in a namespace
    (``set_namespace``, default ""); the object, omap and lock calls are in ``_rados_ops``."""

    def __init__(self, cluster: Rados, name: str, pool_id: int) -> None:
        self.cluster = cluster
        self.name = name
        self.pool_id = pool_id
        self.nspace = ""
        self.state = "open"

    def require_ioctx_open(self) -> None:
        if self.state != "open":
            raise IoctxStateError("The pool is closed.")

    @property
    def store(self) -> _store.Store:
        self.require_ioctx_open()
        return self.cluster.store

    def get_pool_name(self) -> str:
        self.require_ioctx_open()
        return self.name

    def get_pool_id(self) -> int:
        self.require_ioctx_open()
        return self.pool_id

    def close(self) -> None:
        self.state = "closed"

    def __enter__(self):
        return self

    def __exit__(self, type_, value, traceback):
        self.close()
        return False
