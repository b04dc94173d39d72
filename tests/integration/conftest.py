"""``rbd_env``: a source and a backup pool on real Ceph or on the fake, with independent checks."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from types import ModuleType

import pytest

from zsagent.ceph import CephConfig, open_backend

MiB = 1024 * 1024
_CHUNK_BYTES = 4 * MiB  # how much the fake-side checks read at once


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
        """md5 of the image as `rbd export ... - | md5sum` sees it (the fake: see ``_fake_chunks``)."""
        if self.kind == "fake":
            digest = hashlib.md5()
            for chunk in self._fake_chunks(pool, image, snap):
                digest.update(chunk)
            return digest.hexdigest()
        export = subprocess.Popen(["rbd", "export", "--no-progress", self.spec(pool, image, snap), "-"],
                                  stdout=subprocess.PIPE, env=self.cli_env)
        out = subprocess.run(["md5sum"], stdin=export.stdout, capture_output=True, text=True, check=True)
        export.stdout.close()
        assert export.wait() == 0
        return out.stdout.split()[0]

    def _fake_chunks(self, pool, image, snap=None) -> Iterator[bytes]:
        """The fake image's bytes in chunks of _CHUNK_BYTES (the last one shorter).

        The head of an image without a parent is read from its file with plain Python, not through the
        fake's rbd API: by the layout in zsagent/ceph/fake/_store.py, byte i of ``head.data`` is byte i
        of the image, and the image reads as zeros past the file's end. A snapshot or a clone is read
        through the API, because reading it from the files would repeat the fake's own snapshot and
        clone logic (which clone file serves a snapshot, what reads through to the parent); that logic
        is pinned against a real cluster by tests/contract.
        """
        root = Path(self.ceph_config["fake_root"])
        pool_dir = root / "pools" / str(json.loads((root / "cluster.json").read_text())["pools"][pool])
        image_dir = pool_dir / json.loads((pool_dir / "pool.json").read_text())["images"][image]
        meta = json.loads((image_dir / "meta.json").read_text())
        if snap is None and meta["parent"] is None:
            with open(image_dir / "head.data", "rb") as f:
                for offset in range(0, meta["size"], _CHUNK_BYTES):
                    length = min(_CHUNK_BYTES, meta["size"] - offset)
                    data = f.read(length)
                    yield data + bytes(length - len(data))
            return
        with self.rbd.Image(self._ioctx(pool), image, snapshot=snap, read_only=True) as img:
            for offset in range(0, img.size(), _CHUNK_BYTES):
                yield img.read(offset, _CHUNK_BYTES)

    def _ioctx(self, pool):
        return self.src if pool == self.src_pool else self.dst

    def _qemu_uri(self, pool, image, snap=None):
        return f"rbd:{self.spec(pool, image, snap)}:conf={self.ceph_conf}"

    def assert_identical(self, pool_a, image_a, snap_a, pool_b, image_b):
        """qemu-img compare (real) / byte comparison of ``_fake_chunks`` (fake)."""
        if self.kind == "fake":
            chunks = zip_longest(self._fake_chunks(pool_a, image_a, snap_a), self._fake_chunks(pool_b, image_b))
            for i, (a, b) in enumerate(chunks):
                assert a == b, f"differ in the chunk at {i * _CHUNK_BYTES}"
            return
        with self.rbd.Image(self._ioctx(pool_a), image_a) as img:
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
        """Allocated bytes, parents' data included: `rbd diff` (real) / diff_iterate (fake).

        The fake's files cannot stand in here: what counts is librbd's extent report (per object with
        ``whole_object``), not the files' allocated blocks, which also leave out zero chunks written as data.
        """
        if self.kind == "fake":
            total = 0
            with self.rbd.Image(self._ioctx(pool), image, read_only=True) as img:
                def add(offset, length, exists):
                    nonlocal total
                    total += length if exists else 0
                if img.size():
                    img.diff_iterate(0, img.size(), None, add, include_parent=True, whole_object=whole_object)
            return total
        with self.rbd.Image(self._ioctx(pool), image, read_only=True) as img:
            if not img.size():
                return 0  # `rbd diff --whole-object` of an empty image aborts (librbd 16.2 assert)
        whole = ["--whole-object"] if whole_object else []
        out = subprocess.run(["rbd", "diff", *whole, "--format", "json", self.spec(pool, image)],
                             capture_output=True, text=True, check=True, env=self.cli_env).stdout
        return sum(e["length"] for e in json.loads(out) if e.get("exists", "true") in ("true", True))


@contextmanager
def _make_rbd_env(kind, request, tmp_path_factory):
    if kind == "fake":
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
        name = f"zst-{role}-{kind}-{tmp_path_factory.getbasetemp().name[-6:]}"
        if not handle.pool_exists(name):
            handle.create_pool(name)
        pools.append(name)
    src, dst = (handle.open_ioctx(p) for p in pools)
    try:
        yield RbdEnv(kind, backend.rbd, handle, src, dst, pools[0], pools[1], cli_env, conf, agent_ceph)
    finally:
        src.close()
        dst.close()
        handle.shutdown()


@pytest.fixture(scope="session")
def fake_rbd_env(request, tmp_path_factory):
    with _make_rbd_env("fake", request, tmp_path_factory) as env:
        yield env


@pytest.fixture(scope="session")
def real_rbd_env(request, tmp_path_factory):
    with _make_rbd_env("real", request, tmp_path_factory) as env:
        yield env


@pytest.fixture(scope="session", params=["fake", pytest.param("real", marks=pytest.mark.ceph)])
def rbd_env(request):
    """A source and a destination pool, on the fake backend and on the real test cluster."""
    return request.getfixturevalue(f"{request.param}_rbd_env")


@pytest.fixture
def api(rbd_env, tmp_path):
    """A running agent: Ceph PS = the env's src pool; BS: Ceph (default) and a raw file directory."""
    from agent_harness import running_agent, write_config

    env = rbd_env
    ps_root, bs_root = tmp_path / "ps", tmp_path / "bs"
    ps_root.mkdir()
    bs_root.mkdir()
    ceph_bs, file_bs = uuid.uuid4().hex, uuid.uuid4().hex
    raw = write_config(tmp_path, env.ceph_config,
                       [{"uuid": uuid.uuid4().hex, "type": "ceph", "pools": [env.src_pool]},
                        {"uuid": uuid.uuid4().hex, "type": "filesystem", "path": str(ps_root)}],
                       [{"uuid": ceph_bs, "type": "ceph", "pool": env.dst_pool, "default": True},
                        {"uuid": file_bs, "type": "filesystem", "path": str(bs_root), "format": "raw"}])
    with running_agent(raw) as agent:
        agent.env, agent.raw_config = env, raw
        agent.ceph_bs, agent.file_bs, agent.ps_root, agent.bs_root = ceph_bs, file_bs, ps_root, bs_root
        yield agent
