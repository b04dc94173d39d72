"""What only the fake needs to prove: API parity with the real modules, and its storage being safe for
several threads and processes, persistent and sparse."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from rbd_contract import MiB
from support import unavailable

from zsagent.ceph import CephConfig, open_backend
from zsagent.ceph.fake import rados as fake_rados
from zsagent.ceph.fake import rbd as fake_rbd

GiB = 1024 * MiB


def _real_modules():
    try:
        import rados
        import rbd
    except ImportError as e:  # pragma: no cover - scripts/setup installs them
        unavailable(f"python3-rados/python3-rbd do not import: {e}")
    return rados, rbd


def _exception_classes(module) -> dict[str, type]:
    return {
        name: obj
        for name, obj in vars(module).items()
        if isinstance(obj, type) and issubclass(obj, BaseException) and not name.startswith("_")
    }


@pytest.mark.parametrize("which", ["rados", "rbd"])
def test_exceptions_match_the_real_module(which: str) -> None:
    real = dict(zip(("rados", "rbd"), _real_modules(), strict=True))[which]
    fake = {"rados": fake_rados, "rbd": fake_rbd}[which]
    real_classes = _exception_classes(real)
    fake_classes = _exception_classes(fake)
    assert set(real_classes) <= set(fake_classes)
    for name, real_cls in real_classes.items():
        fake_cls = fake_classes[name]
        assert [c.__name__ for c in fake_cls.__mro__] == [c.__name__ for c in real_cls.__mro__], name
        args = ("x", 5, 0) if name == "ExtendMismatch" else ("x",)
        kwargs = {} if name == "ExtendMismatch" or name == "Error" and which == "rbd" else {"errno": 5}
        real_exc, fake_exc = real_cls(*args, **kwargs), fake_cls(*args, **kwargs)
        assert str(fake_exc) == str(real_exc), name
        assert getattr(fake_exc, "errno", "-") == getattr(real_exc, "errno", "-"), name


def test_feature_constants_match_the_real_module() -> None:
    _, real_rbd = _real_modules()
    for name in fake_rbd.__all__:
        if name.startswith("RBD_FEATURE") or name == "ECANCELED":
            assert getattr(fake_rbd, name) == getattr(real_rbd, name), name


def test_librbd_abort_is_not_catchable_as_an_error() -> None:
    assert not issubclass(fake_rbd.LibrbdAbort, Exception)


# ---------------------------------------------------------------- storage


@pytest.fixture
def fake(tmp_path: Path):
    backend = open_backend(CephConfig(backend="fake", fake_root=str(tmp_path)))
    cluster = backend.connect()
    cluster.create_pool("p")
    ioctx = cluster.open_ioctx("p")
    yield backend, cluster, ioctx, tmp_path
    ioctx.close()
    cluster.shutdown()


def test_state_survives_a_new_connection(fake) -> None:
    backend, cluster, ioctx, root = fake
    rbd = backend.rbd
    rbd.RBD().create(ioctx, "img", 4 * MiB)
    with rbd.Image(ioctx, "img") as image:
        image.write(b"kept", 100)
        image.create_snap("s")
    other = open_backend(CephConfig(backend="fake", fake_root=str(root))).connect()
    with other.open_ioctx("p") as io2, rbd.Image(io2, "img", snapshot="s") as snap:
        assert snap.read(100, 4) == b"kept"
    other.shutdown()


def test_big_images_are_sparse_and_readable(fake) -> None:
    backend, cluster, ioctx, root = fake
    rbd = backend.rbd
    rbd.RBD().create(ioctx, "big", GiB)
    with rbd.Image(ioctx, "big") as image:
        image.write(b"x" * MiB, GiB - MiB)
        image.create_snap("s")
        image.write(b"y" * MiB, GiB - MiB)
    blocks = sum(p.stat().st_blocks for p in root.rglob("*.data"))
    assert blocks * 512 < 8 * MiB  # two MiB of data, not a GiB
    with rbd.Image(ioctx, "big", snapshot="s", read_only=True) as snap:
        data = snap.read(0, GiB)  # one call, through the copy-on-write clone of the last object
    assert len(data) == GiB and data[-MiB:] == b"x" * MiB and data[:MiB] == bytes(MiB)


def test_threads_share_an_image(fake) -> None:
    backend, cluster, ioctx, root = fake
    rbd = backend.rbd
    rbd.RBD().create(ioctx, "t", 16 * MiB)
    image = rbd.Image(ioctx, "t")
    errors = []

    def worker(n: int) -> None:
        try:
            for i in range(16):
                offset = (i * 8 + n) * 128 * 1024
                image.write(bytes([n + 1]) * 128 * 1024, offset)
                assert image.read(offset, 128 * 1024) == bytes([n + 1]) * 128 * 1024
                if n == 0 and i % 4 == 0:
                    image.create_snap(f"s{i}")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    data = image.read(0, 16 * MiB)
    for n in range(8):
        for i in range(16):
            offset = (i * 8 + n) * 128 * 1024
            assert data[offset : offset + 128 * 1024] == bytes([n + 1]) * 128 * 1024
    assert [s["name"] for s in image.list_snaps()] == ["s0", "s4", "s8", "s12"]
    image.close()


_WORKER = textwrap.dedent(
    """
    import sys
    from zsagent.ceph import CephConfig, open_backend
    root, n = sys.argv[1], int(sys.argv[2])
    backend = open_backend(CephConfig(backend="fake", fake_root=root))
    cluster = backend.connect()
    rbd = backend.rbd
    with cluster.open_ioctx("p") as ioctx:
        rbd.RBD().create(ioctx, f"own-{n}", 4 << 20)
        with rbd.Image(ioctx, "shared") as image:
            for i in range(20):
                image.write(bytes([n + 1]) * 65536, (i * 4 + n) * 65536)
                if i % 5 == 0:
                    image.create_snap(f"p{n}-{i}")
                image.metadata_set(f"k{n}", str(i))
    cluster.shutdown()
    """
)


def test_processes_share_the_cluster(fake) -> None:
    backend, cluster, ioctx, root = fake
    rbd = backend.rbd
    rbd.RBD().create(ioctx, "shared", 8 * MiB)
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(root), str(n)], stderr=subprocess.PIPE, text=True)
        for n in range(4)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert sorted(rbd.RBD().list(ioctx)) == ["own-0", "own-1", "own-2", "own-3", "shared"]
    with rbd.Image(ioctx, "shared", read_only=True) as image:
        data = image.read(0, 8 * MiB)
        assert len(list(image.list_snaps())) == 16
        assert sorted(image.metadata_list()) == [(f"k{n}", "19") for n in range(4)]
        for snap in image.list_snaps():  # every snapshot a consistent point in time
            with rbd.Image(ioctx, "shared", snapshot=snap["name"], read_only=True) as at:
                n, i = (int(x) for x in snap["name"][1:].split("-"))
                offset = (i * 4 + n) * 65536
                assert at.read(offset, 65536) == bytes([n + 1]) * 65536
    for n in range(4):
        for i in range(20):
            offset = (i * 4 + n) * 65536
            assert data[offset : offset + 65536] == bytes([n + 1]) * 65536


def test_watch_ends_with_the_process(fake) -> None:
    backend, cluster, ioctx, root = fake
    rbd = backend.rbd
    rbd.RBD().create(ioctx, "w", MiB)
    script = textwrap.dedent(
        """
        import os, sys
        from zsagent.ceph import CephConfig, open_backend
        backend = open_backend(CephConfig(backend="fake", fake_root=sys.argv[1]))
        ioctx = backend.connect().open_ioctx("p")
        image = backend.rbd.Image(ioctx, "w")
        print("open", flush=True)
        sys.stdin.read()
        os._exit(0)  # dies holding the image open
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script, str(root)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "open"
    with pytest.raises(rbd.ImageBusy):
        rbd.RBD().remove(ioctx, "w")
    proc.communicate("", timeout=60)
    rbd.RBD().remove(ioctx, "w")  # real Ceph would wait for the watch to time out (30 s)


# ---------------------------------------------------------------- RADOS objects across processes

_RACER = textwrap.dedent(
    """
    import sys
    from zsagent.ceph import CephConfig, open_backend
    root, n = sys.argv[1], sys.argv[2]
    backend = open_backend(CephConfig(backend="fake", fake_root=root))
    rados = backend.rados
    cluster = backend.connect()
    ioctx = cluster.open_ioctx("p")
    ioctx.set_namespace("race")
    sys.stdin.readline()  # start together
    op = ioctx.create_write_op()
    op.new(rados.LIBRADOS_CREATE_EXCLUSIVE)
    ioctx.set_omap(op, ("owner",), (n.encode(),))
    try:
        ioctx.operate_write_op(op, "record")
        created = "created"
    except rados.ObjectExists:
        created = "exists"
    finally:
        ioctx.release_write_op(op)
    duration_s = int(sys.argv[3])
    try:
        ioctx.lock_exclusive("volume", "copy", "agent", duration=duration_s)  # the same cookie everywhere
        locked = "locked"
    except rados.ObjectBusy:
        locked = "busy"
    print(created, locked, flush=True)
    cluster.shutdown()  # exits holding the lock: only its duration frees it
    """
)


def test_processes_racing_a_guarded_create_and_a_lock_have_one_winner_each(fake) -> None:
    backend, cluster, ioctx, root = fake
    rados = backend.rados
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(root), str(n), "600"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
             for n in range(4)]  # fmt: skip
    outs = []
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outs.append(out.split())
    assert sorted(created for created, _ in outs) == ["created", "exists", "exists", "exists"]
    ioctx.set_namespace("race")
    winner = next(n for n, (created, _) in enumerate(outs) if created == "created")
    op = ioctx.create_read_op()
    it, _ = ioctx.get_omap_vals(op, "", "", -1)
    ioctx.operate_read_op(op, "record")
    ioctx.release_read_op(op)
    assert list(it) == [("owner", str(winner).encode())]
    assert sorted(lock for _, lock in outs) == ["busy", "busy", "busy", "locked"]
    with pytest.raises(rados.ObjectBusy):  # its holder exited, its lease has not run out
        ioctx.lock_exclusive("volume", "copy", "agent")


def test_the_lock_of_an_exited_process_expires(fake) -> None:
    backend, cluster, ioctx, root = fake
    rados = backend.rados
    out = subprocess.run([sys.executable, "-c", _RACER, str(root), "0", "1"], input="go\n", capture_output=True,
                         text=True, timeout=120, check=True).stdout  # fmt: skip
    assert out.split() == ["created", "locked"]
    ioctx.set_namespace("race")
    deadline = time.monotonic() + 60
    while True:
        try:
            ioctx.lock_exclusive("volume", "copy", "agent", duration=30)
            break
        except rados.ObjectBusy:
            assert time.monotonic() < deadline, "the lock of the exited process never expired"
            time.sleep(0.1)
    ioctx.unlock("volume", "copy", "agent")


def test_rados_constants_and_calls_match_the_real_module() -> None:
    import inspect

    real_rados, _ = _real_modules()
    for name in fake_rados.__all__:
        if name.startswith("LIBRADOS_"):
            assert getattr(fake_rados, name) == getattr(real_rados, name), name
    for cls in ("Ioctx", "WriteOp", "ReadOp"):
        fake_cls, real_cls = getattr(fake_rados, cls), getattr(real_rados, cls)
        for name in dir(fake_cls):
            member = getattr(fake_cls, name)
            if name.startswith("_") or not inspect.isfunction(member):
                continue
            assert hasattr(real_cls, name), f"{cls}.{name} is not in the real module"
            real_params = list(inspect.signature(getattr(real_cls, name)).parameters)
            assert list(inspect.signature(member).parameters) == real_params, f"{cls}.{name}"
