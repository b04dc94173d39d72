"""RBD volumes into RBD and raw-file templates, on real Ceph and on the fake, checked with
`rbd export | md5sum`, `md5sum` and `qemu-img compare`."""

import threading
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import md5sum_file

from zsagent.catalog import Volume
from zsagent.copy.errors import AllSinksFailed, CopyCancelled, SourceError
from zsagent.copy.pipeline import PipelineConfig, run_copy
from zsagent.sinks.base import NO_JOURNAL
from zsagent.sinks.raw_file import RawFileSink
from zsagent.sinks.rbd_image import RbdCloneSink, RbdImageSink
from zsagent.sources.open import open_source
from zsagent.sources.rbd_snapshot import RbdSnapshotSource
from zsagent.storages.ceph import CephCopyMode

KiB, MiB = 1024, 1024 * 1024
CHUNK = 256 * KiB
CONFIG = PipelineConfig(chunk_bytes=CHUNK, depth=4)
ORDER = 20  # 1 MiB objects: small volumes still span many objects


def new_name():
    return uuid.uuid4().hex


def write_pattern(env, name, size, writes, parent=None):
    """Create ``name`` (or clone it from ``parent`` = (image, snap)) and apply the writes."""
    rbd = env.rbd
    if parent is None:
        rbd.RBD().create(env.src, name, size, order=ORDER, old_format=False)
    else:
        rbd.RBD().clone(env.src, parent[0], parent[1], env.src, name)
    with rbd.Image(env.src, name) as image:
        size = image.size()
        for offset, length, byte in writes:
            if offset >= size:
                continue
            length = min(length, size - offset)
            if byte is None:
                image.discard(offset, length)
            else:
                image.write(bytes([byte]) * length, offset)


def snapshot(env, name, snap, protect=False):
    with env.rbd.Image(env.src, name) as image:
        image.create_snap(snap)
        if protect:
            image.protect_snap(snap)


def snap_names(env, name):
    with env.rbd.Image(env.src, name) as image:
        return sorted(s["name"] for s in image.list_snaps())


def part_images(env):
    return [n for n in env.rbd.RBD().list(env.dst) if n.endswith(".part")]


def template_sink(env, mode, volume, snapshot, name):
    """What zsagent.storages.ceph makes for ``mode`` (a copy keeps the volume's object size)."""
    if mode is CephCopyMode.COPY:
        with env.rbd.Image(env.src, volume, read_only=True) as image:
            order = image.stat()["order"]
        return RbdImageSink(env.rbd, env.dst, env.dst_pool, name, order)
    return RbdCloneSink(env.rbd, env.src, volume, snapshot, env.dst, env.dst_pool, name,
                        flatten=mode is CephCopyMode.FLATTEN)


def copy_volume(env, volume, snapshot, sinks, config=CONFIG, **kw):
    """Snapshot ``volume`` as ``snapshot``, copy it into ``sinks``, release the snapshot (open_source)."""
    with env.rbd.Image(env.src, volume, read_only=True) as image:
        size = image.size()
    found = Volume(volume, None, "ceph", size, pool=env.src_pool, image=volume)
    backend = type("Backend", (), {"rbd": env.rbd})
    with open_source(found, NO_JOURNAL, snapshot=snapshot, ceph=backend, cluster=env.cluster) as source:
        return run_copy(source, sinks, config, **kw)


def make_template(env, volume, mode=CephCopyMode.COPY, extra_sinks=(), config=CONFIG, **kw):
    template = new_name()
    sink = template_sink(env, mode, volume, template, template)
    result = copy_volume(env, volume, template, [sink, *extra_sinks], config, **kw)
    return template, result


writes_strategy = st.lists(
    st.tuples(st.integers(0, 7 * MiB), st.integers(1, 2 * MiB), st.one_of(st.none(), st.integers(0, 255))),
    max_size=5)


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(size=st.one_of(st.sampled_from([0, 1, MiB - 1, MiB + 1, 4 * MiB + 3]), st.integers(0, 7 * MiB)),
       writes=writes_strategy)
def test_copy_of_any_write_pattern_is_exact_and_sparse(rbd_env, tmp_path_factory, size, writes):
    env = rbd_env
    volume = new_name()
    write_pattern(env, volume, size, writes)
    snapshot(env, volume, "ref")
    raw = tmp_path_factory.mktemp("bs") / "t.raw"

    template, result = make_template(env, volume, extra_sinks=[RawFileSink(raw)])

    expected = env.export_md5(env.src_pool, volume, "ref")
    assert result.md5 == expected == env.export_md5(env.dst_pool, template) == md5sum_file(raw)
    assert result.size == size
    env.assert_identical(env.src_pool, volume, "ref", env.dst_pool, template)
    # sparse: the template (same object size) has data in no object where the volume has none
    assert (env.allocated(env.dst_pool, template, whole_object=True)
            <= env.allocated(env.src_pool, volume, whole_object=True))
    assert result.published[0].install_path == f"ceph://{env.dst_pool}/{template}"
    assert snap_names(env, volume) == ["ref"]
    assert part_images(env) == []


@settings(max_examples=4, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(base=writes_strategy, middle=writes_strategy, top=writes_strategy)
def test_clone_of_clone_volume_copies_its_parents_data(rbd_env, base, middle, top):
    env = rbd_env
    grand, parent, volume = new_name(), new_name(), new_name()
    write_pattern(env, grand, 6 * MiB + 5, base)
    snapshot(env, grand, "s", protect=True)
    write_pattern(env, parent, 0, middle, parent=(grand, "s"))
    snapshot(env, parent, "s", protect=True)
    write_pattern(env, volume, 0, top, parent=(parent, "s"))
    snapshot(env, volume, "ref")

    template, result = make_template(env, volume)

    assert result.md5 == env.export_md5(env.src_pool, volume, "ref") == env.export_md5(env.dst_pool, template)
    env.assert_identical(env.src_pool, volume, "ref", env.dst_pool, template)
    with env.rbd.Image(env.dst, template) as image, pytest.raises(env.rbd.ImageNotFound):
        image.parent_info()  # an independent image


def dense_volume(env, size=6 * MiB + 4097):
    volume = new_name()
    write_pattern(env, volume, size, [(0, size, 0x5A), (MiB, MiB, None), (3 * MiB + 7, 100_000, 0x01)])
    snapshot(env, volume, "ref")
    return volume


def test_clone_mode_keeps_the_protected_snapshot_as_parent(rbd_env):
    env = rbd_env
    volume = dense_volume(env)
    template, result = make_template(env, volume, CephCopyMode.CLONE)

    published = result.published[0]
    assert published.parent == f"{env.src_pool}/{volume}@{template}"
    assert published.actual_size == 0  # nothing of its own yet
    assert result.md5 == env.export_md5(env.dst_pool, template) == env.export_md5(env.src_pool, volume, "ref")
    assert snap_names(env, volume) == sorted(["ref", template])
    with env.rbd.Image(env.src, volume) as image:
        assert image.is_protected_snap(template)
    with env.rbd.Image(env.dst, template) as image:
        assert image.parent_info()[1:] == (volume, template)


def test_flatten_mode_makes_an_independent_image_and_drops_the_snapshot(rbd_env):
    env = rbd_env
    volume = dense_volume(env)
    template, result = make_template(env, volume, CephCopyMode.FLATTEN)

    assert result.published[0].parent is None
    assert result.md5 == env.export_md5(env.dst_pool, template) == env.export_md5(env.src_pool, volume, "ref")
    with env.rbd.Image(env.dst, template) as image, pytest.raises(env.rbd.ImageNotFound):
        image.parent_info()
    assert snap_names(env, volume) == ["ref"]


def _failing_read(fail_at):
    """A replacement for RbdSnapshotSource.read whose ``fail_at``-th call fails."""
    original, calls, lock = RbdSnapshotSource.read, [], threading.Lock()

    def read(source, offset, length):
        with lock:
            calls.append(offset)
            n = len(calls) - 1
        if n == fail_at:
            raise OSError(5, "injected read error")
        return original(source, offset, length)

    return read


class _FailingSink(RbdImageSink):
    fail_at = 0

    def write(self, offset, data):
        self.fail_at -= 1
        if self.fail_at < 0:
            raise OSError(5, "injected write error")
        super().write(offset, data)


def assert_nothing_left(env, volume, before_md5):
    assert snap_names(env, volume) == ["ref"]
    assert part_images(env) == []
    assert env.export_md5(env.src_pool, volume) == before_md5


@pytest.mark.parametrize("mode", list(CephCopyMode))
@pytest.mark.parametrize("fail_at", [0, 5])
def test_read_failure_at_chunk_k_leaves_nothing_behind(rbd_env, monkeypatch, mode, fail_at):
    env = rbd_env
    volume = dense_volume(env)
    before = env.export_md5(env.src_pool, volume)
    monkeypatch.setattr(RbdSnapshotSource, "read", _failing_read(fail_at))
    with pytest.raises(SourceError, match="injected read error"):
        make_template(env, volume, mode)
    assert_nothing_left(env, volume, before)


@pytest.mark.parametrize("fail_at", [0, 5])
def test_write_failure_at_chunk_k_leaves_nothing_behind(rbd_env, tmp_path, fail_at):
    env = rbd_env
    volume = dense_volume(env)
    before = env.export_md5(env.src_pool, volume)
    template = new_name()
    sink = _FailingSink(env.rbd, env.dst, env.dst_pool, template)
    sink.fail_at = fail_at
    raw = tmp_path / "bs" / "t.raw"
    with pytest.raises(AllSinksFailed, match="injected write error"):
        copy_volume(env, volume, template, [sink, _BrokenRawSink(raw)])
    assert_nothing_left(env, volume, before)
    assert not (tmp_path / "bs").exists()


class _BrokenRawSink(RawFileSink):
    def commit(self, content_md5=None):
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize("mode", list(CephCopyMode))
@pytest.mark.parametrize("cancel_at", [1, 6])
def test_cancel_at_chunk_k_leaves_nothing_behind(rbd_env, mode, cancel_at):
    env = rbd_env
    volume = dense_volume(env)
    before = env.export_md5(env.src_pool, volume)
    cancel, seen = threading.Event(), []

    def progress(done, total):
        seen.append(done)
        if len(seen) == cancel_at:
            cancel.set()

    with pytest.raises(CopyCancelled):
        make_template(env, volume, mode, progress=progress, cancel=cancel)
    assert_nothing_left(env, volume, before)


def test_a_failing_destination_does_not_stop_the_others(rbd_env, tmp_path):
    env = rbd_env
    volume = dense_volume(env)
    raw = tmp_path / "t.raw"
    broken = _BrokenRawSink(raw)
    template, result = make_template(env, volume, extra_sinks=[broken])
    assert [f.sink for f in result.failed] == [broken] and [f.description for f in result.failed] == [str(raw)]
    assert result.md5 == env.export_md5(env.dst_pool, template)
    assert not raw.exists() and not (tmp_path / "t.raw.part").exists()


def test_existing_template_name_is_refused_and_kept(rbd_env):
    env = rbd_env
    volume = dense_volume(env)
    template, _ = make_template(env, volume)
    before = env.export_md5(env.dst_pool, template)
    sink = RbdImageSink(env.rbd, env.dst, env.dst_pool, template)
    with pytest.raises(AllSinksFailed, match="exists"):
        copy_volume(env, volume, new_name(), [sink])
    assert env.export_md5(env.dst_pool, template) == before
    assert_nothing_left(env, volume, env.export_md5(env.src_pool, volume))


def test_concurrent_copies_from_one_and_from_different_volumes(rbd_env):
    env = rbd_env
    volumes = [dense_volume(env, 3 * MiB + 1), dense_volume(env, 5 * MiB)]
    jobs = [volumes[0], volumes[0], volumes[0], volumes[1], volumes[1]]
    results, errors = {}, []

    def run(i, volume):
        try:
            results[i] = make_template(env, volume)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i, v)) for i, v in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for i, volume in enumerate(jobs):
        template, result = results[i]
        assert result.md5 == env.export_md5(env.src_pool, volume, "ref") == env.export_md5(env.dst_pool,
                                                                                               template)
    for volume in volumes:
        assert snap_names(env, volume) == ["ref"]
