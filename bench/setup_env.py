"""The benchmark's world: a throwaway Ceph cluster (bluestore on a sparse file) and the volumes it copies.

Volumes (sizes scaled by --scale):
    dense     RBD, 2 GiB, every byte random data
    half      RBD, 2 GiB, 50% of the 4 MiB objects allocated
    sparse10  RBD, 4 GiB, 10% allocated
    chain     qcow2 overlay (15% written, a third of it zero writes) on a qcow2 base (2 GiB, 50% allocated)

Allocated objects are mostly whole; a quarter of them hold only a 4 KiB-aligned sub-range, so that extents
are not all object-sized. Data comes from a 64 MiB random pool, sliced differently for every 4 MiB chunk and
stamped with the chunk number (no two chunks are equal; nothing is compressible).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from common import REPO_ROOT, GiB, MiB, log, run

OBJECT_BYTES = 4 * MiB
SOURCE_POOL = "rbd"
BACKUP_POOL = "backup"


@dataclass
class Volume:
    """One volume to copy.

    kind: "rbd" (``SOURCE_POOL/name``) or "qcow2" (``path``, a qcow2 with a backing chain).
    size: virtual bytes. allocated: bytes the storage's allocation map reports as data (what a sparse-aware
    reader must read). written: bytes of data the benchmark wrote (RBD maps are coarser: an object's extent
    starts at its offset 0).
    """

    name: str
    kind: str
    size: int
    allocated: int
    path: str | None = None
    layers: list[str] = field(default_factory=list)
    written: int | None = None


class DataGen:
    """Incompressible, non-repeating 4 MiB chunks, cheap to make."""

    def __init__(self, seed: int) -> None:
        self.pool = random.Random(seed).randbytes(64 * MiB)

    def chunk(self, index: int, length: int = OBJECT_BYTES) -> bytes:
        start = (index * 7919 * 4096) % (len(self.pool) - length)
        data = bytearray(self.pool[start:start + length])
        data[:16] = index.to_bytes(16, "little")
        return bytes(data)


def plan_allocation(size: int, fraction: float, seed: int) -> list[tuple[int, int]]:
    """(offset, length) data ranges covering ``fraction`` of the objects of a ``size``-byte volume."""
    objects = size // OBJECT_BYTES
    rng = random.Random(seed)
    chosen = sorted(rng.sample(range(objects), round(objects * fraction)))
    ranges = []
    for obj in chosen:
        base = obj * OBJECT_BYTES
        if fraction < 1 and rng.random() < 0.25:
            length = rng.randrange(16, 512) * 4096
            offset = rng.randrange(0, (OBJECT_BYTES - length) // 4096 + 1) * 4096
            ranges.append((base + offset, length))
        else:
            ranges.append((base, OBJECT_BYTES))
    return ranges


class BenchCluster:
    """``scripts/ceph-cluster up DIR --store bluestore`` in a temp dir; ``close()`` always stops it.

    ``env``: the environment for rbd/qemu tools and workers (CEPH_CONF and the keyring).
    """

    def __init__(self, root: Path, bluestore_bytes: int) -> None:
        self.root = root
        self.dir = root / "ceph"
        self.started = False
        self.conf = self.keyring = ""
        self.bluestore_bytes = bluestore_bytes
        self.env = dict(os.environ)

    def up(self) -> None:
        log(f"starting a bluestore Ceph cluster in {self.dir} ({self.bluestore_bytes / GiB:.0f} GiB sparse file)")
        self.started = True
        out = run([str(REPO_ROOT / "scripts" / "ceph-cluster"), "up", str(self.dir), "--store", "bluestore",
                   "--bluestore-bytes", str(self.bluestore_bytes)], timeout_s=300)
        exports = {}
        for line in out.splitlines():
            if line.startswith("export ") and "=" in line:
                key, value = line[len("export "):].split("=", 1)
                exports[key] = value
        self.conf = exports["ZSAGENT_TEST_CEPH_CONF"]
        self.keyring = exports["ZSAGENT_TEST_CEPH_KEYRING"]
        self.env.update(CEPH_CONF=self.conf, CEPH_KEYRING=self.keyring)
        run(["ceph", "osd", "pool", "create", BACKUP_POOL, "8"], self.env)
        run(["rbd", "pool", "init", BACKUP_POOL], self.env)

    def down(self) -> None:
        if self.started:
            subprocess.run([str(REPO_ROOT / "scripts" / "ceph-cluster"), "down", str(self.dir)],
                           capture_output=True, timeout=120, check=False)
            self.started = False

    def osd_pid(self) -> int | None:
        try:
            return int((self.dir / "pid" / "osd.0.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def connect(self):
        import rados

        cluster = rados.Rados(conffile=self.conf, conf={"keyring": self.keyring})
        cluster.connect(timeout=30)
        return cluster


class Workspace:
    """A temp dir holding the cluster and the file volumes; removed (cluster stopped first) on close,
    also on SIGTERM/SIGHUP (turned into SystemExit so that ``finally`` blocks run)."""

    def __init__(self, bluestore_bytes: int, keep: bool = False) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="zsagent-bench-", dir=os.environ.get("ZSAGENT_BENCH_TMP")))
        self.files = self.root / "files"
        self.files.mkdir()
        self.cluster = BenchCluster(self.root, bluestore_bytes)
        self.keep = keep
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _exit_on_signal)

    def close(self) -> None:
        try:
            self.cluster.down()
        finally:
            if self.keep:
                log(f"kept {self.root}")
            else:
                shutil.rmtree(self.root, ignore_errors=True)


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


def create_rbd_volume(cluster: BenchCluster, name: str, size: int, fraction: float, seed: int) -> Volume:
    """Write the volume with python-rbd (8 writes in flight); returns it with its allocated byte count."""
    import rbd

    gen = DataGen(seed)
    ranges = plan_allocation(size, fraction, seed)
    conn = cluster.connect()
    try:
        ioctx = conn.open_ioctx(SOURCE_POOL)
        try:
            rbd.RBD().create(ioctx, name, size, old_format=False)
            with rbd.Image(ioctx, name) as image:
                def write(item: tuple[int, tuple[int, int]]) -> None:
                    index, (offset, length) = item
                    image.write(gen.chunk(index)[:length], offset)

                with ThreadPoolExecutor(8) as pool:
                    list(pool.map(write, enumerate(ranges)))
                image.flush()
        finally:
            ioctx.close()
    finally:
        conn.shutdown()
    written = sum(length for _, length in ranges)
    return Volume(name, "rbd", size, rbd_allocated_bytes(cluster, name), written=written)


def rbd_allocated_bytes(cluster: BenchCluster, name: str) -> int:
    """What RBD's allocation map says is allocated (``rbd diff``: byte ranges of the objects that exist,
    each from the object's start to its last written byte), i.e. what a reader of the map must read."""
    import json

    out = run(["rbd", "diff", "--format", "json", f"{SOURCE_POOL}/{name}"], cluster.env)
    return sum(e["length"] for e in json.loads(out) if e.get("exists", "true") in (True, "true"))


def create_qcow2_chain(directory: Path, size: int, seed: int) -> Volume:
    """base.qcow2 (50% allocated, from a sparse raw file) <- top.qcow2 (15% written by qemu-io, a third of
    it as zero writes over base data). Returns the overlay; ``allocated`` counts what reads as data."""
    gen = DataGen(seed)
    base_raw = directory / "base.raw"
    base = directory / "base.qcow2"
    top = directory / "top.qcow2"
    ranges = plan_allocation(size, 0.5, seed)
    fd = os.open(base_raw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        for index, (offset, length) in enumerate(ranges):
            os.pwrite(fd, gen.chunk(index)[:length], offset)
    finally:
        os.close(fd)
    run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(base_raw), str(base)])
    base_raw.unlink()
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top)])

    rng = random.Random(seed + 1)
    patterns = []
    for i in range(4):
        pattern = directory / f"pattern{i}"
        pattern.write_bytes(gen.chunk(100_000 + i, MiB))
        patterns.append(pattern)
    commands = []
    objects = size // OBJECT_BYTES
    for i, obj in enumerate(sorted(rng.sample(range(objects), round(objects * 0.15)))):
        offset = obj * OBJECT_BYTES + rng.randrange(0, 4) * MiB
        length = rng.choice([64 * 1024, 1 * MiB, 2 * MiB, 3 * MiB])
        length = min(length, obj * OBJECT_BYTES + OBJECT_BYTES - offset)
        if i % 3 == 2:
            commands += ["-c", f"write -q -z {offset} {length}"]
        else:
            commands += ["-c", f"write -q -s {patterns[i % len(patterns)]} {offset} {length}"]
    run(["qemu-io", "-f", "qcow2", *commands, str(top)], timeout_s=600)
    for pattern in patterns:
        pattern.unlink()
    allocated = qcow2_data_bytes(top)
    return Volume("chain", "qcow2", size, allocated, str(top), [str(base), str(top)], written=allocated)


def qcow2_data_bytes(path: Path) -> int:
    """Bytes that read as data through the whole chain (qemu-img map: data and not zero)."""
    import json

    out = run(["qemu-img", "map", "--output=json", str(path)])
    return sum(e["length"] for e in json.loads(out) if e.get("data") and not e.get("zero"))
