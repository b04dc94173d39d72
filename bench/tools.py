"""The baselines: what users run today, timed on the same volumes as our pipeline.

All commands are argv lists; the one shell pipeline is a fixed bash script that takes its arguments as
argv ($1, $2, $3), never as text pasted into the script. Every function returns a dict with ``seconds``
(the timed part), ``md5`` (when the tool makes one) and phase times.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from common import BenchError, run, timed

from zsagent.processes import stop_process

# rbd export | tee >(md5sum) | rbd import, written so that the md5 is complete when bash exits: md5sum is a
# process substitution of this shell (not of the pipeline's subshell), so its pid is known and waited for.
SHELL_PIPELINE = r"""
set -euo pipefail
src=$1 dst=$2 out=$3
exec 3> >(exec md5sum >"$out")
md5pid=$!
rbd export --no-progress "$src" - | tee /dev/fd/3 | rbd import --no-progress - "$dst"
exec 3>&-
wait "$md5pid"
"""


def _md5_of_command(argv: list[str], env: dict[str, str]) -> str:
    """``argv | md5sum`` with two processes and a pipe (no shell)."""
    producer = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        digest = subprocess.run(["md5sum"], stdin=producer.stdout, capture_output=True, text=True, check=True)
    finally:
        producer.stdout.close()
        err = producer.stderr.read().decode(errors="replace")
        producer.stderr.close()
        rc = producer.wait()
    if rc != 0:
        raise BenchError(f"{' '.join(argv)} exited {rc}: {err.strip()}")
    return digest.stdout.split()[0]


def snap_create(env: dict[str, str], spec: str) -> None:
    run(["rbd", "snap", "create", "--no-progress", spec], env)


def snap_remove(env: dict[str, str], spec: str) -> None:
    run(["rbd", "snap", "rm", "--no-progress", spec], env)


def remove_image(env: dict[str, str], spec: str) -> None:
    """Remove an image and any snapshots it carries (rbd deep cp copies them)."""
    with contextlib.suppress(BenchError):
        run(["rbd", "snap", "purge", "--no-progress", spec], env)
    run(["rbd", "rm", "--no-progress", spec], env)


def zstack_rbd(env: dict[str, str], src: str, snap: str, dst: str) -> dict:
    """ZStack's path: snapshot, ``rbd deep cp src@snap dst``, then ``rbd export dst - | md5sum``.

    Timed: snap create + deep cp + export|md5sum. The snapshot removal is not timed (ZStack leaves it).
    """
    start = time.perf_counter()
    snap_create(env, f"{src}@{snap}")
    t_snap = time.perf_counter()
    run(["rbd", "deep", "cp", "--no-progress", f"{src}@{snap}", dst], env)
    t_copy = time.perf_counter()
    digest = _md5_of_command(["rbd", "export", "--no-progress", dst, "-"], env)
    end = time.perf_counter()
    snap_remove(env, f"{src}@{snap}")
    remove_image(env, dst)
    return {"seconds": end - start, "md5": digest, "phases": {"snap_create": t_snap - start,
                                                              "deep_cp": t_copy - t_snap,
                                                              "export_md5sum": end - t_copy}}


def shell_rbd(env: dict[str, str], src: str, snap: str, dst: str) -> dict:
    """``rbd export src@snap - | tee >(md5sum) | rbd import - dst`` (snapshot create timed, removal not)."""
    with tempfile.TemporaryDirectory(prefix="zsbench-md5-") as tmp:
        out = Path(tmp) / "md5"
        start = time.perf_counter()
        snap_create(env, f"{src}@{snap}")
        run(["bash", "-c", SHELL_PIPELINE, "shell-pipeline", f"{src}@{snap}", dst, str(out)], env)
        seconds = time.perf_counter() - start
        digest = out.read_text().split()[0]
    snap_remove(env, f"{src}@{snap}")
    remove_image(env, dst)
    return {"seconds": seconds, "md5": digest}


@contextlib.contextmanager
def qemu_nbd(target: str, image_format: str, env: dict[str, str], connections: int = 8) -> Iterator[str]:
    """Serve ``target`` read-only with qemu-nbd on a unix socket; yields the NBD URI."""
    with tempfile.TemporaryDirectory(prefix="zsbench-nbd-") as tmp:
        sock = os.path.join(tmp, "nbd.sock")
        server = subprocess.Popen(["qemu-nbd", "--read-only", "--persistent", f"--shared={connections}",
                                   f"--format={image_format}", f"--socket={sock}", target],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  env=env)
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(sock):
                if server.poll() is not None:
                    raise BenchError(f"qemu-nbd {target}: {server.stderr.read().decode(errors='replace')}")
                if time.monotonic() > deadline:
                    raise BenchError(f"qemu-nbd {target} did not start")
                time.sleep(0.02)
            yield f"nbd+unix:///?socket={sock}"
        finally:
            stop_process(server)
            server.stderr.close()


def nbdcopy_rbd_read(env: dict[str, str], conf: str, src: str, snap: str) -> dict:
    """Read reference for RBD (nbdcopy cannot read RBD itself): qemu-nbd serves ``rbd:src@snap`` through
    qemu's rbd driver, nbdcopy copies it to ``null:`` (4 connections x 64 requests, extents on).
    Timed: nbdcopy only (server start and snapshot not). No md5, no write."""
    snap_create(env, f"{src}@{snap}")
    try:
        with qemu_nbd(f"rbd:{src}@{snap}:conf={conf}", "raw", env) as uri:
            seconds, _ = timed(["nbdcopy", uri, "null:"], env)
    finally:
        snap_remove(env, f"{src}@{snap}")
    return {"seconds": seconds}


def qemu_img_qcow2_md5(path: str, dst: str) -> dict:
    """ZStack's local-storage path: ``qemu-img convert -O qcow2 src dst && md5sum dst`` (md5 of the file)."""
    start = time.perf_counter()
    run(["qemu-img", "convert", "-O", "qcow2", path, dst])
    t_convert = time.perf_counter()
    digest = run(["md5sum", dst]).split()[0]
    end = time.perf_counter()
    size = os.path.getsize(dst)
    os.unlink(dst)
    return {"seconds": end - start, "file_md5": digest, "file_bytes": size,
            "phases": {"convert": t_convert - start, "md5sum": end - t_convert}}


def qemu_img_raw_md5(path: str, dst: str) -> dict:
    """The raw-template equivalent: ``qemu-img convert -O raw src dst && md5sum dst`` (md5 of the content)."""
    start = time.perf_counter()
    run(["qemu-img", "convert", "-O", "raw", path, dst])
    t_convert = time.perf_counter()
    digest = run(["md5sum", dst]).split()[0]
    end = time.perf_counter()
    os.unlink(dst)
    return {"seconds": end - start, "md5": digest, "phases": {"convert": t_convert - start, "md5sum": end - t_convert}}


def nbdcopy_file(path: str, image_format: str, dst: str, env: dict[str, str]) -> dict:
    """Pure copy reference for file volumes: qemu-nbd serves the chain, nbdcopy writes a sparse raw file
    (multi-conn, extents on, no md5, no fsync). Timed: nbdcopy only."""
    with qemu_nbd(path, image_format, env) as uri:
        seconds, _ = timed(["nbdcopy", uri, dst], env)
    os.unlink(dst)
    return {"seconds": seconds}
