"""Fixtures of the contract suite: ``backend`` (fake and real), ``fake_backend``, ``real_backend``, ``both``,
``rados_ns`` (an io context in a namespace of its own, see ``rados_contract``).

See ``rbd_contract`` for what a ContractBackend offers. The real side takes the session cluster and
pools from ``tests/conftest.py`` (``ceph_cluster``, ``make_pool``); under CI=true they fail instead of
skipping. Real connections set ``rbd_default_clone_format=1``: the agent always protects a snapshot
before cloning it, and clone format 1 makes an unprotected clone an error on every cluster (the test
cluster's "auto" already picks 1; a cluster requiring mimic+ clients would pick 2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from rados_contract import RadosNamespace, new_namespace
from rbd_contract import ContractBackend

from zsagent.ceph import CephBackend, CephConfig, open_backend


def _connect(ceph: CephBackend, pools: tuple[str, str]) -> tuple[Any, Any, Any]:
    cluster = ceph.connect(timeout_s=30)
    if not ceph.is_fake:
        cluster.conf_set("rbd_default_clone_format", "1")
    return cluster, cluster.open_ioctx(pools[0]), cluster.open_ioctx(pools[1])


@pytest.fixture(scope="session")
def fake_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ContractBackend]:
    root = tmp_path_factory.mktemp("fake-ceph")
    ceph = open_backend(CephConfig(backend="fake", fake_root=str(root)))
    setup = ceph.connect()
    pools = ("contract", "contract2")
    for pool in pools:
        setup.create_pool(pool)
    setup.shutdown()
    cluster, io1, io2 = _connect(ceph, pools)
    yield ContractBackend("fake", ceph, cluster, pools[0], io1, pools[1], io2)
    io1.close()
    io2.close()
    cluster.shutdown()


@pytest.fixture(scope="session")
def real_backend(ceph_cluster, make_pool: Callable[..., str]) -> Iterator[ContractBackend]:
    pools = (make_pool("zsc"), make_pool("zsc2"))
    ceph = open_backend(CephConfig(backend="rados", conf=ceph_cluster.conf, keyring=ceph_cluster.keyring or None,
                                   client=ceph_cluster.client))  # fmt: skip
    cluster, io1, io2 = _connect(ceph, pools)
    yield ContractBackend("real", ceph, cluster, pools[0], io1, pools[1], io2)
    io1.close()
    io2.close()
    cluster.shutdown()


@pytest.fixture(params=["fake", pytest.param("real", marks=pytest.mark.ceph)])
def backend(request: pytest.FixtureRequest) -> Iterator[ContractBackend]:
    b: ContractBackend = request.getfixturevalue(f"{request.param}_backend")
    yield b
    b.close_all()


@pytest.fixture
def both(real_backend: ContractBackend, fake_backend: ContractBackend) -> Iterator[tuple[ContractBackend, ...]]:
    """(real, fake) for differential tests; use with the ``ceph`` marker."""
    yield real_backend, fake_backend
    real_backend.close_all()
    fake_backend.close_all()


@pytest.fixture
def rados_ns(backend: ContractBackend) -> Iterator[RadosNamespace]:
    """An io context on the contract pool in a namespace of its own (see ``rados_contract``)."""
    namespace = new_namespace()
    ioctx = backend.cluster.open_ioctx(backend.pool)
    ioctx.set_namespace(namespace)
    ns = RadosNamespace(backend, ioctx, backend.pool, namespace)
    yield ns
    ns.close()
