"""The operators' side: `zsagent` commands as a user runs them, the daemon's systemd protocol and
drain, metrics, the unit file, and `make demo`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from agent_harness import free_port
from click.testing import CliRunner
from support import md5sum_file

from zsagent.ceph import CephConfig, open_backend
from zsagent.cli import main

ROOT = Path(__file__).resolve().parents[2]
ZSAGENT = [sys.executable, "-m", "zsagent"]
MiB = 1024 * 1024
SESSION, ACCOUNT = uuid.uuid4().hex, uuid.uuid4().hex


class Site:
    """A fake-Ceph site: config file, a pool with volumes, a file backup storage."""

    def __init__(self, tmp: Path, chunk_bytes: int = 1 << 20, depth: int = 4, drain_s: int = 60):
        self.tmp = tmp
        self.fake_root = tmp / "fake-ceph"
        self.bs_path = tmp / "bs"
        self.bs_path.mkdir()
        self.bs = uuid.uuid4().hex
        self.ceph_bs = uuid.uuid4().hex
        self.port = free_port()
        (tmp / "sessions").write_text(f"{SESSION} {ACCOUNT}\n")
        self.config = tmp / "zsagent.toml"
        self.config.write_text(f"""
[agent]
listen = "127.0.0.1:{self.port}"
data_dir = "{tmp / 'data'}"
drain_s = {drain_s}
[auth]
sessions_file = "{tmp / 'sessions'}"
[ceph]
backend = "fake"
fake_root = "{self.fake_root}"
[pipeline]
chunk_bytes = {chunk_bytes}
depth = {depth}
[[primary_storage]]
uuid = "{uuid.uuid4().hex}"
type = "ceph"
pools = ["pri"]
[[backup_storage]]
uuid = "{self.bs}"
type = "filesystem"
path = "{self.bs_path}"
format = "raw"
default = true
[[backup_storage]]
uuid = "{self.ceph_bs}"
type = "ceph"
pool = "bak"
""")
        backend = open_backend(CephConfig(backend="fake", fake_root=str(self.fake_root)))
        self.backend = backend
        cluster = backend.connect()
        for pool in ("pri", "bak"):
            cluster.create_pool(pool)
        cluster.shutdown()

    def volume(self, size: int = 24 * MiB, data_every: int = 2 * MiB) -> str:
        vol = uuid.uuid4().hex
        cluster = self.backend.connect()
        with cluster.open_ioctx("pri") as ioctx:
            self.backend.rbd.RBD().create(ioctx, vol, size)
            with self.backend.rbd.Image(ioctx, vol) as image:
                image.metadata_set("zstack.accountUuid", ACCOUNT)  # the session's account owns it
                block = os.urandom(MiB)
                for offset in range(0, size, data_every):
                    image.write(block[: min(MiB, size - offset)], offset)
        cluster.shutdown()
        return vol

    def leftovers(self) -> list[str]:
        """Temporary things anywhere: .part files/images, snapshots on volumes."""
        found = [str(p) for p in self.bs_path.rglob("*") if p.is_file()]
        cluster = self.backend.connect()
        for pool in ("pri", "bak"):
            with cluster.open_ioctx(pool) as ioctx:
                for name in self.backend.rbd.RBD().list(ioctx):
                    if name.endswith(".part"):
                        found.append(f"{pool}/{name}")
                    with self.backend.rbd.Image(ioctx, name) as image:
                        found += [f"{pool}/{name}@{s['name']}" for s in image.list_snaps()]
        cluster.shutdown()
        return found

    def run(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([*ZSAGENT, *args, "--config", str(self.config)], capture_output=True, text=True,
                              timeout=300, **kw)


@pytest.fixture
def site(tmp_path):
    return Site(tmp_path)


def test_every_command_has_help_with_an_example():
    runner = CliRunner()
    for args in ([], ["serve"], ["copy"], ["images"], ["images", "list"], ["images", "show"],
                 ["images", "delete"], ["volumes"], ["check"], ["front"]):
        result = runner.invoke(main, [*args, "--help"])
        assert result.exit_code == 0, result.output
        assert "Example" in result.output or "example" in result.output.lower()


def test_copy_as_a_subprocess_prints_progress_lines_and_json(site):
    vol = site.volume()
    result = site.run("copy", vol, "--json", "--name", "nightly")
    assert result.returncode == 0, result.stderr
    inv = json.loads(result.stdout)
    assert inv["name"] == "nightly" and inv["url"] == f"volume://{vol}"
    path = inv["backupStorageRefs"][0]["installPath"]
    assert md5sum_file(path) == inv["md5Sum"]
    lines = result.stderr.strip().splitlines()
    assert lines and all(re_line(line) for line in lines), result.stderr
    assert site.leftovers() == [path]


def test_copy_compression_flag_reaches_the_request(site):
    vol = site.volume()
    refused = site.run("copy", vol, "--compression", "zstd", "--format", "raw")
    assert refused.returncode == 2 and "needs the qcow2 format" in refused.stderr
    # qemu-img cannot read the fake backend's volumes: a clear failure, nothing left
    failed = site.run("copy", vol, "--compression", "zstd", "--format", "qcow2")
    assert failed.returncode == 1 and "qemu-img cannot read" in failed.stderr
    assert site.leftovers() == []


def re_line(line: str) -> bool:
    import re

    return re.match(r"^(queued|snapshot|copying|publishing|done|failed): \d+/\d+ bytes \(\d+%\), \d+ MB/s$",
                    line) is not None


def test_copy_to_ceph_in_clone_mode_then_images_show_list_delete(site):
    vol = site.volume()
    made = site.run("copy", vol, "--to", site.ceph_bs, "--mode", "clone", "--json")
    assert made.returncode == 0, made.stderr
    inv = json.loads(made.stdout)
    assert inv["backupStorageRefs"][0]["installPath"] == f"ceph://bak/{inv['uuid']}"
    listed = site.run("images", "list")
    assert inv["uuid"] in listed.stdout and inv["md5Sum"] in listed.stdout
    shown = site.run("images", "show", inv["uuid"])
    assert json.loads(shown.stdout) == inv
    assert f"pri/{vol}@{inv['uuid']}" in site.leftovers()  # the clone's parent snapshot
    deleted = site.run("images", "delete", inv["uuid"])
    assert deleted.returncode == 0 and site.leftovers() == []
    missing = site.run("images", "show", inv["uuid"])
    assert missing.returncode == 1 and "SYS.1003" in missing.stderr


def test_copy_as_an_account_needs_its_volume_and_lists_show_what_it_owns(site):
    vol = site.volume(size=3 * MiB)  # ACCOUNT's, by its RBD metadata
    other = uuid.uuid4().hex
    refused = site.run("copy", vol, "--account", other)
    assert refused.returncode == 1 and "ID.1002" in refused.stderr and "doesn't belong" in refused.stderr
    made = site.run("copy", vol, "--account", ACCOUNT, "--json")
    assert made.returncode == 0, made.stderr
    inv = json.loads(made.stdout)
    assert f"/acct-{ACCOUNT}/" in inv["backupStorageRefs"][0]["installPath"]
    assert inv["uuid"] in site.run("images", "list", "--account", ACCOUNT).stdout
    assert inv["uuid"] not in site.run("images", "list", "--account", other).stdout
    assert inv["uuid"] in site.run("images", "list").stdout  # the operator sees all


def test_volumes_lists_what_the_catalog_sees(site):
    vol = site.volume(size=3 * MiB)
    listed = site.run("volumes", "--json")
    assert listed.returncode == 0
    assert {"uuid": vol, "kind": "ceph", "format": "raw", "size": 3 * MiB, "where": f"pri/{vol}"} in json.loads(
        listed.stdout)


def test_exit_codes_and_messages(site, tmp_path):
    unknown = site.run("copy", uuid.uuid4().hex)
    assert unknown.returncode == 1 and "SYS.1003" in unknown.stderr and "Traceback" not in unknown.stderr
    bad_uuid = site.run("copy", "not-a-uuid")
    assert bad_uuid.returncode == 2 and "not a uuid" in bad_uuid.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[agent]\nmax_jobs = 0\n")
    result = subprocess.run([*ZSAGENT, "copy", uuid.uuid4().hex, "--config", str(broken)], capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"zsagent: bad configuration: {broken}: agent.max_jobs: must be at least 1"


def test_ctrl_c_cancels_cleanly(tmp_path):
    slow = Site(tmp_path, chunk_bytes=4096, depth=1)  # many tiny chunks: seconds of copying
    vol = slow.volume(size=96 * MiB, data_every=MiB)
    process = subprocess.Popen([*ZSAGENT, "copy", vol, "--config", str(slow.config)], stderr=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    for line in process.stderr:
        if line.startswith("copying"):
            break
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 130, rest
    assert "nothing was left behind" in rest
    assert slow.leftovers() == [], rest


def test_check_reports_each_problem_with_its_fix(site, tmp_path):
    good = site.run("check")
    assert good.returncode == 0, good.stdout
    assert "all checks passed" in good.stdout
    text = site.config.read_text()
    broken = tmp_path / "broken.toml"
    broken.write_text(text.replace('pool = "bak"', 'pool = "nosuchpool"')
                      .replace(f'path = "{site.bs_path}"', f'path = "{tmp_path / "absent"}"')
                      .replace(f'sessions_file = "{tmp_path / "sessions"}"',
                               f'sessions_file = "{tmp_path / "nosessions"}"'))
    result = subprocess.run([*ZSAGENT, "check", "--config", str(broken)], capture_output=True, text=True)
    assert result.returncode == 1
    out = result.stdout
    assert "problem: Ceph pool nosuchpool does not exist" in out and "ceph osd pool create nosuchpool" in out
    assert f"{tmp_path / 'absent'} is missing or not writable" in out
    assert "sessions file" in out and "cannot be read" in out
    assert out.count("  fix: ") == 3
    unreachable = tmp_path / "unreachable.toml"
    unreachable.write_text(text.replace('backend = "fake"', 'backend = "rados"\nconf = "/nonexistent/ceph.conf"'))
    result = subprocess.run([*ZSAGENT, "check", "--config", str(unreachable)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "Ceph is unreachable: connecting as client.admin with /nonexistent/ceph.conf failed" in result.stdout
    not_toml = tmp_path / "not.toml"
    not_toml.write_text("= nope")
    result = subprocess.run([*ZSAGENT, "check", "--config", str(not_toml)], capture_output=True, text=True)
    assert result.returncode == 1 and "not valid TOML" in result.stdout


class NotifySocket:
    """A stand-in for systemd's notify socket."""

    def __init__(self, path: Path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(60)

    def expect(self, state: str) -> str:
        while True:
            message = self.sock.recv(4096).decode()
            if state in message.split("\n"):
                return message


def scrape(url: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(httpx.get(url).text) for s in family.samples}


def start_daemon(site: Site, notify: NotifySocket) -> subprocess.Popen:
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path)}
    return subprocess.Popen([*ZSAGENT, "serve", "--config", str(site.config), "--log-format", "json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def create(site: Site, vol: str, job: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"OAuth {SESSION}"}
    if job:
        headers["X-Job-UUID"] = job
    return httpx.post(f"http://127.0.0.1:{site.port}/zstack/v1/images/data-volume-templates/from/volumes/{vol}",
                      json={"params": {"name": "t"}}, headers=headers, timeout=120)


def test_daemon_notifies_ready_serves_metrics_and_logs_json_without_secrets(site, tmp_path):
    notify = NotifySocket(tmp_path / "notify")
    daemon = start_daemon(site, notify)
    try:
        notify.expect("READY=1")
        assert httpx.get(f"http://127.0.0.1:{site.port}/health").json() == {"status": "ok"}
        vol = site.volume()
        answer = create(site, vol)
        assert answer.status_code == 200
        metrics = scrape(f"http://127.0.0.1:{site.port}/metrics")
        assert metrics[("zsagent_jobs_total", (("result", "success"),))] == 1
        assert metrics[("zsagent_bytes_hashed_total", ())] == 24 * MiB
        # what RBD reports allocated is read: at least the data, never the untouched tail of each object
        assert 12 * MiB <= metrics[("zsagent_bytes_read_total", ())] < 24 * MiB
        assert metrics[("zsagent_copy_duration_seconds_count", ())] == 1
        assert metrics[("zsagent_jobs_running", ())] == 0
        daemon.send_signal(signal.SIGTERM)
        notify.expect("STOPPING=1")
        _, log = daemon.communicate(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert daemon.returncode == 0
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert any(e.get("job") and e.get("image") and e.get("volume") == vol for e in entries), log
    assert SESSION not in log


def test_sigterm_drains_then_cancels_and_records_why(tmp_path):
    slow = Site(tmp_path, chunk_bytes=4096, depth=1, drain_s=1)
    vol = slow.volume(size=96 * MiB, data_every=MiB)
    notify = NotifySocket(tmp_path / "notify")
    daemon = start_daemon(slow, notify)
    job = uuid.uuid4().hex
    try:
        notify.expect("READY=1")
        assert create(slow, vol, job).status_code == 202
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            progress = httpx.get(f"http://127.0.0.1:{slow.port}/zstack/v1/task-progresses/{job}",
                                 headers={"Authorization": f"OAuth {SESSION}"}).json()["inventories"][0]
            if progress["phase"] == "copying":
                break
            time.sleep(0.05)
        daemon.send_signal(signal.SIGTERM)
        notify.expect("STOPPING=1")
        daemon.communicate(timeout=120)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    assert daemon.returncode == 0
    assert slow.leftovers() == []
    daemon = start_daemon(slow, notify)
    try:
        notify.expect("READY=1")
        result = httpx.get(f"http://127.0.0.1:{slow.port}/zstack/v1/api-jobs/{job}",
                           headers={"Authorization": f"OAuth {SESSION}"})
        assert result.status_code == 503
        error = result.json()["error"]
        assert error["code"] == "SYS.1017" and "drain time" in error["details"]
    finally:
        daemon.terminate()
        daemon.communicate(timeout=60)


def test_unit_file_verifies_and_is_well_hardened(tmp_path):
    unit = (ROOT / "systemd" / "zsagent.service").read_text()
    # verify needs ExecStart's binary to exist: point it at this checkout's entry point
    local = tmp_path / "zsagent.service"
    local.write_text(unit.replace("/usr/bin/zsagent", str(Path(sys.executable).parent / "zsagent")))
    verify = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(local)], capture_output=True,
                              text=True)
    exposure = float(security.stdout.split("Overall exposure level for zsagent.service:")[1].split()[0])
    assert exposure <= 2.0, security.stdout
    assert "Type=notify" in unit and "Restart=on-failure" in unit


def test_make_demo_runs_and_checks_its_md5():
    result = subprocess.run([str(ROOT / "scripts" / "demo")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "md5Sum matches md5sum of the stored template" in result.stdout
    assert '"status": "Ready"' in result.stdout


def test_install_stages_the_unit_and_the_default_config(tmp_path):
    stage = tmp_path / "root"
    result = subprocess.run([str(ROOT / "scripts" / "install")], env={**os.environ, "DESTDIR": str(stage)},
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    config = stage / "etc" / "zsagent" / "zsagent.toml"
    assert config.read_text() == (ROOT / "systemd" / "zsagent.toml.example").read_text()
    assert (stage / "lib" / "systemd" / "system" / "zsagent.service").exists()
    assert (stage / "usr" / "lib" / "tmpfiles.d" / "zsagent.conf").read_text().startswith("#")
    config.write_text("# edited by the operator\n")
    subprocess.run([str(ROOT / "scripts" / "install")], env={**os.environ, "DESTDIR": str(stage)}, check=True)
    assert config.read_text() == "# edited by the operator\n"  # never overwritten
