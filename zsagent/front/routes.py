"""The commands `zsagent front` takes over, one function each: from the command to a Plan, or None to
forward it to ZStack's agent (it names storage that is not configured here, or state that is not ours).

A Plan's ``work`` runs as a job and returns the response's own fields; ``reply`` is an answer without a
job (cancel, delete of an intent). Field names and response shapes are those of the protocol notes
(zstack-agent-protocol.md §4-§7, §10), cited per command.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zsagent import errors
from zsagent.front import paths
from zsagent.front.destinations import ceph_destination
from zsagent.front.intents import Intent, measure
from zsagent.front.wire import Envelope, MalformedCommand
from zsagent.jobs import Job
from zsagent.ownership import ADMIN_ACCOUNT_UUID
from zsagent.service import PathCopy

if TYPE_CHECKING:
    from zsagent.front.front import Front

log = logging.getLogger(__name__)


@dataclass
class Plan:
    """work: does the command in a job, returns the response's fields (raises ZsError on failure);
    reply: the response, when no job is needed; process_type: progress is reported under this name
    (None: no progress); stage_default: the task-stage window when the command names none;
    volume_uuid: for the job record."""

    work: Callable[[Job], dict[str, Any]] | None = None
    reply: dict[str, Any] | None = None
    process_type: str | None = None
    stage_default: tuple[int, int] = (0, 100)
    volume_uuid: str | None = None


Route = Callable[["Front", dict[str, Any], Envelope], Plan | None]


def _port(cmd: dict[str, Any], name: str) -> int:
    value = cmd.get(name, 22)
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise MalformedCommand(f"field {name} {value!r} is not a TCP port")
    return value


def _description(path: str, env: Envelope) -> str:
    return f"made by zsagent front for the management node's {path} (api {env.api_id})"


def _ceph_volume(front: Front, pool: str, image: str):
    volume = front.service.catalog.find_volume(image)
    if volume is None or volume.kind != "ceph" or volume.pool != pool:
        raise errors.not_found(f"volume ceph://{pool}/{image} does not exist in the Ceph cluster zsagent "
                               f"uses ([ceph] conf {front.config.ceph.conf})")
    return volume


# -- Ceph primary storage ([zs] CephPrimaryStorageBase, §4, §5) -----------------------------------------

def ceph_cp(front: Front, cmd: dict[str, Any], env: Envelope) -> Plan | None:
    """/ceph/primarystorage/volume/cp: CpCmd{srcPath, dstPath, shareable} (CPSB l.805-811) -> CpRsp
    {installPath = dstPath, size, actualSize} (l.813-817); the Python agent's default stage is 10-90
    (cephagent.py ``cp`` l.811-856)."""
    src, dst = paths.text_field(cmd, "srcPath"), paths.text_field(cmd, "dstPath")
    pool, image, snapshot = paths.ceph_snapshot(src, "srcPath")
    dst_pool, image_uuid = paths.ceph_image(dst, "dstPath")
    bs = front.ceph_backup_storage(dst_pool)
    if not front.is_ceph_primary_pool(pool) or bs is None:
        log.info("forwarding volume/cp %s -> %s: pool not configured here", src, dst)
        return None
    shareable = cmd.get("shareable", False) is True

    def work(job: Job) -> dict[str, Any]:
        volume = _ceph_volume(front, pool, image)
        order = PathCopy(volume, image_uuid, ADMIN_ACCOUNT_UUID, image_uuid, _description("volume/cp", env),
                         lambda t, scope, _: ceph_destination(bs, image_uuid, t, scope, front.service.runtime,
                                                              shareable), snapshot=snapshot)
        inventory = front.service.create_at(order, job)
        return {"installPath": dst, "size": inventory["size"], "actualSize": inventory["actualSize"]}

    return Plan(work, process_type="CephCpVolume", stage_default=(10, 90), volume_uuid=image)


def ceph_sftp_upload(front: Front, cmd: dict[str, Any], env: Envelope) -> Plan | None:
    """/ceph/primarystorage/sftpbackupstorage/upload: SftpUpLoadCmd{primaryStorageInstallPath,
    backupStorageInstallPath, hostname, username, sshKey, sshPort} (CPSB l.571-635) -> bare AgentResponse;
    a raw image at the asked path (§5)."""
    src = paths.text_field(cmd, "primaryStorageInstallPath")
    pool, image, snapshot = paths.ceph_snapshot(src, "primaryStorageInstallPath")
    target = paths.sftp_template(paths.text_field(cmd, "backupStorageInstallPath"), "backupStorageInstallPath")
    hostname, username = paths.text_field(cmd, "hostname"), paths.text_field(cmd, "username")
    key, port = paths.text_field(cmd, "sshKey"), _port(cmd, "sshPort")
    if not front.is_ceph_primary_pool(pool):
        log.info("forwarding sftpbackupstorage/upload of %s: pool not configured here", src)
        return None

    def work(job: Job) -> dict[str, Any]:
        volume = _ceph_volume(front, pool, image)
        destination = front.sftp_destination_maker(target, hostname, port, username, key, "raw")
        order = PathCopy(volume, target.image_uuid, target.account_uuid, target.image_uuid,
                         _description("sftpbackupstorage/upload", env), destination, snapshot=snapshot)
        front.service.create_at(order, job)
        return {}

    return Plan(work, process_type="CephSftpUpload", volume_uuid=image)


# -- local and NFS primary storage on KVM hosts (§6, §7) ---------------------------------------------------

def _create_template(front: Front, cmd: dict[str, Any], env: Envelope, volume_field: str, name: str) -> Plan | None:
    """Answer createtemplate with the intent: the qcow2 the upload will stream, its exact sizes, no file."""
    install_path = paths.text_field(cmd, "installPath")
    ps_root, image_uuid = paths.workspace(install_path, "installPath")
    volume_path = paths.file_volume(paths.text_field(cmd, volume_field), volume_field)
    primary = front.file_primary_storage(volume_path.path)
    if primary is None or not paths.inside(install_path, primary.path) or os.path.lexists(install_path):
        log.info("forwarding %s of %s: not a configured primary storage, or the file exists", name, install_path)
        return None

    def work(job: Job) -> dict[str, Any]:
        volume = front.service.catalog.find_volume(volume_path.volume_uuid)
        if volume is None or os.path.realpath(volume.path) != os.path.realpath(volume_path.path):
            raise errors.not_found(f"volume file {volume_path.path} is not there (or not where the catalog of "
                                   f"primary storage {primary.uuid} finds volume {volume_path.volume_uuid})")
        intent = measure(volume, image_uuid, install_path, env.api_id)
        front.records.put_intent(install_path, env.api_id, intent.to_json(),
                                 time.time() + front.settings.intent_ttl_s)
        log.info("%s: intent %s for volume %s: qcow2 of %d bytes, streamed at upload", name, install_path,
                 volume.uuid, intent.file_size)
        return {"size": intent.virtual_size, "actualSize": intent.file_size}

    return Plan(work, volume_uuid=volume_path.volume_uuid)


def local_create_template(front: Front, cmd: dict[str, Any], env: Envelope) -> Plan | None:
    """/localstorage/volume/createtemplate: {installPath, volumePath} (LKB l.439-460) -> {size,
    actualSize}; actualSize becomes the image's (LKB l.3525)."""
    return _create_template(front, cmd, env, "volumePath", "localstorage/volume/createtemplate")


def nfs_create_template(front: Front, cmd: dict[str, Any], env: Envelope) -> Plan | None:
    """/nfsprimarystorage/sftp/createtemplatefromvolume: {installPath, rootVolumePath} (the field is
    rootVolumePath for data volumes too, NKC l.164-192) -> {size, actualSize}."""
    return _create_template(front, cmd, env, "rootVolumePath", "nfsprimarystorage/sftp/createtemplatefromvolume")


def _upload(front: Front, cmd: dict[str, Any], env: Envelope, fields: tuple[str, str, str, str],
            name: str) -> Plan | None:
    src = paths.text_field(cmd, "primaryStorageInstallPath")
    spec = front.records.intent(src)
    if spec is None:
        log.info("forwarding %s of %s: no intent of ours", name, src)
        return None
    intent = Intent.from_json(spec)
    target = paths.sftp_template(paths.text_field(cmd, "backupStorageInstallPath"), "backupStorageInstallPath")
    host_field, user_field, key_field, port_field = fields
    hostname, username = paths.text_field(cmd, host_field), paths.text_field(cmd, user_field)
    key, port = paths.text_field(cmd, key_field), _port(cmd, port_field)

    def work(job: Job) -> dict[str, Any]:
        volume = front.service.catalog.find_volume(intent.volume_uuid)
        if volume is None:
            raise errors.not_found(f"volume {intent.volume_uuid} ({intent.volume_path}) is gone since createtemplate")
        intent.check_unchanged(volume)
        destination = front.sftp_destination_maker(target, hostname, port, username, key, "qcow2",
                                                   planned_file_size=intent.file_size)
        order = PathCopy(volume, target.image_uuid, target.account_uuid, target.image_uuid,
                         _description(name, env), destination)
        front.service.create_at(order, job)
        front.records.put_intent(src, intent.api_id, {**spec, "uploaded": True},
                                 time.time() + front.settings.intent_ttl_s)
        return {}

    return Plan(work, process_type="SftpUpload", volume_uuid=intent.volume_uuid)


def local_sftp_upload(front: Front, cmd: dict[str, Any], env: Envelope) -> Plan | None:
    """/localstorage/sftp/upload: SftpUploadBitsCmd{primaryStorageInstallPath, backupStorageInstallPath,
    hostname, username, sshKey, sshPort} (LocalStorageKvmSftpBackupStorageMediatorImpl l.108-174)."""
    return _upload(front, cmd, env, ("hostname", "username", "sshKey", "sshPort"), "localstorage/sftp/upload")


def nfs_upload(front: Front, cmd: dict[str, Any], env: Envelope) -> Plan | None:
    """/nfsprimarystorage/uploadtosftpbackupstorage: UploadToSftpCmd{primaryStorageInstallPath,
    backupStorageInstallPath, backupStorageHostName, backupStorageUserName, backupStorageSshKey,
    backupStorageSshPort} (NKC l.653-700)."""
    return _upload(front, cmd, env, ("backupStorageHostName", "backupStorageUserName", "backupStorageSshKey",
                                     "backupStorageSshPort"), "nfsprimarystorage/uploadtosftpbackupstorage")


def _delete(front: Front, path: str | None) -> Plan | None:
    """A temp template that exists only as our intent is deleted by forgetting it; anything else is
    ZStack's agent's (forwarded)."""
    if not isinstance(path, str) or front.records.intent(path) is None or os.path.lexists(path):
        return None
    front.records.forget_intent(path)
    return Plan(reply={})


def local_delete(front: Front, cmd: dict[str, Any], env: Envelope) -> Plan | None:
    """/localstorage/delete: DeleteBitsCmd{path} (LKB l.351-382) -> DeleteBitsRsp{inUse}."""
    return _delete(front, cmd.get("path"))


def nfs_delete(front: Front, cmd: dict[str, Any], env: Envelope) -> Plan | None:
    """/nfsprimarystorage/delete: DeleteCmd{installPath, folder} (NKC l.513-538) -> DeleteResponse{inUse}."""
    return _delete(front, cmd.get("installPath"))


# -- cancel (§10) ------------------------------------------------------------------------------------------

def cancel(front: Front, cmd: dict[str, Any], env: Envelope) -> Plan | None:
    """/job/cancel {cancellationApiId}: our jobs (and intents) of that API are cancelled and the answer
    is ours; with none, ZStack's agent answers ("no matched job to cancel", [zsu] plugin.py l.169-188)."""
    api_id = cmd.get("cancellationApiId")
    if not isinstance(api_id, str) or not front.cancel_api(api_id):
        return None
    return Plan(reply={})


CEPH_ROUTES: dict[str, Route] = {
    "/ceph/primarystorage/volume/cp": ceph_cp,
    "/ceph/primarystorage/sftpbackupstorage/upload": ceph_sftp_upload,
    "/job/cancel": cancel,
}
KVM_ROUTES: dict[str, Route] = {
    "/localstorage/volume/createtemplate": local_create_template,
    "/localstorage/sftp/upload": local_sftp_upload,
    "/localstorage/delete": local_delete,
    "/nfsprimarystorage/sftp/createtemplatefromvolume": nfs_create_template,
    "/nfsprimarystorage/uploadtosftpbackupstorage": nfs_upload,
    "/nfsprimarystorage/delete": nfs_delete,
    "/job/cancel": cancel,
}
ROUTES = {"ceph": CEPH_ROUTES, "kvm": KVM_ROUTES}
