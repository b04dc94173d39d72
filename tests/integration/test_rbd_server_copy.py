"""RBD templates whose data objects the OSDs copy server-side (zsagent.sinks.rbd_server_copy), on the real
test cluster: checked with `rbd export | md5sum`, `rbd object-map check` and `rbd diff`, and the
destination pool's object listing for anything left behind."""

import dataclasses
import errno
import json
import subprocess
import threading
import uuid

import pytest

from zsagent.catalog import Volume
from zsagent.ceph import CephConfig, open_backend, server_copy
from zsagent.copy.errors import AllSinksFailed, CopyCancelled
from zsagent.copy.pipeline import PipelineConfig, run_copy
from zsagent.sinks.base import NO_JOURNAL
from zsagent.sinks.rbd_image import RbdImageSink
from zsagent.sinks.rbd_server_copy import RbdServerCopySink
from zsagent.sources.open import open_source
from zsagent.storages.base import Runtime, TemplateJob
from zsagent.storages.ceph import KIND as CEPH

pytestmark = pytest.mark.ceph

KiB, MiB = 1024, 1024 * 1024
ORDER = 20  # 1 MiB objects: small volumes still span many objects
CONFIG = PipelineConfig(chunk_bytes=256 * KiB, depth=4)


@pytest.fixture(scope="module")
def env(real_rbd_env):
    if server_copy._rados_copy is None:
        pytest.fail("zsagent._rados_copy is not built (scripts/setup installs g++ and libradospp-dev)")
    real_rbd_env.backend = open_backend(CephConfig(**real_rbd_env.ceph_config))
    return real_rbd_env


class RecordingSink(RbdServerCopySink):
    """Remembers the template's object prefix, to look for its objects after an abort."""

    def open(self, size, extents):
        super().open(size, extents)
        self.prefix = self.image.block_name_prefix()


def new_name():
    return uuid.uuid4().hex


def make_volume(env, size, writes, parent=None):
    """A volume of ``size`` bytes (or a clone of ``parent`` = (image, snap)) with ``writes`` =
    [(offset, length, byte or None = discard)] applied."""
    name = new_name()
    if parent is None:
        env.rbd.RBD().create(env.src, name, size, order=ORDER, old_format=False)
    else:
        env.rbd.RBD().clone(env.src, parent[0], parent[1], env.src, name)
    with env.rbd.Image(env.src, name) as image:
        for offset, length, byte in writes:
            if byte is None:
                image.discard(offset, length)
            else:
                image.write(bytes([byte]) * length, offset)
    return name


def copy(env, volume, sink_class=RecordingSink, after_snapshot=None, **kw):
    """Snapshot ``volume``, copy it into a new template, release the snapshot; (template, sink, result).
    ``after_snapshot``: writes to the volume's head once the snapshot exists (they must not show)."""
    with env.rbd.Image(env.src, volume, read_only=True) as image:
        size = image.size()
    template = new_name()
    found = Volume(volume, None, "ceph", size, pool=env.src_pool, image=volume, order=ORDER)
    sink = sink_class(env.backend, env.src, volume, template, env.dst, env.dst_pool, template, ORDER)
    with open_source(found, NO_JOURNAL, snapshot=template, ceph=env.backend, cluster=env.cluster) as source:
        if after_snapshot:
            with env.rbd.Image(env.src, volume) as image:
                for offset, length, byte in after_snapshot:
                    if offset + length <= size:
                        image.write(bytes([byte]) * length, offset)
        try:
            return template, sink, run_copy(source, [sink], CONFIG, **kw)
        finally:
            env.snap_md5 = env.export_md5(env.src_pool, volume, template)


def rbd_cli(env, *args):
    return subprocess.run(["rbd", *args], capture_output=True, text=True, env=env.cli_env)


def objects_with_prefix(env, prefix):
    return [o.key for o in env.dst.list_objects() if o.key.startswith(prefix + ".")]


CASES = {
    # every object written, the last one partial (size not a multiple of the object size)
    "dense, partial last object": (5 * MiB + 4097, [(0, 5 * MiB + 4097, 0xA5)]),
    # objects 1 and 4 and half of 6; object 2 written then discarded
    "sparse": (8 * MiB, [(MiB + 7, 100 * KiB, 1), (2 * MiB, MiB, 2), (2 * MiB, MiB, None),
                         (4 * MiB, 3, 3), (6 * MiB, MiB // 2, 4)]),
    "empty": (3 * MiB, []),
}


@pytest.mark.parametrize("case", list(CASES))
def test_server_side_copy_is_the_snapshot_exactly(env, case):
    size, writes = CASES[case]
    volume = make_volume(env, size, writes)

    template, sink, result = copy(env, volume, after_snapshot=[(0, 4096, 0xFF), (7 * MiB, 4096, 0xFF)])

    assert sink.refused is None and sink.server_copy is not None
    assert result.md5 == env.snap_md5 == env.export_md5(env.dst_pool, template)
    assert result.size == size
    check = rbd_cli(env, "object-map", "check", "--no-progress", env.spec(env.dst_pool, template))
    assert check.returncode == 0, check.stderr
    info = json.loads(rbd_cli(env, "info", "--format", "json", env.spec(env.dst_pool, template)).stdout)
    assert {"object-map", "fast-diff"} <= set(info["features"]) and info["flags"] == []  # map valid
    # no object is made where the volume has none
    assert (env.allocated(env.dst_pool, template, whole_object=True)
            <= env.allocated(env.src_pool, volume, whole_object=True))


def test_a_clone_volume_is_written_through_librbd(env):
    base = make_volume(env, 4 * MiB, [(0, 4 * MiB, 7)])
    with env.rbd.Image(env.src, base) as image:
        image.create_snap("s")
        image.protect_snap("s")
    clone = make_volume(env, 0, [(MiB, 4096, 9)], parent=(base, "s"))

    template, sink, result = copy(env, clone)

    assert sink.server_copy is None and "clone" in sink.refused
    assert result.md5 == env.snap_md5 == env.export_md5(env.dst_pool, template)


def test_cancel_during_the_object_copies_leaves_no_image_and_no_object(env):
    volume = make_volume(env, 24 * MiB, [(0, 24 * MiB, 0x5A)])
    cancel = threading.Event()

    def progress(done, total):
        if done >= total // 3:
            cancel.set()

    sinks = []

    class Kept(RecordingSink):
        def open(self, size, extents):
            sinks.append(self)
            super().open(size, extents)

    with pytest.raises(CopyCancelled):
        copy(env, volume, sink_class=Kept, progress=progress, cancel=cancel)

    assert sinks[0].server_copy is not None
    assert not [n for n in env.rbd.RBD().list(env.dst) if n.endswith(".part")]
    assert objects_with_prefix(env, sinks[0].prefix) == []


class FailingJob:
    """An object copy job whose OSD refuses the copy (as a full pool would)."""

    copied = 0

    def run(self, numbers, in_flight):
        raise OSError(errno.EIO, "server-side copy of rbd_data.x.0000000000000000 failed: Input/output error")

    def stop(self):
        pass


def test_a_failed_object_copy_fails_the_copy_and_leaves_nothing(env, monkeypatch):
    volume = make_volume(env, 3 * MiB, [(0, 3 * MiB, 1)])
    monkeypatch.setattr(server_copy.ObjectCopy, "between", classmethod(lambda cls, *a, **kw: cls(FailingJob())))

    with pytest.raises(AllSinksFailed, match="Input/output error"):
        copy(env, volume)

    assert not [n for n in env.rbd.RBD().list(env.dst) if n.endswith(".part")]


@pytest.mark.parametrize("enabled", [True, False])
def test_the_config_switch_picks_the_sink(env, enabled):
    volume = Volume(new_name(), None, "ceph", MiB, pool=env.src_pool, image=new_name(), order=ORDER)
    bs = type("BackupStorage", (), {"settings": CEPH.settings(pool=env.dst_pool)})()
    job = TemplateJob(volume, new_name(), "account", snapshot="snap",
                      pipeline=dataclasses.replace(PipelineConfig(), rbd_server_side_copy=enabled))
    runtime = Runtime(config=None, ceph=env.backend, cluster=env.cluster)

    destination = CEPH.destination(bs, job, NO_JOURNAL, runtime)
    for handle in destination.handles:
        handle.close()

    assert type(destination.sink) is (RbdServerCopySink if enabled else RbdImageSink)


def test_without_a_native_connection_the_data_goes_through_librbd(env, monkeypatch):
    volume = make_volume(env, 3 * MiB, [(0, 3 * MiB, 2)])

    def refuse(cls, *args, **kw):
        raise OSError(errno.ECONNREFUSED, "connecting to the Ceph cluster: Connection refused")

    monkeypatch.setattr(server_copy.ObjectCopy, "between", classmethod(refuse))

    template, sink, result = copy(env, volume)

    assert sink.server_copy is None and "Connection refused" in sink.refused
    assert result.md5 == env.snap_md5 == env.export_md5(env.dst_pool, template)
