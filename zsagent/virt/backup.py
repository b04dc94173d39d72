"""Pull-mode backup: QEMU exports a point-in-time view of one disk over NBD while the guest keeps writing.

``backupBegin`` with ``<domainbackup mode='pull'>`` makes QEMU copy each block the guest is about to
overwrite into a scratch file first (copy-before-write), and serve the disk as it was at backupBegin on an
NBD unix socket, whose export is read by an ``NbdSource`` (zsagent.sources.nbd). ``end()`` aborts the job
(libvirt then removes the socket and the scratch file, a moment later) and removes whatever is left.

Where the files go: the socket in a new directory under ``runtime_dir`` owned by the user QEMU runs as
(from the domain's DAC seclabel, else libvirt-qemu), because QEMU binds the socket itself; the path must
stay under 108 bytes, and ``runtime_dir`` must be the same directory for QEMU and for us (not a systemd
PrivateTmp /tmp). The scratch file (as large as the guest writes during the copy, at most the disk size)
goes to ``scratch_dir``, by default next to the volume.
"""

from __future__ import annotations

import logging
import os
import pwd
import secrets
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from zsagent.sources.nbd import NbdSource
from zsagent.virt.connection import error_code, libvirt_module, lookup_domain, open_connection
from zsagent.virt.disks import DomainDisk, seclabel_owner, select_disk
from zsagent.virt.errors import BackupUnsupported, VirtError
from zsagent.virt.journal import BACKUP, UndoJournal, UndoStep

log = logging.getLogger(__name__)

QEMU_USER = "libvirt-qemu"  # Debian's default qemu.conf user
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the NUL
END_TIMEOUT_S = 30.0


class PullBackup:
    """A pull-mode backup job of one disk (``disk.target``) of the running domain ``dom``.

    ``begin()`` journals then starts the job; ``source()`` opens the export; ``end()`` (idempotent)
    closes the source, aborts the job and removes socket, socket directory and scratch file.
    """

    def __init__(self, dom, disks: list[DomainDisk], disk: DomainDisk, *, uri: str, journal: UndoJournal,
                 runtime_dir: str | None = None, scratch_dir: str | None = None) -> None:
        self.dom = dom
        self.disks = disks
        self.disk = disk
        self.uri = uri
        self.journal = journal
        self.runtime_dir = runtime_dir or tempfile.gettempdir()
        volume_path = disk.active.path if disk.active else None
        self.scratch_dir = scratch_dir or (os.path.dirname(volume_path) if volume_path else self.runtime_dir)
        self.socket_dir: str | None = None
        self.socket: str | None = None
        self.scratch: str | None = None
        self.step: UndoStep | None = None
        self._source: NbdSource | None = None

    def begin(self) -> None:
        """Start the job: from now on the export shows the disk as it is at this moment."""
        libvirt = libvirt_module()
        if not hasattr(self.dom, "backupBegin"):
            raise BackupUnsupported("this libvirt binding has no backupBegin (libvirt < 6.0)")
        self.socket_dir = tempfile.mkdtemp(prefix="zsagent-nbd-", dir=self.runtime_dir)
        self.socket = os.path.join(self.socket_dir, "backup.sock")
        base = os.path.basename(self.disk.active.path or self.disk.target) if self.disk.active else self.disk.target
        self.scratch = os.path.join(self.scratch_dir, f"{base}.zsagent-scratch-{secrets.token_hex(4)}.qcow2")
        self.step = self.journal.add(BACKUP, self.spec())
        try:
            if len(self.socket.encode()) > MAX_SOCKET_PATH:
                raise VirtError(f"NBD socket path too long for a unix socket: {self.socket} (use a shorter "
                                "runtime directory)")
            _give_to_qemu(self.socket_dir, self.dom.XMLDesc(0))
            began = time.monotonic()
            self.dom.backupBegin(self.backup_xml(), None, 0)
            log.info("domain %s disk %s: pull backup started in %.3f s, export %s on %s", self.dom.name(),
                     self.disk.target, time.monotonic() - began, self.disk.target, self.socket)
        except BaseException as e:
            try:
                self.end()
            except Exception:  # noqa: BLE001 - the step stays pending; the backupBegin error is reported
                log.exception("cleanup after a failed backupBegin on domain %s failed", self.dom.name())
            if isinstance(e, libvirt.libvirtError) and error_code(e) in (
                    libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_UNSUPPORTED,
                    libvirt.VIR_ERR_CONFIG_UNSUPPORTED):
                raise BackupUnsupported(f"pull-mode backup not available: {e.get_error_message()}") from e
            raise

    def spec(self) -> dict[str, Any]:
        return {"uri": self.uri, "domain_uuid": self.dom.UUIDString(), "domain": self.dom.name(),
                "disk": self.disk.target, "socket": self.socket, "socket_dir": self.socket_dir,
                "scratch": self.scratch}

    def backup_xml(self) -> str:
        root = ET.Element("domainbackup", mode="pull")
        ET.SubElement(root, "server", transport="unix", socket=self.socket)
        node = select_disk(root, self.disks, self.disk.target, "backup", "yes", type="file",
                           exportname=self.disk.target)
        ET.SubElement(node, "scratch", file=self.scratch)
        return ET.tostring(root, encoding="unicode")

    def source(self) -> NbdSource:
        """The export as a Source (one per backup; closed by ``end()``)."""
        if self._source is None:
            self._source = NbdSource(self.socket, self.disk.target)
        return self._source

    def end(self) -> None:
        """Stop the job and remove its files; the journal step is done only when that worked."""
        if self._source is not None:
            self._source.close()
            self._source = None
        if self.step is None:
            return
        began = time.monotonic()
        _end_backup(self.dom, self.spec())
        self.journal.done(self.step)
        self.step = None
        log.info("domain %s disk %s: pull backup ended, socket and scratch removed in %.3f s", self.dom.name(),
                 self.disk.target, time.monotonic() - began)


def _give_to_qemu(directory: str, live_xml: str) -> None:
    """Let the QEMU process of the domain create its NBD socket in ``directory``."""
    owner = seclabel_owner(live_xml)
    if owner is None:
        try:
            entry = pwd.getpwnam(QEMU_USER)
            owner = entry.pw_uid, entry.pw_gid
        except KeyError:
            owner = None
    if owner is not None and os.geteuid() == 0:
        os.chown(directory, *owner)
        os.chmod(directory, 0o700)
    else:  # not root: we cannot give it away; open it up (untested without root)
        os.chmod(directory, 0o777)


def _end_backup(dom, spec: dict[str, Any]) -> None:
    """Abort the backup job named by ``spec`` if ``dom`` still runs it, then remove its files."""
    libvirt = libvirt_module()
    if dom is not None and _our_backup_running(dom, spec):
        try:
            dom.abortJob()
        except libvirt.libvirtError as e:
            if error_code(e) not in (libvirt.VIR_ERR_OPERATION_INVALID, libvirt.VIR_ERR_NO_DOMAIN):
                raise  # "no job is active" / domain gone: it ended on its own
        deadline = time.monotonic() + END_TIMEOUT_S
        while _our_backup_running(dom, spec):
            if time.monotonic() > deadline:
                raise VirtError(f"backup job of domain {spec['domain']} still runs {END_TIMEOUT_S} s after abortJob")
            time.sleep(0.05)
        # libvirt deletes the scratch file and the socket a moment after the job ends; give it that moment.
        deadline = time.monotonic() + 2.0
        while any(p and os.path.exists(p) for p in (spec["scratch"], spec["socket"])) \
                and time.monotonic() < deadline:
            time.sleep(0.02)
    for path in (spec["scratch"], spec["socket"]):
        if path:
            Path(path).unlink(missing_ok=True)
    if spec["socket_dir"]:
        try:
            os.rmdir(spec["socket_dir"])
        except FileNotFoundError:
            pass


def _our_backup_running(dom, spec: dict[str, Any]) -> bool:
    """The domain runs a backup job, and it is the one serving ``spec['socket']``."""
    libvirt = libvirt_module()
    try:
        xml = dom.backupGetXMLDesc(0)
    except libvirt.libvirtError as e:
        if error_code(e) in (libvirt.VIR_ERR_NO_DOMAIN_BACKUP, libvirt.VIR_ERR_OPERATION_INVALID,
                             libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_SUPPORT):
            return False  # no backup job, domain not running or gone, or a driver without backups
        raise
    server = ET.fromstring(xml).find("server")
    return server is not None and server.get("socket") == spec["socket"]


def undo_backup(spec: dict[str, Any]) -> None:
    """Undo a journalled backup step in any process: abort the job if still ours, remove its files."""
    conn = open_connection(spec["uri"])
    try:
        dom = lookup_domain(conn, spec["domain_uuid"])
        _end_backup(dom, spec)
    finally:
        conn.close()
