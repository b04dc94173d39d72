"""``rbd_env``: a source and a backup pool on real Ceph or on the fake, with independent checks."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from dataclasses import dataclass
from types import ModuleType

import pytest

from zsagent.ceph import CephConfig, open_backend

MiB = 1024 * 1024


@dataclass
class RbdEnv:
    kind: str
    rbd: ModuleType
    cluster: object
    src: object
    dst: object
    src_pool: str
    dst_pool: str
    cli_env: dict | None = None  # for the rbd / qemu-img command line tools (real Ceph)
    ceph_conf: str | None = None
    ceph_config: dict | None = None  # the agent's [ceph] section for this backend

    def spec(self, pool, image, snap=None):
        return f"{pool}/{image}" + (f"@{snap}" if snap else "")

    def export_md5(self, pool, image, snap=None) -> str:
        """md5 of the image as `rbd export ... - | md5sum` sees it (the fake: read through its API)."""
        if self.kind == "fake":
            ioctx = self.src if pool == self.src_pool else self.dst
            digest = hashlib.md5()
            with self.rbd.Image(ioctx, image, snapshot=snap, read_only=True) as img:
                for offset in range(0, img.size(), 4 * MiB):
                    digest.update(img.read(offset, 4 * MiB))
            return digest.hexdigest()
        export = subprocess.Popen(["rbd", "export", "--no-progress", self.spec(pool, image, snap), "-"],
                                  stdout=subprocess.PIPE, env=self.cli_env)
        out = subprocess.run(["md5sum"], stdin=export.stdout, capture_output=True, text=True, check=True)
        export.stdout.close()
        assert export.wait() == 0
        return out.stdout.split()[0]

    def _qemu_uri(self, pool, image, snap=None):
        return f"rbd:{self.spec(pool, image, snap)}:conf={self.ceph_conf}"

    def assert_identical(self, pool_a, image_a, snap_a, pool_b, image_b):
        """qemu-img compare (real) / byte comparison through the fake's API."""
        if self.kind == "fake":
            a_io = self.src if pool_a == self.src_pool else self.dst
            b_io = self.src if pool_b == self.src_pool else self.dst
            with self.rbd.Image(a_io, image_a, snapshot=snap_a, read_only=True) as a, \
                    self.rbd.Image(b_io, image_b, read_only=True) as b:
                assert a.size() == b.size()
                for offset in range(0, a.size(), 4 * MiB):
                    assert a.read(offset, 4 * MiB) == b.read(offset, 4 * MiB), f"differ near {offset}"
            return
        with self.rbd.Image(self.src if pool_a == self.src_pool else self.dst, image_a) as img:
            size = img.size()
        if size % 512:
            # qemu's rbd driver asserts on sizes that are not whole sectors: compare exports instead
            with tempfile.TemporaryDirectory() as tmp:
                paths = [f"{tmp}/a", f"{tmp}/b"]
                for path, spec in zip(paths, (self.spec(pool_a, image_a, snap_a), self.spec(pool_b, image_b)),
                                      strict=True):
                    subprocess.run(["rbd", "export", "--no-progress", spec, path], check=True,
                                   env=self.cli_env, capture_output=True)
                result = subprocess.run(["cmp", *paths], capture_output=True, text=True)
        else:
            uris = [self._qemu_uri(pool_a, image_a, snap_a), self._qemu_uri(pool_b, image_b)]
            result = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", *uris],
                                    capture_output=True, text=True, env=self.cli_env)
        assert result.returncode == 0, result.stdout + result.stderr

    def allocated(self, pool, image, whole_object=False) -> int:
        """Allocated bytes, parents' data included: `rbd diff` (real) / diff_iterate (fake)."""
        if self.kind == "fake":
            ioctx = self.src if pool == self.src_pool else self.dst
            total = 0
            with self.rbd.Image(ioctx, image, read_only=True) as img:
                def add(offset, length, exists):
                    nonlocal total
                    total += length if exists else 0
                if img.size():
                    img.diff_iterate(0, img.size(), None, add, include_parent=True, whole_object=whole_object)
            return total
        ioctx = self.src if pool == self.src_pool else self.dst
        with self.rbd.Image(ioctx, image, read_only=True) as img:
            if not img.size():
                return 0  # `rbd diff --whole-object` of an empty image aborts (librbd 16.2 assert)
        whole = ["--whole-object"] if whole_object else []
        out = subprocess.run(["rbd", "diff", *whole, "--format", "json", self.spec(pool, image)],
                             capture_output=True, text=True, check=True, env=self.cli_env).stdout
        return sum(e["length"] for e in json.loads(out) if e.get("exists", "true") in ("true", True))


@pytest.fixture(scope="session", params=["fake", pytest.param("real", marks=pytest.mark.ceph)])
def rbd_env(request, tmp_path_factory):
    if request.param == "fake":
        root = str(tmp_path_factory.mktemp("fake-ceph"))
        agent_ceph = {"backend": "fake", "fake_root": root}
        cli_env = conf = None
    else:
        cluster = request.getfixturevalue("ceph_cluster")
        agent_ceph = {"backend": "rados", "conf": cluster.conf, "keyring": cluster.keyring}
        cli_env, conf = cluster.cli_env(), cluster.conf
    backend = open_backend(CephConfig(**agent_ceph))
    handle = backend.connect()
    pools = []
    for role in ("src", "dst"):
        name = f"zst-{role}-{request.param}-{tmp_path_factory.getbasetemp().name[-6:]}"
        if not handle.pool_exists(name):
            handle.create_pool(name)
        pools.append(name)
    src, dst = (handle.open_ioctx(p) for p in pools)
    yield RbdEnv(request.param, backend.rbd, handle, src, dst, pools[0], pools[1], cli_env, conf, agent_ceph)
    src.close()
    dst.close()
    handle.shutdown()
