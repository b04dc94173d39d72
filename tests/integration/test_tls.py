"""`zsagent serve` over HTTPS with a certificate made here, the 127.0.0.1 default, and `zsagent check`'s
word on a plain-HTTP listener that other machines reach."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from agent_harness import free_port
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from zsagent.cli import main
from zsagent.config import AgentSettings, ConfigError, parse_config

SESSION = uuid.uuid4().hex


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (0600), as an operator would make with openssl."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "zsagent test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "agent.crt", directory / "agent.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def write_config(tmp: Path, agent_lines: str) -> Path:
    (tmp / "sessions").write_text(f"{SESSION} {uuid.uuid4().hex}\n")
    config = tmp / "zsagent.toml"
    config.write_text(f"""
[agent]
data_dir = "{tmp / 'data'}"
{agent_lines}
[auth]
sessions_file = "{tmp / 'sessions'}"
""")
    return config


def test_the_api_is_served_over_https_with_the_configured_certificate(tmp_path):
    cert, key = self_signed(tmp_path)
    port = free_port()
    config = write_config(tmp_path, f'listen = "127.0.0.1:{port}"\ntls_cert_file = "{cert}"\ntls_key_file = "{key}"')
    daemon = subprocess.Popen([str(Path(sys.executable).parent / "zsagent"), "serve", "--config", str(config)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        trusted = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = httpx.get(f"https://127.0.0.1:{port}/health", verify=trusted, timeout=5)
                break
            except httpx.ConnectError:
                assert daemon.poll() is None and time.monotonic() < deadline, daemon.communicate()
                time.sleep(0.1)
        assert answer.json() == {"status": "ok"}
        images = httpx.get(f"https://127.0.0.1:{port}/zstack/v1/images", verify=trusted,
                           headers={"Authorization": f"OAuth {SESSION}"})
        assert images.status_code == 200 and images.json()["inventories"] == []
        with pytest.raises(httpx.ConnectError):  # a client that does not trust the certificate gives up
            httpx.get(f"https://127.0.0.1:{port}/health", timeout=5)
        with pytest.raises(httpx.RemoteProtocolError):  # and plain HTTP is not answered
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    finally:
        daemon.terminate()
        _, log = daemon.communicate(timeout=60)
    assert f"serving on https://127.0.0.1:{port}" in log


def test_it_binds_to_this_host_unless_told_and_check_warns_about_plain_http_elsewhere(tmp_path):
    assert AgentSettings().listen.startswith("127.0.0.1:")
    runner = CliRunner()
    local = runner.invoke(main, ["check", "--config", str(write_config(tmp_path, 'listen = "127.0.0.1:7762"'))])
    assert "ok: the API listens on 127.0.0.1:7762 (this host only, plain HTTP)" in local.output
    assert "warning:" not in local.output
    open_to_all = runner.invoke(main, ["check", "--config", str(write_config(tmp_path, 'listen = "0.0.0.0:7762"'))])
    assert "warning: the API listens on 0.0.0.0:7762 over plain HTTP" in open_to_all.output
    assert "fix: set agent.tls_cert_file and agent.tls_key_file" in open_to_all.output
    assert open_to_all.exit_code == local.exit_code  # a warning, not a problem

    cert, key = self_signed(tmp_path)
    os.chmod(key, 0o644)
    tls = runner.invoke(main, ["check", "--config", str(write_config(
        tmp_path, f'listen = "0.0.0.0:7762"\ntls_cert_file = "{cert}"\ntls_key_file = "{key}"'))])
    assert "ok: the API is served over HTTPS on 0.0.0.0:7762" in tls.output
    assert f"warning: agent.tls_key_file {key} can be read by other users" in tls.output
    with pytest.raises(ConfigError, match="agent.tls_key_file: required when"):
        parse_config({"agent": {"tls_cert_file": str(cert)}})


def test_the_data_dir_and_the_store_are_the_agents_alone(tmp_path):
    from zsagent.store import SqliteStore

    old = os.umask(0o022)
    try:
        store = SqliteStore(tmp_path / "data" / "zsagent.db")
        store.add_job(uuid.uuid4().hex, None)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in [tmp_path / "data", *(tmp_path / "data").iterdir()]}
    store.close()
    assert modes.pop("data") == 0o700
    assert modes and set(modes.values()) == {0o600}, modes  # the database and its -wal / -shm
