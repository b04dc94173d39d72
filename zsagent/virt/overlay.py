"""The fallback when pull-mode backup is not available: an external snapshot, then an active commit.

1. ``snapshotCreateXML(DISK_ONLY|NO_METADATA|ATOMIC)`` puts the disk on a new qcow2 overlay; the guest now
   writes there and QEMU opens the original image (the *base*) read-only.
2. The base, with its backing chain, is a point-in-time view: it is served read-only by qemu-nbd
   (``QemuNbdSource``) for the copy. QEMU's read-only open allows that without ``--force-share``.
3. ``blockCommit(ACTIVE|SHALLOW)`` merges the overlay back into the base. Only after the
   ``BLOCK_JOB_2`` READY event may we pivot: a pivot after ``cur == end`` in ``blockJobInfo`` can still
   fail with VIR_ERR_BLOCK_COPY_ACTIVE ("not ready for pivot yet"), so that error is retried too.
   The commit needs the base's write lock: the qemu-nbd reader must be gone before it starts.
4. ``blockJobAbort(PIVOT)`` puts the disk back on the base (live and persistent definition alike); libvirt
   leaves the overlay file behind, so we delete it.

When the domain stops while on the overlay, the guest's newest writes live only in the overlay: the undo
then runs ``qemu-img commit`` on it and points a persistent definition back at the base.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from zsagent.sources.qemu_nbd import QemuNbdSource
from zsagent.virt.connection import error_code, libvirt_module, lookup_domain, open_connection
from zsagent.virt.disks import DomainDisk, parse_disks, select_disk
from zsagent.virt.errors import VirtError
from zsagent.virt.journal import OVERLAY, UndoJournal, UndoStep

log = logging.getLogger(__name__)

DEFAULT_COMMIT_TIMEOUT_S = 3600.0
PIVOT_RETRIES = 100
PIVOT_RETRY_DELAY_S = 0.1


class ExternalOverlay:
    """An external disk-only snapshot of one disk (``disk.target``) of the running domain ``dom``.

    ``create()`` journals then takes the snapshot; ``source()`` serves the base read-only; ``end()``
    (idempotent) closes the source, commits the overlay back, pivots and deletes the overlay file.
    """

    def __init__(self, dom, disks: list[DomainDisk], disk: DomainDisk, *, uri: str, journal: UndoJournal,
                 overlay_dir: str | None = None, commit_timeout_s: float = DEFAULT_COMMIT_TIMEOUT_S) -> None:
        if disk.active is None or disk.active.kind != "file" or not disk.active.path:
            raise VirtError(f"disk {disk.target} is not a file: no external snapshot")
        self.dom = dom
        self.disks = disks
        self.disk = disk
        self.uri = uri
        self.journal = journal
        self.base = disk.active.path
        self.base_format = disk.active.format or "raw"
        directory = overlay_dir or os.path.dirname(self.base)
        self.overlay = os.path.join(directory,
                                    f"{os.path.basename(self.base)}.zsagent-overlay-{secrets.token_hex(4)}.qcow2")
        self.commit_timeout_s = commit_timeout_s
        self.step: UndoStep | None = None
        self._source: QemuNbdSource | None = None

    def spec(self) -> dict[str, Any]:
        return {"uri": self.uri, "domain_uuid": self.dom.UUIDString(), "domain": self.dom.name(),
                "disk": self.disk.target, "base": self.base, "base_format": self.base_format,
                "overlay": self.overlay}

    def snapshot_xml(self) -> str:
        root = ET.Element("domainsnapshot")
        node = select_disk(root, self.disks, self.disk.target, "snapshot", "external", type="file")
        ET.SubElement(node, "driver", type="qcow2")
        ET.SubElement(node, "source", file=self.overlay)
        return ET.tostring(root, encoding="unicode")

    def create(self) -> None:
        """Put the disk on the overlay: from now on the base is the disk as it is at this moment."""
        libvirt = libvirt_module()
        flags = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
                 | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)
        self.step = self.journal.add(OVERLAY, self.spec())
        began = time.monotonic()
        try:
            self.dom.snapshotCreateXML(self.snapshot_xml(), flags)
        except BaseException:
            try:
                self.end()  # ATOMIC: nothing changed, but a half-created overlay file may be left
            except Exception:  # noqa: BLE001 - the snapshot error is the one to report
                log.exception("cleanup after a failed external snapshot of %s failed", self.base)
            raise
        log.info("domain %s disk %s: external snapshot in %.3f s, guest writes go to %s", self.dom.name(),
                 self.disk.target, time.monotonic() - began, self.overlay)

    def source(self, connections: int = 8) -> QemuNbdSource:
        """The base (with its backing chain) as a Source, served read-only by qemu-nbd."""
        if self._source is None:
            self._source = QemuNbdSource(self.base, self.base_format, connections=connections)
        return self._source

    def end(self) -> None:
        """Close the source, merge the overlay back into the base and delete it."""
        if self._source is not None:
            self._source.close()  # before the commit: qemu-nbd holds a lock that forbids writes to the base
            self._source = None
        if self.step is None:
            return
        _restore(self.dom.connect(), self.dom, self.spec(), self.commit_timeout_s)
        self.journal.done(self.step)
        self.step = None


def commit_and_pivot(conn, dom, target: str, base: str, timeout_s: float = DEFAULT_COMMIT_TIMEOUT_S) -> None:
    """Active-commit the top image of disk ``target`` into its backing image and pivot to it.

    ``conn`` must be a connection opened by ``open_connection`` (it receives the BLOCK_JOB_2 events).
    """
    libvirt = libvirt_module()
    events: queue.SimpleQueue[int] = queue.SimpleQueue()

    def on_block_job(_conn, _dom, disk, _job_type, status, _opaque) -> None:
        if disk == target:
            events.put(status)

    callback = conn.domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2, on_block_job, None)
    try:
        began = time.monotonic()
        dom.blockCommit(target, None, None, 0,
                        libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE | libvirt.VIR_DOMAIN_BLOCK_COMMIT_SHALLOW)
        _wait_ready(dom, target, events, began + timeout_s)
        ready_s = time.monotonic() - began
        _pivot(dom, target)
        deadline = time.monotonic() + 30.0
        while _active_path(dom, target) != base:
            if time.monotonic() > deadline:
                raise VirtError(f"disk {target} of domain {dom.name()} is not back on {base} after the pivot")
            time.sleep(0.02)
        log.info("domain %s disk %s: overlay committed (ready after %.3f s) and pivoted back to %s in %.3f s",
                 dom.name(), target, ready_s, base, time.monotonic() - began)
    finally:
        try:
            conn.domainEventDeregisterAny(callback)
        except Exception:  # noqa: BLE001 - the connection may be gone
            pass


def _wait_ready(dom, target: str, events: queue.SimpleQueue, deadline: float) -> None:
    libvirt = libvirt_module()
    while True:
        try:
            status = events.get(timeout=1.0)
        except queue.Empty:
            if time.monotonic() > deadline:
                _abort_quietly(dom, target)
                raise VirtError(f"block commit of disk {target} of domain {dom.name()} not ready in time") from None
            if not dom.blockJobInfo(target, 0):  # the job vanished without telling us
                raise VirtError(f"block commit of disk {target} of domain {dom.name()} ended without READY") from None
            continue
        if status == libvirt.VIR_DOMAIN_BLOCK_JOB_READY:
            return
        if status in (libvirt.VIR_DOMAIN_BLOCK_JOB_FAILED, libvirt.VIR_DOMAIN_BLOCK_JOB_CANCELED):
            raise VirtError(f"block commit of disk {target} of domain {dom.name()} "
                            f"{'failed' if status == libvirt.VIR_DOMAIN_BLOCK_JOB_FAILED else 'was cancelled'}")


def _pivot(dom, target: str) -> None:
    libvirt = libvirt_module()
    for attempt in range(PIVOT_RETRIES):
        try:
            dom.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
            return
        except libvirt.libvirtError as e:
            if error_code(e) != libvirt.VIR_ERR_BLOCK_COPY_ACTIVE or attempt == PIVOT_RETRIES - 1:
                raise
            log.debug("pivot of %s not ready yet (%s); retrying", target, e.get_error_message())
            time.sleep(PIVOT_RETRY_DELAY_S)


def _abort_quietly(dom, target: str) -> None:
    try:
        dom.blockJobAbort(target, 0)
    except Exception:  # noqa: BLE001
        pass


def _active_path(dom, target: str) -> str | None:
    for disk in parse_disks(dom.XMLDesc(0)):
        if disk.target == target:
            return disk.active.path if disk.active else None
    return None


def _restore(conn, dom, spec: dict[str, Any], timeout_s: float) -> None:
    """Bring disk ``spec['disk']`` back onto ``spec['base']`` and delete the overlay (idempotent)."""
    overlay, base, target = spec["overlay"], spec["base"], spec["disk"]
    if dom is not None and dom.isActive():
        chain = next((d.chain for d in parse_disks(dom.XMLDesc(0)) if d.target == target), ())
        paths = [layer.path for layer in chain]
        if paths[:1] == [overlay]:
            if paths[1:2] != [base]:
                raise VirtError(f"disk {target} of domain {spec['domain']}: {overlay} is not on top of {base}")
            commit_and_pivot(conn, dom, target, base, timeout_s)
        elif overlay in paths:
            raise VirtError(f"disk {target} of domain {spec['domain']}: {overlay} is in use below a newer "
                            "image; merge it by hand")
    elif os.path.exists(overlay):
        _commit_offline(overlay, base)
        if dom is not None and dom.isPersistent():
            _redefine_on_base(conn, dom, target, overlay, base, spec.get("base_format", "raw"))
    Path(overlay).unlink(missing_ok=True)


def _commit_offline(overlay: str, base: str) -> None:
    """The domain stopped on the overlay: write the overlay's data into the base with qemu-img."""
    info = json.loads(_run(["qemu-img", "info", "--output=json", "-f", "qcow2", overlay]))
    backing = info.get("full-backing-filename") or info.get("backing-filename")
    if backing is None:
        raise VirtError(f"{overlay} has no backing file; expected {base}")
    if os.path.realpath(backing) != os.path.realpath(base):
        raise VirtError(f"{overlay} is backed by {backing}, not {base}; merge it by hand")
    _run(["qemu-img", "commit", "-q", "-f", "qcow2", overlay])
    log.info("committed %s into %s offline (the domain had stopped)", overlay, base)


def _redefine_on_base(conn, dom, target: str, overlay: str, base: str, base_format: str) -> None:
    libvirt = libvirt_module()
    root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE))
    for disk in root.findall("./devices/disk"):
        target_node, source = disk.find("target"), disk.find("source")
        if target_node is None or target_node.get("dev") != target or source is None:
            continue
        if source.get("file") != overlay:
            return
        source.set("file", base)
        for backing in disk.findall("backingStore"):
            disk.remove(backing)
        driver = disk.find("driver")
        if driver is not None:
            driver.set("type", base_format)
        conn.defineXML(ET.tostring(root, encoding="unicode"))
        log.info("domain %s: persistent definition of %s points at %s again", dom.name(), target, base)
        return


def _run(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600, check=False)
    if proc.returncode != 0:
        raise VirtError(f"{argv[0]} {argv[1]} failed: {proc.stderr.strip()}")
    return proc.stdout


def undo_overlay(spec: dict[str, Any]) -> None:
    """Undo a journalled external snapshot in any process (see ``_restore``)."""
    conn = open_connection(spec["uri"])
    try:
        dom = lookup_domain(conn, spec["domain_uuid"])
        _restore(conn, dom, spec, DEFAULT_COMMIT_TIMEOUT_S)
    finally:
        conn.close()
