"""One contract for every destination the service makes (zsagent.storages: Ceph copy/clone/flatten, file
raw/qcow2/qemu-img, SFTP raw/qcow2/qemu-img), each built by its storage kind as the service builds it:

- a copy publishes exactly the final name, checked by an independent tool, and the journal then names
  exactly that (the image record takes it over);
- while the copy runs, everything that exists is journalled;
- a failure before publishing (a read error), a cancel, and a failure right after publishing leave
  nothing on the storage and nothing in the journal.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import RecordingJournal, md5sum_file
from test_sftp import remote_dir, remote_md5, remote_tree, rsh  # noqa: F401 - remote_dir is a fixture

from zsagent.catalog import Volume
from zsagent.ceph import CephConfig, open_backend
from zsagent.config import parse_config
from zsagent.copy.errors import AllSinksFailed, CopyCancelled, SourceError
from zsagent.copy.pipeline import PipelineConfig
from zsagent.sinks.base import NO_JOURNAL
from zsagent.sources.open import open_source
from zsagent.sources.raw_file import RawFileSource
from zsagent.storages import KINDS, Runtime, TemplateJob, TemplateTags
from zsagent.transfer import transfer

KiB, MiB = 1024, 1024 * 1024
SMALL = PipelineConfig(chunk_bytes=256 * KiB, depth=4)
ACCOUNT = "36c27e8ff05c4780bf6d2fa65700f22e"
BS_UUID = "1b8ab68b7e224a30aa31f00f1db2b5a6"


@dataclass
class Case:
    """One destination kind: how to open its source, and what exists on its storage right now."""

    destination: object
    open_source: object
    existing: object  # () -> set of names, as RecordingJournal.names() spells them
    leftovers: object  # () -> anything at all left on the storage (files, directories, images)
    final_md5: object  # () -> md5 of the published template, by an independent tool
    runtime: Runtime


def _volume_file(tmp_path: Path) -> Path:
    path = tmp_path / "volume.raw"
    with open(path, "wb") as f:
        f.truncate(6 * MiB)
        f.seek(KiB)
        f.write(os.urandom(2 * MiB))
        f.seek(5 * MiB)
        f.write(b"\x11" * 300 * KiB)
    return path


def _file_volume(path: Path) -> Volume:
    return Volume("0cd599ec519249489475112a058bb93a", None, "file", path.stat().st_size, path=str(path), format="raw")


def _template(volume: Volume, image_format: str, compression: str | None, snapshot=None, mode=None) -> TemplateJob:
    image_uuid = os.urandom(16).hex()
    return TemplateJob(volume, image_uuid, ACCOUNT,
                       TemplateTags(mode=mode, format=image_format, compression=compression),
                       snapshot=snapshot or image_uuid, pipeline=SMALL, spool_dir="")


def _local_files(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file()}


FILE_VARIANTS = {"raw": ("raw", None), "qcow2": ("qcow2", None), "qemu-img": ("qcow2", "zstd")}
CEPH_MODES = ("copy", "clone", "flatten")


@pytest.fixture(params=[f"filesystem-{v}" for v in FILE_VARIANTS] + [f"sftp-{v}" for v in FILE_VARIANTS]
                + [f"ceph-fake-{m}" for m in CEPH_MODES]
                + [pytest.param(f"ceph-real-{m}", marks=pytest.mark.ceph) for m in CEPH_MODES])
def case(request, tmp_path):
    kind, variant = request.param.split("-", 1)
    if kind == "ceph":
        backend, mode = variant.split("-")
        yield from _ceph_case(request.getfixturevalue(f"{backend}_rbd_env"), mode)
        return
    image_format, compression = FILE_VARIANTS[variant]
    volume = _file_volume(_volume_file(tmp_path))
    spool = tmp_path / "spool"
    if kind == "filesystem":
        root = tmp_path / "bs"
        root.mkdir()
        config = parse_config({"backup_storage": [{"uuid": BS_UUID, "type": "filesystem", "path": str(root)}]})
        existing = lambda: _local_files(root) | _local_files(spool)  # noqa: E731
        leftovers = lambda: [str(p) for p in root.rglob("*")] + [str(p) for p in spool.rglob("*")]  # noqa: E731
        final_md5 = lambda path: md5sum_file(path)  # noqa: E731
    else:
        server = request.getfixturevalue("sshd_server")
        root = request.getfixturevalue("remote_dir")
        config = parse_config({"backup_storage": [{
            "uuid": BS_UUID, "type": "sftp", "hostname": server.host, "port": server.port, "username": server.user,
            "private_key": server.key, "known_hosts": server.known_hosts, "path": root, "verify_md5": True}]})

        def existing():
            out = rsh(server, "find", root, "-type", "f").stdout.split()
            return set(out) | _local_files(spool)

        leftovers = lambda: remote_tree(server, root) + [str(p) for p in spool.rglob("*")]  # noqa: E731
        final_md5 = lambda path: remote_md5(server, path)  # noqa: E731
    bs = config.backup_storage[0]
    runtime = Runtime(config)
    template = _template(volume, image_format, compression)
    template = TemplateJob(**{**template.__dict__, "spool_dir": str(spool)})
    destination = lambda journal: KINDS[kind].destination(bs, template, journal, runtime)  # noqa: E731

    def source(journal):
        return open_source(volume, NO_JOURNAL)

    yield Case(destination, source, existing, leftovers, lambda dest: final_md5(dest.install_path), runtime)


def _ceph_case(env, mode):
    backend = open_backend(CephConfig(**env.ceph_config))
    config = parse_config({"ceph": env.ceph_config, "backup_storage": [{
        "uuid": BS_UUID, "type": "ceph", "pool": env.dst_pool, "mode": mode}]})
    runtime = Runtime(config, backend, cluster=env.cluster)
    name = os.urandom(16).hex()
    env.rbd.RBD().create(env.src, name, 6 * MiB, order=20, old_format=False)
    with env.rbd.Image(env.src, name) as image:
        image.write(os.urandom(2 * MiB), KiB)
        image.write(b"\x11" * 300 * KiB, 5 * MiB)
        order = image.stat()["order"]
    volume = Volume(name, None, "ceph", 6 * MiB, pool=env.src_pool, image=name, order=order)
    template = _template(volume, "raw", None)
    bs = config.backup_storage[0]
    ours = {template.image_uuid, template.image_uuid + ".part"}

    def existing():
        return {f"{env.dst_pool}/{n}" for n in env.rbd.RBD().list(env.dst) if n in ours}

    def leftovers():
        with env.rbd.Image(env.src, name) as image:
            snaps = [s["name"] for s in image.list_snaps()]
        return sorted(existing()) + snaps

    def source(journal):
        return open_source(volume, journal, snapshot=template.snapshot, ceph=backend, cluster=env.cluster)

    yield Case(lambda journal: KINDS["ceph"].destination(bs, template, journal, runtime), source, existing,
               leftovers, lambda dest: env.export_md5(env.dst_pool, template.image_uuid), runtime)
    for image in (template.image_uuid, template.image_uuid + ".part"):  # a clone's parent snapshot stays
        try:
            env.rbd.RBD().remove(env.dst, image)
        except env.rbd.ImageNotFound:
            pass
    with env.rbd.Image(env.src, name) as image:
        for snap in image.list_snaps():
            if image.is_protected_snap(snap["name"]):
                image.unprotect_snap(snap["name"])
            image.remove_snap(snap["name"])
    env.rbd.RBD().remove(env.src, name)


def run(case: Case, journal: RecordingJournal, **kw):
    dest = case.destination(journal)
    sinks = [dest.sink] if dest.sink is not None else []
    converters = [dest.converter] if dest.converter is not None else []
    try:
        with case.open_source(journal) as source:
            return dest, transfer(source, sinks, converters, SMALL, hash_content=dest.format == "raw", **kw)
    finally:
        dest.close()


def test_a_copy_publishes_exactly_the_final_name_and_journals_it(case):
    journal = RecordingJournal()
    seen_unjournalled, looked_at = [], set()

    def progress(done, total):  # once per MiB copied: listing a remote tree takes an ssh login
        if done // MiB not in looked_at:
            looked_at.add(done // MiB)
            if (extra := case.existing() - journal.names()):
                seen_unjournalled.append(extra)

    dest, result = run(case, journal, progress=progress)
    assert looked_at  # the check ran while the copy did
    [published] = result.published
    assert result.published_by == [dest.endpoint] and published.install_path == dest.install_path
    assert case.final_md5(dest) == (published.md5 or result.md5)
    final_names = case.existing()
    assert len(final_names) == 1 and journal.names() >= final_names  # the record takes these over
    assert {k for k, _ in journal.live.values()} <= {"ceph", "filesystem", "sftp", "ceph-snapshot"}
    assert seen_unjournalled == []


def test_a_read_error_leaves_nothing_and_an_empty_journal(case, monkeypatch):
    journal = RecordingJournal()
    calls = []

    def failing_read(self, offset, length, _real=RawFileSource.read):
        calls.append(offset)
        if len(calls) == 3:
            raise OSError(5, "injected read error")
        return _real(self, offset, length)

    monkeypatch.setattr(RawFileSource, "read", failing_read)
    from zsagent.sources.rbd_snapshot import RbdSnapshotSource

    real_rbd_read = RbdSnapshotSource.read
    monkeypatch.setattr(RbdSnapshotSource, "read", lambda self, o, n: failing_read(self, o, n, real_rbd_read))
    with pytest.raises((SourceError, AllSinksFailed)):
        run(case, journal)
    assert case.leftovers() == [] and journal.live == {}


def test_a_cancel_leaves_nothing_and_an_empty_journal(case):
    journal, cancel = RecordingJournal(), threading.Event()

    def progress(done, total):
        if done >= MiB:
            cancel.set()

    with pytest.raises(CopyCancelled):
        run(case, journal, progress=progress, cancel=cancel)
    assert case.leftovers() == [] and journal.live == {}


def test_a_failure_right_after_publishing_takes_the_template_back(case):
    journal = RecordingJournal(fail_forget_after_final=True)
    with pytest.raises(AllSinksFailed, match="injected failure right after publishing"):
        run(case, journal)
    assert not journal.fail_forget_after_final, "the failure was never injected"
    assert case.leftovers() == [] and journal.live == {}

