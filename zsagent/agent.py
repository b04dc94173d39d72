"""Wires the agent together from its configuration: store, service, jobs, sessions and the HTTP app."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from fastapi import FastAPI

from zsagent.api import create_app
from zsagent.auth import AccessKeysFile, Authenticator, ManagementNodeSessions, SessionsFile
from zsagent.config import Config
from zsagent.copy import md5
from zsagent.filemodes import private_dir
from zsagent.jobs import JobManager
from zsagent.service import TemplateService
from zsagent.store import FrontRecords, Store

log = logging.getLogger(__name__)


@dataclass
class Agent:
    config: Config
    store: Store
    service: TemplateService
    jobs: JobManager
    app: FastAPI

    def close(self) -> None:
        self.service.close()
        self.store.close()


def sessions_for(config: Config) -> Authenticator:
    """Who may call: sessions (a file, or a management node) and access keys (a file), per [auth]."""
    if config.auth.zstack_url:
        sessions = ManagementNodeSessions(config.auth.zstack_url, config.auth.session_cache_s)
    else:
        sessions = SessionsFile(config.auth.sessions_file or "/etc/zsagent/sessions")
    access_keys = AccessKeysFile(config.auth.access_keys_file) if config.auth.access_keys_file else None
    return Authenticator(sessions, access_keys, check_time_zone=config.auth.check_time_zone)


def build_agent(config: Config) -> Agent:
    """Open the store, reconcile what a previous run left behind, and build the app."""
    private_dir(config.agent.data_dir)
    md5.choose(config.agent.data_dir)  # measured once per CPU and library version, before the first copy
    store = Store(os.path.join(config.agent.data_dir, "zsagent.db"))
    service = TemplateService(config, store)
    front_jobs = {call.job_uuid for call in FrontRecords(store).calls()}  # `zsagent front` cleans its own
    interrupted = service.reconcile(owns=lambda job_uuid: job_uuid not in front_jobs)
    if interrupted:
        log.warning("jobs interrupted by the last stop, now failed: %s", ", ".join(interrupted))
    jobs = JobManager(store, config.agent.job_retention_s, metrics=service.metrics)
    app = create_app(service, jobs, sessions_for(config))
    return Agent(config, store, service, jobs, app)
