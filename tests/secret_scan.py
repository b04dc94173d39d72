"""A pytest plugin (tests/conftest.py loads it): no secret the suite uses ever shows in what the agent
writes or says.

During the whole run it keeps what would reach an operator's eyes: every log record that any handler
would see (whatever level the tests capture at), and each test's captured stdout, stderr and log. At the
end it reads the agent's own files under the run's temporary directory (SQLite stores with their WAL,
``*.log``, ``*.json``, spool files) and searches all of it for every secret of the run:
- registered with ``support.register_secret`` (e.g. an SSH key a test sends in a command);
- session ids in the sessions files the tests write (``*sessions*``: the first field of each line);
- secrets in the access key files (``*access-keys*``/``*access_keys*``: the second field);
- the body lines of every private key under the run's directory or named by ZSAGENT_TEST_SSHD_KEY.
A secret found fails the run as an error of the last test, naming where it was (never the secret).
Cost: one pass over small files at the end; nothing per request.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import support

OUTPUT_SUFFIXES = (".db", ".db-wal", ".log", ".json", ".out", ".err", ".txt")
MAX_SCANNED_BYTES = 64 << 20
MAX_INPUT_BYTES = 64 << 10  # secret holders are small; larger files are data
_KEY_BODY = re.compile(r"^[A-Za-z0-9+/=]{32,}$")


class _Collector(logging.Handler):
    """Writes every record it gets, formatted with its traceback, to one file."""

    def __init__(self, path: Path) -> None:
        super().__init__(logging.NOTSET)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self._file = open(path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115 - closed in close()

    def emit(self, record: logging.LogRecord) -> None:  # called under self.lock (Handler.handle)
        if self._file.closed:  # a job thread still logging after the session ended
            return
        try:
            self._file.write(self.format(record) + "\n")
        except Exception:  # noqa: BLE001 - a broken record must not fail a test here
            self.handleError(record)

    def close(self) -> None:
        with self.lock:  # no emit() half-way through a write while the file closes
            self._file.close()
        super().close()


# The captured output of the tests, while the session's scan runs (made by it, removed by it).
_captured: Path | None = None


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if _captured is None:  # outside the session's scan (e.g. the last teardown's report)
        return
    with open(_captured, "a", encoding="utf-8", errors="replace") as f:
        for title, text in report.sections:
            if title.startswith("Captured"):
                f.write(f"== {report.nodeid} {title}\n{text}\n")


def secrets_in(directory: Path) -> dict[str, str]:
    """secret -> what it is, from the secret holders under ``directory`` (see the module docstring)."""
    found: dict[str, str] = {}
    key_files = [Path(p) for p in [os.environ.get("ZSAGENT_TEST_SSHD_KEY")] if p]
    for path in [*directory.rglob("*"), *key_files]:
        try:
            if not path.is_file() or path.is_symlink() or path.stat().st_size > MAX_INPUT_BYTES:
                continue
            text = path.read_text(errors="replace")
        except OSError:
            continue
        name = path.name.lower()
        for line in text.splitlines():
            fields = line.split("#", 1)[0].split()
            if "sessions" in name and len(fields) == 2:
                found[fields[0]] = f"a session id of {path.name}"
            elif ("access-keys" in name or "access_keys" in name) and len(fields) == 3:
                found[fields[1]] = f"an access key secret of {path.name}"
        if "PRIVATE KEY-----" in text:
            for line in text.splitlines():
                if _KEY_BODY.match(line.strip()):
                    found[line.strip()] = f"a line of the private key {path.name}"
    return found


def _outputs(directory: Path) -> Iterator[Path]:
    for path in directory.rglob("*"):
        if path.name.endswith(OUTPUT_SUFFIXES) or path.parent.name == "spool":
            try:
                if path.is_file() and not path.is_symlink() and path.stat().st_size <= MAX_SCANNED_BYTES:
                    yield path
            except OSError:
                continue


def leaks(secrets: dict[str, str], places: Iterator[Path]) -> list[str]:
    """"<what> in <where>" for each secret found in a place; empty secrets and short ones are ignored."""
    wanted = {s.encode(): what for s, what in secrets.items() if len(s) >= 8}
    found = []
    for place in places:
        try:
            data = place.read_bytes()
        except OSError:
            continue
        found += [f"{what} ({len(s)} characters) in {place}" for s, what in wanted.items() if s in data]
    return found


@pytest.fixture(scope="session", autouse=True)
def no_secret_leaves_the_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    global _captured
    fd, name = tempfile.mkstemp(prefix="zsagent-secret-scan-", suffix=".txt")
    os.close(fd)
    captured = _captured = Path(name)
    try:
        collector = _Collector(captured)
        logging.getLogger().addHandler(collector)
        try:
            yield
        finally:
            logging.getLogger().removeHandler(collector)
            collector.close()
        base = tmp_path_factory.getbasetemp()
        secrets = {**secrets_in(base), **{s: "a registered secret" for s in support.KNOWN_SECRETS}}
        found = leaks(secrets, iter([captured, *_outputs(base)]))
    finally:
        _captured = None
        captured.unlink(missing_ok=True)
    if found:
        pytest.fail("secrets found where the agent writes or speaks:\n  " + "\n  ".join(sorted(set(found))),
                    pytrace=False)
