"""Run a real agent (uvicorn on 127.0.0.1, a free port) in this process for end-to-end tests."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn

from zsagent.agent import Agent, build_agent
from zsagent.config import parse_config

SESSION = uuid.uuid4().hex
ACCOUNT = uuid.uuid4().hex


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunningAgent:
    agent: Agent
    url: str
    client: httpx.Client

    def post_create(self, volume_uuid: str, params: dict | None = None, headers: dict | None = None,
                    body=None, **extra) -> httpx.Response:
        payload = body if body is not None else {"params": {"name": "tmpl", **(params or {})}, **extra}
        h = {"Authorization": f"OAuth {SESSION}", **(headers or {})}
        kwargs = {"content": payload} if isinstance(payload, (bytes, str)) else {"json": payload}
        return self.client.post(f"/zstack/v1/images/data-volume-templates/from/volumes/{volume_uuid}",
                                headers=h, **kwargs)

    def get(self, path: str, **kw) -> httpx.Response:
        return self.client.get(path, headers={"Authorization": f"OAuth {SESSION}"}, **kw)

    def delete(self, path: str) -> httpx.Response:
        return self.client.delete(path, headers={"Authorization": f"OAuth {SESSION}"})

    def wait_job(self, location: str, timeout_s: float = 120, session: str = SESSION) -> httpx.Response:
        """Poll as ZStack's SDK does: with the session that started the job."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            answer = self.client.get(location, headers={"Authorization": f"OAuth {session}"})
            if answer.status_code != 202:
                return answer
            time.sleep(0.05)
        raise AssertionError(f"job {location} still running after {timeout_s} s")


def write_config(tmp: Path, ceph: dict, primary: list[dict], backup: list[dict], **agent) -> dict:
    sessions = tmp / "sessions"
    sessions.write_text(f"# test sessions\n{SESSION} {ACCOUNT}\n")
    # The suite's RBD volumes carry no owner (ZStack writes none): every account may use them here;
    # tests/integration/test_api_accounts.py checks the default, "deny".
    return {"agent": {"data_dir": str(tmp / "data"), "max_jobs": 2, **agent},
            "auth": {"sessions_file": str(sessions), "unknown_volume_owner": "allow"}, "ceph": ceph,
            "pipeline": {"chunk_bytes": 256 * 1024, "depth": 4},
            "primary_storage": primary, "backup_storage": backup}


@contextmanager
def running_agent(raw_config: dict, cleaned: bool = True):
    """``cleaned``: first wait until the background cleanup removed what a previous run left."""
    agent = build_agent(parse_config(raw_config, "test.toml"))
    if cleaned:
        assert agent.wait_cleaned(120), "the cleanup of what the last run left did not finish"
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(agent.app, host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=120) as client:
            yield RunningAgent(agent, url, client)
    finally:
        agent.jobs.wait_all(60)
        server.should_exit = True
        thread.join(10)
        agent.close()


def file_volume(root: Path, kind: str = "dataVolumes", fmt: str = "raw", size: int = 8 << 20,
                account: str = ACCOUNT) -> tuple[str, Path]:
    """A volume of ``account`` in ZStack's file layout with some data; returns (uuid, path)."""
    vol = uuid.uuid4().hex
    path = root / kind / f"acct-{account}" / f"vol-{vol}" / f"{vol}.{fmt}"
    path.parent.mkdir(parents=True)
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(1 << 20)
        f.write(os.urandom(1 << 20))
    return vol, path
