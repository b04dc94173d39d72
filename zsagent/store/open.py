"""Opens the store the configuration names, and names this agent (the owner stamped on its records)."""

from __future__ import annotations

import os
import socket

from zsagent.store.protocol import Store
from zsagent.store.sqlite import SqliteStore


def agent_id(config) -> str:
    """This agent's id, "<hostname>:<port>" of its API (``config``: a zsagent.config.Config)."""
    port = config.agent.listen.rpartition(":")[2]
    return f"{socket.gethostname()}:{port}"


def open_store(config, owner: str, data_dir: str | None = None) -> Store:
    """The agent's store for ``config`` (a zsagent.config.Config); ``owner``: the agent id stamped on the
    jobs and journal entries it writes; ``data_dir``: where the local SQLite file lives (default: the
    ``[agent] data_dir``)."""
    return SqliteStore(os.path.join(data_dir or config.agent.data_dir, "zsagent.db"))
