from pathlib import Path

import pytest

from zsagent.config import ConfigError, ImageDefaults, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "systemd" / "zsagent.toml.example"


def test_the_annotated_example_is_a_valid_config():
    config = load_config(EXAMPLE)
    assert config.agent.listen == "127.0.0.1:7762"
    assert config.agent.max_jobs == 2
    assert [b.type for b in config.backup_storage] == ["ceph", "filesystem", "sftp"]
    assert config.backup_storage[0].default and config.backup_storage[0].settings.mode == "copy"
    assert config.primary_storage[0].pools == ("zs-pri",)
    assert config.pipeline.chunk_bytes == 2 * 1024 * 1024 and config.pipeline.depth == 16
    assert config.pipeline.rbd_server_side_copy is False
    assert config.image == ImageDefaults() == ImageDefaults(None, None, None, False)  # ZStack's values


def write(tmp_path, text):
    path = tmp_path / "zsagent.toml"
    path.write_text(text)
    return path


BS = '[[backup_storage]]\nuuid = "1b8ab68b7e224a30aa31f00f1db2b5a6"\n'
SFTP = BS + 'type = "sftp"\nprivate_key = "/k"\nknown_hosts = "/kh"\npath = "/bs"\n'
BAD = [
    ("[agent]\nmax_jobs = 0\n", "agent.max_jobs: must be at least 1"),
    ("[agent]\nmax_jobs = \"two\"\n", "agent.max_jobs: must be int, not str"),
    ("[agent]\nlisten = 7762\n", "agent.listen: must be str"),
    ("[agent]\nnope = 1\n", "agent.nope: unknown key"),
    ("[agents]\n", "agents: unknown section"),
    ("[ceph]\nbackend = \"fake\"\n", "ceph.fake_root: required"),
    ("[ceph]\nbackend = \"ceph\"\n", "ceph.backend: 'ceph' is not one of rados, fake"),
    ("[pipeline]\nchunk_bytes = 1000\n", "pipeline: chunk_bytes must be a positive multiple of 4096"),
    (BS + 'type = "ceph"\n', "backup_storage[0].pool: required for type \"ceph\""),
    (BS + 'type = "nfs"\n', "backup_storage[0].type: 'nfs' is not one of"),
    (BS + 'type = "filesystem"\npath = "/x"\nformat = "vmdk"\n', "backup_storage[0].format: 'vmdk'"),
    (BS + 'type = "ceph"\npool = "p"\nmode = "move"\n', "backup_storage[0].mode: 'move'"),
    (BS + 'type = "filesystem"\npath = "/x"\nformat = "raw"\ncompression = "zstd"\n',
     "backup_storage[0].compression: needs format \"qcow2\""),
    (BS + 'type = "ceph"\npool = "p"\ncompression = "zstd"\n', "Ceph backup storage stores raw images only"),
    (BS + 'type = "filesystem"\npath = "/x"\ncompression = "lz4"\n', "backup_storage[0].compression: 'lz4'"),
    (BS + 'type = "filesystem"\npath = "/x"\nengine = "dd"\n', "backup_storage[0].engine: 'dd'"),
    (BS + 'type = "filesystem"\npath = "/x"\nflush_behind_bytes = 0\n',
     "backup_storage[0].flush_behind_bytes: unknown key"),
    (SFTP + 'hostname = "h"\nflush_behind_bytes = 4096\n', "backup_storage[0].flush_behind_bytes: 0 (off) or at least"),
    # every kind's settings are checked when the file loads, not when a copy first uses them
    (SFTP + 'hostname = "-oProxyCommand=x"\n', "backup_storage[0]: invalid SFTP hostname '-oProxyCommand=x'"),
    (SFTP + 'hostname = "h"\nport = 70000\n', "backup_storage[0]: invalid SFTP port 70000"),
    (SFTP + 'hostname = "h"\nconnections = 99\n', "backup_storage[0]: connections must be between 1 and 16"),
    (SFTP + 'hostname = "h"\nusername = "a b"\n', "backup_storage[0]: invalid SFTP username"),
    (SFTP + 'hostname = "h"\nverify_md5 = true\nremote_commands = false\n', "verify_md5 needs remote_commands"),
    (SFTP + 'hostname = "h"\nresume_attempts = -1\n', "backup_storage[0]: resume_attempts must be between 0 and 100"),
    (SFTP + 'hostname = "h"\nresume_backoff_s = 0\n', "resume_backoff_s must be positive and at most"),
    (SFTP + 'hostname = "h"\nresume_backoff_s = 60\nresume_backoff_max_s = 10\n',
     "resume_backoff_s must be positive and at most resume_backoff_max_s"),
    (SFTP + 'hostname = "h"\nresume_backoff_s = "1s"\n', "backup_storage[0].resume_backoff_s: must be a number"),
    (SFTP.replace('path = "/bs"', 'path = "bs/../x"\nhostname = "h"'),
     "backup_storage[0].path: 'bs/../x' is not an absolute"),
    ('[[backup_storage]]\nuuid = "ABC"\ntype = "ceph"\npool = "p"\n', "backup_storage[0].uuid: 'ABC' is not"),
    ('[[backup_storage]]\ntype = "ceph"\n', "backup_storage[0].uuid: required"),
    (BS + 'type = "sftp"\nhostname = "h"\npath = "/p"\n', "backup_storage[0].private_key: required"),
    (BS + 'type = "ceph"\npool = "a"\n' + BS + 'type = "ceph"\npool = "b"\n', "is used twice"),
    ('[[primary_storage]]\nuuid = "1b8ab68b7e224a30aa31f00f1db2b5a6"\ntype = "ceph"\npools = []\n',
     "primary_storage[0].pools: must be a non-empty list"),
    ('[[primary_storage]]\nuuid = "1b8ab68b7e224a30aa31f00f1db2b5a6"\ntype = "filesystem"\npath = "/ps"\n'
     'qcow2_reader = "nbd"\n', "primary_storage[0].qcow2_reader"),
    ("this is = not toml =", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "says"), BAD)
def test_a_bad_config_names_the_file_the_key_and_the_reason(tmp_path, text, says):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and says in message
    assert "\n" not in message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")
