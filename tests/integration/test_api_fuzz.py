"""schemathesis against the running agent's own /openapi.json: every operation, with a session.

What it holds (tests/schemathesis.toml, tests/schemathesis_hooks.py): no 5xx; every error is ZStack's
ErrorCode or one of ZStack's plain-text refusals; answers match the document (status codes, content types,
bodies, headers, the Allow header of 405 and OPTIONS); schema-valid input is taken and schema-violating
input refused, by the door or by the job. The agent runs on 127.0.0.1 with the fake Ceph backend, a
filesystem primary storage holding one real volume and a filesystem backup storage; web hooks go to a
receiver on 127.0.0.1. Deterministic (no seed, no example database): the same cases every run.

The default run is small (a few examples per operation); the ``reliability`` one draws many more.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import threading
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from agent_harness import SESSION, file_volume, running_agent, write_config

REPO = Path(__file__).resolve().parents[2]
SCHEMATHESIS = REPO / ".venv" / "bin" / "schemathesis"


class _WebHooks(BaseHTTPRequestHandler):
    received: list[bytes] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        self.received.append(self.rfile.read(int(self.headers.get("content-length", 0))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def fuzzed_agent(tmp_path):
    ps, bs, fake, bs_uuid = tmp_path / "ps", tmp_path / "bs", tmp_path / "fake-ceph", uuid.uuid4().hex
    for directory in (ps, bs, fake):
        directory.mkdir()
    volume, _ = file_volume(ps, size=2 << 20)
    raw = write_config(tmp_path, {"backend": "fake", "fake_root": str(fake)},
                       [{"uuid": uuid.uuid4().hex, "type": "filesystem", "path": str(ps)}],
                       [{"uuid": bs_uuid, "type": "filesystem", "path": str(bs), "format": "raw",
                         "default": True}])
    hooks = HTTPServer(("127.0.0.1", 0), _WebHooks)
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    try:
        with running_agent(raw) as agent:
            agent.volume, agent.bs_root, agent.bs_uuid = volume, bs, bs_uuid
            agent.web_hook = f"http://127.0.0.1:{hooks.server_port}/hook"
            yield agent
    finally:
        hooks.shutdown()


def run_schemathesis(agent, tmp_path, *args: str) -> tuple[int, str]:
    """Run the schemathesis CLI against the agent; (test cases, its output). Fails on any failure."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
           "ZSAGENT_FUZZ_WEB_HOOK": agent.web_hook, "ZSAGENT_FUZZ_VOLUME": agent.volume,
           "ZSAGENT_FUZZ_BACKUP_STORAGE": agent.bs_uuid, "NO_COLOR": "1"}
    proc = subprocess.run(
        [str(SCHEMATHESIS), "--config-file", str(REPO / "tests" / "schemathesis.toml"), "run",
         f"{agent.url}/openapi.json", "-H", f"Authorization: OAuth {SESSION}", "--workers", "1",
         "--report", "junit", "--report-dir", str(tmp_path / "report"), *args],
        capture_output=True, text=True, env=env, timeout=1800, check=False, cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-20000:]
    found = re.search(r"(\d+) generated, (\d+) passed", output)
    assert found and found.group(1) == found.group(2), output[-5000:]
    return int(found.group(1)), output


def templates_made(agent) -> int:
    """How many jobs made a template (the stateful phase deletes some of them again)."""
    with sqlite3.connect(f"file:{agent.agent.config.agent.data_dir}/zsagent.db?mode=ro", uri=True) as db:
        return db.execute("SELECT count(*) FROM jobs WHERE result LIKE '%\"inventory\"%'").fetchone()[0]


def assert_agent_intact(agent) -> None:
    """After the fuzzing: every list still answers, and nothing half-made is left on storage or in the journal."""
    assert agent.get("/zstack/v1/images").status_code == 200
    for image in agent.get("/zstack/v1/images").json()["inventories"]:
        one = agent.get(f"/zstack/v1/images/{image['uuid']}")
        assert one.status_code == 200 and one.json()["inventories"][0]["name"] == image["name"]
    assert not [p for p in agent.bs_root.rglob("*") if p.name.endswith(".part")]
    assert agent.agent.jobs.wait_all(60) and agent.agent.store.artifacts() == []


def test_schemathesis_finds_nothing(fuzzed_agent, tmp_path):
    cases, output = run_schemathesis(fuzzed_agent, tmp_path, "--max-examples", "5")
    print(f"schemathesis: {cases} test cases, {templates_made(fuzzed_agent)} templates made")
    assert cases > 300, output[-3000:]  # every operation and phase ran
    assert "13 selected / 13 total" in output  # every operation of the document
    assert_agent_intact(fuzzed_agent)
    assert templates_made(fuzzed_agent) > 0, "no drawn create reached a real copy"


@pytest.mark.reliability
def test_schemathesis_finds_nothing_with_many_examples(fuzzed_agent, tmp_path):
    cases, output = run_schemathesis(fuzzed_agent, tmp_path, "--max-examples", "100")
    print(f"schemathesis: {cases} test cases, {templates_made(fuzzed_agent)} templates made")
    assert_agent_intact(fuzzed_agent)
