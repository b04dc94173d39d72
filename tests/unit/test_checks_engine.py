"""`zsagent check` for templates made by qemu-img: the tool, and for SFTP a writable spool directory."""

from zsagent.checks import _qemu_img_engine
from zsagent.config import parse_config

FS = {"uuid": "7c1e0f3a2b4d4c5e9f6a7b8c9d0e1f20", "type": "filesystem", "path": "/bs", "compression": "zstd"}
SFTP = {"uuid": "9a8b7c6d5e4f40312a1b0c9d8e7f6a50", "type": "sftp", "hostname": "bs1", "private_key": "/k",
        "known_hosts": "/kh", "path": "/bs", "engine": "qemu-img"}


def findings(tmp_path, *storages, **agent):
    config = parse_config({"agent": {"data_dir": str(tmp_path / "data"), **agent}, "backup_storage": list(storages)})
    return list(_qemu_img_engine(config))


def test_nothing_to_check_without_qemu_img_templates(tmp_path):
    assert findings(tmp_path, {**FS, "compression": "none"}) == []


def test_qemu_img_must_be_installed(tmp_path, monkeypatch):
    assert findings(tmp_path, FS) == [(True, "qemu-img is installed (compressed / qemu-img engine templates)", "")]
    monkeypatch.setenv("PATH", str(tmp_path))
    [(ok, what, fix)] = findings(tmp_path, FS)
    assert not ok and FS["uuid"] in what and fix == "apt-get install qemu-utils"


def test_sftp_templates_need_a_writable_spool(tmp_path):
    [_, (ok, what, _)] = findings(tmp_path, SFTP)
    assert ok and what == f"spool_dir {tmp_path / 'data' / 'spool'} is writable"
    blocker = tmp_path / "file"
    blocker.write_text("")
    [_, (ok, what, fix)] = findings(tmp_path, SFTP, spool_dir=str(blocker / "spool"))
    assert not ok and "cannot be created or written" in what and "install -d" in fix
