"""A daemon under load, watched from outside: `zsagent serve` as its own process (its RSS is its own),
its JSON log in a file, /health timed all along, its memory sampled."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import httpx
from agent_harness import SESSION, free_port, write_config
from support import md5sum_file

ZSAGENT = [sys.executable, "-m", "zsagent"]
MiB = 1024 * 1024
HEADERS = {"Authorization": f"OAuth {SESSION}"}
CREATE = "/zstack/v1/images/data-volume-templates/from/volumes/{}"


def rss_bytes(pid: int, field_name: str = "VmRSS") -> int:
    """VmRSS (now) or VmHWM (peak) of a process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field_name} for {pid}")


class Daemon:
    """``zsagent serve --config CONFIG --log-format json`` on 127.0.0.1:PORT, log in ``log_path``."""

    def __init__(self, config: Path, port: int, log_path: Path) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([*ZSAGENT, "serve", "--config", str(config), "--log-format", "json"],
                                     stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the daemon did not start:\n{log_path.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def log_entries(self) -> list[dict]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.startswith("{")]


HEALTH_PROBE = """
import sys, time, httpx
url, interval_s, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
with httpx.Client(base_url=url, timeout=10) as client, open(out, "w", buffering=1) as f:
    while True:
        started = time.perf_counter()
        try:
            answer = client.get("/health")
            status = str(answer.status_code)
        except httpx.HTTPError as e:
            status = type(e).__name__
        f.write(f"{started:.6f} {(time.perf_counter() - started) * 1000:.3f} {status}\\n")
        time.sleep(interval_s)
"""


@dataclass
class Watch:
    """GET /health every ``interval_s`` from a process of its own (so that the load generator's threads
    do not delay the probe), and the daemon's RSS, until stopped.

    ``health_ms``: each answer's latency (``health_at``: when it was asked, perf_counter seconds);
    ``health_failures``: answers that were not 200 (or none); ``rss``: sampled VmRSS in bytes.
    """

    url: str
    pid: int
    out: Path
    interval_s: float = 0.025
    health_ms: list[float] = field(default_factory=list)
    health_at: list[float] = field(default_factory=list)
    health_failures: list[str] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._memory_thread = threading.Thread(target=self._memory, daemon=True)
        self._probe: subprocess.Popen | None = None

    def __enter__(self) -> Watch:
        self._probe = subprocess.Popen([sys.executable, "-c", HEALTH_PROBE, self.url, str(self.interval_s),
                                        str(self.out)])
        while not (self.out.exists() and self.out.read_text()):  # the first answer: the probe runs
            time.sleep(0.01)
        self._memory_thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._memory_thread.join(10)
        if self._probe is not None:
            self._probe.terminate()
            self._probe.wait(10)
        for line in self.out.read_text().splitlines():
            parts = line.split()
            if len(parts) != 3:
                continue  # the last line, cut by the terminate
            self.health_at.append(float(parts[0]))
            self.health_ms.append(float(parts[1]))
            if parts[2] != "200":
                self.health_failures.append(parts[2])

    def _memory(self) -> None:
        while not self._stop.is_set():
            try:
                self.rss.append(rss_bytes(self.pid))
            except (OSError, AssertionError):
                return
            self._stop.wait(0.1)

    def health_summary(self) -> str:
        ms = sorted(self.health_ms)
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        return (f"/health {len(ms)} answers: median {statistics.median(ms):.1f} ms, p99 {p99:.1f} ms, "
                f"max {ms[-1]:.1f} ms")

    @property
    def health_max_ms(self) -> float:
        return max(self.health_ms)

    @property
    def health_p99_ms(self) -> float:
        ms = sorted(self.health_ms)
        return ms[min(len(ms) - 1, int(len(ms) * 0.99))]


def write_toml(path: Path, config: dict) -> Path:
    """A config dict as zsagent.toml: tables of scalars and lists of scalars, arrays of tables (enough
    for the agent's configuration; JSON's strings, numbers and booleans are TOML's too)."""
    lines = []
    for name, value in config.items():
        tables = value if isinstance(value, list) else [value]
        for table in tables:
            lines.append(f"[[{name}]]" if isinstance(value, list) else f"[{name}]")
            lines += [f"{key} = {json.dumps(item)}" for key, item in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class LoadSite:
    """The agent's config on ``rbd_env`` (fake or real Ceph): a Ceph primary storage, a raw file backup
    storage (the default) and a Ceph one; volumes with data; what is left over afterwards."""

    def __init__(self, env, tmp_path, max_jobs: int, chunk_bytes: int = 256 * 1024, depth: int = 4) -> None:
        self.env, self.port = env, free_port()
        self.bs_path = tmp_path / "bs"
        self.bs_path.mkdir()
        self.bs, self.ceph_bs = uuid.uuid4().hex, uuid.uuid4().hex
        self.volumes: list[str] = []
        raw = write_config(tmp_path, env.ceph_config,
                           [{"uuid": uuid.uuid4().hex, "type": "ceph", "pools": [env.src_pool]}],
                           [{"uuid": self.bs, "type": "filesystem", "path": str(self.bs_path), "format": "raw",
                             "default": True},
                            {"uuid": self.ceph_bs, "type": "ceph", "pool": env.dst_pool}],
                           max_jobs=max_jobs, listen=f"127.0.0.1:{self.port}")
        raw["pipeline"] = {"chunk_bytes": chunk_bytes, "depth": depth}
        self.config = write_toml(tmp_path / "zsagent.toml", raw)
        self.dst_before = set(env.rbd.RBD().list(env.dst))

    def volume(self, size: int, data_every: int) -> str:
        vol = uuid.uuid4().hex
        self.env.rbd.RBD().create(self.env.src, vol, size, old_format=False)
        with self.env.rbd.Image(self.env.src, vol) as image:
            block = os.urandom(MiB)
            for offset in range(0, size, data_every):
                image.write(block[: min(MiB, size - offset)], offset)
        self.volumes.append(vol)
        return vol

    def leftovers(self, templates: set[str]) -> list[str]:
        """Anything but ``templates`` (install paths): files, .part images, snapshots on our volumes."""
        env = self.env
        found = [str(p) for p in self.bs_path.rglob("*") if p.is_file() and str(p) not in templates]
        for name in set(env.rbd.RBD().list(env.dst)) - self.dst_before:
            if f"ceph://{env.dst_pool}/{name}" not in templates:
                found.append(f"{env.dst_pool}/{name}")
        for vol in self.volumes:
            with env.rbd.Image(env.src, vol) as image:
                found += [f"{env.src_pool}/{vol}@{s['name']}" for s in image.list_snaps()]
        return found


def create(client: httpx.Client, vol: str, asynchronous: bool, backup_storages: list[str]) -> dict:
    """One create; an async one is polled to its end. Returns the final answer's status and body."""
    headers = dict(HEADERS)
    if asynchronous:
        headers["X-Job-UUID"] = uuid.uuid4().hex
    answer = client.post(CREATE.format(vol), headers=headers, timeout=600, json={
        "params": {"name": f"load-{vol[:6]}", "resourceUuid": uuid.uuid4().hex,
                   "backupStorageUuids": backup_storages}})
    if asynchronous:
        assert answer.status_code == 202, answer.text
        location = answer.json()["location"]
        while (answer := client.get(location, headers=HEADERS, timeout=60)).status_code == 202:
            time.sleep(0.1)  # ZStack's SDK polls at intervals too
    return {"status": answer.status_code, "body": answer.json(), "text": answer.text}


def _ts(entry: dict) -> datetime:
    return datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")


def copy_intervals(entries: list[dict]) -> dict[str, list[tuple[datetime, datetime]]]:
    """volume -> [(start, end)] of each job's copy, from the daemon's log."""
    starts, ends, volume_of = {}, {}, {}
    for e in entries:
        job = e.get("job")
        if not job or not e.get("volume"):
            continue
        if ": copying volume " in e["msg"]:
            starts[job], volume_of[job] = _ts(e), e["volume"]
        elif " ready on " in e["msg"] or " failed: " in e["msg"]:
            ends[job] = _ts(e)
    by_volume = defaultdict(list)
    for job, start in starts.items():
        by_volume[volume_of[job]].append((start, ends[job]))
    return {vol: sorted(spans) for vol, spans in by_volume.items()}


@dataclass
class LoadRun:
    """What one load run measured: the /health watch, the daemon's RSS idle and at its peak (bytes)."""

    watch: Watch
    rss_idle: int
    rss_peak: int

    def summary(self) -> str:
        return (f"32/32 right; {self.watch.health_summary()}; agent RSS idle {self.rss_idle / MiB:.0f} MiB, "
                f"peak {self.rss_peak / MiB:.0f} MiB")


def run_32_creates_on_8_volumes(env, tmp_path: Path) -> LoadRun:
    """32 concurrent creates (16 plain and waiting, 16 async and polled; every fourth also into the Ceph
    backup storage) on 8 volumes of 8 MiB with max_jobs 2 as shipped. Checks that every one completed with
    the right md5, one copy at a time per volume, no "database is locked", nothing left over, /health
    always answered."""
    site = LoadSite(env, tmp_path, max_jobs=2)
    volumes = [site.volume(size=8 * MiB, data_every=2 * MiB) for _ in range(8)]
    daemon = Daemon(site.config, site.port, tmp_path / "daemon.log")
    try:
        rss_idle = rss_bytes(daemon.proc.pid)
        with Watch(daemon.url, daemon.proc.pid, tmp_path / "health.txt") as watch, \
                httpx.Client(base_url=daemon.url) as client, ThreadPoolExecutor(32) as pool:
            plan = [(volumes[i % 8], i % 2 == 1, [site.bs] if i % 4 != 3 else [site.bs, site.ceph_bs])
                    for i in range(32)]
            results = list(pool.map(lambda args: create(client, *args), plan))
        rss_peak = rss_bytes(daemon.proc.pid, "VmHWM")
    finally:
        daemon.stop()
    log = daemon.log_path.read_text()

    assert [r["status"] for r in results] == [200] * 32, [r["text"] for r in results if r["status"] != 200]
    for (vol, _, storages), r in zip(plan, results, strict=True):
        inventory = r["body"]["inventory"]
        assert inventory["url"] == f"volume://{vol}"
        assert len(inventory["backupStorageRefs"]) == len(storages), (r["text"], _failures_in(log))
        file_ref = next(ref for ref in inventory["backupStorageRefs"] if ref["backupStorageUuid"] == site.bs)
        assert md5sum_file(file_ref["installPath"]) == inventory["md5Sum"]
    assert len({r["body"]["inventory"]["uuid"] for r in results}) == 32
    assert "database is locked" not in log
    assert not any("database is locked" in r["text"] for r in results)

    intervals = copy_intervals(daemon.log_entries())
    assert sorted(intervals) == sorted(volumes) and all(len(spans) == 4 for spans in intervals.values())
    for vol, spans in intervals.items():  # per-volume serialization: each copy starts after the previous ended
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end, f"two copies of {vol} overlapped"
    templates = {ref["installPath"] for r in results for ref in r["body"]["inventory"]["backupStorageRefs"]}
    assert site.leftovers(templates) == []
    assert watch.health_failures == []
    return LoadRun(watch, rss_idle, rss_peak)


def _failures_in(log: str) -> list[str]:
    """The daemon's warnings and errors, for an assertion's message."""
    return [line for line in log.splitlines() if '"level": "warning"' in line or '"level": "error"' in line]
