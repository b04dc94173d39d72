"""The agent's own files are its own: directories 0700, files 0600, whatever the umask.

The data dir holds the job records (results, errors) and the journal; the spool holds templates on their
way to SFTP. Templates published on a backup storage keep the storage's usual modes (0644 files under
0755 directories), because other ZStack services read them there.
"""

from __future__ import annotations

import os

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def private_dir(path: str | os.PathLike[str]) -> None:
    """Create ``path`` (and missing parents) as 0700 if it is not there; an existing one is left as the
    operator made it (`zsagent check` warns when others can enter it)."""
    if not os.path.isdir(path):
        os.makedirs(path, mode=PRIVATE_DIR_MODE, exist_ok=True)
        os.chmod(path, PRIVATE_DIR_MODE)  # the umask may have taken bits off, never added: make it exact


def private_file(path: str | os.PathLike[str]) -> None:
    """Create ``path`` empty as 0600 unless it exists (SQLite then gives its -wal and -shm files the same
    mode)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE_MODE))
    except FileExistsError:
        pass
