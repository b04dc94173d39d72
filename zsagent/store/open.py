"""Opens the store the configuration names (``[store] backend``); the owner stamped on its records is the
agent id (zsagent.cluster.agents.agent_id)."""

from __future__ import annotations

import os

from zsagent.store.protocol import Store
from zsagent.store.sqlite import SqliteStore

DB_FILE = "zsagent.db"
"""The local SQLite file in the data dir: every record with the sqlite backend, the front's with rados."""


def open_store(config, owner: str, data_dir: str | None = None) -> Store:
    """The agent's store for ``config`` (a zsagent.config.Config); ``owner``: the agent id stamped on the
    jobs and journal entries it writes; ``data_dir``: where the local SQLite file lives (default: the
    ``[agent] data_dir``). Raises zsagent.errors.ZsError when the RADOS store cannot be opened (Ceph
    unreachable, the pool missing)."""
    local = SqliteStore(os.path.join(data_dir or config.agent.data_dir, DB_FILE), owner)
    settings = config.store
    if settings.backend == "sqlite":
        return local
    try:
        return _open_rados(config, owner, local)
    except BaseException:
        local.close()
        raise


def _open_rados(config, owner: str, local: SqliteStore) -> Store:
    from zsagent import errors
    from zsagent.ceph import open_backend
    from zsagent.store.rados import RadosStore

    backend = open_backend(config.ceph)
    try:
        cluster = backend.connect()
    except Exception as e:  # noqa: BLE001 - rados.Error and OSError alike: said as one clear error
        raise errors.operation_failed(f"the agent's store (RADOS pool {config.store.pool}) cannot be opened: "
                                      f"Ceph is unreachable: {e}") from e
    try:
        return RadosStore(cluster, backend.rados, config.store.pool, config.store.namespace, owner, local,
                          config.ceph.rados_osd_op_timeout)
    except BaseException:
        cluster.shutdown()
        raise
