"""Volumes used by libvirt domains (zsagent.virt), on a real libvirtd with TCG domains and on the test driver.

``libvirt_uri`` (session): ZSAGENT_TEST_LIBVIRT_URI when set, else a private libvirtd started by
``scripts/libvirt up`` (its own socket, config and state in a temp dir) and stopped at the end.
Without libvirt the tests skip, under CI=true they fail. The test-driver tests need only the binding.
Tests that leave a domain as they found it share one (``idle_vm``); the others make their own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import MemorySink, md5sum_file, unavailable
from virt_support import (
    AGENT_CHANNEL,
    MiB,
    disk_chain,
    domain_xml,
    guest_io,
    has_backup_job,
    has_pattern,
    make_image,
    persistent_domain,
    qemu_reachable_dir,
    raw_md5,
    run,
    transient_domain,
)

from zsagent.copy.errors import AllSinksFailed
from zsagent.copy.pipeline import PipelineConfig, run_copy
from zsagent.qemu_img import ConvertOptions
from zsagent.sinks.converted import ConvertedFile
from zsagent.sinks.raw_file import RawFileSink
from zsagent.transfer import transfer
from zsagent.virt import (
    Consistency,
    Method,
    QuiesceRequired,
    UndoJournal,
    VolumeRef,
    find_volume_users,
    open_point_in_time,
    parse_disks,
    undo_step,
)
from zsagent.virt.backup import PullBackup
from zsagent.virt.connection import open_connection
from zsagent.virt.overlay import ExternalOverlay
from zsagent.virt.usage import find_disk

REPO_ROOT = Path(__file__).resolve().parents[2]
COPY = PipelineConfig(chunk_bytes=1 * MiB, depth=2)
TEST_NS = "http://libvirt.org/schemas/domain/test/1.0"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def libvirt_binding():
    try:
        import libvirt
        import libvirt_qemu  # noqa: F401
        import nbd  # noqa: F401
    except ImportError as e:
        unavailable(f"the libvirt/libnbd python bindings do not import ({e}); run scripts/setup")
    return libvirt


@pytest.fixture(scope="session")
def libvirt_uri(libvirt_binding, tmp_path_factory):
    """A libvirt URI with a working QEMU driver (see the module docstring)."""
    named = os.environ.get("ZSAGENT_TEST_LIBVIRT_URI")
    if named:
        try:
            libvirt_binding.open(named).close()
        except libvirt_binding.libvirtError as e:
            unavailable(f"ZSAGENT_TEST_LIBVIRT_URI={named} does not answer: {e}")
        yield named
        return
    for tool in ("/usr/sbin/libvirtd", "/usr/sbin/virtlogd", "virsh", "qemu-system-x86_64", "qemu-img", "qemu-io",
                 "qemu-nbd"):
        if shutil.which(tool) is None:
            unavailable(f"no ZSAGENT_TEST_LIBVIRT_URI and no {tool} (scripts/setup installs libvirt-daemon-system, "
                        "qemu-system-x86, qemu-utils)")
    workdir = tmp_path_factory.mktemp("libvirt")
    script = REPO_ROOT / "scripts" / "libvirt"
    try:
        proc = subprocess.run([str(script), "up", str(workdir)], capture_output=True, text=True, timeout=180,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        unavailable(f"scripts/libvirt up failed: {e}")
    if proc.returncode != 0:
        unavailable(f"scripts/libvirt up {workdir} exited {proc.returncode}:\n{proc.stderr}")
    exports = dict(line.removeprefix("export ").split("=", 1) for line in proc.stdout.splitlines()
                   if line.startswith("export "))
    try:
        yield exports["ZSAGENT_TEST_LIBVIRT_URI"]
    finally:
        down = subprocess.run([str(script), "down", str(workdir)], capture_output=True, text=True, timeout=120,
                              check=False)
        if down.returncode != 0:
            pytest.fail(f"scripts/libvirt down {workdir} exited {down.returncode}:\n{down.stderr}", pytrace=False)


@pytest.fixture
def conn(libvirt_uri):
    connection = open_connection(libvirt_uri)
    yield connection
    connection.close()


@pytest.fixture
def qemu_dir():
    """A directory libvirt-qemu can reach, with a "run" subdirectory for the NBD socket directories."""
    with qemu_reachable_dir() as path:
        (path / "run").mkdir(mode=0o755)
        yield path


@dataclass(frozen=True)
class SharedVm:
    conn: object  # the module's connection, which made the domain
    dom: object  # a running transient domain on disk alone
    disk: Path  # guest_disk(dir)
    dir: Path  # what qemu_dir is to the other tests: holds the disk and an empty "run"


@pytest.fixture(scope="module")
def shared_vm(libvirt_uri):
    connection = open_connection(libvirt_uri)
    try:
        with qemu_reachable_dir() as path:
            (path / "run").mkdir(mode=0o755)
            disk = guest_disk(path)
            with transient_domain(connection, domain_xml(unique("zst-shared"), disk)) as dom:
                yield SharedVm(connection, dom, disk, path)
    finally:
        connection.close()


@pytest.fixture
def idle_vm(shared_vm):
    """The module's running domain, checked to be back on its disk with nothing of ours left: a test that
    left it otherwise fails the next one at setup, not with a misleading assertion."""
    assert_back_on(shared_vm.dom, shared_vm.disk, shared_vm.dir, {shared_vm.disk.name})
    return shared_vm


def guest_disk(qemu_dir: Path, fmt: str = "qcow2") -> Path:
    """A 128 MiB image disk.<fmt> holding pattern A (0x11) over [0, 8M) and [64M, 66M)."""
    return make_image(qemu_dir / f"disk.{fmt}", "128M", (0x11, 0, 8 * MiB), (0x11, 64 * MiB, 2 * MiB), fmt=fmt)


def unique(prefix: str = "zst-virt") -> str:
    return f"{prefix}-{os.urandom(4).hex()}"


def assert_back_on(dom, disk: Path, qemu_dir: Path, expected_files: set[str]) -> None:
    """The domain runs on its original disk alone, and nothing of ours is left in the directories."""
    assert disk_chain(dom) == [str(disk)]
    assert not has_backup_job(dom)
    assert dom.jobInfo()[0] == 0  # VIR_DOMAIN_JOB_NONE
    assert set(os.listdir(qemu_dir)) == expected_files | {"run"}
    assert os.listdir(qemu_dir / "run") == []


# ---------------------------------------------------------------- who uses a volume (test driver)


def test_users_are_found_in_domain_xml_files_chains_and_rbd(libvirt_binding, tmp_path):
    for name in ("top.qcow2", "mid.qcow2", "base.raw", "off.qcow2", "iso"):
        (tmp_path / name).touch()
    (tmp_path / "link-to-base").symlink_to(tmp_path / "base.raw")
    node = tmp_path / "node.xml"
    node.write_text(f"""<node>
  <domain type='test'>
    <name>on</name><memory>1024</memory><os><type>hvm</type></os>
    <devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{tmp_path}/top.qcow2'/>
        <backingStore type='file'><format type='qcow2'/><source file='{tmp_path}/mid.qcow2'/>
          <backingStore type='file'><format type='raw'/><source file='{tmp_path}/base.raw'/><backingStore/>
          </backingStore>
        </backingStore>
        <target dev='vda'/></disk>
      <disk type='network' device='disk'><driver name='qemu' type='raw'/>
        <source protocol='rbd' name='pool1/img1'><host name='10.0.0.1' port='6789'/></source>
        <auth username='admin'><secret type='ceph' uuid='6695eb01-f6a4-8304-79aa-97f2502e193f'/></auth>
        <target dev='vdb'/></disk>
      <disk type='network' device='disk'><source protocol='rbd' name='pool2/ns1/img2'/><target dev='vdc'/></disk>
      <disk type='network' device='disk'><source protocol='rbd' name='pool1/img3@snap1'/><target dev='vdd'/>
        <readonly/></disk>
      <disk type='file' device='cdrom'><source file='{tmp_path}/iso'/><target dev='hdc'/><readonly/></disk>
    </devices>
  </domain>
  <domain type='test' xmlns:test='{TEST_NS}'>
    <name>off</name><memory>1024</memory><os><type>hvm</type></os>
    <devices>
      <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{tmp_path}/off.qcow2'/>
        <target dev='vdb'/></disk>
      <disk type='network' device='disk'><source protocol='rbd' name='pool1/img1'/><target dev='vdc'/></disk>
    </devices>
    <test:runstate>5</test:runstate>
  </domain>
</node>""")
    uri = f"test://{node}"

    def users(ref):
        return sorted((u.domain, u.state, u.disk, u.layer, u.writes, u.format) for u in find_volume_users(ref, uri))

    assert users(VolumeRef.file(tmp_path / "top.qcow2")) == [("on", "running", "vda", 0, True, "qcow2")]
    assert users(VolumeRef.file(tmp_path / "mid.qcow2")) == [("on", "running", "vda", 1, False, "qcow2")]
    assert users(VolumeRef.file(tmp_path / "link-to-base")) == [("on", "running", "vda", 2, False, "raw")]
    assert users(VolumeRef.file(tmp_path / "off.qcow2")) == [("off", "shut-off", "vdb", 0, False, "qcow2")]
    assert users(VolumeRef.file(tmp_path / "iso")) == [("on", "running", "hdc", 0, False, "")]
    assert users(VolumeRef.file(tmp_path / "elsewhere.qcow2")) == []
    assert users(VolumeRef.rbd("pool1", "img1")) == [("off", "shut-off", "vdc", 0, False, ""),
                                                     ("on", "running", "vdb", 0, True, "raw")]
    assert users(VolumeRef.rbd("pool2", "img2", namespace="ns1")) == [("on", "running", "vdc", 0, True, "")]
    assert users(VolumeRef.rbd("pool2", "img2")) == []  # other namespace
    assert users(VolumeRef.rbd("pool1", "img3")) == []  # only its snapshot is attached

    disks = {d.target: d for d in parse_disks(libvirt_binding.open(uri).lookupByName("on").XMLDesc(0))}
    assert [layer.path for layer in disks["vda"].chain] == [str(tmp_path / n) for n in ("top.qcow2", "mid.qcow2",
                                                                                         "base.raw")]
    assert (disks["vdb"].active.pool, disks["vdb"].active.image, disks["vdb"].active.namespace) == (
        "pool1", "img1", "")
    assert disks["vdc"].active.namespace == "ns1"
    assert disks["vdd"].active.snapshot == "snap1" and disks["vdd"].readonly
    assert disks["hdc"].device == "cdrom" and disks["hdc"].readonly


def test_no_libvirt_means_not_in_use(libvirt_binding, tmp_path):
    uri = f"qemu+unix:///system?socket={tmp_path}/no-such.sock"
    assert find_volume_users(VolumeRef.file(tmp_path / "v.qcow2"), uri) == []

    pit = open_point_in_time("file", tmp_path / "v.qcow2", uri=uri)
    with pit as source:
        assert source is None
    assert pit.report.consistency is Consistency.STOPPED and pit.report.method is Method.DIRECT
    assert "no-such.sock" in pit.report.libvirt_error

    calls = []
    pit = open_point_in_time("ceph", ("pool", "img"), uri=uri, take_rbd_snapshot=lambda: calls.append(1))
    with pit as source:
        assert source is None
    assert calls == [1] and pit.report.consistency is Consistency.STOPPED


# ---------------------------------------------------------------- RBD volumes: freeze/thaw (test driver)


@pytest.fixture
def rbd_test_domain(libvirt_binding):
    """A running domain named rbd-<hex> with disk vdb on RBD pool1/vol-<hex>, in test:///default (whose
    state every connection of this process shares, fsFreeze/fsThaw included)."""
    conn = libvirt_binding.open("test:///default")
    image = unique("vol")
    dom = conn.createXML(f"""<domain type='test'><name>{unique('rbd')}</name><memory>1024</memory>
      <os><type>hvm</type></os><devices>
      <disk type='network' device='disk'><driver name='qemu' type='raw'/>
        <source protocol='rbd' name='pool1/{image}'><host name='192.0.2.1'/></source><target dev='vdb'/></disk>
      </devices></domain>""", 0)
    try:
        yield dom, image
    finally:
        dom.destroy()
        conn.close()


def test_rbd_snapshot_is_taken_frozen_and_thawed_after(rbd_test_domain):
    dom, image = rbd_test_domain
    recorded, cleared = [], []

    def record(kind, spec):
        recorded.append((kind, spec["domain_uuid"]))
        return len(recorded)

    def take_snapshot():
        # Already frozen: a second freeze freezes nothing (the test driver counts filesystems it froze).
        assert dom.fsFreeze() == 0
        assert recorded == [("virt-fsfreeze", dom.UUIDString())] and cleared == []

    pit = open_point_in_time("ceph", ("pool1", image), uri="test:///default", take_rbd_snapshot=take_snapshot,
                             journal=UndoJournal(record, cleared.append))
    with pit as source:
        assert source is None
        assert dom.fsThaw() == 0  # thawed as soon as the snapshot was taken
    report = pit.report
    assert report.consistency is Consistency.QUIESCED and report.method is Method.RBD_SNAPSHOT
    assert report.domain == dom.name() and report.disk == "vdb" and report.quiesce_error is None
    assert report.frozen_s is not None and report.frozen_s >= 0
    assert cleared == [1] and pit.journal.pending == []
    assert report.to_json()["consistency"] == "quiesced"


def test_rbd_thaw_happens_when_the_snapshot_fails(rbd_test_domain):
    dom, image = rbd_test_domain

    def take_snapshot():
        assert dom.fsFreeze() == 0
        raise RuntimeError("snapshot failed")

    pit = open_point_in_time("ceph", f"pool1/{image}", uri="test:///default", take_rbd_snapshot=take_snapshot)
    with pytest.raises(RuntimeError, match="snapshot failed"), pit:
        pass
    assert dom.fsThaw() == 0
    assert pit.journal.pending == []


@pytest.mark.parametrize("require", [False, True])
def test_rbd_freeze_timeout_thaws_the_guest(rbd_test_domain, require):
    dom, image = rbd_test_domain
    seen = []

    def slow_snapshot():
        time.sleep(0.6)
        seen.append(dom.fsThaw())  # 0: the timer thawed the guest already

    pit = open_point_in_time("ceph", ("pool1", image), uri="test:///default", take_rbd_snapshot=slow_snapshot,
                             freeze_timeout_s=0.2, require_quiesce=require)
    if require:
        with pytest.raises(QuiesceRequired, match="freeze timeout"), pit:
            pass
    else:
        with pit:
            pass
    assert seen == [0]
    assert pit.report.consistency is Consistency.CRASH_CONSISTENT
    assert "freeze timeout" in pit.report.quiesce_error and 0.15 < pit.report.frozen_s < 0.6
    assert pit.journal.pending == []


def test_file_volume_falls_back_to_a_snapshot_when_backup_is_unsupported(libvirt_binding, tmp_path):
    # The test driver has neither backupBegin nor disk-only snapshots: the fallback is tried and fails
    # cleanly, with the guest thawed and nothing left.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    pit = open_point_in_time("file", "/guest/diskimage1", uri="test:///default", runtime_dir=str(run_dir))
    with pytest.raises(libvirt_binding.libvirtError, match="unsupported flags"), pit:
        pass
    assert "not supported" in pit.report.fallback_reason
    assert pit.report.domain == "test" and pit.report.disk == "vda"
    assert libvirt_binding.open("test:///default").lookupByName("test").fsThaw() == 0
    assert pit.journal.pending == [] and os.listdir(run_dir) == []


# ---------------------------------------------------------------- real QEMU domains


def test_rbd_volume_of_a_defined_qemu_domain_is_stopped(conn, libvirt_uri, qemu_dir):
    image = unique("vol")
    xml = domain_xml(unique(), make_image(qemu_dir / "root.qcow2", "16M"), extra_devices=f"""
      <disk type='network' device='disk'><driver name='qemu' type='raw'/>
        <source protocol='rbd' name='rbdpool/{image}'><host name='192.0.2.1' port='6789'/></source>
        <target dev='vdb' bus='virtio'/></disk>""")
    calls = []
    with persistent_domain(conn, xml, start=False) as dom:
        pit = open_point_in_time("ceph", ("rbdpool", image), uri=libvirt_uri,
                                 take_rbd_snapshot=lambda: calls.append(1))
        with pit as source:
            assert source is None
        users = pit.report.users
        assert [(u.domain, u.state, u.disk, u.active) for u in users] == [(dom.name(), "shut-off", "vdb", False)]
    assert calls == [1] and pit.report.consistency is Consistency.STOPPED


@pytest.mark.parametrize(("method", "fmt"), [("backup", "qcow2"), ("snapshot", "qcow2"), ("backup", "raw"),
                                           ("snapshot", "raw")])
def test_running_domain_file_volume_is_copied_as_it_was(conn, libvirt_uri, qemu_dir, method, fmt):
    disk = guest_disk(qemu_dir, fmt)
    reference = qemu_dir / f"ref.{fmt}"
    shutil.copyfile(disk, reference)
    expected_md5 = raw_md5(reference, qemu_dir, fmt)
    out = qemu_dir / "template.raw"
    written = []
    with transient_domain(conn, domain_xml(unique(), disk, fmt)) as dom:

        def progress(done: int, total: int) -> None:
            if not written:  # after the first chunk: the guest overwrites A with B where the copy has not been
                guest_io(dom, "write -P 0x22 64M 1M")
                written.append(done)

        pit = open_point_in_time("file", disk, uri=libvirt_uri, method=method, runtime_dir=str(qemu_dir / "run"))
        with pit as source:
            assert source is not None and source.size == 128 * MiB
            result = run_copy(source, [RawFileSink(out)], COPY, progress=progress)
        assert written and written[0] < 64 * MiB

        assert result.md5 == expected_md5 == md5sum_file(out)
        run("qemu-img", "compare", "-q", "-f", fmt, "-F", "raw", reference, out)
        report = pit.report
        assert report.method is (Method.BACKUP if method == "backup" else Method.EXTERNAL_SNAPSHOT)
        assert report.consistency is Consistency.CRASH_CONSISTENT
        assert "guest agent is not configured" in report.quiesce_error
        assert (report.domain, report.disk) == (dom.name(), "vda")
        assert pit.journal.pending == []
        assert_back_on(dom, disk, qemu_dir, {disk.name, reference.name, out.name})
        guest_io(dom, "write -P 0x33 100M 1M")  # the domain still writes its disk
    # The guest's writes made during and after the copy are in its disk, A elsewhere untouched.
    assert has_pattern(disk, 0x22, 64 * MiB, MiB, fmt)
    assert has_pattern(disk, 0x11, 65 * MiB, MiB, fmt) and has_pattern(disk, 0x11, 0, 8 * MiB, fmt)
    assert has_pattern(disk, 0x33, 100 * MiB, MiB, fmt)
    assert has_pattern(out, 0x11, 64 * MiB, 2 * MiB, fmt="raw")


@pytest.mark.parametrize("method", ["backup", "snapshot"])
def test_running_domain_volume_into_a_compressed_template(conn, libvirt_uri, qemu_dir, method):
    """The qemu-img engine reads the same point in time (QEMU's NBD export, or the base under an overlay)."""
    disk = guest_disk(qemu_dir)
    reference = qemu_dir / "ref.qcow2"
    shutil.copyfile(disk, reference)
    out = qemu_dir / "template.qcow2"
    written = []
    with transient_domain(conn, domain_xml(unique(), disk)) as dom:

        def progress(done: int, total: int) -> None:
            if not written:  # qemu-img is converting: the guest overwrites A with B
                guest_io(dom, "write -P 0x22 64M 1M")
                written.append(done)

        pit = open_point_in_time("file", disk, uri=libvirt_uri, method=method, runtime_dir=str(qemu_dir / "run"))
        with pit as source:
            result = transfer(source, [], [ConvertedFile(out, ConvertOptions(compression="zstd"), COPY)], COPY,
                              progress=progress)
        assert written
        assert result.published[0].md5 == md5sum_file(out)
        run("qemu-img", "check", out)
        run("qemu-img", "compare", "-q", "-f", "qcow2", "-F", "qcow2", reference, out)
        assert pit.journal.pending == []
        assert_back_on(dom, disk, qemu_dir, {disk.name, reference.name, out.name})
    assert has_pattern(disk, 0x22, 64 * MiB, MiB)


@pytest.mark.parametrize("method", ["backup", "snapshot"])
def test_failure_mid_copy_puts_the_domain_back(conn, libvirt_uri, qemu_dir, method):
    disk = guest_disk(qemu_dir)
    sink = MemorySink("mem://failing", fail_at_write=3)
    written = []
    with transient_domain(conn, domain_xml(unique(), disk)) as dom:

        def progress(done: int, total: int) -> None:
            if not written:
                guest_io(dom, "write -P 0x22 64M 1M")
                written.append(done)

        pit = open_point_in_time("file", disk, uri=libvirt_uri, method=method, runtime_dir=str(qemu_dir / "run"))
        with pytest.raises(AllSinksFailed, match="injected write error"), pit as source:
            run_copy(source, [sink], COPY, progress=progress)
        assert written and sink.aborted and not sink.committed
        assert pit.journal.pending == []
        assert_back_on(dom, disk, qemu_dir, {"disk.qcow2"})
    assert has_pattern(disk, 0x22, 64 * MiB, MiB)  # with a snapshot: the overlay was committed back


def test_guest_agent_not_responding(conn, libvirt_uri, qemu_dir):
    disk = guest_disk(qemu_dir)
    with transient_domain(conn, domain_xml(unique(), disk, extra_devices=AGENT_CHANNEL)) as dom:
        pit = open_point_in_time("file", disk, uri=libvirt_uri, require_quiesce=True,
                                 runtime_dir=str(qemu_dir / "run"))
        with pytest.raises(QuiesceRequired, match="not connected|not responding"), pit:
            pass
        assert "quiescing is required" in pit.report.quiesce_error
        assert pit.journal.pending == []
        assert_back_on(dom, disk, qemu_dir, {"disk.qcow2"})

        pit = open_point_in_time("file", disk, uri=libvirt_uri, runtime_dir=str(qemu_dir / "run"))
        with pit as source:
            assert source is not None
        assert pit.report.consistency is Consistency.CRASH_CONSISTENT
        assert "not connected" in pit.report.quiesce_error or "not responding" in pit.report.quiesce_error
        assert_back_on(dom, disk, qemu_dir, {"disk.qcow2"})


def test_two_views_of_one_domain_take_turns(idle_vm, libvirt_uri):
    # A domain runs one backup job at a time: the second view waits for the first instead of failing.
    dom, disk, qemu_dir = idle_vm.dom, idle_vm.disk, idle_vm.dir
    order = []
    first = open_point_in_time("file", disk, uri=libvirt_uri, runtime_dir=str(qemu_dir / "run"))

    def second_view():
        with open_point_in_time("file", disk, uri=libvirt_uri, runtime_dir=str(qemu_dir / "run")):
            order.append("second")

    with first:
        thread = threading.Thread(target=second_view)
        thread.start()
        time.sleep(0.3)
        order.append("first")
    thread.join(timeout=60)
    assert order == ["first", "second"]
    assert_back_on(dom, disk, qemu_dir, {"disk.qcow2"})


# ---------------------------------------------------------------- undo after a crash (from the journal alone)


def test_undo_of_an_abandoned_backup(idle_vm, libvirt_uri):
    dom, disk, qemu_dir = idle_vm.dom, idle_vm.disk, idle_vm.dir
    _, disks, vda = find_disk(idle_vm.conn, dom.UUIDString(), "vda")
    journal = UndoJournal()
    PullBackup(dom, disks, vda, uri=libvirt_uri, journal=journal, runtime_dir=str(qemu_dir / "run")).begin()
    assert has_backup_job(dom)
    [step] = journal.pending  # the agent "crashes" here; a new process undoes the step
    undo_step(step.kind, step.spec)
    undo_step(step.kind, step.spec)  # idempotent
    assert_back_on(dom, disk, qemu_dir, {"disk.qcow2"})


@pytest.mark.parametrize("domain_state", ["running", "destroyed-transient", "destroyed-persistent"])
def test_undo_of_an_abandoned_overlay(conn, libvirt_uri, qemu_dir, domain_state):
    disk = guest_disk(qemu_dir)
    xml = domain_xml(unique(), disk)
    persistent = domain_state == "destroyed-persistent"
    with (persistent_domain(conn, xml) if persistent else transient_domain(conn, xml)) as dom:
        _, disks, vda = find_disk(conn, dom.UUIDString(), "vda")
        journal = UndoJournal()
        ExternalOverlay(dom, disks, vda, uri=libvirt_uri, journal=journal).create()
        [step] = journal.pending
        overlay = step.spec["overlay"]
        assert disk_chain(dom) == [overlay, str(disk)]
        guest_io(dom, "write -P 0x22 64M 1M")  # lands in the overlay only
        if domain_state != "running":
            dom.destroy()
            time.sleep(0.2)  # QEMU releases its image locks as it exits
        if persistent:
            assert disk_chain(dom, flags=2)[0] == overlay  # VIR_DOMAIN_XML_INACTIVE: the definition moved too
        undo_step(step.kind, step.spec)
        undo_step(step.kind, step.spec)
        assert not os.path.exists(overlay)
        if domain_state == "running":
            assert_back_on(dom, disk, qemu_dir, {"disk.qcow2"})
        elif persistent:
            assert disk_chain(dom, flags=2) == [str(disk)]
    assert has_pattern(disk, 0x22, 64 * MiB, MiB)  # the guest's write survived


# ---------------------------------------------------------------- through the HTTP API


def test_api_copies_a_running_vms_qcow2_volume_and_records_how(conn, libvirt_uri, qemu_dir):
    """ZStack refuses this ("VM should be Stopped"); the agent copies the disk as it was."""
    import uuid as uuidlib

    from agent_harness import ACCOUNT, running_agent, write_config

    volume = uuidlib.uuid4().hex
    vol_dir = qemu_dir / "ps" / "dataVolumes" / f"acct-{ACCOUNT}" / f"vol-{volume}"
    vol_dir.mkdir(parents=True)
    for d in [qemu_dir / "ps", *vol_dir.parents][:4]:
        d.chmod(0o755)
    disk = make_image(vol_dir / f"{volume}.qcow2", "64M", (0x11, 0, 8 * MiB), (0x12, 40 * MiB, MiB))
    reference = qemu_dir / "ref.qcow2"
    shutil.copyfile(disk, reference)
    expected = raw_md5(reference, qemu_dir)
    bs = uuidlib.uuid4().hex
    (qemu_dir / "agent").mkdir()
    (qemu_dir / "bs").mkdir()
    raw = write_config(qemu_dir / "agent", {"backend": "fake", "fake_root": str(qemu_dir / "fake")},
                       [{"uuid": uuidlib.uuid4().hex, "type": "filesystem", "path": str(qemu_dir / "ps")}],
                       [{"uuid": bs, "type": "filesystem", "path": str(qemu_dir / "bs"), "format": "raw"}])
    raw["virt"] = {"uri": libvirt_uri, "runtime_dir": str(qemu_dir / "run")}
    with transient_domain(conn, domain_xml(unique(), disk)) as dom, running_agent(raw) as agent:
        answer = agent.post_create(volume, headers={"X-Job-UUID": (job := uuidlib.uuid4().hex)})
        result = agent.wait_job(answer.json()["location"])
        assert result.status_code == 200, result.text
        inventory = result.json()["inventory"]
        path = inventory["backupStorageRefs"][0]["installPath"]
        assert inventory["md5Sum"] == expected == md5sum_file(path)
        record = agent.agent.store.get_job(job).point_in_time
        assert record["consistency"] == "crash-consistent" and record["method"] == "backup"
        assert disk_chain(dom) == [str(disk)] and not has_backup_job(dom)
        assert os.listdir(qemu_dir / "run") == []
        # asking for a quiesced copy without a guest agent is refused, and leaves nothing
        refused = agent.post_create(volume, systemTags=["consistency::quiesced"])
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "SYS.1006"
        assert "guest agent" in refused.json()["error"]["cause"]["details"]
        assert disk_chain(dom) == [str(disk)] and not has_backup_job(dom)
        assert agent.agent.store.artifacts() == []
