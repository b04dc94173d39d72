"""Shared pieces of the RADOS object contract tests (objects, omap, write ops, locks).

The ``rados_ns`` fixture (``conftest.py``) gives a ``RadosNamespace``: the backend's ``rados`` module
and an io context on the contract pool set to a namespace no other test uses, so listings only see
the test's own objects. Python-rados Pacific has no context manager on WriteOp/ReadOp: ``write_op``
and ``read_op`` here create and release them the way the real module needs.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from rbd_contract import ContractBackend


@dataclass
class RadosNamespace:
    """``ioctx`` on ``pool`` with ``namespace`` set; ``other()`` opens the same on a second connection."""

    backend: ContractBackend
    ioctx: Any
    pool: str
    namespace: str
    _extra: list = field(default_factory=list, repr=False)

    @property
    def rados(self) -> ModuleType:
        return self.backend.rados

    def other(self) -> Any:
        """An io context in the same pool and namespace on a new cluster connection (another client)."""
        cluster = self.backend.ceph.connect(timeout_s=30)
        ioctx = cluster.open_ioctx(self.pool)
        ioctx.set_namespace(self.namespace)
        self._extra.append((cluster, ioctx))
        return ioctx

    def close(self) -> None:
        for cluster, ioctx in self._extra:
            ioctx.close()
            cluster.shutdown()
        self.ioctx.close()


def new_namespace() -> str:
    return f"ns-{secrets.token_hex(4)}"


@contextlib.contextmanager
def write_op(ioctx: Any) -> Iterator[Any]:
    op = ioctx.create_write_op()
    try:
        yield op
    finally:
        ioctx.release_write_op(op)


@contextlib.contextmanager
def read_op(ioctx: Any) -> Iterator[Any]:
    op = ioctx.create_read_op()
    try:
        yield op
    finally:
        ioctx.release_read_op(op)


def set_omap(ioctx: Any, oid: str, values: dict[str, bytes]) -> None:
    with write_op(ioctx) as op:
        ioctx.set_omap(op, tuple(values), tuple(values.values()))
        ioctx.operate_write_op(op, oid)


def omap_vals(ioctx: Any, oid: str, start_after: str = "", filter_prefix: str = "",
              max_return: int = -1) -> list[tuple[str, bytes | None]]:  # fmt: skip
    with read_op(ioctx) as op:
        it, ret = ioctx.get_omap_vals(op, start_after, filter_prefix, max_return)
        ioctx.operate_read_op(op, oid)
        assert ret == 0
        return list(it)


def omap_dict(ioctx: Any, oid: str) -> dict[str, bytes | None]:
    return dict(omap_vals(ioctx, oid))
