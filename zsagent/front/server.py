"""The front's HTTP server: a plain threaded HTTP/1.1 server (one thread per connection; the MN keeps
at most 2 per host, [zs] CoreGlobalProperty.java l.41-50), because forwarding must see the request's
headers exactly as they came (names' case and order) and no framework may add or rewrite any.

`zsagent front` runs it under systemd's notify protocol; on SIGTERM/SIGINT it stops accepting, lets
running copies finish within ``[agent] drain_s``, then cancels the rest (each still answers the MN).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from zsagent.cluster.agents import agent_id
from zsagent.config import Config
from zsagent.copy import md5
from zsagent.daemon import parse_listen, sd_notify
from zsagent.filemodes import private_dir
from zsagent.front.forward import RawRequest
from zsagent.front.front import Front
from zsagent.jobs import JobManager
from zsagent.service import TemplateService
from zsagent.store import open_store

log = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "zsagent-front"
    front: Front  # set on the subclass made per server

    def _dispatch(self) -> None:
        request = RawRequest(self.command, self.path, list(self.headers.items()), self.rfile)
        try:
            keep_open = self.front.handle(request, self.wfile)
        except (ConnectionError, TimeoutError) as e:
            log.info("connection from %s ended: %s", self.client_address[0], e)
            keep_open = False
        except Exception:  # noqa: BLE001 - one bad request must not stop the server
            log.exception("%s %s from %s failed", self.command, self.path, self.client_address[0])
            keep_open = False
        if not keep_open:
            self.close_connection = True

    def __getattr__(self, name: str):
        if name.startswith("do_"):  # every method goes the same way (forwarded unless ours)
            return self._dispatch
        raise AttributeError(name)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's signature
        log.debug("%s %s", self.client_address[0], format % args)


class _ThreadingHTTPServerV6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class FrontServer:
    """The front on ``listen`` ("host:port"), serving from a thread; ``url`` once started."""

    def __init__(self, front: Front, listen: str) -> None:
        host, port = parse_listen(listen)
        handler = type("FrontHandler", (_Handler,), {"front": front})
        self.front = front
        server_class = _ThreadingHTTPServerV6 if ":" in host else ThreadingHTTPServer
        self.httpd = server_class((host, port), handler)
        self.httpd.daemon_threads = True
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.httpd.server_address[1]}"
        self._thread: threading.Thread | None = None

    def start(self) -> FrontServer:
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.1,), name="front-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class FrontAgent:
    """Store, service, jobs and the front, from the configuration (the front's counterpart of
    zsagent.agent.build_agent)."""

    def __init__(self, config: Config) -> None:
        data_dir = config.front.data_dir or config.agent.data_dir
        private_dir(data_dir)
        md5.choose(data_dir)
        self.config = config
        self.store = open_store(config, agent_id(config), data_dir)
        self.service = TemplateService(config, self.store)
        self.jobs = JobManager(self.store, config.agent.job_retention_s, metrics=self.service.metrics)
        self.front = Front(config, self.store, self.service, self.jobs)
        self.restart_threads = self.front.start()
        self.server = FrontServer(self.front, config.front.listen)

    def close(self, drain_s: float = 0) -> None:
        self.server.stop()
        cancelled = self.jobs.drain(drain_s)
        if cancelled:
            log.warning("stopping: cancelled %d copies after the drain time: %s", len(cancelled), ", ".join(cancelled))
        self.front.close()
        self.service.close()
        self.store.close()


def serve_front(config: Config) -> int:
    agent = FrontAgent(config)
    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.server.start()
    sd_notify(f"READY=1\nSTATUS=front of ZStack's {config.front.fronts} agent on {config.front.listen}")
    log.info("front of %s (%s) serving on %s", config.front.upstream_url, config.front.fronts, config.front.listen)
    stop.wait()
    sd_notify("STOPPING=1")
    log.info("stopping: %d copies running, draining for up to %d s", len(agent.jobs.running()),
             config.agent.drain_s)
    agent.close(config.agent.drain_s)
    return 0
