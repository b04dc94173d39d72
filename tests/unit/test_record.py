"""Recording a job's result: each published destination becomes the ref of its own backup storage, also
when two destinations look alike (same kind, same path on different hosts)."""

from __future__ import annotations

from support import MemorySink, MemorySource, md5_bytes

from zsagent.catalog import Volume
from zsagent.config import parse_config
from zsagent.copy.pipeline import PipelineConfig, run_copy
from zsagent.jobs import Job
from zsagent.request import parse_body
from zsagent.service import TemplateService
from zsagent.storages import KINDS, Destination, TemplateJob
from zsagent.store import JobJournal, SqliteStore

VOLUME = "0cd599ec519249489475112a058bb93a"
ACCOUNT = "36c27e8ff05c4780bf6d2fa65700f22e"
IMAGE = "4f1b2c3d4e5f41a08b9c0d1e2f3a4b5c"
FIRST, SECOND = "1b8ab68b7e224a30aa31f00f1db2b5a6", "9a8b7c6d5e4f40312a1b0c9d8e7f6a50"


def two_sftp_storages_with_one_path(tmp_path):
    common = {"type": "sftp", "private_key": "/k", "known_hosts": "/kh", "path": "/backup", "format": "raw"}
    config = parse_config({"agent": {"data_dir": str(tmp_path)}, "backup_storage": [
        {"uuid": FIRST, "hostname": "bs1.example", **common}, {"uuid": SECOND, "hostname": "bs2.example", **common}]})
    return config, TemplateService(config, SqliteStore(tmp_path / "zsagent.db"))


def record(tmp_path, *, fail_first: bool = False):
    config, service = two_sftp_storages_with_one_path(tmp_path)
    job, journal = Job(), JobJournal(service.store, "f" * 32)
    volume = Volume(VOLUME, None, "file", 64 * 1024, path="/ps/v.raw")
    template = TemplateJob(volume, IMAGE, ACCOUNT)
    destinations = []
    for bs in config.backup_storage:  # what zsagent.storages.sftp would build, with sinks in memory
        real = KINDS["sftp"].destination(bs, template, journal.scope(), service.runtime)
        assert real.install_path == f"/backup/dataVolumeTemplates/acct-{ACCOUNT}/{IMAGE}/{IMAGE}.raw"
        sink = MemorySink(real.install_path, fail_commit=fail_first and not destinations)
        destinations.append(Destination(bs, real.install_path, "raw", sink=sink, ref=real.ref,
                                        journal=journal.scope()))
    content = b"\x07" * (64 * 1024)
    result = run_copy(MemorySource(content), [d.sink for d in destinations], PipelineConfig(16384, 2))
    request = parse_body({"params": {"name": "t", "resourceUuid": IMAGE}}, VOLUME)
    inventory = service._record(request, template, destinations, result, journal.scope(), job)
    return inventory, service.store.get_image(IMAGE), job, md5_bytes(content)


def test_two_storages_with_the_same_path_each_get_their_own_ref(tmp_path):
    inventory, stored, _, md5 = record(tmp_path)
    assert [r["backupStorageUuid"] for r in inventory["backupStorageRefs"]] == [FIRST, SECOND]
    assert [r["backupStorageUuid"] for r in stored.refs] == [FIRST, SECOND]  # what DELETE removes
    assert inventory["md5Sum"] == md5


def test_a_failed_storage_is_reported_by_its_own_uuid(tmp_path):
    inventory, stored, job, _ = record(tmp_path, fail_first=True)
    assert [r["backupStorageUuid"] for r in inventory["backupStorageRefs"]] == [SECOND]
    assert [r["backupStorageUuid"] for r in stored.refs] == [SECOND]
    assert [e["backupStorageUuid"] for e in job.errors] == [FIRST]
