"""The end-of-run secret scan (tests/secret_scan.py) finds each kind of secret where the agent writes, and
nothing where it does not."""

from __future__ import annotations

import sqlite3
import subprocess
import tempfile
from pathlib import Path

from secret_scan import _outputs, leaks, secrets_in


def test_each_kind_of_secret_is_found_in_the_agents_files(monkeypatch):
    monkeypatch.delenv("ZSAGENT_TEST_SSHD_KEY", raising=False)  # only what is planted here
    with tempfile.TemporaryDirectory() as tmp:  # not under the run's directory: the planted leaks stay out of it
        check_planted_leaks(Path(tmp))


def check_planted_leaks(tmp_path: Path) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "sessions").write_text("# <session> <account>\n" + "a" * 32 + " " + "b" * 32 + "\n")
    (inputs / "access-keys").write_text("AkId0123456789 TheSecret-0123456789abcdef " + "c" * 32 + "\n")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(inputs / "id_test")], check=True)
    found = secrets_in(tmp_path)
    assert set(found.values()) == {
        "a session id of sessions", "an access key secret of access-keys", "a line of the private key id_test"}
    assert "b" * 32 not in found and "AkId0123456789" not in found  # accounts and key ids are not secret

    data = tmp_path / "data"
    data.mkdir()
    db = sqlite3.connect(data / "zsagent.db")
    db.execute("CREATE TABLE t (v TEXT)")
    db.execute("INSERT INTO t VALUES (?)", ("error: wrong secret TheSecret-0123456789abcdef",))
    db.commit()
    db.close()
    (data / "agent.log").write_text("job done, no secret here\n")
    key_line = next(s for s, what in found.items() if "private key" in what)
    (data / "crash.json").write_text(f'{{"exc": "{key_line}"}}')
    found_in = leaks(found, _outputs(tmp_path))
    assert sorted(f.split(" (")[0] + " in " + f.rsplit("/", 1)[1] for f in found_in) == [
        "a line of the private key id_test in crash.json", "an access key secret of access-keys in zsagent.db"]
