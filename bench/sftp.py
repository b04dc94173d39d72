"""SFTP upload throughput: our uploads (MD5 included) against OpenSSH's ``sftp put`` of the same bytes.

    .venv/bin/python bench/sftp.py [--reps 5] [--size-mib 1024] [--set NAME=VALUE ...] [--keep]

Starts its own sshd (``scripts/sshd up DIR`` in a temp dir, stopped at the end), writes a random source
file (kept in the page cache) and runs, interleaved and in an order rotated per repetition:

    sftp           OpenSSH ``sftp -R 64 -B 261120``, ``put``, default cipher (chacha20-poly1305)
    sftp-gcm       the same with ``-c aes128-gcm@openssh.com`` (the cipher our ssh picks)
    sftp-gcm-f     the same with ``put -f`` (fsync on the server, as our uploads do)
    raw            ours: RawFileSource -> run_copy -> SftpRawSink; the pipeline's MD5 of the content
    qcow2          ours: RawFileSource -> run_copy -> Qcow2StreamSink(SftpTarget); MD5 of the qcow2 file

Each run is a fresh process (ours: ``bench/sftp.py worker SPEC``), timed from start to exit, so connect
and login are in every number. Before each run the destination is removed and ``sync`` flushes the
previous run's dirty pages (not timed). Every output is checked: ``md5sum`` of the uploaded file equals
the source's (sftp, raw: and the pipeline's MD5) or the sink's MD5 (qcow2; ``qemu-img compare`` with the
source in the first repetition). CPU seconds: the client's process tree (RUSAGE_CHILDREN) and the sshd
listener's reaped children (per-connection sshd with internal-sftp, the ``stat`` of our commit).

Ratios are per repetition (baseline seconds / our seconds: >1 means ours is faster), reported as medians.
The table goes to stdout, everything to bench/results/sftp-<timestamp>.json. No thresholds are checked.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO_ROOT, BenchError, host_facts, log, run  # noqa: E402

MiB = 1024 * 1024
REQUEST_BYTES = 261120  # OpenSSH's largest WRITE, what our client sends too
GCM = "aes128-gcm@openssh.com"
BASELINES = ("sftp", "sftp-gcm", "sftp-gcm-f")
OURS = ("raw", "qcow2")
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- worker: one of our uploads in this process --------------------------------------------------------


def worker(spec: dict) -> dict:
    """Upload ``spec['src']`` to ``spec['dst']`` as raw or qcow2; return seconds and the MD5s."""
    start = time.perf_counter()
    from zsagent.copy.pipeline import PipelineConfig, run_copy
    from zsagent.sftp.settings import SftpSettings
    from zsagent.sinks.qcow2_stream import Qcow2StreamSink
    from zsagent.sinks.sftp import SftpRawSink, SftpTarget
    from zsagent.sources.raw_file import RawFileSource

    settings = SftpSettings(**spec["settings"])
    config = PipelineConfig(**spec["pipeline"])
    source = RawFileSource(spec["src"])
    try:
        if spec["mode"] == "raw":
            sink = SftpRawSink(settings, spec["dst"])
            result = run_copy(source, [sink], config)
            sink_md5 = None
        else:
            sink = Qcow2StreamSink(SftpTarget(settings, spec["dst"]))
            result = run_copy(source, [sink], config, hash_content=False)  # as the service does for qcow2
            sink_md5 = result.published[0].md5
    finally:
        source.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"transfer_s": time.perf_counter() - start, "md5": result.md5, "sink_md5": sink_md5,
            "python_cpu_s": usage.ru_utime + usage.ru_stime}


# -- driver ------------------------------------------------------------------------------------------


class Sshd:
    """The throwaway sshd of scripts/sshd in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        out = run([str(REPO_ROOT / "scripts" / "sshd"), "up", str(root)], timeout_s=120)
        env = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines() if "=" in line)
        self.host = env["ZSAGENT_TEST_SSHD_HOST"]
        self.port = int(env["ZSAGENT_TEST_SSHD_PORT"])
        self.user = env["ZSAGENT_TEST_SSHD_USER"]
        self.key = env["ZSAGENT_TEST_SSHD_KEY"]
        self.known_hosts = env["ZSAGENT_TEST_SSHD_KNOWN_HOSTS"]
        self.pid = int((root / "sshd.pid").read_text())

    def down(self) -> None:
        run([str(REPO_ROOT / "scripts" / "sshd"), "down", str(self.root)], timeout_s=60)

    def cpu_s(self) -> float:
        """user+sys of the listener and of every child it reaped (connections), in seconds."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / CLK_TCK  # utime stime cutime cstime

    def sftp_argv(self, cipher: str | None) -> list[str]:
        argv = ["sftp", "-F", "/dev/null", "-i", self.key, "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "Compression=no", "-R", "64", "-B", str(REQUEST_BYTES), "-P", str(self.port), "-b", "-"]
        if cipher:
            argv += ["-c", cipher]
        return [*argv, f"{self.user}@{self.host}"]

    def settings(self, overrides: dict) -> dict:
        return {"hostname": self.host, "port": self.port, "username": self.user, "private_key": self.key,
                "known_hosts": self.known_hosts, **overrides}


def steal_s() -> float:
    """CPU time the hypervisor gave to others (all cores, /proc/stat): a noise gauge for each run."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / CLK_TCK


def md5sum(path: Path) -> str:
    return run(["md5sum", "--", str(path)], timeout_s=600).split()[0]


def make_source(path: Path, size: int) -> str:
    """Random bytes (incompressible, no zero chunks), read once more so they sit in the page cache."""
    with open(path, "wb") as f:
        for _ in range(size // (16 * MiB)):
            f.write(os.urandom(16 * MiB))
        f.write(os.urandom(size % (16 * MiB)))
    return md5sum(path)


def one_run(method: str, sshd: Sshd, src: Path, dst: Path, ours: dict) -> dict:
    """Run ``method`` once into ``dst``; return seconds, CPU and what the output must hash to."""
    if method in BASELINES:
        cipher = None if method == "sftp" else GCM
        put = "put -f" if method == "sftp-gcm-f" else "put"
        argv, stdin = sshd.sftp_argv(cipher), f"{put} {src} {dst}\n"
    else:
        spec = {"mode": method, "src": str(src), "dst": str(dst), "settings": sshd.settings(ours["settings"]),
                "pipeline": ours["pipeline"]}
        argv, stdin = [sys.executable, str(Path(__file__).resolve()), "worker", json.dumps(spec)], ""
    children0, sshd0, steal0 = resource.getrusage(resource.RUSAGE_CHILDREN), sshd.cpu_s(), steal_s()
    start = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=1800, check=False)
    seconds = time.perf_counter() - start
    time.sleep(0.2)  # let the listener reap the connection's sshd before its CPU is read
    children1, sshd1, steal1 = resource.getrusage(resource.RUSAGE_CHILDREN), sshd.cpu_s(), steal_s()
    if proc.returncode != 0:
        raise BenchError(f"{method} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    out = {"method": method, "seconds": seconds,
           "client_cpu_s": (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime),
           "sshd_cpu_s": sshd1 - sshd0, "steal_s": steal1 - steal0}
    if method in OURS:
        out.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return out


def verify(result: dict, dst: Path, src: Path, src_md5: str, compare: bool) -> None:
    actual = md5sum(dst)
    if result["method"] == "qcow2":
        expected = result["sink_md5"]
        if compare:
            run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(src), str(dst)], timeout_s=600)
    else:
        expected = src_md5
        if result["method"] == "raw" and result["md5"] != src_md5:
            raise BenchError(f"raw: pipeline md5 {result['md5']} != source md5 {src_md5}")
    if actual != expected:
        raise BenchError(f"{result['method']}: md5sum of the upload {actual} != expected {expected}")
    result["verified_md5"] = actual


def summarize(runs: list[dict], methods: list[str], reps: int, size: int) -> dict:
    by = {m: [r for r in runs if r["method"] == m] for m in methods}
    summary: dict = {}
    for m in methods:
        secs = [r["seconds"] for r in by[m]]
        cpu_c = [r["client_cpu_s"] for r in by[m]]
        cpu_s = [r["sshd_cpu_s"] for r in by[m]]
        summary[m] = {"seconds_median": statistics.median(secs), "seconds_min": min(secs),
                      "seconds_max": max(secs), "mb_s_median": size / 1e6 / statistics.median(secs),
                      "client_cpu_s_median": statistics.median(cpu_c), "sshd_cpu_s_median": statistics.median(cpu_s),
                      "cpu_s_per_gib_median": statistics.median(
                          (c + s) * (1 << 30) / size for c, s in zip(cpu_c, cpu_s, strict=True))}
    for ours in (m for m in methods if m in OURS):
        for base in (m for m in methods if m in BASELINES):
            ratios = [by[base][i]["seconds"] / by[ours][i]["seconds"] for i in range(reps)]
            summary[ours][f"ratio_vs_{base}"] = {"median": statistics.median(ratios), "all": ratios}
    return summary


def table(summary: dict, methods: list[str]) -> str:
    bases = [m for m in methods if m in BASELINES]
    head = ["method", "s med", "MB/s", "client CPU-s", "sshd CPU-s", "CPU-s/GiB"] + [f"x {b}" for b in bases]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for m in methods:
        s = summary[m]
        row = [m, f"{s['seconds_median']:.2f}", f"{s['mb_s_median']:.0f}", f"{s['client_cpu_s_median']:.2f}",
               f"{s['sshd_cpu_s_median']:.2f}", f"{s['cpu_s_per_gib_median']:.2f}"]
        row += [f"{s[f'ratio_vs_{b}']['median']:.2f}" if f"ratio_vs_{b}" in s else "" for b in bases]
        lines.append(" | ".join(row))
    return "\n".join(f"| {line} |" for line in lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="an SftpSettings field of our uploads (int or none), e.g. connections=2")
    parser.add_argument("--chunk-mib", type=int, default=None, help="pipeline chunk (default: PipelineConfig's)")
    parser.add_argument("--depth", type=int, default=None, help="pipeline depth (default: PipelineConfig's)")
    parser.add_argument("--methods", default=",".join(BASELINES + OURS))
    parser.add_argument("--dir", type=Path, default=None, help="work dir (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (source file included)")
    args = parser.parse_args()
    methods = args.methods.split(",")
    unknown = set(methods) - set(BASELINES + OURS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}")
    size = args.size_mib * MiB
    overrides = {}
    for item in args.set:
        name, _, value = item.partition("=")
        overrides[name] = None if value.lower() == "none" else int(value)
    pipeline = {} if args.chunk_mib is None else {"chunk_bytes": args.chunk_mib * MiB}
    if args.depth is not None:
        pipeline["depth"] = args.depth
    ours = {"settings": overrides, "pipeline": pipeline}

    root = args.dir or Path(tempfile.mkdtemp(prefix="zsagent-bench-sftp-", dir="/var/tmp"))
    (root / "data").mkdir(parents=True, exist_ok=True)
    src, dst = root / "data" / "source.raw", root / "data" / "upload.out"
    facts = host_facts()
    sshd = Sshd(root / "sshd")
    runs: list[dict] = []
    try:
        if src.exists() and src.stat().st_size == size:  # --dir of an earlier run
            log(f"reusing {src}")
            src_md5 = md5sum(src)
        else:
            log(f"writing {args.size_mib} MiB of random data to {src}")
            src_md5 = make_source(src, size)
        for rep in range(args.reps):
            order = methods[rep % len(methods):] + methods[:rep % len(methods)]
            for method in order:
                dst.unlink(missing_ok=True)
                run(["sync"], timeout_s=600)
                result = one_run(method, sshd, src, dst, ours)
                verify(result, dst, src, src_md5, compare=rep == 0)
                result["rep"] = rep
                runs.append(result)
                log(f"rep {rep} {method}: {result['seconds']:.2f} s, client {result['client_cpu_s']:.2f} CPU-s, "
                    f"sshd {result['sshd_cpu_s']:.2f} CPU-s, steal {result['steal_s']:.2f} s")
        dst.unlink(missing_ok=True)
    finally:
        sshd.down()
        if not args.keep and args.dir is None:
            shutil.rmtree(root, ignore_errors=True)

    for r in runs:  # per-method lists are in repetition order for the ratios
        r.setdefault("rep", 0)
    runs.sort(key=lambda r: r["rep"])
    summary = summarize(runs, methods, args.reps, size)
    out_dir = REPO_ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    report = {"kind": "sftp", "time": stamp, "size_bytes": size, "reps": args.reps,
              "ours": ours, "host": facts, "loadavg_end": os.getloadavg(),
              "summary": summary, "runs": runs}
    path = out_dir / f"sftp-{stamp}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(table(summary, methods))
    log(f"results in {path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit(main())
