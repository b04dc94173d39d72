"""The RADOS store when its pool fills up or its OSD stops: each write fails with a clear ZStack error
within rados_osd_op_timeout, and no record written before is lost or half-changed.

Both run on a private cluster of their own (they fill it or stop its OSD), so they are in the reliability
set.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import pytest
from test_ceph_faults import PrivateCluster

from zsagent import errors
from zsagent.config import parse_config
from zsagent.errors import ZsError
from zsagent.store import ImageRecord, open_store

OSD_OP_TIMEOUT_S = 3


def store_config(tmp, cluster: PrivateCluster):
    return parse_config({"agent": {"data_dir": str(tmp / "data")},
                         "ceph": {"backend": "rados", "conf": cluster.conf, "keyring": cluster.keyring,
                                  "rados_osd_op_timeout": OSD_OP_TIMEOUT_S, "client_mount_timeout": 10},
                         "store": {"backend": "rados", "pool": "zs-store"}})


def pool_full(cluster: PrivateCluster, pool: str) -> bool:
    dump = json.loads(cluster.ceph("osd", "dump", "--format", "json"))
    return any(p["pool_name"] == pool and "full" in p["flags_names"].split(",") for p in dump["pools"])


def image(uuid_: str) -> ImageRecord:
    return ImageRecord(uuid_, "acct-1", "vol-1", "fp", {"uuid": uuid_}, [], {})


def refused(call) -> errors.ErrorCode:
    with pytest.raises(ZsError) as e:
        call()
    return e.value.error


@pytest.mark.reliability
@pytest.mark.ceph
def test_a_full_pool_fails_store_writes_clearly_and_keeps_every_record(tmp_path):
    cluster = PrivateCluster(tmp_path / "ceph", "--store", "memstore", "--memstore-bytes", str(1 << 30))
    try:
        cluster.ceph("osd", "pool", "create", "zs-store")
        store = open_store(store_config(tmp_path, cluster), "host-a:7762")
        kept = uuid.uuid4().hex
        store.put_image(image(kept))
        store.add_job("job-1", "vol-1")
        filler = tmp_path / "filler"
        filler.write_bytes(b"\x5a" * (4 << 20))  # 4 MiB of 1 GiB: over the full ratio below
        subprocess.run(["rados", "-p", "zs-store", "put", "filler", str(filler)], env=cluster.env, check=True,
                       timeout=120)
        cluster.ceph("osd", "set-nearfull-ratio", "0.0001")
        cluster.ceph("osd", "set-backfillfull-ratio", "0.0002")
        cluster.ceph("osd", "set-full-ratio", "0.0003")
        deadline = time.monotonic() + 120
        while not pool_full(cluster, "zs-store"):
            assert time.monotonic() < deadline, "the monitors never saw the OSD full"
            time.sleep(0.5)
        error = refused(lambda: store.add_job("job-2", "vol-2"))
        assert error.code == errors.OPERATION_FAILURE
        assert "RADOS pool zs-store" in error.details and "the pool is full" in error.details, error.details
        assert store.get_job("job-1").state == "queued"  # reads go on
        assert refused(lambda: store.fail_job_if_unfinished("job-1", {"error": {}})).code == errors.OPERATION_FAILURE
        cluster.ceph("osd", "set-full-ratio", "0.97")
        cluster.ceph("osd", "set-backfillfull-ratio", "0.9")
        cluster.ceph("osd", "set-nearfull-ratio", "0.85")
        deadline = time.monotonic() + 120
        while pool_full(cluster, "zs-store"):
            assert time.monotonic() < deadline
            time.sleep(0.5)
        while True:  # writes go on once the monitors see room again
            try:
                store.add_job("job-3", "vol-3")
                break
            except ZsError:
                assert time.monotonic() < deadline
        assert store.get_image(kept) == image(kept)
        assert store.get_job("job-1").state == "queued"  # the refused change did not happen
        assert store.get_job("job-2") is None and store.get_job("job-3") is not None
        store.close()
    finally:
        cluster.down()


@pytest.mark.reliability
@pytest.mark.ceph
def test_a_stopped_osd_fails_store_calls_within_the_op_timeout(tmp_path):
    cluster = PrivateCluster(tmp_path / "ceph")
    try:
        cluster.ceph("osd", "pool", "create", "zs-store")
        store = open_store(store_config(tmp_path, cluster), "host-a:7762")
        store.add_job("job-1", "vol-1")
        cluster.stop_osd()
        error = refused(lambda: store.add_job("job-2", "vol-2"))
        assert error.code == errors.OPERATION_FAILURE
        assert f"no OSD answered within rados_osd_op_timeout ({OSD_OP_TIMEOUT_S} s): osd.0 down" in error.details
        assert "RADOS pool zs-store" in error.details
        assert refused(lambda: store.get_job("job-1")).code == errors.OPERATION_FAILURE
        store.close()
    finally:
        cluster.down()
