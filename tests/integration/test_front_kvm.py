"""`zsagent front` before kvmagent: LocalStorage and NFS primary storage -> SFTP backup storage in one pass
(createtemplate answered with an intent, the upload streamed to the real sshd), with the MN's command
sequence (estimate forwarded, createtemplate + upload taken over, the temp delete answered, other deletes
forwarded), checked with ssh md5sum, qemu-img check and qemu-img compare; no temp file is ever written."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from front_harness import front_config, running_front
from mn_simulator import MnSimulator
from upstream_agent import UpstreamAgent

MiB = 1024 * 1024
ACCOUNT = uuid.uuid4().hex
pytestmark = pytest.mark.sftp

# per flow: createtemplate path and volume field, upload path, its credential fields, the template suffix,
# the delete path and its path field (protocol notes §6, §7)
FLOWS = {
    "local": ("/localstorage/volume/createtemplate", "volumePath", "/localstorage/sftp/upload",
              ("hostname", "username", "sshKey", "sshPort"), "volume",
              "/localstorage/delete", "path", "/localstorage/volume/estimatetemplatesize"),
    "nfs": ("/nfsprimarystorage/sftp/createtemplatefromvolume", "rootVolumePath",
            "/nfsprimarystorage/uploadtosftpbackupstorage",
            ("backupStorageHostName", "backupStorageUserName", "backupStorageSshKey", "backupStorageSshPort"),
            "qcow2", "/nfsprimarystorage/delete", "installPath", "/nfsprimarystorage/estimatetemplatesize"),
}


@pytest.fixture
def kvm_front(tmp_path, sshd_server):
    ps = tmp_path / "ps"
    ps.mkdir()
    with MnSimulator() as mn, UpstreamAgent() as upstream:
        raw = front_config(tmp_path, "kvm", upstream.url, known_hosts=sshd_server.known_hosts,
                           primary=[{"uuid": uuid.uuid4().hex, "type": "filesystem", "path": str(ps)}])
        with running_front(raw) as front:
            front.mn, front.upstream, front.ps, front.sshd = mn, upstream, ps, sshd_server
            yield front


def _qcow2_volume(ps: Path, tmp: Path) -> tuple[str, Path]:
    vol = uuid.uuid4().hex
    path = ps / "dataVolumes" / f"acct-{ACCOUNT}" / f"vol-{vol}" / f"{vol}.qcow2"
    path.parent.mkdir(parents=True)
    raw = tmp / f"{vol}.raw"
    with open(raw, "wb") as f:
        f.truncate(40 * MiB)
        for at in (0, 7, 33):
            f.seek(at * MiB)
            f.write(os.urandom(MiB + 4096))
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
    raw.unlink()
    return vol, path


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_template_streams_to_sftp_in_one_pass_without_a_temp_file(kvm_front, tmp_path, flow):
    create_path, volume_field, upload_path, cred, suffix, delete_path, delete_field, estimate_path = FLOWS[flow]
    front, mn, sshd = kvm_front, kvm_front.mn, kvm_front.sshd
    vol, volume = _qcow2_volume(front.ps, tmp_path)
    host, ps_uuid, api_id = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    image = uuid.uuid4().hex
    temp = f"{front.ps}/templateWorkspace/image-{image}/{image}.qcow2"
    root = f"/tmp/zsagent-front-kvm-{uuid.uuid4().hex[:8]}"
    target = f"{root}/dataVolumeTemplates/acct-{ACCOUNT}/{image}/{image}.{suffix}"
    kvm = {"kvm_host_uuid": host}

    front.upstream.reply_with(estimate_path, {"size": 40 * MiB, "actualSize": 5 * MiB})
    estimate = mn.post_command(front.url, estimate_path, {"volumePath": str(volume), "uuid": ps_uuid,
                                                          "primaryStorageUuid": ps_uuid}, thread_context=False, **kvm)
    assert estimate.result(10)["actualSize"] == 5 * MiB
    [forwarded] = front.upstream.requests_to(estimate_path)
    assert forwarded.body == mn.sent_bytes(estimate.task_uuid) and forwarded.header("X-Resource-UUID") == host

    create = mn.post_command(front.url, create_path, {"installPath": temp, volume_field: str(volume),
                                                      "uuid": ps_uuid, "primaryStorageUuid": ps_uuid},
                             api_id=api_id, task_stage="10-30", **kvm)
    created = create.result(30)
    assert created["success"] is True and created["size"] == 40 * MiB
    assert not (front.ps / "templateWorkspace").exists()

    user_field, name_field, key_field, port_field = cred[1], cred[0], cred[2], cred[3]
    upload = mn.post_command(front.url, upload_path, {
        "primaryStorageInstallPath": temp, "backupStorageInstallPath": target, name_field: sshd.host,
        user_field: sshd.user, key_field: Path(sshd.key).read_text(), port_field: sshd.port},
        api_id=api_id, task_stage="30-90", **kvm)
    try:
        assert upload.result(60) == {"success": True, "error": ""}
        assert not (front.ps / "templateWorkspace").exists()  # never written, not even for a moment
        remote_md5 = subprocess.run(sshd.ssh_argv("md5sum", target), capture_output=True, text=True,
                                    timeout=60).stdout.split()[0]
        assert Path(target + ".md5").read_text() == f"{remote_md5}  {image}.{suffix}\n"  # sshd is on this host
        assert front.agent.service.get_image(image)["md5Sum"] == remote_md5
        assert os.path.getsize(target) == created["actualSize"]  # what createtemplate announced
        check = subprocess.run(["qemu-img", "check", "-f", "qcow2", target], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        compare = subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(volume), target],
                                 capture_output=True, text=True)
        assert compare.returncode == 0, compare.stdout + compare.stderr
        reports = mn.progress_for(api_id)
        assert reports and all(30 <= int(r["progress"]) <= 90 for r in reports)

        # the MN's delete of the temp template: ours (it never existed); another delete: kvmagent's
        delete = mn.post_command(front.url, delete_path, {delete_field: temp, "uuid": ps_uuid}, **kvm)
        assert delete.result(10)["success"] is True
        other = mn.post_command(front.url, delete_path, {delete_field: str(volume) + ".old", "uuid": ps_uuid}, **kvm)
        other.result(10)
        assert [r.body for r in front.upstream.requests_to(delete_path)] == [mn.sent_bytes(other.task_uuid)]
        assert [r.path for r in front.upstream.received] == [estimate_path, delete_path]
        assert list((tmp_path / "data" / "front-keys").iterdir()) == []
    finally:
        subprocess.run(sshd.ssh_argv("rm", "-rf", root), timeout=60)


def test_cancel_mid_upload_fails_it_and_leaves_nothing_on_the_server(kvm_front, tmp_path, monkeypatch):
    from zsagent.sinks import sftp

    write = sftp.SftpTarget.write

    def slow_write(self, data):  # the upload must still be running when the cancel comes
        time.sleep(0.01)
        write(self, data)

    monkeypatch.setattr(sftp.SftpTarget, "write", slow_write)
    front, mn, sshd = kvm_front, kvm_front.mn, kvm_front.sshd
    _, volume = _qcow2_volume(front.ps, tmp_path)
    host, api_id, image = uuid.uuid4().hex, uuid.uuid4().hex, uuid.uuid4().hex
    temp = f"{front.ps}/templateWorkspace/image-{image}/{image}.qcow2"
    root = f"/tmp/zsagent-front-cancel-{uuid.uuid4().hex[:8]}"
    target = f"{root}/dataVolumeTemplates/acct-{ACCOUNT}/{image}/{image}.volume"
    assert mn.post_command(front.url, "/localstorage/volume/createtemplate",
                           {"installPath": temp, "volumePath": str(volume)}, api_id=api_id,
                           kvm_host_uuid=host).result(30)["success"] is True
    upload = mn.post_command(front.url, "/localstorage/sftp/upload", {
        "primaryStorageInstallPath": temp, "backupStorageInstallPath": target, "hostname": sshd.host,
        "username": sshd.user, "sshKey": Path(sshd.key).read_text(), "sshPort": sshd.port},
        api_id=api_id, kvm_host_uuid=host)
    give_up = time.monotonic() + 20
    while not any(j.bytes_done for j in front.agent.jobs.running()):
        assert time.monotonic() < give_up
        time.sleep(0.01)
    cancel = mn.post_command(front.url, "/job/cancel", {"cancellationApiId": api_id}, thread_context=False,
                             kvm_host_uuid=host)
    assert cancel.result(10)["success"] is True
    rsp = upload.result(30)
    assert rsp["success"] is False and "cancelled" in rsp["error"]
    front.wait_idle()
    assert not Path(root).exists()  # not even the directories (the sshd is on this host)
    assert front.store.artifacts() == [] and "/job/cancel" not in [r.path for r in front.upstream.received]


def test_an_upload_without_our_intent_goes_to_kvmagent(kvm_front):
    front, mn = kvm_front, kvm_front.mn
    image = uuid.uuid4().hex
    call = mn.post_command(front.url, "/localstorage/sftp/upload", {
        "primaryStorageInstallPath": f"{front.ps}/templateWorkspace/image-{image}/{image}.qcow2",
        "backupStorageInstallPath": f"/bs/dataVolumeTemplates/acct-{ACCOUNT}/{image}/{image}.volume",
        "hostname": "h", "username": "root", "sshKey": "k", "sshPort": 22}, kvm_host_uuid=uuid.uuid4().hex)
    assert call.result(10)["success"] is True  # the stand-in's answer
    [forwarded] = front.upstream.requests_to("/localstorage/sftp/upload")
    assert forwarded.body == mn.sent_bytes(call.task_uuid)


def test_createtemplate_of_a_missing_volume_fails_with_a_clear_error(kvm_front):
    front, mn = kvm_front, kvm_front.mn
    image, vol = uuid.uuid4().hex, uuid.uuid4().hex
    call = mn.post_command(front.url, "/localstorage/volume/createtemplate", {
        "installPath": f"{front.ps}/templateWorkspace/image-{image}/{image}.qcow2",
        "volumePath": f"{front.ps}/dataVolumes/acct-{ACCOUNT}/vol-{vol}/{vol}.qcow2"}, kvm_host_uuid=uuid.uuid4().hex)
    rsp = call.result(10)
    assert rsp["success"] is False and vol in rsp["error"] and "is not there" in rsp["error"]
