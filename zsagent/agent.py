"""Wires the agent together from its configuration: store, service, jobs, sessions and the HTTP app."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import FastAPI

from zsagent.api import create_app
from zsagent.auth import AccessKeysFile, Authenticator, ManagementNodeSessions, SessionsFile
from zsagent.ceph import fencing
from zsagent.cluster import membership
from zsagent.cluster.agents import agent_id
from zsagent.config import Config
from zsagent.copy import md5
from zsagent.filemodes import private_dir
from zsagent.jobs import JobManager
from zsagent.service import TemplateService
from zsagent.store import FrontRecords, Store, open_store

log = logging.getLogger(__name__)


@dataclass
class Agent:
    config: Config
    store: Store
    service: TemplateService
    jobs: JobManager
    app: FastAPI
    member: membership.Membership | None = None  # with a store several agents share (zsagent.cluster)

    def close(self) -> None:
        if self.member is not None:
            self.member.close()
        self.service.close()
        self.store.close()

    def wait_cleaned(self, timeout_s: float | None = None) -> bool:
        """Wait until the background cleanup has nothing left it can remove now; True when so."""
        return self.service.janitor.idle.wait(timeout_s)


def sessions_for(config: Config) -> Authenticator:
    """Who may call: sessions (a file, or a management node) and access keys (a file), per [auth]."""
    if config.auth.zstack_url:
        sessions = ManagementNodeSessions(config.auth.zstack_url, config.auth.session_cache_s)
    else:
        sessions = SessionsFile(config.auth.sessions_file or "/etc/zsagent/sessions")
    access_keys = AccessKeysFile(config.auth.access_keys_file) if config.auth.access_keys_file else None
    return Authenticator(sessions, access_keys, check_time_zone=config.auth.check_time_zone)


CEPH_ARTIFACTS = ("ceph", "ceph-snapshot", "rbd-image", "rbd", "rbd-snapshot")
"""Journal kinds that live in Ceph (current and legacy names)."""


def _fence_the_last_run(service: TemplateService, data_dir: str) -> None:
    """Remember this run's Ceph client address; when the last run left Ceph artifacts, blocklist its
    client first so that Ceph drops its watches at once (zsagent.ceph.fencing)."""
    if service.ceph is None or service.ceph.is_fake:
        return
    previous = fencing.previous_address(data_dir)
    service.runtime.on_connect = lambda cluster: fencing.remember_address(data_dir, cluster)

    def before_first_sweep(leftovers) -> None:
        if previous and any(a.kind in CEPH_ARTIFACTS for a in leftovers):
            fencing.fence(service.runtime.cluster, previous)

    service.janitor.before_first_sweep = before_first_sweep


def build_agent(config: Config) -> Agent:
    """Open the store, join the other agents when it is shared (zsagent.cluster), fail the jobs a
    previous run left unfinished (telling their web hooks), start removing what they left in the
    background, and build the app: it serves at once."""
    private_dir(config.agent.data_dir)
    md5.choose(config.agent.data_dir)  # measured once per CPU and library version, before the first copy
    me = agent_id(config)
    store = open_store(config, me)
    service = TemplateService(config, store)
    jobs = JobManager(store, config.agent.job_retention_s, metrics=service.metrics)
    member = membership.join(config, me, store, service, jobs)  # waits for this agent's liveness lease
    front_jobs = lambda: {call.job_uuid for call in FrontRecords(store).calls()}  # noqa: E731 - `front` cleans its own
    known_front = front_jobs()
    interrupted = service.fail_interrupted(owns=lambda job_uuid: job_uuid not in known_front)
    service.janitor.foreign = front_jobs
    if interrupted:
        log.warning("jobs interrupted by the last stop, now failed: %s", ", ".join(j.uuid for j in interrupted))
    jobs.tell_interrupted(interrupted)
    _fence_the_last_run(service, config.agent.data_dir)
    service.janitor.start()  # what the interrupted jobs left (Ceph may hold a dead watch for 30 s)
    app = create_app(service, jobs, sessions_for(config))
    return Agent(config, store, service, jobs, app, member)
