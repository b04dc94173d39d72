"""SFTP backup storage through the API: qcow2 and raw templates, checked over ssh; delete; check."""

from __future__ import annotations

import subprocess
import uuid

import pytest
from agent_harness import ACCOUNT, running_agent, write_config

MiB = 1024 * 1024
pytestmark = pytest.mark.sftp


def remote(sshd, *argv):
    return subprocess.run(sshd.ssh_argv(*argv), capture_output=True, text=True, timeout=60)


@pytest.fixture
def sftp_api(rbd_env, sshd_server, tmp_path):
    env = rbd_env
    base = f"/tmp/zsagent-sftp-bs-{uuid.uuid4().hex[:8]}"
    assert remote(sshd_server, "mkdir", "-p", base).returncode == 0
    bs = uuid.uuid4().hex
    raw = write_config(tmp_path, env.ceph_config, [{"uuid": uuid.uuid4().hex, "type": "ceph", "pools": [env.src_pool]}],
                       [{"uuid": bs, "type": "sftp", "hostname": sshd_server.host, "port": sshd_server.port,
                         "username": sshd_server.user, "private_key": sshd_server.key,
                         "known_hosts": sshd_server.known_hosts, "path": base, "default": True}],
                       spool_dir=str(tmp_path / "spool"))
    with running_agent(raw) as agent:
        agent.env, agent.bs, agent.base, agent.sshd, agent.raw_config = env, bs, base, sshd_server, raw
        yield agent
    remote(sshd_server, "rm", "-rf", base)


def volume(env):
    vol = uuid.uuid4().hex
    env.rbd.RBD().create(env.src, vol, 20 * MiB + 512, old_format=False)
    with env.rbd.Image(env.src, vol) as image:
        image.write(bytes(range(256)) * 8192, 3 * MiB)
    return vol


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_template_on_sftp_matches_md5sum_over_ssh(sftp_api, fmt):
    api, env = sftp_api, sftp_api.env
    vol = volume(env)
    answer = api.post_create(vol, systemTags=[f"template::format::{fmt}"])
    assert answer.status_code == 200, answer.text
    inv = answer.json()["inventory"]
    path = inv["backupStorageRefs"][0]["installPath"]
    assert path == f"{api.base}/dataVolumeTemplates/acct-{ACCOUNT}/{inv['uuid']}/{inv['uuid']}.{fmt}"
    assert inv["format"] == fmt
    assert remote(api.sshd, "md5sum", path).stdout.split()[0] == inv["md5Sum"]
    if fmt == "qcow2":
        check = remote(api.sshd, "qemu-img", "check", path)
        assert check.returncode == 0, check.stdout + check.stderr
    else:
        assert inv["md5Sum"] == env.export_md5(env.src_pool, vol)
    assert remote(api.sshd, "find", api.base, "-name", "*.part").stdout == ""
    assert api.delete(f"/zstack/v1/images/{inv['uuid']}").status_code == 200
    assert remote(api.sshd, "find", f"{api.base}/dataVolumeTemplates", "-type", "f").stdout == ""


def test_compressed_template_on_sftp(sftp_api, tmp_path):
    api, env = sftp_api, sftp_api.env
    vol = volume(env)
    answer = api.post_create(vol, systemTags=["template::compression::zstd"])
    if env.kind == "fake":  # qemu-img cannot read the fake backend's images
        assert answer.status_code == 503 and "qemu-img cannot read" in answer.text
    else:
        assert answer.status_code == 200, answer.text
        inv = answer.json()["inventory"]
        path = inv["backupStorageRefs"][0]["installPath"]
        assert path.endswith(f"/{inv['uuid']}.qcow2") and inv["format"] == "qcow2"
        assert remote(api.sshd, "md5sum", path).stdout.split()[0] == inv["md5Sum"]
        check = remote(api.sshd, "qemu-img", "check", path)
        assert check.returncode == 0, check.stdout + check.stderr
        assert '"compression-type": "zstd"' in remote(api.sshd, "qemu-img", "info", "--output=json", path).stdout
        exported = tmp_path / "exported.raw"
        subprocess.run(["rbd", "export", "--no-progress", f"{env.src_pool}/{vol}", str(exported)], check=True,
                       env=env.cli_env, capture_output=True)
        compare = remote(api.sshd, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(exported), path)
        assert compare.returncode == 0, compare.stdout + compare.stderr
    assert remote(api.sshd, "find", api.base, "-name", "*.part").stdout == ""
    assert list((tmp_path / "spool").glob("*")) == []
    assert api.agent.store.artifacts() == []


def test_unknown_host_key_is_refused_with_a_clear_error(sftp_api, tmp_path):
    api = sftp_api
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    raw = dict(api.raw_config)
    raw["backup_storage"] = [{**raw["backup_storage"][0], "known_hosts": str(empty)}]
    raw["agent"] = {**raw["agent"], "data_dir": str(tmp_path / "data2")}
    with running_agent(raw) as agent:
        answer = agent.post_create(volume(api.env))
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == "SYS.1006" and "known_hosts" in error["cause"]["details"]
    assert remote(api.sshd, "find", api.base, "-type", "f").stdout == ""


def test_check_reports_the_sftp_backup_storage(sftp_api, tmp_path):
    from zsagent.checks import run_checks
    from zsagent.config import parse_config

    raw = sftp_api.raw_config
    findings = run_checks(parse_config(raw))
    assert all(ok for ok, _, _ in findings), findings
    assert any("is reachable with a known host key" in what for _, what, _ in findings)
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    bad = {**raw, "backup_storage": [{**raw["backup_storage"][0], "known_hosts": str(empty)}]}
    problems = [(what, fix) for ok, what, fix in run_checks(parse_config(bad)) if not ok]
    assert len(problems) == 1 and "verify the server's key fingerprint" in problems[0][1]


def _our_sftp_ssh_pids() -> list[int]:
    """ssh processes this (the agent's) process started for SFTP sessions."""
    import os

    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if ppid == os.getpid() and argv[0].endswith(b"ssh") and b"sftp" in argv:
            found.append(int(entry))
    return found


def test_upload_whose_sshd_session_is_killed_mid_copy_resumes_and_is_right(sftp_api, monkeypatch, caplog):
    """What an operator sees when sshd restarts mid-upload: the job still succeeds, the md5 is the
    server's md5sum, and the log says how much was sent again (the streaming qcow2 upload resumes the
    same way: tests/integration/test_sftp_resume.py)."""
    fmt = "raw"
    import os
    import signal
    import threading

    from sftp_faults import sshd_processes_serving

    from zsagent.sources import rbd_snapshot

    api, env = sftp_api, sftp_api.env
    if api.sshd.host not in ("127.0.0.1", "localhost"):
        pytest.fail("this test kills the server's session process and needs the sshd on this host")
    vol = volume(env)
    killed: list[int] = []
    lock = threading.Lock()
    original = rbd_snapshot.RbdSnapshotSource.read

    def read(self, offset, length):
        with lock:
            if offset >= 2 * MiB and not killed:  # the upload has started: cut its connection once
                for ssh_pid in _our_sftp_ssh_pids():
                    for pid in sshd_processes_serving(ssh_pid, api.sshd.port):
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
        return original(self, offset, length)

    monkeypatch.setattr(rbd_snapshot.RbdSnapshotSource, "read", read)
    answer = api.post_create(vol, systemTags=[f"template::format::{fmt}"])
    assert killed, "no sshd session was killed"
    assert answer.status_code == 200, answer.text
    inv = answer.json()["inventory"]
    path = inv["backupStorageRefs"][0]["installPath"]
    assert remote(api.sshd, "md5sum", path).stdout.split()[0] == inv["md5Sum"]
    if fmt == "raw":
        assert inv["md5Sum"] == env.export_md5(env.src_pool, vol)
    else:
        check = remote(api.sshd, "qemu-img", "check", path)
        assert check.returncode == 0, check.stdout + check.stderr
    assert remote(api.sshd, "find", api.base, "-name", "*.part").stdout == ""
    assert "resumed (reconnection 1)" in caplog.text
