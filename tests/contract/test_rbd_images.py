"""Images: create, list, remove, rename, stat, reads and writes at the edges, resize, discard, metadata."""

from __future__ import annotations

import pytest
from rbd_contract import ContractBackend, KiB, MiB, raises, shared_snapshotted

# ---------------------------------------------------------------- create / list / remove / rename


def test_create_list_remove(backend: ContractBackend) -> None:
    rbd = backend.rbd
    a = backend.create(MiB)
    b = backend.create(0)
    names = rbd.RBD().list(backend.ioctx)
    assert a in names and b in names
    rbd.RBD().remove(backend.ioctx, a)
    assert a not in rbd.RBD().list(backend.ioctx)
    with raises(rbd.ImageNotFound, 2):
        rbd.RBD().remove(backend.ioctx, a)
    with raises(rbd.ImageNotFound, 2):
        rbd.Image(backend.ioctx, a)
    with raises(rbd.ImageExists, 17):
        backend.create(MiB, name=b)


def test_image_not_found_is_an_rbd_oserror(backend: ContractBackend) -> None:
    rbd = backend.rbd
    with pytest.raises(rbd.OSError) as info:
        rbd.Image(backend.ioctx, backend.name("missing"))
    assert isinstance(info.value, rbd.ImageNotFound) and isinstance(info.value, rbd.Error)
    assert info.value.errno == 2
    assert str(info.value).startswith("[errno 2] RBD image not found (")


@pytest.mark.parametrize(
    ("order", "obj_size"), [(None, 4 * MiB), (0, 4 * MiB), (12, 4 * KiB), (20, MiB), (25, 32 * MiB)]
)
def test_create_order(backend: ContractBackend, order, obj_size) -> None:
    name = backend.create(3 * MiB + 1, order=order)
    stat = backend.open(name, read_only=True).stat()
    assert stat["obj_size"] == obj_size
    assert stat["num_objs"] == -(-(3 * MiB + 1) // obj_size)


@pytest.mark.parametrize("order", [11, 26, 27])
def test_create_order_out_of_range(backend: ContractBackend, order) -> None:
    with raises(backend.rbd.ArgumentOutOfRange, 33):
        backend.create(MiB, order=order)


def test_create_features(backend: ContractBackend) -> None:
    rbd = backend.rbd
    default = backend.open(backend.create(MiB), read_only=True)
    assert default.features() == 61  # layering, exclusive-lock, object-map, fast-diff, deep-flatten
    assert backend.open(backend.create(MiB, features=1), read_only=True).features() == 1
    assert backend.open(backend.create(MiB, features=0), read_only=True).features() == 0
    with raises(rbd.InvalidArgument, 22):  # object-map needs exclusive-lock
        backend.create(MiB, features=1 | 8)


def test_create_negative_size(backend: ContractBackend) -> None:
    with pytest.raises(OverflowError):
        backend.create(-1)


def test_rename(backend: ContractBackend) -> None:
    rbd = backend.rbd
    src, other = backend.create(MiB), backend.create(MiB)
    image = backend.open(src)
    image.write(b"kept", 0)
    dest = backend.name("renamed")
    rbd.RBD().rename(backend.ioctx, src, dest)  # allowed while open
    # (what get_name() then says is racy on real Ceph: the old name until the handle refreshes)
    image.write(b"more", 4)  # the handle keeps working
    assert backend.open(dest).read(0, 8) == b"keptmore"
    assert src not in rbd.RBD().list(backend.ioctx)
    with raises(rbd.ImageNotFound, 2):
        rbd.RBD().rename(backend.ioctx, src, backend.name())
    with raises(rbd.ImageExists, 17):
        rbd.RBD().rename(backend.ioctx, dest, other)
    with raises(rbd.ImageExists, 17):
        rbd.RBD().rename(backend.ioctx, dest, dest)


def test_remove_refused_while_open_read_write(backend: ContractBackend) -> None:
    rbd = backend.rbd
    name = backend.create(MiB)
    image = rbd.Image(backend.ioctx, name)
    with raises(rbd.ImageBusy, 16):
        rbd.RBD().remove(backend.ioctx, name)
    image.close()
    reader = rbd.Image(backend.ioctx, name, read_only=True)  # read-only handles are no watchers
    rbd.RBD().remove(backend.ioctx, name)
    reader.close()
    assert name not in rbd.RBD().list(backend.ioctx)


def test_remove_refused_with_snapshots_even_when_open(backend: ContractBackend) -> None:
    rbd = backend.rbd
    name = shared_snapshotted(backend)
    with raises(rbd.ImageHasSnapshots, 39):
        rbd.RBD().remove(backend.ioctx, name)
    backend.open(name)
    with raises(rbd.ImageHasSnapshots, 39):  # checked before watchers
        rbd.RBD().remove(backend.ioctx, name)


# ---------------------------------------------------------------- stat, size, reads, writes


@pytest.mark.parametrize("size", [0, 1, 4 * MiB - 1, 4 * MiB, 4 * MiB + 1, 20 * MiB + 5])
def test_stat_and_size(backend: ContractBackend, size: int) -> None:
    name = backend.create(size)
    image = backend.open(name)
    stat = image.stat()
    assert image.size() == size
    assert {k: v for k, v in stat.items() if k != "block_name_prefix"} == {
        "size": size,
        "obj_size": 4 * MiB,
        "num_objs": -(-size // (4 * MiB)),
        "order": 22,
        "parent_pool": 2**64 - 1,  # deprecated fields: parent_info() tells the parent
        "parent_name": b"",
    }
    assert stat["block_name_prefix"] == f"rbd_data.{image.id()}"
    assert image.get_name() == name
    assert image.read(0, 0) == b""


def test_reads_are_short_at_the_end(backend: ContractBackend) -> None:
    rbd = backend.rbd
    size = 4 * MiB + 1
    image = backend.open(backend.create(size))
    image.write(b"\xab" * 10, size - 10)
    assert image.read(size - 10, 100) == b"\xab" * 10
    assert image.read(0, 16 * MiB) == bytes(size - 10) + b"\xab" * 10
    assert image.read(size, 0) == b"" and image.read(size + 100, 0) == b""
    with raises(rbd.InvalidArgument, 22):
        image.read(size, 1)
    with raises(rbd.InvalidArgument, 22):
        image.read(size + 1, 1)
    with pytest.raises(OverflowError):
        image.read(-1, 1)


def test_zero_size_image(backend: ContractBackend) -> None:
    rbd = backend.rbd
    image = backend.open(backend.create(0))
    assert image.read(0, 0) == b""
    with raises(rbd.InvalidArgument, 22):
        image.read(0, 10)
    with raises(rbd.InvalidArgument, 22):
        image.write(b"x", 0)
    assert image.write(b"", 0) == 0


def test_writes_at_and_past_the_end(backend: ContractBackend) -> None:
    rbd = backend.rbd
    size = 4 * MiB + 5
    image = backend.open(backend.create(size))
    assert image.write(b"abcde", size - 5) == 5
    with raises(rbd.InvalidArgument, 22):
        image.write(b"x", size)
    with raises(rbd.InvalidArgument, 22):
        image.write(b"x", size + MiB)
    assert image.write(b"", size + MiB) == 0
    with raises(rbd.IncompleteWriteError, None):  # what fits is written, then the error
        image.write(b"0123456789", size - 3)
    assert image.read(size - 5, 5) == b"ab012"


def test_write_takes_bytes_only(backend: ContractBackend) -> None:
    image = backend.open(backend.create(MiB))
    for data in (bytearray(b"ab"), memoryview(b"ab"), "ab"):
        with pytest.raises(TypeError):
            image.write(data, 0)


def test_unaligned_image_roundtrip(backend: ContractBackend) -> None:
    size = 8 * MiB + 3
    image = backend.open(backend.create(size))
    data = bytes(range(256)) * (size // 256) + b"xyz"
    image.write(data, 0)
    assert image.read(0, size) == data
    assert image.read(4 * MiB - 2, 4) == data[4 * MiB - 2 : 4 * MiB + 2]
    one = backend.open(backend.create(1))
    one.write(b"q", 0)
    assert one.read(0, 10) == b"q"


def test_resize(backend: ContractBackend) -> None:
    rbd = backend.rbd
    image = backend.open(backend.create(8 * MiB))
    image.write(b"a" * 100, 4 * MiB)
    image.resize(4 * MiB + 50)
    assert image.size() == 4 * MiB + 50
    assert image.read(4 * MiB, 100) == b"a" * 50
    image.resize(12 * MiB)
    assert image.read(4 * MiB, 100) == b"a" * 50 + bytes(50)  # the cut tail does not come back
    image.resize(0)
    assert image.size() == 0
    with pytest.raises(OverflowError):
        image.resize(-1)
    with backend.open(backend.create(MiB), read_only=True) as ro, raises(rbd.ReadOnlyImage, 30):
        ro.resize(2 * MiB)


def test_discard_granularity_and_bounds(backend: ContractBackend) -> None:
    rbd = backend.rbd
    size = 8 * MiB + 70000
    image = backend.open(backend.create(size))
    image.write(b"a" * size, 0)
    image.discard(MiB, 100)  # below the 64 KiB discard granularity: nothing happens
    assert image.read(MiB, 100) == b"a" * 100
    image.discard(2 * MiB + 1, 128 * KiB)  # shrunk inward to 64 KiB boundaries
    assert image.read(2 * MiB, 64 * KiB) == b"a" * (64 * KiB)
    assert image.read(2 * MiB + 64 * KiB, 64 * KiB) == bytes(64 * KiB)
    assert image.read(2 * MiB + 128 * KiB, 1) == b"a"
    image.discard(8 * MiB, 70000)  # the partial last object: only whole 64 KiB units go
    assert image.read(8 * MiB, 70000) == bytes(64 * KiB) + b"a" * (70000 - 64 * KiB)
    image.discard(size - 10, 100)  # clipped at the end
    image.discard(size, 0)
    with raises(rbd.InvalidArgument, 22):
        image.discard(size, 10)
    with raises(rbd.InvalidArgument, 22):
        image.discard(size + MiB, 10)


def test_closed_image(backend: ContractBackend) -> None:
    rbd = backend.rbd
    image = rbd.Image(backend.ioctx, backend.create(MiB))
    image.close()
    image.close()  # twice is fine
    for call in (image.size, image.stat, lambda: image.read(0, 1), lambda: image.write(b"x", 0)):
        with raises(rbd.InvalidArgument, None):
            call()


def test_read_only_handle(backend: ContractBackend) -> None:
    rbd = backend.rbd
    image = backend.open(backend.create(MiB), read_only=True)
    for call in (
        lambda: image.write(b"x", 0),
        lambda: image.discard(0, 64 * KiB),
        lambda: image.resize(2 * MiB),
        lambda: image.create_snap("s"),
        lambda: image.metadata_set("k", "v"),
    ):
        with raises(rbd.ReadOnlyImage, 30):
            call()
    image.flush()
    assert image.read(0, 4) == bytes(4)


def test_metadata(backend: ContractBackend) -> None:
    image = backend.open(backend.create(MiB))
    assert list(image.metadata_list()) == []
    with pytest.raises(KeyError):
        image.metadata_get("k")
    with pytest.raises(KeyError):
        image.metadata_remove("k")
    image.metadata_set("k2", "v2")
    image.metadata_set("k1", "v1")
    image.metadata_set("k1", "v1b")
    image.metadata_set("raw", b"bytes are accepted")
    assert image.metadata_get("k1") == "v1b"
    assert image.metadata_get("raw") == "bytes are accepted"
    assert list(image.metadata_list()) == [("k1", "v1b"), ("k2", "v2"), ("raw", "bytes are accepted")]
    image.metadata_remove("k1")
    assert [k for k, _ in image.metadata_list()] == ["k2", "raw"]
    name = shared_snapshotted(backend)
    backend.open(name).metadata_set("shared", "yes")
    with backend.open(name, snapshot="a") as snap:
        assert snap.metadata_get("shared") == "yes"  # image-level, readable from a snapshot handle


# ---------------------------------------------------------------- rados


def test_rados_pools(backend: ContractBackend) -> None:
    rados = backend.rados
    cluster = backend.cluster
    missing = backend.name("nopool")
    assert not cluster.pool_exists(missing)
    assert cluster.pool_exists(backend.pool)
    assert backend.pool in cluster.list_pools()
    with raises(rados.ObjectNotFound, 2):
        cluster.open_ioctx(missing)
    with raises(rados.ObjectNotFound, 2):
        cluster.delete_pool(missing)
    with raises(rados.ObjectExists, 17):
        cluster.create_pool(backend.pool)
    with cluster.open_ioctx(backend.pool) as ioctx:
        assert ioctx.get_pool_name() == backend.pool
        assert isinstance(ioctx.get_pool_id(), int)


def test_rados_create_and_delete_pool(backend: ContractBackend) -> None:
    cluster = backend.cluster
    name = backend.name("zsc-tmp")
    cluster.create_pool(name)
    try:
        assert cluster.pool_exists(name)
        with cluster.open_ioctx(name) as ioctx:
            backend.rbd.RBD().pool_init(ioctx, False)
            backend.create(MiB, ioctx=ioctx)
    finally:
        cluster.delete_pool(name)
    assert not cluster.pool_exists(name)


def test_rados_handle_states(backend: ContractBackend) -> None:
    rados = backend.rados
    fresh = backend.ceph.connect()
    assert fresh.state == "connected"
    with raises(rados.RadosStateError, None):
        fresh.connect()
    fresh.shutdown()
    assert fresh.state == "shutdown"
    fresh.shutdown()  # twice is fine
    with raises(rados.RadosStateError, None):
        fresh.open_ioctx(backend.pool)
    with raises(rados.RadosStateError, None):
        fresh.list_pools()
