"""`zsagent check` for an SFTP backup storage: reachable, host key known, base path there."""

from __future__ import annotations

from zsagent.sftp.client import SftpClient
from zsagent.sftp.errors import HostKeyChanged, HostKeyUnknown, SftpError


def check_sftp_backup_storage(bs) -> tuple[bool, str, str]:
    """(ok, what, fix) for one "sftp" backup storage of the config."""
    where = f"backup storage {bs.uuid}: sftp {bs.username}@{bs.hostname}:{bs.port}{bs.path}"
    try:
        client = SftpClient.connect(bs.sftp_settings())
    except (HostKeyUnknown, HostKeyChanged) as e:
        return (False, f"{where}: {e}", f"verify the server's key fingerprint, then add it to {bs.known_hosts}")
    except (SftpError, ValueError, OSError) as e:
        return (False, f"{where}: cannot connect: {e}",
                "check hostname, port, username and private_key, and that sshd runs there")
    try:
        if not client.exists(bs.path):
            return (False, f"{where}: {bs.path} does not exist on the server", f"create {bs.path} on the server")
        return (True, f"{where} is reachable with a known host key", "")
    except SftpError as e:
        return (False, f"{where}: {e}", "check the account's rights on the base path")
    finally:
        client.close()
