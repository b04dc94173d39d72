"""The RADOS store from the command line: a missing pool stops `zsagent serve` at start and `zsagent
check` says it, with the command that creates it; a present one is named by `zsagent check`."""

from __future__ import annotations

import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from agent_harness import free_port

ZSAGENT = [sys.executable, "-m", "zsagent"]


def store_config(tmp: Path, cluster, pool: str) -> Path:
    config = tmp / "zsagent.toml"
    config.write_text(f"""
[agent]
listen = "127.0.0.1:{free_port()}"
data_dir = "{tmp / 'data'}"
[ceph]
backend = "rados"
conf = "{cluster.conf}"
keyring = "{cluster.keyring}"
client_mount_timeout = 10
[store]
backend = "rados"
pool = "{pool}"
namespace = "t-{secrets.token_hex(4)}"
""")
    return config


@pytest.mark.ceph
def test_a_missing_store_pool_stops_serve_and_check_says_how_to_create_it(ceph_cluster, tmp_path):
    config = store_config(tmp_path, ceph_cluster, "zsagent-no-such-store")
    serve = subprocess.run([*ZSAGENT, "serve", "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert serve.returncode != 0
    assert "the store's RADOS pool zsagent-no-such-store does not exist" in serve.stderr, serve.stderr
    assert "ceph osd pool create zsagent-no-such-store" in serve.stderr
    assert "Traceback" not in serve.stderr
    check = subprocess.run([*ZSAGENT, "check", "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert check.returncode == 1
    assert "the store's RADOS pool zsagent-no-such-store does not exist" in check.stdout, check.stdout


@pytest.mark.ceph
def test_check_names_the_rados_store(ceph_cluster, make_pool, tmp_path):
    pool = make_pool("zss")
    config = store_config(tmp_path, ceph_cluster, pool)
    check = subprocess.run([*ZSAGENT, "check", "--config", str(config)], capture_output=True, text=True, timeout=120)
    assert f"store: RADOS pool {pool}, namespace t-" in check.stdout, check.stdout
    assert "no leftovers of failed jobs wait to be removed" in check.stdout
