"""Run `zsagent front` in this process (its HTTP server on 127.0.0.1, a free port) for end-to-end tests,
between the MN simulator (tests/mn_simulator.py) and the stand-in for ZStack's agent
(tests/upstream_agent.py)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from zsagent.config import parse_config
from zsagent.front.server import FrontAgent

ADMIN_ACCOUNT = "36c27e8ff05c4780bf6d2fa65700f22e"


def front_config(tmp: Path, fronts: str, upstream_url: str, *, ceph: dict | None = None,
                 primary: list[dict] | None = None, backup: list[dict] | None = None,
                 known_hosts: str | None = None, **front) -> dict:
    return {"agent": {"data_dir": str(tmp / "data"), "max_jobs": 2},
            "ceph": ceph or {"backend": "fake", "fake_root": str(tmp / "no-ceph")},
            "pipeline": {"chunk_bytes": 256 * 1024, "depth": 4},
            "virt": {"enabled": False},
            "front": {"fronts": fronts, "listen": "127.0.0.1:0", "upstream_url": upstream_url,
                      "known_hosts": known_hosts or str(tmp / "known_hosts"), "callback_retry_s": 5, **front},
            "primary_storage": primary or [], "backup_storage": backup or []}


@dataclass
class RunningFront:
    agent: FrontAgent
    url: str

    @property
    def store(self):
        return self.agent.store

    def wait_idle(self, timeout_s: float = 30) -> None:
        """Until no job runs and every result was handed to the MN."""
        give_up = time.monotonic() + timeout_s
        while self.agent.jobs.running() or self.agent.front.records.calls():
            if time.monotonic() > give_up:
                raise AssertionError("the front still has running jobs or unanswered calls")
            time.sleep(0.02)


@contextmanager
def running_front(raw_config: dict):
    agent = FrontAgent(parse_config(raw_config, "front-test.toml"))
    agent.server.start()
    try:
        yield RunningFront(agent, agent.server.url)
    finally:
        agent.jobs.wait_all(60)
        agent.close()
