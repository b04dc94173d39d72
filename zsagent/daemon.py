"""`zsagent serve`: the HTTP API under uvicorn, with systemd's notify protocol and a graceful drain.

READY=1 once listening (what a previous run left is removed in the background, zsagent.janitor); on
SIGTERM/SIGINT: STOPPING=1, refuse new copies, let running ones finish within ``agent.drain_s``, cancel
and clean the rest (they end as SYS.1017), then exit.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

import uvicorn

from zsagent.agent import build_agent
from zsagent.checks import is_loopback
from zsagent.config import Config

log = logging.getLogger(__name__)


def sd_notify(state: str) -> bool:
    """Send ``state`` to systemd's NOTIFY_SOCKET, if there is one; True when sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(state.encode())
    return True


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def tls_options(config: Config) -> dict[str, str]:
    """uvicorn's HTTPS settings when ``agent.tls_cert_file`` and ``tls_key_file`` are set, else none."""
    if not config.agent.tls:
        return {}
    return {"ssl_certfile": config.agent.tls_cert_file, "ssl_keyfile": config.agent.tls_key_file}


class _Server(uvicorn.Server):
    """uvicorn, with our own handling of the stop signals: drain first, then stop serving."""

    def __init__(self, config: uvicorn.Config, on_stop) -> None:
        super().__init__(config)
        self._on_stop = on_stop
        self._stopping = False

    def handle_exit(self, sig, frame) -> None:
        if self._stopping:  # a second signal: stop at once
            super().handle_exit(sig, frame)
            return
        self._stopping = True
        threading.Thread(target=self._drain_then_exit, name="drain", daemon=True).start()

    def _drain_then_exit(self) -> None:
        try:
            self._on_stop()
        finally:
            self.should_exit = True


def serve(config: Config) -> int:
    agent = build_agent(config)
    host, port = parse_listen(config.agent.listen)

    def on_stop() -> None:
        sd_notify("STOPPING=1")
        agent.app.state.accepting = False
        running = len(agent.jobs.running())
        log.info("stopping: %d copies running, draining for up to %d s", running, config.agent.drain_s)
        cancelled = agent.jobs.drain(config.agent.drain_s)
        if cancelled:
            log.warning("stopping: cancelled %d copies after the drain time: %s", len(cancelled),
                        ", ".join(cancelled))

    server = _Server(uvicorn.Config(agent.app, host=host, port=port, log_config=None, lifespan="off",
                                    access_log=False, timeout_graceful_shutdown=5,
                                    **tls_options(config)), on_stop)

    def notify_when_ready() -> None:
        while not server.started and not server.should_exit:
            threading.Event().wait(0.02)
        if server.started:
            scheme = "https" if config.agent.tls else "http"
            sd_notify(f"READY=1\nSTATUS=serving on {scheme}://{config.agent.listen}")
            log.info("serving on %s://%s", scheme, config.agent.listen)
            if scheme == "http" and not is_loopback(host):
                log.warning("the API is plain HTTP on %s, which other machines reach: sessions and access-key "
                            "requests cross the network unencrypted (set agent.tls_cert_file/tls_key_file)",
                            config.agent.listen)

    threading.Thread(target=notify_when_ready, name="sd-notify", daemon=True).start()
    try:
        server.run()
    finally:
        agent.close()
    return 0 if server.started else 1
