"""Templates through `zsagent front` against ZStack's own agent commands, on the same data, in one run.

    .venv/bin/python bench/front.py [--reps 3] [--size-mib 512]

Starts a throwaway Ceph cluster (``scripts/ceph-cluster up``, memstore) and sshd (``scripts/sshd up``),
makes one volume (half of it written with random data, the rest sparse) as an RBD image with a snapshot
and as a qcow2 file in ZStack's local-storage layout, and times, interleaved per repetition:

    ceph-sftp/zstack   what cephagent.py ``sftp_upload`` runs: ``rbd export <snap> - | ssh host 'cat > path'``
    ceph-sftp/front    the MN's ``/ceph/primarystorage/sftpbackupstorage/upload`` through the front (MD5 included)
    local-sftp/zstack  what kvmagent runs: ``qemu-img convert -O qcow2`` to templateWorkspace, then ``scp``
    local-sftp/front   ``/localstorage/volume/createtemplate`` + ``/localstorage/sftp/upload`` through the front

The front runs in this process; each of its commands is POSTed as the MN does and timed until its
callback arrives. ZStack's shell commands are run as argv pipelines (no shell). Outputs are checked:
the raw upload's md5sum equals ``rbd export | md5sum`` and the front's MD5 file; the qcow2 uploads are
``qemu-img compare``d with the volume. Ratios: ZStack's seconds / the front's (>1: the front is faster),
median of the per-repetition ratios; results to bench/results/front-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO_ROOT, host_facts, log, run  # noqa: E402

MiB = 1024 * 1024
ACCOUNT = "36c27e8ff05c4780bf6d2fa65700f22e"
PAIRS = (("ceph-sftp/zstack", "ceph-sftp/front"), ("local-sftp/zstack", "local-sftp/front"))


def _exports(script: str, root: Path) -> dict[str, str]:
    out = run([str(REPO_ROOT / "scripts" / script), "up", str(root)], timeout_s=300)
    return dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines() if line.startswith("export "))


class Callbacks:
    """The MN's callback endpoint: records when each taskuuid's result arrived."""

    def __init__(self) -> None:
        self.results: dict[str, tuple[float, dict]] = {}
        self.cond = threading.Condition()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer.cond:
                    outer.results[self.headers["taskuuid"]] = (time.perf_counter(), json.loads(body))
                    outer.cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/zstack/asyncrest/callback"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def call(self, agent: str, path: str, cmd: dict) -> dict:
        task = uuid.uuid4().hex
        answer = httpx.post(agent + path, content=json.dumps(cmd, separators=(",", ":")), timeout=300,
                            headers={"taskuuid": task, "callbackurl": self.url,
                                     "Content-Type": "application/json; charset=utf-8"})
        answer.raise_for_status()
        with self.cond:
            while task not in self.results:
                self.cond.wait(1)
            rsp = self.results.pop(task)[1]
        if not rsp.get("success"):
            raise RuntimeError(f"{path}: {rsp.get('error')}")
        return rsp


def _ssh(sshd: dict[str, str]) -> list[str]:
    return ["-F", "/dev/null", "-i", sshd["ZSAGENT_TEST_SSHD_KEY"], "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={sshd['ZSAGENT_TEST_SSHD_KNOWN_HOSTS']}", "-o", "StrictHostKeyChecking=yes"]


def zstack_ceph_sftp(ceph_env: dict, snap: str, sshd: dict, path: str) -> None:
    """cephagent.py sftp_upload l.1136-1152: ``rbd export - | ssh 'cat > path'`` (mkdir first)."""
    dest = f"{sshd['ZSAGENT_TEST_SSHD_USER']}@{sshd['ZSAGENT_TEST_SSHD_HOST']}"
    port = ["-p", sshd["ZSAGENT_TEST_SSHD_PORT"]]
    run(["ssh", *_ssh(sshd), *port, dest, "mkdir", "-p", os.path.dirname(path)])
    export = subprocess.Popen(["rbd", "export", "--no-progress", snap, "-"], stdout=subprocess.PIPE, env=ceph_env)
    cat = subprocess.run(["ssh", *_ssh(sshd), *port, dest, f"cat > {path}"], stdin=export.stdout, check=True)
    export.stdout.close()
    if export.wait() != 0 or cat.returncode != 0:
        raise RuntimeError("rbd export | ssh cat failed")


def _export_md5(spec: str, env: dict) -> str:
    export = subprocess.Popen(["rbd", "export", "--no-progress", spec, "-"], stdout=subprocess.PIPE, env=env)
    out = subprocess.run(["md5sum"], stdin=export.stdout, capture_output=True, text=True, check=True).stdout
    export.stdout.close()
    if export.wait() != 0:
        raise RuntimeError(f"rbd export {spec} failed")
    return out.split()[0]


def zstack_local_sftp(volume: Path, temp: Path, sshd: dict, path: str) -> None:
    """localstorage.py create_template_from_volume (qemu-img convert) then upload_to_sftp (scp_upload)."""
    temp.parent.mkdir(parents=True, exist_ok=True)
    run(["qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", str(volume), str(temp)], timeout_s=1800)
    dest = f"{sshd['ZSAGENT_TEST_SSHD_USER']}@{sshd['ZSAGENT_TEST_SSHD_HOST']}"
    run(["ssh", *_ssh(sshd), "-p", sshd["ZSAGENT_TEST_SSHD_PORT"], dest, "mkdir", "-p", os.path.dirname(path)])
    run(["scp", *_ssh(sshd), "-P", sshd["ZSAGENT_TEST_SSHD_PORT"], str(temp), f"{dest}:{path}"], timeout_s=1800)
    shutil.rmtree(temp.parent)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=512)
    args = parser.parse_args()
    size = args.size_mib * MiB
    root = Path(tempfile.mkdtemp(prefix="zsagent-bench-front-", dir="/var/tmp"))
    facts = host_facts()
    runs: list[dict] = []
    ceph_dir, sshd_dir = root / "ceph", root / "sshd"
    try:
        ceph = _exports("ceph-cluster", ceph_dir)
        sshd = _exports("sshd", sshd_dir)
        runs = _bench(args, size, root, ceph, sshd)
    finally:
        for script, where in (("sshd", sshd_dir), ("ceph-cluster", ceph_dir)):
            subprocess.run([str(REPO_ROOT / "scripts" / script), "down", str(where)], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
    summary = {}
    for baseline, ours in PAIRS:
        base = [r["seconds"] for r in runs if r["method"] == baseline]
        front = [r["seconds"] for r in runs if r["method"] == ours]
        summary[ours] = {"median_s": statistics.median(front), "baseline_median_s": statistics.median(base),
                         "ratio": statistics.median(b / f for b, f in zip(base, front, strict=True))}
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out = REPO_ROOT / "bench" / "results" / f"front-{stamp}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"kind": "front", "time": stamp, "size_bytes": size, "reps": args.reps,
                               "host": facts, "summary": summary, "runs": runs}, indent=1) + "\n")
    print(f"{'path':<12} {'ZStack s':>9} {'front s':>8} {'ratio':>6}   ({args.size_mib} MiB volume, half written)")
    for _, ours in PAIRS:
        s = summary[ours]
        print(f"{ours.split('/')[0]:<12} {s['baseline_median_s']:>9.2f} {s['median_s']:>8.2f} {s['ratio']:>5.2f}x")
    log(f"results in {out}")
    return 0


def _bench(args, size: int, root: Path, ceph: dict, sshd: dict) -> list[dict]:
    from zsagent.config import parse_config
    from zsagent.front.server import FrontAgent

    ceph_env = {**os.environ, "CEPH_CONF": ceph["ZSAGENT_TEST_CEPH_CONF"],
                "CEPH_ARGS": f"--id admin --keyring {ceph['ZSAGENT_TEST_CEPH_KEYRING']}"}
    pool = "zs-bench-front"
    run(["ceph", "osd", "pool", "create", pool], env=ceph_env)
    run(["rbd", "pool", "init", pool], env=ceph_env)
    vol, snap = uuid.uuid4().hex, uuid.uuid4().hex
    ps = root / "ps"
    raw = root / "volume.raw"
    log(f"writing a {args.size_mib} MiB volume, every other 4 MiB random")
    with open(raw, "wb") as f:
        f.truncate(size)
        for at in range(0, size, 8 * MiB):
            f.seek(at)
            f.write(os.urandom(4 * MiB))
    run(["rbd", "import", "--no-progress", str(raw), f"{pool}/{vol}"], env=ceph_env, timeout_s=1800)
    run(["rbd", "snap", "create", f"{pool}/{vol}@{snap}"], env=ceph_env)
    qcow2 = ps / "dataVolumes" / f"acct-{ACCOUNT}" / f"vol-{vol}" / f"{vol}.qcow2"
    qcow2.parent.mkdir(parents=True)
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)], timeout_s=1800)
    raw.unlink()
    known = Path(sshd["ZSAGENT_TEST_SSHD_KNOWN_HOSTS"])
    key = Path(sshd["ZSAGENT_TEST_SSHD_KEY"]).read_text()
    callbacks = Callbacks()
    fronts = {}
    for kind, primary in (("ceph", {"uuid": uuid.uuid4().hex, "type": "ceph", "pools": [pool]}),
                          ("kvm", {"uuid": uuid.uuid4().hex, "type": "filesystem", "path": str(ps)})):
        config = parse_config({
            "agent": {"data_dir": str(root / f"data-{kind}")}, "virt": {"enabled": False},
            "ceph": {"backend": "rados", "conf": ceph["ZSAGENT_TEST_CEPH_CONF"],
                     "keyring": ceph["ZSAGENT_TEST_CEPH_KEYRING"]},
            "front": {"fronts": kind, "listen": "127.0.0.1:0", "upstream_url": "http://127.0.0.1:9",
                      "known_hosts": str(known)},
            "primary_storage": [primary]}, "bench")
        agent = FrontAgent(config)
        agent.server.start()
        fronts[kind] = agent
    base = f"/tmp/zsagent-bench-front-bs-{uuid.uuid4().hex[:8]}"
    creds = {"hostname": sshd["ZSAGENT_TEST_SSHD_HOST"], "username": sshd["ZSAGENT_TEST_SSHD_USER"],
             "sshKey": key, "sshPort": int(sshd["ZSAGENT_TEST_SSHD_PORT"])}
    runs = []
    try:
        export_md5 = _export_md5(f"{pool}/{vol}@{snap}", ceph_env)
        for rep in range(args.reps):
            for method in [m for pair in PAIRS for m in (pair if rep % 2 == 0 else pair[::-1])]:
                image = uuid.uuid4().hex
                suffix = "volume"
                path = f"{base}/dataVolumeTemplates/acct-{ACCOUNT}/{image}/{image}.{suffix}"
                temp = ps / "templateWorkspace" / f"image-{image}" / f"{image}.qcow2"
                run(["sync"])
                start = time.perf_counter()
                if method == "ceph-sftp/zstack":
                    zstack_ceph_sftp(ceph_env, f"{pool}/{vol}@{snap}", sshd, path)
                elif method == "ceph-sftp/front":
                    callbacks.call(fronts["ceph"].server.url, "/ceph/primarystorage/sftpbackupstorage/upload",
                                   {"primaryStorageInstallPath": f"ceph://{pool}/{vol}@{snap}",
                                    "backupStorageInstallPath": path, **creds})
                elif method == "local-sftp/zstack":
                    zstack_local_sftp(qcow2, temp, sshd, path)
                else:
                    url = fronts["kvm"].server.url
                    callbacks.call(url, "/localstorage/volume/createtemplate",
                                   {"installPath": str(temp), "volumePath": str(qcow2)})
                    callbacks.call(url, "/localstorage/sftp/upload", {"primaryStorageInstallPath": str(temp),
                                                                       "backupStorageInstallPath": path, **creds})
                seconds = time.perf_counter() - start
                if method.startswith("ceph"):
                    assert run(["md5sum", path]).split()[0] == export_md5, f"{method}: md5 differs"
                else:
                    run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(qcow2), path], timeout_s=1800)
                runs.append({"rep": rep, "method": method, "seconds": seconds})
                log(f"rep {rep} {method}: {seconds:.2f} s")
                shutil.rmtree(os.path.dirname(path), ignore_errors=True)  # the sshd runs on this host
    finally:
        for agent in fronts.values():
            agent.close()
        shutil.rmtree(base, ignore_errors=True)
    return runs


if __name__ == "__main__":
    sys.exit(main())
