"""`zsagent front` before ZStack's Ceph primary-storage agent, on the real test Ceph and sshd: the MN's
command sequence for Ceph -> Ceph and Ceph -> SFTP (getvolumesize and snapshot/create forwarded to the
stand-in for ZStack's agent, cp / sftp upload taken over), cancel mid-copy, the deadline, an unreachable
upstream, and a restart."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from front_harness import ADMIN_ACCOUNT, front_config, running_front
from mn_simulator import MnSimulator, now_ms
from upstream_agent import UpstreamAgent

from zsagent.sinks import rbd_image
from zsagent.store import FrontCall, FrontRecords, SqliteStore

MiB = 1024 * 1024
CP = "/ceph/primarystorage/volume/cp"
UPLOAD = "/ceph/primarystorage/sftpbackupstorage/upload"
pytestmark = pytest.mark.ceph


@pytest.fixture
def ceph_front(real_rbd_env, tmp_path):
    env = real_rbd_env
    with MnSimulator() as mn, UpstreamAgent() as upstream:
        raw = front_config(tmp_path, "ceph", upstream.url, ceph=env.ceph_config,
                           primary=[{"uuid": uuid.uuid4().hex, "type": "ceph", "pools": [env.src_pool]}],
                           backup=[{"uuid": uuid.uuid4().hex, "type": "ceph", "pool": env.dst_pool}])
        with running_front(raw) as front:
            front.env, front.mn, front.upstream, front.raw = env, mn, upstream, raw
            yield front


def _volume(env, size=24 * MiB, data_mib=(1, 5, 17)):
    vol = uuid.uuid4().hex
    env.rbd.RBD().create(env.src, vol, size, old_format=False)
    with env.rbd.Image(env.src, vol) as image:
        for at in data_mib:
            image.write(bytes(range(256)) * 4096, at * MiB)
    return vol


def _take_snapshots_like_zstacks_agent(front) -> None:
    """The stand-in answers snapshot/create as ZStack's agent does, and really takes the snapshot."""
    env = front.env

    def snapshot(cmd):
        pool_image, snap = cmd["snapshotPath"][len("ceph://"):].split("@")
        with env.rbd.Image(env.src, pool_image.split("/")[1]) as image:
            image.create_snap(snap)
        return {"installPath": cmd["snapshotPath"], "size": 0}

    front.upstream.reply_with("/ceph/primarystorage/snapshot/create", snapshot)
    front.upstream.reply_with("/ceph/primarystorage/getvolumesize", lambda cmd: {"size": 24 * MiB})


def _mn_snapshot(front, vol, api_id):
    """A1-A3 of the MN's flow (protocol notes §4), through the front to ZStack's agent."""
    env, mn = front.env, front.mn
    common = {"fsId": "fsid", "uuid": uuid.uuid4().hex, "monUuid": uuid.uuid4().hex, "monIp": "127.0.0.1"}
    size = mn.post_command(front.url, "/ceph/primarystorage/getvolumesize",
                           {"volumeUuid": vol, "installPath": f"ceph://{env.src_pool}/{vol}", **common},
                           thread_context=False)
    assert size.result(10)["size"] == 24 * MiB
    snap_uuid = uuid.uuid4().hex
    snap = mn.post_command(front.url, "/ceph/primarystorage/snapshot/create",
                           {"skipOnExisting": False, "snapshotPath": f"ceph://{env.src_pool}/{vol}@{snap_uuid}",
                            "volumeUuid": vol, "name": f"Snapshot-{vol}", "description": f"Snapshot-{vol}",
                            **common}, api_id=api_id)
    path = snap.result(10)["installPath"]
    for call in (size, snap):  # forwarded byte for byte
        [got] = [r for r in front.upstream.received if r.header("taskuuid") == call.task_uuid]
        assert got.body == mn.sent_bytes(call.task_uuid)
    return path, common, snap_uuid


def test_ceph_to_ceph_cp_is_taken_over_and_the_template_matches_rbd_export(ceph_front):
    front, env, mn = ceph_front, ceph_front.env, ceph_front.mn
    _take_snapshots_like_zstacks_agent(front)
    vol, api_id = _volume(env), uuid.uuid4().hex
    src, common, snap = _mn_snapshot(front, vol, api_id)
    image = uuid.uuid4().hex
    dst = f"ceph://{env.dst_pool}/{image}"
    call = mn.post_command(front.url, CP, {"sendCommandUrl": mn.send_command_url, "srcPath": src, "dstPath": dst,
                                           "shareable": False, **common}, api_id=api_id, task_stage="40-80")
    assert call.sync_status == 200 and call.sync_body == b""
    rsp = call.result(60)
    assert rsp["success"] is True and rsp["installPath"] == dst and rsp["size"] == 24 * MiB
    assert CP not in [r.path for r in front.upstream.received]
    md5 = env.export_md5(env.dst_pool, image)
    assert md5 == env.export_md5(env.src_pool, vol, snap)
    with env.rbd.Image(env.dst, image) as template:
        assert template.metadata_get("zstack.md5") == md5
        assert template.list_snaps() is not None and list(template.list_snaps()) == []
    inventory = front.agent.service.get_image(image)
    assert inventory["md5Sum"] == md5 and inventory["backupStorageRefs"][0]["installPath"] == dst
    with env.rbd.Image(env.src, vol) as volume:  # the MN's snapshot is the MN's: left in place
        assert snap in [s["name"] for s in volume.list_snaps()]
    reports = mn.progress_for(api_id)
    assert reports and reports[-1]["progress"] == "80"  # the end of the command's window
    for report in reports:
        assert 40 <= int(report["progress"]) <= 80
        assert report["threadContextMap"] == {"api": api_id, "task-stage": "40-80"}
        assert report["threadContextStack"] == [] and report["processType"] == "CephCpVolume"


def test_shareable_cp_gets_the_features_of_rbd_image_shared(ceph_front):
    front, env, mn = ceph_front, ceph_front.env, ceph_front.mn
    vol, snap, image = _volume(env, data_mib=(2,)), uuid.uuid4().hex, uuid.uuid4().hex
    with env.rbd.Image(env.src, vol) as volume:
        volume.create_snap(snap)
    call = mn.post_command(front.url, CP, {"srcPath": f"ceph://{env.src_pool}/{vol}@{snap}",
                                           "dstPath": f"ceph://{env.dst_pool}/{image}", "shareable": True})
    assert call.result(60)["success"] is True
    info = json.loads(subprocess.run(["rbd", "info", "--format", "json", f"{env.dst_pool}/{image}"], env=env.cli_env,
                                     capture_output=True, text=True, check=True).stdout)
    assert "exclusive-lock" not in info["features"] and "layering" in info["features"]


def test_ceph_to_sftp_upload_uses_the_commands_credentials_and_stores_the_md5_beside(ceph_front, sshd_server,
                                                                                        tmp_path):
    front, env, mn = ceph_front, ceph_front.env, ceph_front.mn
    _take_snapshots_like_zstacks_agent(front)
    vol, api_id = _volume(env), uuid.uuid4().hex
    src, common, snap = _mn_snapshot(front, vol, api_id)
    image, root = uuid.uuid4().hex, f"/tmp/zsagent-front-bs-{uuid.uuid4().hex[:8]}"
    path = f"{root}/dataVolumeTemplates/acct-{ADMIN_ACCOUNT}/{image}/{image}.volume"
    cmd = {"sendCommandUrl": mn.send_command_url, "primaryStorageInstallPath": src, "backupStorageInstallPath": path,
           "hostname": sshd_server.host, "username": sshd_server.user, "sshKey": Path(sshd_server.key).read_text(),
           "sshPort": sshd_server.port, **common}
    unknown = mn.post_command(front.url, UPLOAD, cmd, api_id=api_id).result(30)  # [front] known_hosts is empty
    assert unknown["success"] is False and "ssh-keyscan" in unknown["error"] and "known_hosts" in unknown["error"]
    Path(front.raw["front"]["known_hosts"]).write_text(Path(sshd_server.known_hosts).read_text())
    call = mn.post_command(front.url, UPLOAD, cmd, api_id=api_id, task_stage="30-90")
    try:
        assert call.result(60) == {"success": True, "error": ""}
        remote = subprocess.run(sshd_server.ssh_argv("md5sum", path, path + ".md5"), capture_output=True,
                                text=True, timeout=60)
        md5 = env.export_md5(env.src_pool, vol, snap)
        lines = remote.stdout.splitlines()
        assert lines[0].split()[0] == md5
        assert Path(path + ".md5").read_text() == f"{md5}  {image}.volume\n"  # sshd is on this host
        assert front.agent.service.get_image(image)["md5Sum"] == md5
        assert list((tmp_path / "data" / "front-keys").iterdir()) == []  # the key file is gone
    finally:
        subprocess.run(sshd_server.ssh_argv("rm", "-rf", root), timeout=60)


def test_cancel_mid_copy_fails_the_cp_and_leaves_nothing(ceph_front, monkeypatch):
    front, env, mn = ceph_front, ceph_front.env, ceph_front.mn
    write = rbd_image.RbdImageSink.write

    def slow_write(self, offset, data):  # the copy must still be running when the cancel comes
        time.sleep(0.2)
        write(self, offset, data)

    monkeypatch.setattr(rbd_image.RbdImageSink, "write", slow_write)
    vol, snap, image, api_id = _volume(env, data_mib=range(0, 16)), uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    with env.rbd.Image(env.src, vol) as volume:
        volume.create_snap(snap)
    call = mn.post_command(front.url, CP, {"srcPath": f"ceph://{env.src_pool}/{vol}@{snap}",
                                           "dstPath": f"ceph://{env.dst_pool}/{image}"}, api_id=api_id)
    _wait_until(lambda: any(j.bytes_done for j in front.agent.jobs.running()))
    cancel = mn.post_command(front.url, "/job/cancel", {"cancellationApiId": api_id}, thread_context=False)
    assert cancel.result(10)["success"] is True
    rsp = call.result(30)
    assert rsp["success"] is False and "cancelled by the management node" in rsp["error"]
    front.wait_idle()
    names = env.rbd.RBD().list(env.dst)
    assert image not in names and image + ".part" not in names
    assert front.store.artifacts() == []
    # a cancel for an api that is not ours goes to ZStack's agent
    other = mn.post_command(front.url, "/job/cancel", {"cancellationApiId": uuid.uuid4().hex},
                            thread_context=False)
    other.result(10)
    assert [r.body for r in front.upstream.requests_to("/job/cancel")] == [mn.sent_bytes(other.task_uuid)]


def test_deadline_stops_the_copy_before_the_mn_gives_up(ceph_front, monkeypatch):
    front, env, mn = ceph_front, ceph_front.env, ceph_front.mn
    write = rbd_image.RbdImageSink.write
    monkeypatch.setattr(rbd_image.RbdImageSink, "write", lambda self, o, d: (time.sleep(0.2), write(self, o, d)))
    vol, snap, image = _volume(env, data_mib=range(0, 16)), uuid.uuid4().hex, uuid.uuid4().hex
    with env.rbd.Image(env.src, vol) as volume:
        volume.create_snap(snap)
    call = mn.post_command(front.url, CP, {"srcPath": f"ceph://{env.src_pool}/{vol}@{snap}",
                                           "dstPath": f"ceph://{env.dst_pool}/{image}"}, deadline_ms=now_ms() + 2500)
    rsp = call.result(10)  # raises if it came after the deadline (SYS.1001)
    assert rsp["success"] is False and "deadline" in rsp["error"]
    front.wait_idle()
    assert image + ".part" not in env.rbd.RBD().list(env.dst)


def test_upstream_down_forwarded_fail_while_cp_still_works(real_rbd_env, tmp_path):
    env = real_rbd_env
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    raw = front_config(tmp_path, "ceph", dead, ceph=env.ceph_config,
                       primary=[{"uuid": uuid.uuid4().hex, "type": "ceph", "pools": [env.src_pool]}],
                       backup=[{"uuid": uuid.uuid4().hex, "type": "ceph", "pool": env.dst_pool}])
    with MnSimulator() as mn, running_front(raw) as front:
        forwarded = mn.post_command(front.url, "/ceph/primarystorage/getvolumesize", {"volumeUuid": "x"},
                                    thread_context=False)
        assert forwarded.wait(10).code == "SYS.1015"
        vol, snap, image = _volume(env, data_mib=(3,)), uuid.uuid4().hex, uuid.uuid4().hex
        with env.rbd.Image(env.src, vol) as volume:
            volume.create_snap(snap)
        call = mn.post_command(front.url, CP, {"srcPath": f"ceph://{env.src_pool}/{vol}@{snap}",
                                               "dstPath": f"ceph://{env.dst_pool}/{image}"})
        assert call.result(60)["success"] is True
        assert env.export_md5(env.dst_pool, image) == env.export_md5(env.src_pool, vol, snap)


def test_restart_fails_the_interrupted_cp_and_removes_its_leftovers(real_rbd_env, tmp_path):
    """A crash mid-copy: the store holds the running job, its call and its journalled .part image."""
    env = real_rbd_env
    with MnSimulator() as mn, UpstreamAgent() as upstream:
        upstream.reply_with("/slow", {}, delay_s=30)  # only to have a call the MN waits for
        waiting = mn.post_command(upstream.url, "/slow", {})
        raw = front_config(tmp_path, "ceph", upstream.url, ceph=env.ceph_config,
                           primary=[{"uuid": uuid.uuid4().hex, "type": "ceph", "pools": [env.src_pool]}],
                           backup=[{"uuid": uuid.uuid4().hex, "type": "ceph", "pool": env.dst_pool}])
        part = uuid.uuid4().hex + ".part"
        store = SqliteStore(tmp_path / "data" / "zsagent.db")
        job = uuid.uuid4().hex
        FrontRecords(store).add_call(FrontCall(job, waiting.task_uuid, mn.callback_url, CP, time.time() + 60))
        store.add_job(job, None)
        store.set_job_state(job, "running")
        key = tmp_path / "data" / "front-keys" / f"{job}.key"  # an SFTP command's key, as the job wrote it
        key.parent.mkdir()
        store.journal(job, "spool", {"path": str(key)})
        key.write_text("secret\n")
        store.journal(job, "ceph", {"pool": env.dst_pool, "image": part})
        env.rbd.RBD().create(env.dst, part, MiB, old_format=False)
        store.close()
        with running_front(raw) as front:
            rsp = waiting.result(15)
            assert rsp["success"] is False and "restarted" in rsp["error"]
            assert part not in env.rbd.RBD().list(env.dst) and not key.exists()
            for thread in front.agent.restart_threads:
                thread.join(10)
            assert front.agent.front.records.calls() == []
            assert front.store.get_job(job).state == "failed"


def _wait_until(condition, timeout_s: float = 20) -> None:
    give_up = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)
