"""Ceph faults: monitors unreachable at start, an OSD stopped mid-copy, a pool that fills up.

The OSD and pool-full cases run on a private cluster of their own (they stop its OSD or fill it), started
by scripts/ceph-cluster, and are in the reliability set; the monitor case needs no cluster at all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
from agent_harness import file_volume, free_port, running_agent, write_config
from crash_site import ZSAGENT, figure, toml_text
from support import md5sum_file, unavailable

from zsagent import faults

MiB = 1024 * 1024
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


# ---------------------------------------------------------------- monitors unreachable


def dead_mon_conf(tmp: Path) -> Path:
    """A ceph.conf whose only monitor address has nobody listening."""
    conf = tmp / "dead-mon.conf"
    conf.write_text(f"[global]\nmon host = v1:127.0.0.1:{free_port()}\nauth client required = none\n")
    return conf


def test_monitors_unreachable_at_start_file_work_goes_on_and_ceph_requests_say_why(tmp_path):
    conf = dead_mon_conf(tmp_path)
    ps_root, bs_root = tmp_path / "ps", tmp_path / "bs"
    ps_root.mkdir()
    bs_root.mkdir()
    file_bs = uuid.uuid4().hex
    raw = write_config(tmp_path, {"backend": "rados", "conf": str(conf), "keyring": "", "client_mount_timeout": 3},
                       [{"uuid": uuid.uuid4().hex, "type": "ceph", "pools": ["zs-pri"]},
                        {"uuid": uuid.uuid4().hex, "type": "filesystem", "path": str(ps_root)}],
                       [{"uuid": uuid.uuid4().hex, "type": "ceph", "pool": "zs-bak"},
                        {"uuid": file_bs, "type": "filesystem", "path": str(bs_root), "format": "raw",
                         "default": True}])
    raw["virt"] = {"enabled": False}
    volume, path = file_volume(ps_root)
    with running_agent(raw) as agent:
        started = time.monotonic()
        made = agent.post_create(volume, {"backupStorageUuids": [file_bs]})
        assert made.status_code == 200, made.text
        assert time.monotonic() - started < 3  # a file volume never waits for the monitors
        template = made.json()["inventory"]["backupStorageRefs"][0]["installPath"]
        assert made.json()["inventory"]["md5Sum"] == md5sum_file(path) == md5sum_file(template)

        ceph_volume = uuid.uuid4().hex
        for _ in range(2):  # the second is told at once, without waiting for the monitors again
            started = time.monotonic()
            refused = agent.post_create(ceph_volume)
            waited = time.monotonic() - started
            assert refused.status_code == 503
            error = refused.json()["error"]
            assert error["code"] == "SYS.1006"
            assert error["details"].startswith("Ceph is unreachable: no monitor in ")
            assert "answered within 3 s (client_mount_timeout)" in error["details"]
        assert waited < 1
        health = agent.get("/health").json()
        assert health["status"] == "ok" and health["ceph"].startswith("Ceph is unreachable")

    config = tmp_path / "zsagent.toml"
    config.write_text(toml_text(raw))
    check = subprocess.run([*ZSAGENT, "check", "--config", str(config)], capture_output=True, text=True,
                           timeout=120)
    assert check.returncode == 1
    assert "Ceph is unreachable: no monitor in " in check.stdout and "answered within 3 s" in check.stdout
    assert f"backup storage {file_bs}: {bs_root} is writable" in check.stdout


# ---------------------------------------------------------------- a private cluster


class PrivateCluster:
    """A single-node cluster of this test's own (scripts/ceph-cluster), whose OSD it may stop."""

    def __init__(self, root: Path, *up_args: str) -> None:
        self.root = root
        self.up_args = up_args
        self.exports = self.up()
        self.conf = self.exports["ZSAGENT_TEST_CEPH_CONF"]
        self.keyring = self.exports["ZSAGENT_TEST_CEPH_KEYRING"]
        self.env = dict(os.environ, CEPH_CONF=self.conf, CEPH_ARGS=f"--id admin --keyring {self.keyring}")

    def up(self) -> dict[str, str]:
        done = subprocess.run([str(SCRIPTS / "ceph-cluster"), "up", str(self.root), *self.up_args],
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            unavailable(f"ceph-cluster up failed:\n{done.stderr[-3000:]}")
        return {k.removeprefix("export "): v for k, _, v in
                (line.partition("=") for line in done.stdout.splitlines() if line.startswith("export "))}

    def down(self) -> None:
        subprocess.run([str(SCRIPTS / "ceph-cluster"), "down", str(self.root)], capture_output=True, timeout=120)

    def stop_osd(self) -> None:
        """SIGTERM the OSD, as `systemctl stop ceph-osd@0` does, and wait until it is gone."""
        pid = int((self.root / "pid" / "osd.0.pid").read_text())
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)

    def ceph(self, *args: str) -> str:
        return subprocess.run(["ceph", *args], env=self.env, capture_output=True, text=True, timeout=120,
                              check=True).stdout

    def rbd(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["rbd", *args], env=self.env, capture_output=True, timeout=300, **kw)

    def export_md5(self, spec: str) -> str:
        export = subprocess.Popen(["rbd", "export", "--no-progress", spec, "-"], stdout=subprocess.PIPE,
                                  env=self.env)
        out = subprocess.run(["md5sum"], stdin=export.stdout, capture_output=True, text=True, check=True)
        export.stdout.close()
        assert export.wait() == 0
        return out.stdout.split()[0]

    def images(self, pool: str) -> list[str]:
        return json.loads(self.rbd("ls", "--format", "json", pool, check=True).stdout)

    def snaps(self, spec: str) -> list[str]:
        return [s["name"] for s in json.loads(self.rbd("snap", "ls", "--format", "json", spec, check=True).stdout)]


@contextmanager
def private_cluster(root: Path, *up_args: str):
    cluster = PrivateCluster(root, *up_args)
    try:
        for pool in ("zs-pri", "zs-bak"):
            cluster.ceph("osd", "pool", "create", pool)
            cluster.rbd("pool", "init", pool, check=True)
        yield cluster
    finally:
        cluster.down()


def ceph_agent_config(tmp: Path, cluster: PrivateCluster, timeout_s: int) -> tuple[dict, str]:
    bs = uuid.uuid4().hex
    raw = write_config(tmp, {"backend": "rados", "conf": cluster.conf, "keyring": cluster.keyring,
                             "rados_osd_op_timeout": timeout_s, "rados_mon_op_timeout": timeout_s,
                             "client_mount_timeout": timeout_s},
                       [{"uuid": uuid.uuid4().hex, "type": "ceph", "pools": ["zs-pri"]}],
                       [{"uuid": bs, "type": "ceph", "pool": "zs-bak", "default": True}])
    raw["virt"] = {"enabled": False}
    return raw, bs


def random_volume(cluster: PrivateCluster, tmp: Path, size: int) -> tuple[str, str]:
    """A volume in zs-pri with random data in every other MiB; returns (uuid, md5 of its content)."""
    content = tmp / "content.raw"
    with open(content, "wb") as f:
        for offset in range(0, size, 2 * MiB):
            f.seek(offset)
            f.write(os.urandom(min(MiB, size - offset)))
        f.truncate(size)
    volume = uuid.uuid4().hex
    cluster.rbd("import", "--no-progress", str(content), f"zs-pri/{volume}", check=True)
    md5 = md5sum_file(content)
    content.unlink()
    return volume, md5


def wait_progress(agent, job: str, percent: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        inventories = agent.get(f"/zstack/v1/task-progresses/{job}").json()["inventories"]
        if inventories and int(inventories[0]["percent"]) >= percent:
            return
        time.sleep(0.05)
    raise AssertionError(f"job {job} did not reach {percent} %")


# ---------------------------------------------------------------- an OSD stopped mid-copy


@pytest.mark.reliability
@pytest.mark.ceph
def test_osd_stopped_mid_copy_fails_within_the_timeout_and_nothing_is_left_once_it_returns(tmp_path):
    timeout_s = 5
    with private_cluster(tmp_path / "ceph", "--store", "bluestore", "--bluestore-bytes", str(4 << 30)) as cluster:
        volume, md5 = random_volume(cluster, tmp_path, 64 * MiB)
        raw, _ = ceph_agent_config(tmp_path, cluster, timeout_s)
        image = uuid.uuid4().hex
        faults.arm("copy-mid@0.4:sleep=3")  # holds the copy at 40 % while the OSD goes
        try:
            with running_agent(raw) as agent:
                agent.agent.service.janitor.max_backoff_s = 2  # retry often: the test waits for it
                job = uuid.uuid4().hex
                made = agent.post_create(volume, {"resourceUuid": image}, headers={"X-Job-UUID": job})
                assert made.status_code == 202
                wait_progress(agent, job, 40)
                cluster.stop_osd()
                stopped = time.monotonic()
                failed = agent.wait_job(made.json()["location"], timeout_s=300)
                took = time.monotonic() - stopped
                figure("seconds from the OSD stop to the failed job", took)
                assert failed.status_code == 503
                error = failed.json()["error"]
                assert error["code"] == "SYS.1006"
                assert f"rados_osd_op_timeout={timeout_s} s" in json.dumps(error)
                assert "OSD_DOWN" in json.dumps(error)  # Ceph's own words for the cause
                assert took < 10 * timeout_s

                cluster.up()  # the OSD comes back (the data is kept on bluestore)
                deadline = time.monotonic() + 120
                while agent.agent.store.artifacts() and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert agent.agent.store.artifacts() == []  # removed in the background, not at a restart
                assert [i for i in cluster.images("zs-bak") if image in i] == []
                assert cluster.snaps(f"zs-pri/{volume}") == []

                retry = agent.post_create(volume, {"resourceUuid": image})
                assert retry.status_code == 200, retry.text
                assert retry.json()["inventory"]["md5Sum"] == md5 == cluster.export_md5(f"zs-bak/{image}")
                assert cluster.snaps(f"zs-pri/{volume}") == []
                assert [i for i in cluster.images("zs-bak") if i.endswith(".part")] == []
        finally:
            faults.arm(None)


# ---------------------------------------------------------------- a pool that fills up


@pytest.mark.reliability
@pytest.mark.ceph
def test_full_pool_is_a_clean_error_and_nothing_half_written_stays(tmp_path):
    """A memstore OSD of 1 GiB whose full ratio is lowered to 40 %: the volume's 256 MiB fit, its copy
    does not. The copy waits at 70 % (fault hook) until the monitors have seen the OSD full."""
    with private_cluster(tmp_path / "ceph", "--store", "memstore", "--memstore-bytes", str(1 << 30)) as cluster:
        volume, _ = random_volume(cluster, tmp_path, 512 * MiB)
        cluster.ceph("osd", "set-nearfull-ratio", "0.3")
        cluster.ceph("osd", "set-backfillfull-ratio", "0.35")
        cluster.ceph("osd", "set-full-ratio", "0.40")
        raw, _ = ceph_agent_config(tmp_path, cluster, 10)
        image = uuid.uuid4().hex
        faults.arm("copy-mid@0.7:sleep=12")
        with running_agent(raw) as agent:
            agent.agent.service.janitor.max_backoff_s = 2  # retry often: the test waits for it
            started = time.monotonic()
            answer = agent.post_create(volume, {"resourceUuid": image})
            figure("seconds until a full pool failed the copy", time.monotonic() - started)
            assert answer.status_code == 503, answer.text
            error = answer.json()["error"]
            assert error["code"] == "SYS.1006"
            text = json.dumps(error)
            assert "insufficient space" in text and "the Ceph pool is full" in text and "OSD_FULL" in text, text
            deadline = time.monotonic() + 120
            while agent.agent.store.artifacts() and time.monotonic() < deadline:
                time.sleep(0.2)
            figure("seconds until what a full pool kept was removed", time.monotonic() - started)
            assert agent.agent.store.artifacts() == []
            assert [i for i in cluster.images("zs-bak") if image in i] == []
            assert cluster.snaps(f"zs-pri/{volume}") == []
            assert agent.get(f"/zstack/v1/images/{image}").json()["inventories"] == []
        faults.arm(None)
