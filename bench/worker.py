"""One measured copy (or MD5 ceiling) in a fresh process, so that peak RSS is per copy.

    python bench/worker.py '<json spec>'   ->   one JSON line on stdout

Spec kinds:
  rbd      {conf, keyring, pool, volume, snapshot, backup_pool, dest,
            mode: copy (as the agent by default: every byte written through librbd) | copy-server
            (rbd_server_side_copy = true: server-side object copies where it can) | flatten | hash-only,
            chunk_bytes, depth}
  file     {path, format, dest, sink: raw|qcow2|qemu-img|qemu-img-zstd, chunk_bytes, depth,
            reader: direct (default: as the service, qemu-nbd only where it must) | qemu-nbd}
           (qemu-img*: the qemu-img engine, qcow2 plain or zstd-compressed, md5 of the file)
  ceiling  {bytes, impl: hashlib|native}          MD5 of ``bytes`` from a buffer in memory, 4 MiB updates
  many     {jobs: [rbd/file specs]}                all jobs at once, one thread each (as the agent would)

Timing starts before the cluster connection (the rbd CLI pays for its own) and ends when the copy is
published (for RBD: the snapshot is removed again). Removing the template afterwards is not timed.
Output: seconds, md5, size, stats (bytes_read, ...), sink_md5 (qcow2 file md5), hwm_kib (peak RSS),
cpu_s (user+sys of this process, interpreter start-up and imports included), copy_cpu_s (user+sys of every
thread of this process between the start and the end of the timed window: what the agent's daemon, which
has its imports done, spends on this copy), threads_cpu_s (CPU seconds per thread name at exit, e.g.
``msgr-worker-2``: librados' messenger, ``io_context_pool``: librbd, ``zsagent-md5``: the hasher);
ceiling: hash_cpu_s (CPU time of the hashing thread's loop alone); many: per job also ``stalls_s``, the
longest time the job went without progress while it ran.

File copies to a qcow2 stream pass hash_content=False, as the service does when no destination is raw.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from pathlib import Path

MiB = 1024 * 1024


def peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def threads_cpu_s() -> dict[str, float]:
    """CPU seconds (user+sys) of this process' live threads, summed per thread name (/proc/self/task)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended meanwhile
        out[name] = round(out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick, 2)
    return dict(sorted(out.items(), key=lambda item: -item[1]))


class Timed:
    """The timed window of one copy: wall seconds and the process' CPU seconds (all threads)."""

    def __enter__(self) -> Timed:
        self.start_threads = threads_cpu_s()
        self.start_s, self.start_cpu_s = time.perf_counter(), cpu_seconds()
        return self

    def stop(self) -> dict:
        self.copy_cpu_s = cpu_seconds() - self.start_cpu_s
        return {"seconds": time.perf_counter() - self.start_s, "copy_cpu_s": self.copy_cpu_s}

    def threads(self) -> dict[str, float]:
        """CPU seconds per thread name since the window started, for the threads alive now; the threads that
        ended meanwhile (the pipeline's read workers and hasher) are summed as ``ended threads``."""
        now = threads_cpu_s()
        out = {name: round(cpu_s - self.start_threads.get(name, 0.0), 2) for name, cpu_s in now.items()}
        out = {name: cpu_s for name, cpu_s in out.items() if cpu_s >= 0.01}
        out["ended threads"] = round(max(0.0, self.copy_cpu_s - sum(out.values())), 2)
        return out

    def __exit__(self, *exc) -> None:
        pass


def result_of(copy_result, timing: dict, **extra) -> dict:
    stats = copy_result.stats
    sink_md5 = [p.md5 for p in copy_result.published if p.md5]
    return {**timing, "md5": copy_result.md5, "size": copy_result.size,
            "bytes_read": stats.bytes_read, "bytes_written": stats.bytes_written,
            "zero_bytes_skipped": stats.zero_bytes_skipped, "sink_md5": sink_md5[0] if sink_md5 else None,
            "actual_size": copy_result.published[0].actual_size if copy_result.published else None, **extra}


def run_rbd(spec: dict) -> dict:
    from zsagent.catalog import Volume
    from zsagent.ceph import CephConfig, open_backend, server_copy
    from zsagent.copy.pipeline import PipelineConfig, run_copy
    from zsagent.sinks.base import NO_JOURNAL
    from zsagent.sinks.rbd_image import RbdCloneSink, RbdImageSink
    from zsagent.sinks.rbd_server_copy import RbdServerCopySink
    from zsagent.sources.open import open_source

    backend = open_backend(CephConfig(backend="rados", conf=spec["conf"], keyring=spec["keyring"]))
    rbd = backend.rbd
    config = PipelineConfig(chunk_bytes=spec["chunk_bytes"], depth=spec["depth"])
    timed = Timed().__enter__()
    cluster = backend.connect()
    try:
        src = cluster.open_ioctx(spec["pool"])
        dst = cluster.open_ioctx(spec["backup_pool"])
        connected = time.perf_counter()
        with rbd.Image(src, spec["volume"], read_only=True) as image:
            size, order = image.size(), image.stat()["order"]
        sinks = []  # as zsagent.storages.ceph makes them
        if spec["mode"] == "copy-server" and server_copy.available(backend):  # the OSDs copy the objects
            sinks = [RbdServerCopySink(backend, src, spec["volume"], spec["snapshot"], dst, spec["backup_pool"],
                                       spec["dest"], order)]
        elif spec["mode"] in ("copy", "copy-server"):  # copy: the default, [pipeline] rbd_server_side_copy = false
            sinks = [RbdImageSink(rbd, dst, spec["backup_pool"], spec["dest"], order)]
        elif spec["mode"] in ("clone", "flatten"):
            sinks = [RbdCloneSink(rbd, src, spec["volume"], spec["snapshot"], dst, spec["backup_pool"], spec["dest"],
                                  flatten=spec["mode"] == "flatten")]
        volume = Volume(spec["volume"], None, "ceph", size, pool=spec["pool"], image=spec["volume"], order=order)
        with open_source(volume, NO_JOURNAL, snapshot=spec["snapshot"], ceph=backend, cluster=cluster) as source:
            result = run_copy(source, sinks, config, progress=spec.get("progress"))
        timing = timed.stop()
        timing["threads_cpu_s"] = timed.threads()  # before shutdown: librados' threads still exist
        out = result_of(result, timing, connect_s=connected - timed.start_s)
        if sinks and isinstance(sinks[0], RbdServerCopySink):  # how many objects the OSDs copied, or why not
            out["server_copy"] = sinks[0].refused or f"{sinks[0].server_copy.objects} objects"
        if sinks:
            rbd.RBD().remove(dst, spec["dest"])
        return out
    finally:
        cluster.shutdown()


def run_file(spec: dict) -> dict:
    from zsagent.copy.pipeline import PipelineConfig
    from zsagent.sinks.raw_file import RawFileSink
    from zsagent.sources.qcow2_file import open_qcow2_source
    from zsagent.sources.qemu_nbd import QemuNbdSource
    from zsagent.transfer import transfer  # (imports before the timed window, as a daemon has them done)

    config = PipelineConfig(chunk_bytes=spec["chunk_bytes"], depth=spec["depth"])
    timed = Timed().__enter__()
    if spec.get("reader") == "qemu-nbd":  # the reader before the direct one, for comparison
        source = QemuNbdSource(spec["path"], spec.get("format", "qcow2"), connections=spec["depth"])
    else:  # as the service opens a stopped qcow2 volume
        source = open_qcow2_source(spec["path"], connections=spec["depth"])
    try:
        if spec["sink"].startswith("qemu-img"):  # the qemu-img engine, as the service runs it
            from zsagent.qemu_img import ConvertOptions
            from zsagent.sinks.converted import ConvertedFile

            options = ConvertOptions(compression="zstd" if spec["sink"] == "qemu-img-zstd" else None)
            result = transfer(source, [], [ConvertedFile(spec["dest"], options, config)], config)
            return finish_file(spec, result_of(result, timed.stop()))
        if spec["sink"] == "raw":
            sink = RawFileSink(spec["dest"])
        else:
            from zsagent.sinks.file_stream import FileStreamTarget
            from zsagent.sinks.qcow2_stream import Qcow2StreamSink

            sink = Qcow2StreamSink(FileStreamTarget(spec["dest"]))
        # as the service (zsagent.transfer, which takes the direct path for a lone qcow2 file): the content
        # md5 only when some destination is raw (qcow2 hashes its own bytes)
        result = transfer(source, [sink], [], config, hash_content=spec["sink"] == "raw",
                          progress=spec.get("progress"))
    finally:
        source.close()
    return finish_file(spec, result_of(result, timed.stop()))


def finish_file(spec: dict, out: dict) -> dict:
    Path(spec["dest"]).unlink(missing_ok=True)
    return out


def run_ceiling(spec: dict) -> dict:
    """MD5 of spec['bytes'] bytes from memory (a 64 MiB buffer, 4 MiB updates): the one-core ceiling."""
    buffer = memoryview(os.urandom(64 * MiB))
    if spec["impl"] == "native":
        from zsagent._md5 import MD5

        from zsagent.copy.md5 import choose

        md5 = MD5(kernel=choose().kernel)  # the kernel the pipeline uses (ZSAGENT_MD5 from bench/run.py)
    else:
        import hashlib

        md5 = hashlib.md5()
    total = spec["bytes"]
    start, start_cpu_s = time.perf_counter(), time.thread_time()
    done = 0
    while done < total:
        n = min(4 * MiB, total - done)
        at = done % (64 * MiB - 4 * MiB)
        md5.update(buffer[at:at + n])
        done += n
    md5.digest()
    return {"seconds": time.perf_counter() - start, "hash_cpu_s": time.thread_time() - start_cpu_s, "bytes": total,
            "impl": f"native({md5.kernel})" if spec["impl"] == "native" else "hashlib"}


def run_many(spec: dict) -> dict:
    """Every job at once, a thread each; per job its result and ``stalls_s``: the longest time it went without
    a progress callback (or without starting, or finishing) while it was running."""
    results: list[dict | None] = [None] * len(spec["jobs"])
    errors: list[BaseException] = []
    marks: list[list[float]] = [[] for _ in spec["jobs"]]

    def work(i: int, job: dict) -> None:
        try:
            marks[i].append(time.perf_counter())
            results[i] = RUNNERS[job["kind"]]({**job, "progress": lambda done, total: marks[i].append(
                time.perf_counter())})
            marks[i].append(time.perf_counter())
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    # the runners import what they use on first call: done here once, since imports racing in several
    # threads can meet half-initialised modules
    import zsagent.copy.pipeline
    import zsagent.transfer  # noqa: F401

    threads = [threading.Thread(target=work, args=(i, job)) for i, job in enumerate(spec["jobs"])]
    timed = Timed().__enter__()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    timing = timed.stop()
    if errors:
        raise errors[0]
    for result, times in zip(results, marks, strict=True):
        gaps = [b - a for a, b in zip([timed.start_s, *times], times, strict=False)]
        result["stalls_s"] = max(gaps, default=0.0)
    return {**timing, "jobs": results}


RUNNERS = {"rbd": run_rbd, "file": run_file, "ceiling": run_ceiling, "many": run_many}


def main() -> int:
    spec = json.loads(sys.argv[1])
    out = RUNNERS[spec["kind"]](spec)
    out["hwm_kib"] = peak_rss_kib()
    out["cpu_s"] = cpu_seconds()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
