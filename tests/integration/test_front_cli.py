"""`zsagent front` as an operator runs it: the daemon (a subprocess) between the MN simulator and ZStack's
agent stand-in, then `zsagent images` and `zsagent check` on the same configuration."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from agent_harness import free_port
from mn_simulator import MnSimulator
from test_front_kvm import ACCOUNT, _qcow2_volume
from upstream_agent import UpstreamAgent

ZSAGENT = [sys.executable, "-m", "zsagent"]
pytestmark = pytest.mark.sftp


def _write_config(tmp: Path, port: int, upstream: str, known_hosts: str, ps: Path) -> Path:
    config = tmp / "zsagent.toml"
    config.write_text(f"""
[agent]
data_dir = "{tmp / 'data'}"
[virt]
enabled = false
[front]
fronts = "kvm"
listen = "127.0.0.1:{port}"
upstream_url = "{upstream}"
known_hosts = "{known_hosts}"
[[primary_storage]]
uuid = "{uuid.uuid4().hex}"
type = "filesystem"
path = "{ps}"
""")
    return config


def test_front_without_its_section_is_a_usage_error(tmp_path):
    config = tmp_path / "zsagent.toml"
    config.write_text("[agent]\n")
    result = subprocess.run([*ZSAGENT, "front", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "front: fronts and upstream_url are required" in result.stderr


def test_front_daemon_takes_over_then_images_show_the_md5_and_check_sees_the_upstream(tmp_path, sshd_server):
    ps = tmp_path / "ps"
    ps.mkdir()
    vol, volume = _qcow2_volume(ps, tmp_path)
    port = free_port()
    with UpstreamAgent() as upstream, MnSimulator() as mn:
        config = _write_config(tmp_path, port, upstream.url, sshd_server.known_hosts, ps)
        daemon = subprocess.Popen([*ZSAGENT, "front", "--config", str(config)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        root = f"/tmp/zsagent-front-cli-{uuid.uuid4().hex[:8]}"
        try:
            give_up = time.monotonic() + 30
            while mn.echo(url, "/host/echo") != 200:  # the MN's echo, answered by ZStack's agent through the front
                assert daemon.poll() is None and time.monotonic() < give_up, daemon.stderr.read()
                time.sleep(0.1)
            image = uuid.uuid4().hex
            temp = f"{ps}/templateWorkspace/image-{image}/{image}.qcow2"
            target = f"{root}/dataVolumeTemplates/acct-{ACCOUNT}/{image}/{image}.volume"
            host = uuid.uuid4().hex
            created = mn.post_command(url, "/localstorage/volume/createtemplate",
                                      {"installPath": temp, "volumePath": str(volume)}, kvm_host_uuid=host).result(30)
            assert created["success"] is True
            uploaded = mn.post_command(url, "/localstorage/sftp/upload", {
                "primaryStorageInstallPath": temp, "backupStorageInstallPath": target, "hostname": sshd_server.host,
                "username": sshd_server.user, "sshKey": Path(sshd_server.key).read_text(),
                "sshPort": sshd_server.port}, kvm_host_uuid=host).result(60)
            assert uploaded == {"success": True, "error": ""}
            remote = subprocess.run(sshd_server.ssh_argv("md5sum", target), capture_output=True, text=True,
                                    timeout=60).stdout.split()[0]
            shown = subprocess.run([*ZSAGENT, "images", "show", image, "--config", str(config)], capture_output=True,
                                   text=True, timeout=60)
            assert shown.returncode == 0, shown.stderr
            assert json.loads(shown.stdout)["md5Sum"] == remote
            check = subprocess.run([*ZSAGENT, "check", "--config", str(config)], capture_output=True, text=True,
                                   timeout=60)
            assert f"ok: front: ZStack's agent answers its echo at {upstream.url}/host/echo" in check.stdout
        finally:
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(30) == 0
            subprocess.run(sshd_server.ssh_argv("rm", "-rf", root), timeout=60)
