"""Compressed qcow2 templates (template::compression) and the qemu-img engine through the API, from file
volumes and RBD volumes, checked with md5sum, qemu-img check/compare/info and rbd export."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
from agent_harness import ACCOUNT, file_volume, running_agent, write_config
from support import make_qcow2_chain, md5sum_file

MiB = 1024 * 1024


@pytest.fixture
def api(rbd_env, tmp_path):
    """PS: the env's Ceph pool and a directory; BS: Ceph (default), a qcow2 directory, and a raw directory
    whose engine is qemu-img."""
    env = rbd_env
    ps_root, qcow2_root, raw_root = tmp_path / "ps", tmp_path / "bs-qcow2", tmp_path / "bs-raw"
    for root in (ps_root, qcow2_root, raw_root):
        root.mkdir()
    ceph_bs, qcow2_bs, raw_bs = (uuid.uuid4().hex for _ in range(3))
    raw = write_config(tmp_path, env.ceph_config,
                       [{"uuid": uuid.uuid4().hex, "type": "ceph", "pools": [env.src_pool]},
                        {"uuid": uuid.uuid4().hex, "type": "filesystem", "path": str(ps_root)}],
                       [{"uuid": ceph_bs, "type": "ceph", "pool": env.dst_pool, "default": True},
                        {"uuid": qcow2_bs, "type": "filesystem", "path": str(qcow2_root)},
                        {"uuid": raw_bs, "type": "filesystem", "path": str(raw_root), "format": "raw",
                         "engine": "qemu-img"}],
                       spool_dir=str(tmp_path / "spool"))
    with running_agent(raw) as agent:
        agent.env, agent.ps_root, agent.tmp = env, ps_root, tmp_path
        agent.ceph_bs, agent.qcow2_bs, agent.raw_bs = ceph_bs, qcow2_bs, raw_bs
        agent.qcow2_root, agent.raw_root = qcow2_root, raw_root
        yield agent


def qcow2_volume(ps_root, tmp_path):
    """A qcow2 chain in ZStack's layout (the volume file's backing file stays where it was made)."""
    vol = uuid.uuid4().hex
    chain = make_qcow2_chain(tmp_path)
    path = ps_root / "dataVolumes" / f"acct-{ACCOUNT}" / f"vol-{vol}" / f"{vol}.qcow2"
    path.parent.mkdir(parents=True)
    chain.rename(path)
    subprocess.run(["qemu-img", "rebase", "-u", "-F", "qcow2", "-b", str(tmp_path / "base.qcow2"), str(path)],
                   check=True)
    return vol, path


def check_template(path, source, source_format):
    check = subprocess.run(["qemu-img", "check", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    compare = subprocess.run(["qemu-img", "compare", "-f", source_format, "-F", "qcow2", str(source), str(path)],
                             capture_output=True, text=True)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    return json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True,
                                     text=True, check=True).stdout)


def no_leftovers(api):
    assert list(api.tmp.joinpath("spool").glob("*")) == []
    for root in (api.qcow2_root, api.raw_root):
        assert list(root.rglob("*.part")) == []
    assert api.agent.store.artifacts() == []


@pytest.mark.parametrize("compression", ["zstd", "zlib"])
def test_compressed_template_of_a_qcow2_chain(api, compression):
    vol, path = qcow2_volume(api.ps_root, api.tmp)
    answer = api.post_create(vol, {"backupStorageUuids": [api.qcow2_bs]},
                             systemTags=[f"template::compression::{compression}"])
    assert answer.status_code == 200, answer.text
    inv = answer.json()["inventory"]
    [ref] = inv["backupStorageRefs"]
    template = ref["installPath"]
    assert template == str(api.qcow2_root / "dataVolumeTemplates" / f"acct-{ACCOUNT}" / inv["uuid"]
                           / f"{inv['uuid']}.qcow2")
    assert inv["format"] == "qcow2" and inv["size"] == 24 * MiB
    assert inv["md5Sum"] == md5sum_file(template) == ref["exportMd5Sum"]
    details = check_template(template, path, "qcow2")
    assert details["format-specific"]["data"]["compression-type"] == compression
    assert details["virtual-size"] == 24 * MiB
    no_leftovers(api)


def test_compressed_template_of_an_rbd_volume_and_a_ceph_copy_in_one_job(api):
    env = api.env
    vol = uuid.uuid4().hex
    env.rbd.RBD().create(env.src, vol, 12 * MiB, old_format=False)
    with env.rbd.Image(env.src, vol) as image:
        image.write(b"template " * (MiB // 9), 2 * MiB)
        image.write(bytes(range(256)) * 4096, 11 * MiB)
    answer = api.post_create(vol, {"backupStorageUuids": [api.ceph_bs, api.qcow2_bs]},
                             systemTags=["template::compression::zstd"])
    if env.kind == "fake":  # qemu cannot read the fake backend's images: that template fails, Ceph's stands
        assert answer.status_code == 200, answer.text
        inv = answer.json()["inventory"]
        assert [r["backupStorageUuid"] for r in inv["backupStorageRefs"]] == [api.ceph_bs]
        assert not list(api.qcow2_root.rglob("*.qcow2*"))
        no_leftovers(api)
        only = api.post_create(vol, {"backupStorageUuids": [api.qcow2_bs]}, systemTags=["template::compression::zstd"])
        assert only.status_code == 503
        assert "qemu-img cannot read" in json.dumps(only.json()["error"])
        return
    assert answer.status_code == 200, answer.text
    inv = answer.json()["inventory"]
    refs = {r["backupStorageUuid"]: r for r in inv["backupStorageRefs"]}
    assert list(refs) == [api.ceph_bs, api.qcow2_bs]
    assert inv["format"] == "raw" and inv["md5Sum"] == env.export_md5(env.src_pool, vol)  # the first storage's
    template = refs[api.qcow2_bs]["installPath"]
    assert refs[api.qcow2_bs]["exportMd5Sum"] == md5sum_file(template)
    exported = api.tmp / "exported.raw"
    subprocess.run(["rbd", "export", "--no-progress", f"{env.src_pool}/{vol}", str(exported)], check=True,
                   env=env.cli_env, capture_output=True)
    details = check_template(template, exported, "raw")
    assert details["format-specific"]["data"]["compression-type"] == "zstd"
    with env.rbd.Image(env.src, vol) as image:
        assert list(image.list_snaps()) == []  # the temporary snapshot is gone
    no_leftovers(api)


def test_the_qemu_img_engine_makes_sparse_raw_templates(api):
    vol, path = file_volume(api.ps_root, size=64 * MiB)
    answer = api.post_create(vol, {"backupStorageUuids": [api.raw_bs]})
    assert answer.status_code == 200, answer.text
    inv = answer.json()["inventory"]
    template = inv["backupStorageRefs"][0]["installPath"]
    assert inv["format"] == "raw" and template.endswith(".raw")
    assert inv["md5Sum"] == md5sum_file(template) == md5sum_file(path)
    assert inv["actualSize"] < 8 * MiB  # 1 MiB of data in 64 MiB
    no_leftovers(api)


@pytest.mark.parametrize("tags, says", [
    (["template::format::raw", "template::compression::zstd"], "needs the qcow2 format"),
    (["template::compression::lz4"], "not supported"),
])
def test_impossible_compression_requests_are_refused(api, tags, says):
    vol, _ = file_volume(api.ps_root)
    answer = api.post_create(vol, {"backupStorageUuids": [api.qcow2_bs]}, systemTags=tags)
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "SYS.1007" and says in json.dumps(answer.json()["error"])


def test_compression_on_a_raw_backup_storage_is_refused_with_the_fix(api):
    vol, _ = file_volume(api.ps_root)
    answer = api.post_create(vol, {"backupStorageUuids": [api.raw_bs]}, systemTags=["template::compression::zstd"])
    assert answer.status_code == 400
    assert "template::format::qcow2" in json.dumps(answer.json()["error"])
    no_leftovers(api)
