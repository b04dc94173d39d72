"""Helpers for the libvirt tests: disks QEMU can open, transient TCG domains, guest writes, checks.

Domains are transient, ``type='qemu'`` (TCG: no /dev/kvm needed), 128 MiB, no OS (the guest sits in
SeaBIOS), one virtio disk; guest writes are simulated with HMP ``qemu-io`` on the disk's BlockBackend.
Images live in a directory under /tmp with mode 0755, because QEMU runs as libvirt-qemu and must reach
them (pytest's own tmp dirs are 0700).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

MiB = 1024 * 1024
# The QOM path of the first virtio disk's BlockBackend (the device alias is virtio-disk0).
DISK_BACKEND = "/machine/peripheral/virtio-disk0/virtio-backend"
AGENT_CHANNEL = ("<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>")



def run(*argv: str | os.PathLike[str]) -> str:
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}: {proc.stderr}{proc.stdout}"
    return proc.stdout


@contextmanager
def qemu_reachable_dir(prefix: str = "zsagent-virt-") -> Iterator[Path]:
    """A fresh directory that libvirt-qemu can traverse (0755), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_image(path: Path, size: str, *writes: tuple[int, int, int], fmt: str = "qcow2") -> Path:
    """An image of ``size`` in ``fmt`` with (pattern, offset, length) writes made by qemu-io."""
    run("qemu-img", "create", "-q", "-f", fmt, path, size)
    if writes:
        cmds = []
        for pattern, offset, length in writes:
            cmds += ["-c", f"write -P {pattern:#x} {offset} {length}"]
        run("qemu-io", "-f", fmt, *cmds, path)
    return path


def has_pattern(path: Path, pattern: int, offset: int, length: int, fmt: str = "qcow2") -> bool:
    """Whether the image reads ``pattern`` over [offset, offset+length), by qemu-io (read-only)."""
    proc = subprocess.run(["qemu-io", "-r", "-f", fmt, "-c", f"read -P {pattern:#x} {offset} {length}", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode == 0 and "verification failed" not in proc.stdout


def raw_md5(image: Path, work: Path, fmt: str = "qcow2") -> str:
    """md5sum of ``qemu-img convert -O raw image`` (the independent reference)."""
    raw = work / f"{image.name}.ref.raw"
    run("qemu-img", "convert", "-f", fmt, "-O", "raw", image, raw)
    try:
        return run("md5sum", raw).split()[0]
    finally:
        raw.unlink()


def domain_xml(name: str, disk: Path, fmt: str = "qcow2", extra_devices: str = "") -> str:
    return f"""<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='{fmt}'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='pty'/>
    <video><model type='none'/></video>
    <memballoon model='none'/>
    {extra_devices}
  </devices>
</domain>"""


@contextmanager
def transient_domain(conn, xml: str) -> Iterator[object]:
    """A running transient domain, destroyed whatever happens."""
    dom = conn.createXML(xml, 0)
    try:
        yield dom
    finally:
        with suppress(Exception):
            dom.destroy()


@contextmanager
def persistent_domain(conn, xml: str, start: bool = True) -> Iterator[object]:
    """A defined (and by default started) domain, destroyed and undefined whatever happens."""
    dom = conn.defineXML(xml)
    try:
        if start:
            dom.create()
        yield dom
    finally:
        with suppress(Exception):
            dom.destroy()
        with suppress(Exception):
            dom.undefine()


def guest_io(dom, command: str) -> None:
    """Run a qemu-io command (e.g. "write -P 0x22 64M 1M") on the guest's disk, as if the guest did it."""
    import libvirt_qemu

    reply = libvirt_qemu.qemuMonitorCommand(dom, f'qemu-io -d {DISK_BACKEND} "{command}"',
                                            libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
    assert reply.strip() == "", f"qemu-io {command!r}: {reply}"


def disk_chain(dom, target: str = "vda", flags: int = 0) -> list[str]:
    """The file paths of a disk's chain in the domain XML, active image first."""
    root = ET.fromstring(dom.XMLDesc(flags))
    for disk in root.findall("./devices/disk"):
        if disk.find("target").get("dev") != target:
            continue
        paths, node = [], disk
        while node is not None and node.find("source") is not None:
            paths.append(node.find("source").get("file"))
            node = node.find("backingStore")
        return paths
    raise AssertionError(f"no disk {target}")


def has_backup_job(dom) -> bool:
    import libvirt

    try:
        dom.backupGetXMLDesc(0)
    except libvirt.libvirtError as e:
        assert e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_BACKUP, e
        return False
    return True
