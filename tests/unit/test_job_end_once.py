"""With a store several agents share, a job's end is recorded once: when another agent's takeover failed
the job first (zsagent.cluster.takeover), its answer stands and this agent sends no second web hook."""

from __future__ import annotations

import http.server
import threading

from zsagent import errors
from zsagent.errors import ZsError
from zsagent.jobs import Job, JobManager
from zsagent.store import SqliteStore


class _Hooks(http.server.BaseHTTPRequestHandler):
    received: list[str] = []

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(self.headers["X-Job-UUID"])
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def _run(tmp_path, reaper_first: bool):
    _Hooks.received = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hooks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    store = SqliteStore(tmp_path / "db", "host-a:7762")
    jobs = JobManager(store, webhook_attempts=1, webhook_backoff_s=0.01)
    jobs.end_once = True
    stopped = {"error": {"code": errors.OPERATION_FAILURE, "details": "agent host-a stopped during copy"}}

    def work(job: Job) -> dict:
        job.set_state("running")
        if reaper_first:  # another agent took this one for dead meanwhile (e.g. it was cut off from Ceph)
            assert SqliteStore(tmp_path / "db", "host-b:7762").fail_job_if_unfinished(job.uuid, stopped, 503)
        raise ZsError(errors.CANCELLED, "this agent lost its liveness lease")

    job = jobs.submit(Job(webhook=f"http://127.0.0.1:{server.server_address[1]}/"), work)
    jobs.wait_all(30)
    for thread in list(jobs._threads):  # the web hook is posted after the job is done
        thread.join(30)
    server.shutdown()
    return job, store.get_job(job.uuid), list(_Hooks.received)


def test_a_failure_after_another_agents_takeover_keeps_the_takeovers_answer_and_sends_no_hook(tmp_path):
    job, record, hooks = _run(tmp_path, reaper_first=True)
    assert record.result["error"]["details"] == "agent host-a stopped during copy"
    assert job.body == record.result  # a poll here answers as one through any other agent
    assert hooks == []  # the takeover told the hook


def test_a_failure_nobody_recorded_first_is_stored_and_told(tmp_path):
    job, record, hooks = _run(tmp_path, reaper_first=False)
    assert record.result["error"]["code"] == errors.CANCELLED
    assert hooks == [job.uuid]
