"""A site for crash tests: the agent as a real `zsagent serve` process (so that it can be SIGKILLed at a
fault point, see zsagent/faults.py), volumes on the real test Ceph and on files, backup storages on Ceph,
files and the real sshd, a web hook receiver, and a scan for anything left behind anywhere."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import uvicorn
from agent_harness import ACCOUNT, SESSION, free_port
from support import md5sum_file

from zsagent.agent import build_agent
from zsagent.config import load_config
from zsagent.store import Store

MiB = 1024 * 1024
ZSAGENT = [sys.executable, "-m", "zsagent"]

FIGURES: dict[str, list] = {}
"""What the reliability tests measured, by name; printed at the end of the run (conftest.py)."""


def figure(name: str, value) -> None:
    FIGURES.setdefault(name, []).append(value)


def toml_text(document: dict) -> str:
    """Just enough TOML for the agent's configuration: tables of scalars and lists, arrays of tables."""

    def value(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return str(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))

    lines = []
    for name, section in document.items():
        for table in section if isinstance(section, list) else [section]:
            lines.append(f"[[{name}]]" if isinstance(section, list) else f"[{name}]")
            lines += [f"{key} = {value(v)}" for key, v in table.items()]
    return "\n".join(lines) + "\n"


class WebHook:
    """An HTTP server that keeps what is POSTed to it: ``calls`` of (headers, JSON body)."""

    def __init__(self) -> None:
        calls = self.calls = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                calls.append((dict(self.headers), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, job_uuid: str, timeout_s: float = 30) -> tuple[dict, dict]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for headers, body in self.calls:
                if headers.get("X-Job-UUID") == job_uuid:
                    return headers, body
            time.sleep(0.05)
        raise AssertionError(f"no web hook call for job {job_uuid}: {self.calls}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Daemon:
    process: subprocess.Popen
    url: str
    log: Path
    started: float
    first_answer_s: float | None = None

    def wait_serving(self, timeout_s: float = 60) -> float:
        """Seconds from the start of the process to its first answer on /health."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"agent exited {self.process.returncode}:\n{self.log.read_text()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    self.first_answer_s = time.monotonic() - self.started
                    return self.first_answer_s
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        raise AssertionError(f"agent did not answer within {timeout_s} s:\n{self.log.read_text()[-4000:]}")

    def stop(self, timeout_s: float = 60) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.send_signal(signal.SIGABRT)  # faulthandler writes every thread's stack to the log
                self.process.wait()
        return self.process.returncode


@dataclass
class Case:
    """One volume and one backup storage: what a crash test copies, and what must be there afterwards."""

    kind: str                 # ceph-copy | ceph-clone | ceph-file | ceph-sftp | file-file
    volume: str
    bs_uuid: str
    content_md5: str          # of the volume's raw bytes, by md5sum / rbd export
    image: str = field(default_factory=lambda: uuid.uuid4().hex)
    system_tags: list[str] = field(default_factory=list)


class CrashSite:
    """Everything one crash test needs; ``ceph`` is the session's CephCluster, ``pools`` (src, dst)."""

    def __init__(self, tmp: Path, ceph, pools: tuple[str, str], sshd, **agent) -> None:
        self.tmp = tmp
        self.ceph = ceph
        self.src_pool, self.dst_pool = pools
        self.sshd = sshd
        self.ps_root, self.bs_root, self.spool = tmp / "ps", tmp / "bs", tmp / "spool"
        for d in (self.ps_root, self.bs_root):
            d.mkdir()
        self.remote_base = f"/tmp/zsagent-crash-{uuid.uuid4().hex[:8]}"
        self._remote("mkdir", "-p", self.remote_base)
        self.ceph_bs, self.file_bs, self.sftp_bs = (uuid.uuid4().hex for _ in range(3))
        self.port = free_port()
        (tmp / "sessions").write_text(f"{SESSION} {ACCOUNT}\n")
        self.data_dir = tmp / "data"
        self.config = tmp / "zsagent.toml"
        self.config.write_text(toml_text({
            "agent": {"listen": f"127.0.0.1:{self.port}", "data_dir": str(self.data_dir), "max_jobs": 2,
                      "spool_dir": str(self.spool), **agent},
            # the volumes carry no owner (ZStack writes none): every account may use them here
            "auth": {"sessions_file": str(tmp / "sessions"), "unknown_volume_owner": "allow"},
            "ceph": {"backend": "rados", "conf": ceph.conf, "keyring": ceph.keyring,
                     "rados_osd_op_timeout": 20, "rados_mon_op_timeout": 20, "client_mount_timeout": 20},
            "pipeline": {"chunk_bytes": 256 * 1024, "depth": 4},
            "virt": {"enabled": False},
            "primary_storage": [{"uuid": uuid.uuid4().hex, "type": "ceph", "pools": [self.src_pool]},
                                {"uuid": uuid.uuid4().hex, "type": "filesystem", "path": str(self.ps_root)}],
            "backup_storage": [
                {"uuid": self.ceph_bs, "type": "ceph", "pool": self.dst_pool, "default": True},
                {"uuid": self.file_bs, "type": "filesystem", "path": str(self.bs_root), "format": "raw"},
                {"uuid": self.sftp_bs, "type": "sftp", "hostname": sshd.host, "port": sshd.port,
                 "username": sshd.user, "private_key": sshd.key, "known_hosts": sshd.known_hosts,
                 "path": self.remote_base, "format": "raw"}],
        }))
        self.hook = WebHook()
        self.tmpdir = tmp / "tmp"  # the agent's TMPDIR (qemu-nbd sockets): other tests' never count
        self.tmpdir.mkdir()
        import rados
        import rbd

        self.rbd = rbd
        self.cluster = rados.Rados(**ceph.rados_kwargs())
        self.cluster.connect(timeout=30)
        self.src = self.cluster.open_ioctx(self.src_pool)
        self.dst = self.cluster.open_ioctx(self.dst_pool)

    def close(self) -> None:
        self.hook.close()
        self.src.close()
        self.dst.close()
        self.cluster.shutdown()
        self._remote("rm", "-rf", self.remote_base)

    # -- volumes ------------------------------------------------------------------------------------

    def case(self, kind: str, size: int = 4 * MiB) -> Case:
        """A fresh volume for ``kind`` with random data in every other MiB (holes between)."""
        raw = self.tmp / f"content-{uuid.uuid4().hex[:8]}.raw"
        vol = uuid.uuid4().hex
        image = None
        if kind != "file-file":
            self.rbd.RBD().create(self.src, vol, size, old_format=False)
            image = self.rbd.Image(self.src, vol)
        with open(raw, "wb") as f:
            f.truncate(size)
            for offset in range(0, size, 2 * MiB):
                block = os.urandom(min(MiB, size - offset))
                f.seek(offset)
                f.write(block)
                if image is not None:
                    image.write(block, offset)
        if image is not None:
            image.close()
        md5 = md5sum_file(raw)
        if kind == "file-file":
            path = self.ps_root / "dataVolumes" / f"acct-{ACCOUNT}" / f"vol-{vol}" / f"{vol}.qcow2"
            path.parent.mkdir(parents=True)
            subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
        raw.unlink()
        bs = {"ceph-copy": self.ceph_bs, "ceph-clone": self.ceph_bs, "ceph-file": self.file_bs,
              "ceph-sftp": self.sftp_bs, "file-file": self.file_bs}[kind]
        tags = ["ceph::copyMode::clone"] if kind == "ceph-clone" else []
        return Case(kind, vol, bs, md5, system_tags=tags)

    # -- the agent ----------------------------------------------------------------------------------

    def start(self, fault: str | None = None, name: str = "agent") -> Daemon:
        env = {k: v for k, v in os.environ.items() if k != "ZSAGENT_FAULT"} | {"TMPDIR": str(self.tmpdir),
                                                                               "PYTHONFAULTHANDLER": "1"}
        if fault:
            env["ZSAGENT_FAULT"] = fault
        log = self.tmp / f"{name}.log"
        started = time.monotonic()
        with open(log, "ab") as out:
            process = subprocess.Popen([*ZSAGENT, "serve", "--config", str(self.config)], env=env,
                                       stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return Daemon(process, f"http://127.0.0.1:{self.port}", log, started)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @contextmanager
    def in_process(self):
        """The agent of this site in this process (for the fault hook armed with faults.arm)."""
        agent = build_agent(load_config(self.config))
        server = uvicorn.Server(uvicorn.Config(agent.app, host="127.0.0.1", port=self.port, log_level="warning",
                                               lifespan="off"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        try:
            yield agent
        finally:
            agent.jobs.wait_all(60)
            server.should_exit = True
            thread.join(10)
            agent.close()

    def create(self, case: Case, job: str | None = None, timeout_s: float = 180) -> httpx.Response:
        """The create call; with ``job`` asynchronous (X-Job-UUID and this site's web hook)."""
        headers = {"Authorization": f"OAuth {SESSION}"}
        if job:
            headers |= {"X-Job-UUID": job, "X-Web-Hook": self.hook.url}
        body = {"params": {"name": "crash test", "resourceUuid": case.image, "backupStorageUuids": [case.bs_uuid]},
                "systemTags": case.system_tags}
        return httpx.post(f"http://127.0.0.1:{self.port}/zstack/v1/images/data-volume-templates/from/volumes/"
                          f"{case.volume}", json=body, headers=headers, timeout=timeout_s)

    def delete(self, image: str) -> httpx.Response:
        return httpx.delete(f"{self.url}/zstack/v1/images/{image}", headers={"Authorization": f"OAuth {SESSION}"},
                            timeout=120)

    def remove_volume(self, case: Case) -> None:
        if case.kind != "file-file":
            self.rbd.RBD().remove(self.src, case.volume)

    def poll(self, job: str) -> httpx.Response:
        return httpx.get(f"{self.url}/zstack/v1/api-jobs/{job}", headers={"Authorization": f"OAuth {SESSION}"},
                         timeout=30)

    def journal(self) -> list:
        store = Store(self.data_dir / "zsagent.db")
        try:
            return store.artifacts()
        finally:
            store.close()

    # -- what is there --------------------------------------------------------------------------------

    def template_md5(self, case: Case, install_path: str) -> str:
        """md5 of the stored template by an independent tool."""
        if install_path.startswith("ceph://"):
            return self.export_md5(self.dst_pool, case.image)
        if case.kind == "ceph-sftp":
            out = self._remote("md5sum", install_path)
            return out.split()[0]
        return md5sum_file(install_path)

    def export_md5(self, pool: str, image: str) -> str:
        export = subprocess.Popen(["rbd", "export", "--no-progress", f"{pool}/{image}", "-"], stdout=subprocess.PIPE,
                                  env=self.ceph.cli_env())
        out = subprocess.run(["md5sum"], stdin=export.stdout, capture_output=True, text=True, check=True)
        export.stdout.close()
        assert export.wait() == 0
        return out.stdout.split()[0]

    def leftovers(self, case: Case, published: str | None = None) -> list[str]:
        """Everything of ``case`` that is there but should not be: ``.part`` images, files and remote
        files, snapshots (but a clone template's parent), templates other than ``published`` (the install
        path of the recorded one), spool files, qemu-nbd processes and socket directories."""
        found = []
        for pool, ioctx in ((self.src_pool, self.src), (self.dst_pool, self.dst)):
            for name in self.rbd.RBD().list(ioctx):
                if name.endswith(".part"):
                    found.append(f"{pool}/{name}")
                elif case.image in name and published != f"ceph://{pool}/{name}":
                    found.append(f"{pool}/{name} (not recorded)")
        found += self._orphan_data_objects()
        if case.kind != "file-file":
            with self.rbd.Image(self.src, case.volume) as image:
                for snap in image.list_snaps():
                    parent_of_clone = (case.kind == "ceph-clone" and published and snap["name"] == case.image)
                    if not parent_of_clone:
                        found.append(f"{self.src_pool}/{case.volume}@{snap['name']}")
        for path in self.bs_root.rglob("*"):
            if path.is_file() and str(path) != published:
                found.append(str(path))
        if self.spool.exists():
            found += [str(p) for p in self.spool.iterdir()]
        remote = self._remote("find", self.remote_base, "-type", "f").split()
        found += [f"sftp:{p}" for p in remote if p != published]
        found += sorted(glob.glob(str(self.tmpdir / "*")))
        pgrep = subprocess.run(["pgrep", "-af", "qemu-nbd"], capture_output=True, text=True).stdout
        found += [f"process: {line}" for line in pgrep.splitlines() if case.volume in line]
        return found

    def _orphan_data_objects(self) -> list[str]:
        """Data objects in the backup pool of no image there (e.g. an object copied server-side into an
        image that was removed meanwhile)."""
        prefixes = set()
        for name in self.rbd.RBD().list(self.dst):
            try:
                with self.rbd.Image(self.dst, name, read_only=True) as image:
                    prefixes.add(image.block_name_prefix())
            except self.rbd.ImageNotFound:
                pass  # removed meanwhile
        objects = [o.key for o in self.dst.list_objects() if o.key.startswith("rbd_data.")]
        return [f"{self.dst_pool}: object {key} of no image" for key in objects
                if key.rsplit(".", 1)[0] not in prefixes]

    def wait_no_leftovers(self, case: Case, published: str | None = None, timeout_s: float = 60) -> list[str]:
        deadline = time.monotonic() + timeout_s
        while (left := self.leftovers(case, published)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    def _remote(self, *argv: str) -> str:
        done = subprocess.run(self.sshd.ssh_argv(*argv), capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL)
        return done.stdout
