"""The RADOS store (several agents on one cluster) against SQLite, in one run on one throwaway cluster.

    .venv/bin/python bench/store.py [--reps 20] [--per-agent 4] [--rounds 3]

Starts its own Ceph cluster (``scripts/ceph-cluster up``, memstore) and measures:

    overhead     ms per create that the store costs: creates of 1 MiB RBD volumes into a Ceph backup pool,
                 one at a time, through an agent in this process with ``[store] backend = "sqlite"`` and one
                 with ``"rados"``, interleaved; per create the seconds spent inside the store's methods (every
                 call of the agent's Store object, timed) and the wall time of the request (HTTP request to
                 its answer: the copy is the same for both, so the difference of the medians is the
                 RADOS store's and the cross-host volume lock's cost);
    concurrency  three `zsagent serve` daemons sharing the RADOS store against one such daemon: 3 x N creates
                 of distinct 1 MiB volumes sent at once (round robin over the agents), per round the wall time
                 (throughput = creates / s) and every create's latency (p50, p99); rounds alternate.

Every template's md5 is checked against `rbd export | md5sum` of its volume. Results to
bench/results/store-<timestamp>.json; the machine is shared and loaded, so read ratios, not absolutes.
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
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import REPO_ROOT, host_facts, log, run  # noqa: E402

MiB = 1024 * 1024
VOLUME_BYTES = 1 * MiB


def _exports(root: Path) -> dict[str, str]:
    out = run([str(REPO_ROOT / "scripts" / "ceph-cluster"), "up", str(root)], timeout_s=300)
    return dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines() if line.startswith("export "))


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` 0.99: p99) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(fraction * len(ordered) + 0.5)) - 1))]


class StoreTimer:
    """Times every method call of one Store object (set on the instance, so every holder of it goes
    through the timing): ``seconds`` and ``calls`` since the last ``reset``."""

    def __init__(self, store) -> None:
        self.lock = threading.Lock()
        self.reset()
        for name in dir(type(store)):
            method = getattr(store, name)
            if name.startswith("_") or not callable(method) or name in ("close", "describe"):
                continue
            setattr(store, name, self._timed(method))

    def _timed(self, method):
        def call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                with self.lock:
                    self.seconds += time.perf_counter() - started
                    self.calls += 1
        return call

    def reset(self) -> None:
        self.seconds, self.calls = 0.0, 0


def make_volumes(ceph, pool: str, count: int) -> list[tuple[str, str]]:
    """``count`` RBD volumes of VOLUME_BYTES, half random: [(uuid, md5 by `rbd export | md5sum`)]."""
    import rbd

    made = []
    with ceph.connect() as cluster, cluster.open_ioctx(pool) as ioctx:
        for _ in range(count):
            vol = uuid.uuid4().hex
            rbd.RBD().create(ioctx, vol, VOLUME_BYTES, old_format=False)
            with rbd.Image(ioctx, vol) as image:
                image.write(os.urandom(VOLUME_BYTES // 2), 0)
            made.append(vol)
    return [(vol, export_md5(ceph, f"{pool}/{vol}")) for vol in made]


def export_md5(ceph, spec: str) -> str:
    export = subprocess.Popen(["rbd", "export", "--no-progress", spec, "-"], stdout=subprocess.PIPE,
                              env=ceph.cli_env())
    out = subprocess.run(["md5sum"], stdin=export.stdout, capture_output=True, text=True, check=True).stdout
    export.stdout.close()
    if export.wait() != 0:
        raise RuntimeError(f"rbd export {spec} failed")
    return out.split()[0]


def bench_overhead(args, root: Path, ceph, pools) -> dict:
    """One agent per backend in this process; creates one at a time, interleaved."""
    from agent_harness import running_agent, write_config

    ps = {"uuid": uuid.uuid4().hex, "type": "ceph", "pools": [pools.primary]}
    bs = {"uuid": uuid.uuid4().hex, "type": "ceph", "pool": pools.backup, "default": True}
    ceph_settings = {"backend": "rados", "conf": ceph.conf, "keyring": ceph.keyring}
    configs = {}
    for backend in ("sqlite", "rados"):
        tmp = root / f"overhead-{backend}"
        tmp.mkdir()
        raw = write_config(tmp, ceph_settings, [ps], [bs])
        raw["virt"] = {"enabled": False}
        if backend == "rados":
            raw["store"] = {"backend": "rados", "pool": pools.store, "namespace": f"bench-{uuid.uuid4().hex[:8]}"}
            raw["cluster"] = {"agent_id": f"bench-overhead-{os.getpid()}"}
        configs[backend] = raw
    volumes = make_volumes(ceph, pools.primary, 2 * args.reps + 2)  # 2 for the warm-up
    runs = []
    with ExitStack() as stack:
        agents = {backend: stack.enter_context(running_agent(raw)) for backend, raw in configs.items()}
        timers = {backend: StoreTimer(agent.agent.store) for backend, agent in agents.items()}
        for agent in agents.values():  # warm up: connections, first-call imports
            vol, _ = volumes.pop()
            assert agent.post_create(vol).status_code == 200
        for rep in range(args.reps):
            for backend in (("sqlite", "rados") if rep % 2 == 0 else ("rados", "sqlite")):
                vol, md5 = volumes.pop()
                image = uuid.uuid4().hex
                timers[backend].reset()
                started = time.perf_counter()
                answer = agents[backend].post_create(vol, {"resourceUuid": image})
                wall_s = time.perf_counter() - started
                if answer.status_code != 200:
                    raise RuntimeError(f"{backend}: {answer.text}")
                inventory = answer.json()["inventory"]
                if inventory["md5Sum"] != md5 or export_md5(ceph, f"{pools.backup}/{image}") != md5:
                    raise RuntimeError(f"{backend}: md5 differs")
                runs.append({"rep": rep, "backend": backend, "wall_s": wall_s, "store_s": timers[backend].seconds,
                             "store_calls": timers[backend].calls})
    summary = {}
    for backend in ("sqlite", "rados"):
        mine = [r for r in runs if r["backend"] == backend]
        summary[backend] = {"wall_ms_median": 1000 * statistics.median(r["wall_s"] for r in mine),
                            "store_ms_median": 1000 * statistics.median(r["store_s"] for r in mine),
                            "store_calls_median": statistics.median(r["store_calls"] for r in mine)}
    summary["rados_minus_sqlite_wall_ms"] = summary["rados"]["wall_ms_median"] - summary["sqlite"]["wall_ms_median"]
    return {"summary": summary, "runs": runs}


def bench_concurrency(args, root: Path, ceph, pools) -> dict:
    """Three daemons against one, all on the RADOS store; rounds alternate."""
    from multi_agent import Fleet

    fleets = {"3 agents": Fleet(root / "three", ceph, pools, names=("A", "B", "C")),
              "1 agent": Fleet(root / "one", ceph, pools, names=("S",))}
    total = 3 * args.per_agent
    runs = []
    try:
        for fleet in fleets.values():
            fleet.start()
        for rnd in range(args.rounds):
            for name in (list(fleets) if rnd % 2 == 0 else list(fleets)[::-1]):
                fleet = fleets[name]
                agents = list(fleet.agents.values())
                volumes = make_volumes(ceph, pools.primary, total)
                latencies: list[float] = []

                def create(i: int, volume: tuple[str, str], fleet=fleet, agents=agents, latencies=latencies) -> str:
                    image = uuid.uuid4().hex
                    started = time.perf_counter()
                    answer = agents[i % len(agents)].create(volume[0], image, [fleet.ceph_bs], timeout_s=600)
                    latencies.append(time.perf_counter() - started)
                    if answer.status_code != 200 or answer.json()["inventory"]["md5Sum"] != volume[1]:
                        raise RuntimeError(f"create failed: {answer.status_code} {answer.text[:500]}")
                    return image

                started = time.perf_counter()
                with ThreadPoolExecutor(total) as pool:
                    images = list(pool.map(create, range(total), volumes))
                wall_s = time.perf_counter() - started
                for image, (_, md5) in zip(images, volumes, strict=True):
                    if export_md5(ceph, f"{pools.backup}/{image}") != md5:
                        raise RuntimeError("md5 differs")
                runs.append({"round": rnd, "fleet": name, "creates": total, "wall_s": wall_s,
                             "creates_per_s": total / wall_s, "p50_s": percentile(latencies, 0.5),
                             "p99_s": percentile(latencies, 0.99)})
                log(f"round {rnd} {name}: {total} creates in {wall_s:.2f} s, p99 {runs[-1]['p99_s']:.2f} s")
    finally:
        for fleet in fleets.values():
            fleet.close()
    summary = {}
    for name in fleets:
        mine = [r for r in runs if r["fleet"] == name]
        summary[name] = {"creates_per_s_median": statistics.median(r["creates_per_s"] for r in mine),
                         "p99_s_median": statistics.median(r["p99_s"] for r in mine),
                         "p50_s_median": statistics.median(r["p50_s"] for r in mine)}
    by_round = {r["round"]: {} for r in runs}
    for r in runs:
        by_round[r["round"]][r["fleet"]] = r
    summary["throughput_ratio"] = statistics.median(r["3 agents"]["creates_per_s"] / r["1 agent"]["creates_per_s"]
                                                    for r in by_round.values())
    summary["p99_ratio"] = statistics.median(r["3 agents"]["p99_s"] / r["1 agent"]["p99_s"] for r in by_round.values())
    return {"summary": summary, "runs": runs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=20, help="creates per backend for the overhead")
    parser.add_argument("--per-agent", type=int, default=4, help="N: concurrent creates per agent of the three")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from conftest import CephCluster
    from multi_agent import FleetPools

    root = Path(tempfile.mkdtemp(prefix="zsagent-bench-store-", dir="/var/tmp"))
    facts = host_facts()
    ceph_dir = root / "ceph"
    try:
        exports = _exports(ceph_dir)
        ceph = CephCluster(exports["ZSAGENT_TEST_CEPH_CONF"], exports["ZSAGENT_TEST_CEPH_KEYRING"])
        pools = FleetPools("zs-bench-ps", "zs-bench-bs", "zs-bench-store")
        for pool in (pools.primary, pools.backup, pools.store):
            ceph.create_rbd_pool(pool)
        log(f"overhead: {args.reps} creates of 1 MiB per store backend, one at a time")
        overhead = bench_overhead(args, root, ceph, pools)
        log(f"concurrency: {3 * args.per_agent} concurrent creates, 3 agents vs 1, {args.rounds} rounds")
        concurrency = bench_concurrency(args, root, ceph, pools)
    finally:
        subprocess.run([str(REPO_ROOT / "scripts" / "ceph-cluster"), "down", str(ceph_dir)], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    out = REPO_ROOT / "bench" / "results" / f"store-{stamp}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"kind": "store", "time": stamp, "volume_bytes": VOLUME_BYTES, "reps": args.reps,
                               "per_agent": args.per_agent, "rounds": args.rounds, "host": facts,
                               "overhead": overhead, "concurrency": concurrency}, indent=1) + "\n")
    o, c = overhead["summary"], concurrency["summary"]
    print(f"{'store':<8} {'request ms':>11} {'store ms':>9} {'store calls':>12}   (1 MiB creates, one at a time)")
    for backend in ("sqlite", "rados"):
        s = o[backend]
        print(f"{backend:<8} {s['wall_ms_median']:>11.1f} {s['store_ms_median']:>9.1f} "
              f"{s['store_calls_median']:>12.0f}")
    print(f"RADOS store overhead per create: {o['rados_minus_sqlite_wall_ms']:+.1f} ms (median request time)")
    print(f"{'fleet':<9} {'creates/s':>10} {'p50 s':>7} {'p99 s':>7}   ({3 * args.per_agent} concurrent 1 MiB creates)")
    for name in ("1 agent", "3 agents"):
        s = c[name]
        print(f"{name:<9} {s['creates_per_s_median']:>10.2f} {s['p50_s_median']:>7.2f} {s['p99_s_median']:>7.2f}")
    print(f"3 agents / 1 agent: throughput {c['throughput_ratio']:.2f}x, p99 {c['p99_ratio']:.2f}x")
    log(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
