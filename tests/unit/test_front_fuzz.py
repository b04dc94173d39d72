"""The front's taken-over command paths fed generated JSON (wrong types, missing fields, huge values, path
tricks): every command is answered 200 at once and then by one JSON callback with a boolean ``success`` —
never a 5xx or a non-JSON body, which on Ceph would make the MN send the copy to another mon
(protocol notes §1.4; CPSB l.3547-3563) — and nothing is created outside the configured storages."""

from __future__ import annotations

import uuid

from front_harness import front_config, running_front
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mn_simulator import MnSimulator
from upstream_agent import UpstreamAgent

from zsagent.front.routes import ROUTES

U = "a" * 32
V = "b" * 32

# Values a path-like field may get: well-formed ones, the same with traversal and separators mixed in,
# and anything at all.
PATHLIKE = st.one_of(
    st.sampled_from([
        f"ceph://p/{U}@{V}", f"ceph://b/{U}", f"ceph://p/../{U}@{V}", f"ceph://b/{U}/../../etc",
        f"ceph://p/{U}@{V}/..", "ceph://", f"ceph://b/{U}\x00", f"ceph://b/{U}\n",
        f"/ps/templateWorkspace/image-{U}/{U}.qcow2", f"/ps/templateWorkspace/image-{U}/../{U}.qcow2",
        f"/ps/dataVolumes/acct-{V}/vol-{U}/{U}.qcow2", f"/ps/dataVolumes/acct-{V}/vol-{U}/../../../etc/passwd",
        f"/bs/dataVolumeTemplates/acct-{V}/{U}/{U}.volume", f"/bs/dataVolumeTemplates/acct-{V}/{U}/../{U}.volume",
        f"/bs/../bs/dataVolumeTemplates/acct-{V}/{U}/{U}.qcow2", "../../etc/shadow", "/", "",
    ]),
    st.text(max_size=64),
)
ANY = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
              st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=32), PATHLIKE),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
FIELDS = ["srcPath", "dstPath", "shareable", "primaryStorageInstallPath", "backupStorageInstallPath",
          "installPath", "volumePath", "rootVolumePath", "path", "storagePath", "hostname", "username",
          "sshKey", "sshPort", "backupStorageHostName", "backupStorageUserName", "backupStorageSshKey",
          "backupStorageSshPort", "cancellationApiId", "incremental", "threadContext", "taskContext"]
HOSTS = st.sampled_from(["127.0.0.1", "", "-oProxyCommand=touch /tmp/x", "no such host", "::1"])


def command():
    fields = st.dictionaries(st.sampled_from(FIELDS), st.one_of(PATHLIKE, ANY), max_size=len(FIELDS))
    return fields.flatmap(lambda cmd: HOSTS.map(lambda host: {**cmd, "hostname": host}
                                                if "hostname" in cmd else cmd))


def _fuzz(tmp_path, fronts: str) -> None:
    ps, bs = tmp_path / "ps", tmp_path / "bs"
    ps.mkdir()
    bs.mkdir()
    if fronts == "ceph":
        primary = [{"uuid": uuid.uuid4().hex, "type": "ceph", "pools": ["p"]}]
        backup = [{"uuid": uuid.uuid4().hex, "type": "ceph", "pool": "b"}]
    else:
        primary = [{"uuid": uuid.uuid4().hex, "type": "filesystem", "path": str(ps)}]
        backup = []
    before = sorted(p.name for p in tmp_path.iterdir())
    with MnSimulator() as mn, UpstreamAgent() as upstream, \
            running_front(front_config(tmp_path, fronts, upstream.url, primary=primary, backup=backup)) as front:
        paths = sorted(ROUTES[fronts])

        @settings(max_examples=25 * len(paths), deadline=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(path=st.sampled_from(paths), cmd=command())
        def one(path, cmd):
            call = mn.post_command(front.url, path, cmd, api_id=uuid.uuid4().hex)
            assert call.sync_status == 200, (path, cmd, call.sync_body)
            result = call.result(30)  # a JSON object, or the simulator raises (SYS.1000 / SYS.1001)
            assert isinstance(result.get("success"), bool), result
            if result["success"] is False:
                assert isinstance(result.get("error"), str) and result["error"], result
                assert "Traceback" not in result["error"]

        one()
        front.wait_idle()
        assert mn.echo(front.url, "/ceph/primarystorage/echo" if fronts == "ceph" else "/host/echo") == 200
    # Nothing written beside the storages and the front's own data dir, and nothing inside them.
    assert {p.name for p in tmp_path.iterdir()} - set(before) <= {"data", "no-ceph", "known_hosts"}
    assert list(ps.iterdir()) == [] and list(bs.iterdir()) == []


def test_ceph_front_commands_fuzzed(tmp_path):
    _fuzz(tmp_path, "ceph")


def test_kvm_front_commands_fuzzed(tmp_path):
    _fuzz(tmp_path, "kvm")

