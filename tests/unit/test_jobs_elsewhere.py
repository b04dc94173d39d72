"""A job seen through another agent that shares the store: running, with the progress its own agent
saved, then its answer."""

from __future__ import annotations

import threading
import time

from zsagent.jobs import Job, JobManager
from zsagent.store import SqliteStore


def wait_for(check, timeout_s: float = 30):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met")


def test_a_job_running_on_one_agent_is_seen_running_with_its_progress_on_another(tmp_path):
    here = JobManager(SqliteStore(tmp_path / "db", "host-a:7762"))
    there = JobManager(SqliteStore(tmp_path / "db", "host-b:7762"))
    go_on = threading.Event()

    def work(job: Job) -> dict:
        job.set_state("running")
        job.phase, job.bytes_total, job.bytes_done = "copying", 100, 40
        go_on.wait(30)
        return {"inventory": {"uuid": "img"}}

    job = here.submit(Job(), work, volume_uuid="vol-1")
    seen = wait_for(lambda: (v := there.view(job.uuid)) and v.progress["percent"] == 40 and v)
    assert seen.running and seen.body is None
    assert seen.progress == {"phase": "copying", "percent": 40, "bytesDone": 40, "bytesTotal": 100}
    go_on.set()
    here.wait_all(30)
    done = there.view(job.uuid)
    assert not done.running and done.success and done.body == {"inventory": {"uuid": "img"}}
    assert there.store.get_job(job.uuid).owner == "host-a:7762"
