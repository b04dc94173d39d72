#!/usr/bin/env python3
"""zsagent benchmark: our copy pipeline against the tools users run today, on the same data, in one run.

    make bench [BENCH_ARGS="--scale 0.25 --reps 3"]      the table (and bench/results/<timestamp>.json)
    make bench SWEEP=1                                   chunk size x depth sweep -> a [pipeline] snippet

Starts its own Ceph cluster (one mon, one bluestore OSD on a sparse file) in a temp dir and always stops
it. Every measured run of ours is a fresh process (bench/worker.py), so peak RSS is per copy. Runs are
interleaved: each repetition runs every tool once, in an order rotated per repetition, and ratios are
taken between runs of the same repetition (the machine may be busy with other work).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402
import tools  # noqa: E402
from common import BENCH_DIR, PYTHON, BenchError, GiB, MiB, host_facts, log  # noqa: E402
from setup_env import (  # noqa: E402
    BACKUP_POOL,
    SOURCE_POOL,
    Volume,
    Workspace,
    create_qcow2_chain,
    create_rbd_volume,
)
from targets import LIMITS, chosen_md5_ceiling  # noqa: E402

WORKER = str(Path(__file__).resolve().parent / "worker.py")

T_OURS = "ours (copy)"
T_OURS_SERVER = "ours (copy, server-side object copies)"
T_FLATTEN = "ours (flatten mode)"
T_HASH_ONLY = "ours (hash only, no sink: diagnostic)"
T_ZSTACK = "zstack: deep cp + export|md5sum"
T_SHELL = "shell: export|tee(md5sum)|import"
T_NBD_READ = "nbdcopy read -> null: (no md5, no write)"
T_CEILING = "md5 ceiling (hashlib)"
T_CEILING_NATIVE = "md5 ceiling (native)"
T_OURS_RAW = "ours (-> raw file)"
T_OURS_QCOW2 = "ours (-> qcow2 stream, md5 of the file)"
T_OURS_QEMU_IMG = "ours (qemu-img engine -> qcow2, md5 of the file)"  # no longer used by the agent for
# uncompressed templates (zsagent.storages.templates); measured on as the evidence for that
T_OURS_QCOW2_NBD = "ours via qemu-nbd (-> qcow2 stream: the reader before)"
T_OURS_RAW_NBD = "ours via qemu-nbd (-> raw file: the reader before)"
T_OURS_ZSTD = "ours (qemu-img engine -> qcow2 zstd)"
T_QEMU_IMG = "qemu-img convert -O qcow2 + md5sum"
T_QEMU_IMG_RAW = "qemu-img convert -O raw + md5sum"
T_NBDCOPY = "nbdcopy (no md5)"


def worker(spec: dict, env: dict[str, str], timeout_s: float = 1800) -> dict:
    import subprocess

    proc = subprocess.run([PYTHON, WORKER, json.dumps(spec)], env=env, capture_output=True, text=True,
                          timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise BenchError(f"worker {spec['kind']} failed: {proc.stderr.strip()[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def osd_cpu_s(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class Bench:
    def __init__(self, args: argparse.Namespace, ws: Workspace, facts: dict) -> None:
        self.args = args
        self.ws = ws
        self.cluster = ws.cluster
        self.env = dict(self.cluster.env)
        # Every worker uses the implementation the agent would choose here (host_facts measured it), given
        # through the override so that no worker measures again inside its timed run.
        chosen = facts["native_md5"].get("choice", "hashlib")
        self.env["ZSAGENT_MD5"] = chosen  # by name: "native" alone would mean the extension's first kernel
        self.volumes: dict[str, Volume] = {}
        self.results: dict[str, dict[str, list[dict]]] = {}
        self.concurrent_runs: list[dict] = []
        self.counter = 0
        from zsagent.copy import md5 as md5_mod
        from zsagent.copy.pipeline import PipelineConfig

        self.native = md5_mod.native is not None and not args.no_native
        defaults = PipelineConfig()
        self.chunk_bytes = args.chunk_bytes or defaults.chunk_bytes
        self.depth = args.depth or defaults.depth
        self.have_qcow2_sink = (BENCH_DIR.parent / "zsagent" / "sinks" / "qcow2_stream.py").exists()

    def unique(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}-{os.getpid()}-{self.counter}"

    # -- setup ------------------------------------------------------------------------------------------

    def make_volumes(self, names: list[str]) -> None:
        scale = self.args.scale
        shapes = {"dense": (2 * GiB, 1.0), "half": (2 * GiB, 0.5), "sparse10": (4 * GiB, 0.1)}
        for seed, name in enumerate(names, start=1):
            start = time.perf_counter()
            if name == "chain":
                size = _scaled(2 * GiB, scale)
                vol = create_qcow2_chain(self.ws.files, size, seed)
            else:
                size, fraction = shapes[name]
                vol = create_rbd_volume(self.cluster, name, _scaled(size, scale), fraction, seed)
            self.volumes[name] = vol
            log(f"volume {name}: {vol.size / MiB:.0f} MiB, {vol.allocated / MiB:.0f} MiB allocated "
                f"({time.perf_counter() - start:.1f} s to create)")

    # -- cases --------------------------------------------------------------------------------------------

    def rbd_spec(self, vol: Volume, mode: str, chunk_bytes: int | None = None, depth: int | None = None) -> dict:
        return {"kind": "rbd", "conf": self.cluster.conf, "keyring": self.cluster.keyring, "pool": SOURCE_POOL,
                "volume": vol.name, "snapshot": self.unique("zs-snap"), "backup_pool": BACKUP_POOL,
                "dest": self.unique(f"tpl-{vol.name}"), "mode": mode,
                "chunk_bytes": chunk_bytes or self.chunk_bytes, "depth": depth or self.depth}

    def file_spec(self, vol: Volume, sink: str, reader: str = "direct") -> dict:
        suffix = "raw" if sink == "raw" else "qcow2"
        return {"kind": "file", "path": vol.path, "format": "qcow2", "sink": sink, "reader": reader,
                "dest": str(self.ws.files / f"{self.unique('tpl')}.{suffix}"),
                "chunk_bytes": self.chunk_bytes, "depth": self.depth}

    def cases(self, vol: Volume) -> dict[str, callable]:
        """What runs on ``vol`` in every repetition."""
        env = self.env
        spec_src = f"{SOURCE_POOL}/{vol.name}"
        dense = vol.name == "dense"
        out: dict[str, callable] = {}
        if vol.kind == "rbd":
            out[T_OURS] = lambda: worker(self.rbd_spec(vol, "copy"), env)
            # the same copy with [pipeline] rbd_server_side_copy = true: the OSDs copy the objects
            out[T_OURS_SERVER] = lambda: worker(self.rbd_spec(vol, "copy-server"), env)
            out[T_ZSTACK] = lambda: tools.zstack_rbd(env, spec_src, self.unique("zs-snap"),
                                                     f"{BACKUP_POOL}/{self.unique('zs-dst')}")
            out[T_SHELL] = lambda: tools.shell_rbd(env, spec_src, self.unique("zs-snap"),
                                                   f"{BACKUP_POOL}/{self.unique('sh-dst')}")
            if self.args.nbdcopy_rbd:
                out[T_NBD_READ] = lambda: tools.nbdcopy_rbd_read(env, self.cluster.conf, spec_src,
                                                                 self.unique("zs-snap"))
        else:
            out[T_OURS_RAW] = lambda: worker(self.file_spec(vol, "raw"), env)
            if self.have_qcow2_sink:
                out[T_OURS_QCOW2] = lambda: worker(self.file_spec(vol, "qcow2"), env)
            if self.args.qemu_nbd_reader:
                out[T_OURS_RAW_NBD] = lambda: worker(self.file_spec(vol, "raw", "qemu-nbd"), env)
                out[T_OURS_QCOW2_NBD] = lambda: worker(self.file_spec(vol, "qcow2", "qemu-nbd"), env)
            out[T_OURS_QEMU_IMG] = lambda: worker(self.file_spec(vol, "qemu-img"), env)
            out[T_OURS_ZSTD] = lambda: worker(self.file_spec(vol, "qemu-img-zstd"), env)
            out[T_QEMU_IMG] = lambda: tools.qemu_img_qcow2_md5(vol.path, str(self.ws.files / "qemu-img-out.qcow2"))
            out[T_QEMU_IMG_RAW] = lambda: tools.qemu_img_raw_md5(vol.path, str(self.ws.files / "qemu-img-out.raw"))
            out[T_NBDCOPY] = lambda: tools.nbdcopy_file(vol.path, "qcow2", str(self.ws.files / "nbdcopy-out.raw"),
                                                        env)
        out[T_CEILING] = lambda: worker({"kind": "ceiling", "bytes": vol.size, "impl": "hashlib"}, env)
        if self.native and (dense or self.args.all_variants):
            out[T_CEILING_NATIVE] = lambda: worker({"kind": "ceiling", "bytes": vol.size, "impl": "native"}, env)
        return out

    def once_cases(self, vol: Volume) -> dict[str, callable]:
        """What runs on ``vol`` in the first repetition only."""
        if vol.kind != "rbd" or not (vol.name == "dense" or self.args.all_variants):
            return {}
        return {T_FLATTEN: lambda: worker(self.rbd_spec(vol, "flatten"), self.env),
                T_HASH_ONLY: lambda: worker(self.rbd_spec(vol, "hash-only"), self.env)}

    def concurrent_jobs(self) -> list[dict]:
        jobs = []
        for vol in self.volumes.values():
            jobs.append(self.rbd_spec(vol, "copy") if vol.kind == "rbd" else self.file_spec(vol, "raw"))
        return jobs[:4]

    # -- running ------------------------------------------------------------------------------------------

    def measure(self, volume: str, tool: str, fn) -> dict:
        """Run one case; add its wall time, the CPU time of the processes it started (our worker, or the
        baseline's rbd/md5sum/qemu-img...) and of the OSD, and the load average."""
        pid = self.cluster.osd_pid()
        osd_before = osd_cpu_s(pid)
        children_before = children_cpu_s()
        start = time.perf_counter()
        result = fn()
        result["wall_s"] = time.perf_counter() - start
        result["client_cpu_s"] = children_cpu_s() - children_before
        result["osd_cpu_s"] = osd_cpu_s(pid) - osd_before
        result["loadavg"] = os.getloadavg()[0]
        if volume in self.volumes:
            self.results.setdefault(volume, {}).setdefault(tool, []).append(result)
        rate = self.volumes[volume].size / result["seconds"] / MiB if volume in self.volumes else 0
        log(f"  {volume:9} {tool:48} {result['seconds']:7.2f} s  {rate:6.0f} MiB/s  "
            f"cpu {result['client_cpu_s']:5.1f}+{result['osd_cpu_s']:4.1f} osd  (load {result['loadavg']:.1f})")
        return result

    def main_loop(self) -> None:
        names = list(self.volumes)
        for rep in range(self.args.reps):
            log(f"repetition {rep + 1}/{self.args.reps}")
            order = names[rep % len(names):] + names[:rep % len(names)]
            for name in order:
                vol = self.volumes[name]
                cases = list(self.cases(vol).items())
                shift = rep % len(cases)
                for tool, fn in cases[shift:] + cases[:shift]:
                    self.measure(name, tool, fn)
                if rep == 0:
                    for tool, fn in self.once_cases(vol).items():
                        self.measure(name, tool, fn)
            if self.args.concurrent and len(self.volumes) >= 4 and rep in concurrent_reps(self.args.reps):
                jobs = self.concurrent_jobs()
                result = self.measure("(4 at once)", "4 concurrent copies",
                                      lambda jobs=jobs: worker({"kind": "many", "jobs": jobs}, self.env))
                result["rep"] = rep
                self.concurrent_runs.append(result)

    def concurrent_summary(self) -> dict | None:
        if not self.concurrent_runs:
            return None
        names = list(self.volumes)[:4]
        tool_of = {n: (T_OURS if self.volumes[n].kind == "rbd" else T_OURS_RAW) for n in names}
        ratios, sequential, together = [], [], []
        for run in self.concurrent_runs:
            rep = run["rep"]
            singles = [self.results[n][tool_of[n]][rep]["seconds"] for n in names]
            sequential.append(sum(singles))
            together.append(run["seconds"])
            ratios.append(sum(singles) / run["seconds"])
        total = sum(self.volumes[n].size for n in names)
        import statistics

        cpu_one_at_a_time = statistics.median(
            sum(self.results[n][tool_of[n]][run["rep"]]["client_cpu_s"] + self.results[n][tool_of[n]][run["rep"]]
                ["osd_cpu_s"] for n in names) for run in self.concurrent_runs)
        cpu_together = statistics.median(r["client_cpu_s"] + r["osd_cpu_s"] for r in self.concurrent_runs)
        # The agent's own CPU (copy windows, OSD and qemu-nbd apart): together vs the four alone, same repetition.
        agent_ratios, agent_together, agent_alone, stall_shares, stalls = [], [], [], [], []
        for run in self.concurrent_runs:
            alone = [self.results[n][tool_of[n]][run["rep"]].get("copy_cpu_s") for n in names]
            if run.get("copy_cpu_s") and all(alone):
                agent_ratios.append(run["copy_cpu_s"] / sum(alone))
                agent_together.append(run["copy_cpu_s"])
                agent_alone.append(sum(alone))
            job_stalls = [job.get("stalls_s", 0.0) for job in run["jobs"]]
            stalls.append(max(job_stalls))
            stall_shares.append(max(job_stalls) / run["seconds"])
        agent = {}
        if agent_ratios:
            agent = {"agent_cpu_ratio": statistics.median(agent_ratios),
                     "agent_cpu_s_per_gib_together": statistics.median(agent_together) / (total / GiB),
                     "agent_cpu_s_per_gib_one_at_a_time": statistics.median(agent_alone) / (total / GiB),
                     "longest_stall_s": max(stalls), "stall_share": max(stall_shares)}
        return {**agent, "volumes": names, "runs": self.concurrent_runs, "speedup": statistics.median(ratios),
                "cpu_s_one_at_a_time": cpu_one_at_a_time, "cpu_s_together": cpu_together,
                "sequential_s": statistics.median(sequential), "together_s": statistics.median(together),
                "aggregate_mib_s": total / statistics.median(together) / MiB,
                "sequential_mib_s": total / statistics.median(sequential) / MiB,
                "peak_rss_mib": max(r["hwm_kib"] for r in self.concurrent_runs) / 1024}

    # -- sweep ------------------------------------------------------------------------------------------

    def sweep(self) -> dict:
        vol = self.volumes["dense"]
        chunks = [int(c * MiB) for c in self.args.sweep_chunks_mib]
        depths = self.args.sweep_depths
        grid = [(c, d) for c in chunks for d in depths if c * d <= self.args.sweep_max_inflight_mib * MiB]
        runs: dict[tuple[int, int], list[dict]] = {}
        for sweep_pass in range(self.args.sweep_passes):
            order = grid if sweep_pass % 2 == 0 else list(reversed(grid))
            for chunk, depth in order:
                spec = self.rbd_spec(vol, "copy", chunk_bytes=chunk, depth=depth)
                result = worker(spec, self.env)
                runs.setdefault((chunk, depth), []).append(result)
                log(f"  sweep chunk {chunk // 1024:6d} KiB depth {depth:3d}: {result['seconds']:6.2f} s "
                    f"{vol.size / result['seconds'] / MiB:6.0f} MiB/s  RSS {result['hwm_kib'] / 1024:.0f} MiB")
        import statistics

        table = []
        for (chunk, depth), rs in runs.items():
            table.append({"chunk_bytes": chunk, "depth": depth,
                          "seconds_median": statistics.median(r["seconds"] for r in rs),
                          "seconds_min": min(r["seconds"] for r in rs),
                          "peak_rss_mib": max(r["hwm_kib"] for r in rs) / 1024})
        eligible = [t for t in table if t["peak_rss_mib"] < LIMITS["peak_rss_mib"]] or table
        best = min(eligible, key=lambda t: t["seconds_median"])
        return {"volume": "dense", "size": vol.size, "grid": table, "best": best}


def children_cpu_s() -> float:
    """user+sys CPU of every child process waited for so far (workers, rbd, md5sum, qemu-img, ...)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def concurrent_reps(reps: int) -> set[int]:
    """The repetitions that also run the 4 concurrent copies: the first and the last (it is the longest)."""
    return {0, reps - 1}


def _scaled(size: int, scale: float) -> int:
    objects = max(1, round(size * scale / (4 * MiB)))
    return objects * 4 * MiB


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=float, default=1.0, help="multiply every volume size (default 1.0)")
    p.add_argument("--reps", type=int, default=3, help="repetitions of every measurement (default 3)")
    p.add_argument("--chunk-bytes", type=int, default=0, help="pipeline chunk (default: PipelineConfig's)")
    p.add_argument("--depth", type=int, default=0, help="pipeline depth (default: PipelineConfig's)")
    p.add_argument("--volumes", default="dense,half,sparse10,chain", help="comma-separated subset")
    p.add_argument("--no-concurrent", dest="concurrent", action="store_false", help="skip the 4-copy run")
    p.add_argument("--no-native", action="store_true", help="skip the native MD5 ceiling")
    p.add_argument("--all-variants", action="store_true",
                   help="also run flatten, hash-only and the native ceiling on every volume, not only dense")
    p.add_argument("--nbdcopy-rbd", action="store_true",
                   help="also time nbdcopy reading the RBD snapshots through qemu-nbd's rbd driver (slow)")
    p.add_argument("--qemu-nbd-reader", action="store_true",
                   help="also copy the qcow2 chain through qemu-nbd, the reader before the direct one")
    p.add_argument("--sweep", action="store_true", help="only sweep chunk size x depth on the dense volume")
    p.add_argument("--sweep-chunks-mib", type=float, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--sweep-depths", type=int, nargs="+", default=[2, 4, 8, 16])
    p.add_argument("--sweep-max-inflight-mib", type=int, default=128,
                   help="skip settings with chunk x depth above this (memory)")
    p.add_argument("--sweep-passes", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep the temp dir (cluster stopped)")
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    facts = host_facts()
    log(f"host: {facts['cpu_model']}, {facts['cores']} cores, load {facts['loadavg_start'][0]:.1f}")
    log(facts["native_md5"].get("summary", "MD5: zsagent not importable"))
    ws = Workspace(bluestore_bytes=max(20 * GiB, int(24 * GiB * args.scale)), keep=args.keep)
    try:
        ws.cluster.up()
        bench = Bench(args, ws, facts)
        names = ["dense"] if args.sweep else [n for n in args.volumes.split(",") if n]
        bench.make_volumes(names)
        volumes = {n: {"kind": v.kind, "size": v.size, "allocated": v.allocated, "written": v.written}
                   for n, v in bench.volumes.items()}
        document = {"host": facts, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "pipeline_config": {"chunk_bytes": bench.chunk_bytes, "depth": bench.depth},
                    "volumes": volumes}
        if args.sweep:
            result = bench.sweep()
            document["sweep"] = result
            best = result["best"]
            print("chunk_bytes x depth on the dense volume (median seconds, peak RSS):")
            for t in sorted(result["grid"], key=lambda t: (t["chunk_bytes"], t["depth"])):
                print(f"  {t['chunk_bytes'] // 1024:6d} KiB x {t['depth']:3d}: {t['seconds_median']:6.2f} s "
                      f"{result['size'] / t['seconds_median'] / MiB:6.0f} MiB/s  {t['peak_rss_mib']:4.0f} MiB")
            print("\nbest on this host (put in the agent's config):\n")
            print(f"[pipeline]\nchunk_bytes = {best['chunk_bytes']}\ndepth = {best['depth']}")
        else:
            bench.main_loop()
            check_digests(bench)
            rows = report.build_rows(volumes, bench.results, chosen_md5_ceiling(facts))
            concurrent = bench.concurrent_summary()
            table = report.render(rows, concurrent)
            goals = report.targets(rows, concurrent, volumes, bench.results)
            print(table)
            print()
            print(report.render_targets(goals))
            document.update(rows=rows, concurrent=concurrent, targets=goals, raw=bench.results)
        facts["loadavg_end"] = os.getloadavg()
        document["elapsed_s"] = time.perf_counter() - started
        path = report.write_json(args.results_dir, document)
        shown = _shown(path)
        if not args.sweep:
            shown += f", {_shown(report.write_chart(path))}"
        print(f"\nwritten: {shown} ({document['elapsed_s'] / 60:.1f} min)")
        return 0
    finally:
        ws.close()


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(BENCH_DIR.parent))
    except ValueError:
        return str(path)


def check_digests(bench: Bench) -> None:
    """Every tool that hashes the raw content must agree on each volume's md5."""
    for name, per_tool in bench.results.items():
        digests = {(tool, r["md5"]) for tool, runs in per_tool.items() for r in runs if r.get("md5")}
        for run in bench.concurrent_runs:
            digests |= {(f"4 concurrent copies [{i}]", job["md5"]) for i, job in enumerate(run["jobs"])
                        if list(bench.volumes)[i] == name}
        values = {d for _, d in digests}
        if len(values) > 1:
            raise BenchError(f"md5 mismatch on {name}: {sorted(digests)}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
