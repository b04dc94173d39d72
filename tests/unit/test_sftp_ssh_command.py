"""The ssh command lines and what ssh's stderr is taken to mean; settings validation."""

import dataclasses
import shlex

import pytest

from zsagent.sftp.errors import AuthenticationFailed, HostKeyChanged, HostKeyUnknown, SshConnectError
from zsagent.sftp.settings import SftpSettings
from zsagent.sftp.ssh_command import describe_exit, diagnose, exec_argv, sftp_argv, ssh_base_argv

S = SftpSettings(hostname="bs.example", port=2222, username="zstack", private_key="/keys/id_ed25519",
                 known_hosts="/keys/known_hosts", connect_timeout_s=7.5, keepalive_interval_s=11,
                 keepalive_count_max=4)


def options(argv):
    return {argv[i + 1].split("=", 1)[0]: argv[i + 1].split("=", 1)[1] for i, a in enumerate(argv) if a == "-o"}


def test_sftp_argv_uses_the_configured_port_user_key_and_known_hosts():
    argv = sftp_argv(S)
    assert argv[0] == "ssh"
    assert argv[-4:] == ["-s", "--", "bs.example", "sftp"]
    assert argv[argv.index("-p") + 1] == "2222"
    assert argv[argv.index("-l") + 1] == "zstack"
    assert argv[argv.index("-i") + 1] == "/keys/id_ed25519"
    assert argv[argv.index("-F") + 1] == "/dev/null"
    assert argv[argv.index("-c") + 1].split(",")[0] == "aes128-gcm@openssh.com"
    opts = options(argv)
    assert opts["UserKnownHostsFile"] == "/keys/known_hosts"
    assert opts["GlobalKnownHostsFile"] == "/dev/null"
    assert opts["StrictHostKeyChecking"] == "yes"
    assert opts["BatchMode"] == "yes"
    assert opts["IdentitiesOnly"] == "yes"
    assert opts["Compression"] == "no"
    assert opts["ConnectTimeout"] == "8"
    assert opts["ServerAliveInterval"] == "11"
    assert opts["ServerAliveCountMax"] == "4"


def test_accept_new_host_keys_is_explicit():
    assert options(sftp_argv(dataclasses.replace(S, accept_new_host_keys=True)))["StrictHostKeyChecking"] \
        == "accept-new"


def test_exec_argv_passes_one_quoted_command_line():
    argv = exec_argv(S, shlex.join(["md5sum", "--", "/bs/it's here.raw"]))
    assert argv[-3:-1] == ["--", "bs.example"]
    assert shlex.split(argv[-1]) == ["md5sum", "--", "/bs/it's here.raw"]
    assert ssh_base_argv(S) == argv[:-3]


@pytest.mark.parametrize("path", ["/keys/my key", "/keys/%h", "/keys/a\"b"])
def test_paths_ssh_would_split_or_expand_are_refused(path):
    with pytest.raises(ValueError, match="must not contain"):
        sftp_argv(dataclasses.replace(S, known_hosts=path))
    with pytest.raises(ValueError, match="must not contain"):
        sftp_argv(dataclasses.replace(S, private_key=path))


@pytest.mark.parametrize("change", [
    {"hostname": "-oProxyCommand=x"}, {"hostname": "a b"}, {"hostname": ""}, {"username": "-l"},
    {"username": "a@b"}, {"port": 0}, {"port": 65536}, {"private_key": ""}, {"known_hosts": "a\nb"},
    {"connect_timeout_s": 0}, {"idle_timeout_s": -1}, {"keepalive_interval_s": 0},
    {"bandwidth_bytes_per_s": 0}, {"verify_md5": True, "remote_commands": False}, {"connections": 0},
    {"connections": 17}, {"request_bytes": 262144}, {"requests_in_flight": 0}, {"flush_behind_bytes": 4096},
])
def test_bad_settings_are_refused(change):
    with pytest.raises(ValueError):
        dataclasses.replace(S, **change)


def test_target_and_known_hosts_name():
    assert S.target == "zstack@bs.example:2222"
    assert S.known_hosts_name == "[bs.example]:2222"
    assert dataclasses.replace(S, port=22).known_hosts_name == "bs.example"


UNKNOWN = """No ED25519 host key is known for [bs.example]:2222 and you have requested strict checking.
Host key verification failed.
"""
CHANGED = """@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
The fingerprint for the ED25519 key sent by the remote host is
SHA256:4/LAUImanvh81ttebW2iqOvMMVI9GZc0Q+VVOegGjYI.
Host key for [bs.example]:2222 has changed and you have requested strict checking.
Host key verification failed.
"""


def test_unknown_host_key_message_says_where_and_how_to_fix():
    err = diagnose(UNKNOWN, 255, S)
    assert type(err) is HostKeyUnknown
    text = str(err)
    assert "bs.example:2222" in text and "/keys/known_hosts" in text and "[bs.example]:2222" in text
    assert "ssh-keyscan -p 2222 bs.example >> /keys/known_hosts" in text
    assert err.stderr == UNKNOWN


def test_changed_host_key_message_names_the_offered_fingerprint():
    err = diagnose(CHANGED, 255, S)
    assert type(err) is HostKeyChanged
    assert "CHANGED" in str(err) and "SHA256:4/LAUImanvh81ttebW2iqOvMMVI9GZc0Q+VVOegGjYI" in str(err)
    assert "man-in-the-middle" in str(err)


@pytest.mark.parametrize("stderr,cls,words", [
    ("zstack@bs.example: Permission denied (publickey).", AuthenticationFailed, ["refused the login"]),
    ("Warning: Identity file /keys/id_ed25519 not accessible: No such file or directory.\n"
     "zstack@bs.example: Permission denied (publickey).", AuthenticationFailed, ["not accessible"]),
    ("ssh: connect to host bs.example port 2222: Connection refused", SshConnectError,
     ["cannot connect to bs.example:2222", "Connection refused"]),
    ("ssh: connect to host bs.example port 2222: Connection timed out", SshConnectError, ["timed out"]),
    ("ssh: Could not resolve hostname bs.example: Name or service not known", SshConnectError,
     ["Could not resolve"]),
    ("subsystem request failed on channel 0", SshConnectError, ["does not offer the sftp subsystem"]),
    ("something odd", SshConnectError, ["exit status 255", "something odd"]),
])
def test_other_ssh_failures(stderr, cls, words):
    err = diagnose(stderr, 255, S)
    assert type(err) is cls
    for word in words:
        assert word in str(err)
    assert err.target == "zstack@bs.example:2222"


def test_describe_exit():
    assert describe_exit(-9, "") == "ssh was killed by signal 9"
    assert describe_exit(255, "Connection closed by 1.2.3.4 port 22\n") == \
        "ssh exited with status 255: Connection closed by 1.2.3.4 port 22"
