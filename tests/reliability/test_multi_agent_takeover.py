"""kill -9 of one of three agents mid-copy: a live one takes its work over, exactly once.

Three real `zsagent serve` daemons share the RADOS store on the real test Ceph (tests/multi_agent.py).
A dies at a fault point (ZSAGENT_FAULT, zsagent/faults.py) during a create; within its lease and a margin
B or C removes A's snapshot and .part image (seen with `rbd ls` / `rbd snap ls`), fails the job with
"agent <A> stopped during copy" and sends its web hook once, though both B and C are live and look;
A restarts and finds nothing left to do; a retry with the same resourceUuid through C succeeds with the
volume's md5 (`rbd export | md5sum`). `make test` runs the copy-mid case into the filesystem backup storage
(~25 s); `make reliability` the others: into the Ceph backup pool the .part image A was writing can only be
removed once Ceph dropped A's watch on it (osd_client_watch_timeout, 30 s), which makes those cases 30-60 s.
"""

from __future__ import annotations

import socket
import time
import uuid

import pytest
from crash_site import figure
from multi_agent import LEASE_S, LEFTOVERS_BOUND_S, TAKEOVER_MARGIN_S, Fleet, MiB

pytestmark = [pytest.mark.ceph]

POINTS = ["snapshot-taken", "copy-first-chunk", "copy-mid", "publish-before-rename", "publish-after-rename",
          "record-before"]
CASES = [pytest.param(point, backup, id=f"{backup}-{point}",
                      marks=() if (point, backup) == ("copy-mid", "file") else pytest.mark.reliability)
         for backup in ("ceph", "file") for point in POINTS]
HOOK_QUIET_S = 2 * LEASE_S
"""After the first web hook of a taken-over job, how long the test listens for a second one."""


def cluster_leftovers(fleet: Fleet, volume: str, image: str) -> list[str]:
    """What the takeover must remove: the leftovers in Ceph (not files on the filesystem backup storage,
    which only their own host removes, zsagent.cluster.takeover)."""
    return [left for left in fleet.leftovers(volume, image) if not left.startswith(str(fleet.shared_dir))]


def wait_failed_everywhere(fleet: Fleet, job: str, timeout_s: float) -> dict[str, dict]:
    """The job's answer on B and C once both say it failed: {name: body}."""
    deadline = time.monotonic() + timeout_s
    answers = {}
    while time.monotonic() < deadline:
        answers = {name: fleet[name].poll(job) for name in ("B", "C")}
        if all(a.status_code == 503 for a in answers.values()):
            return {name: a.json() for name, a in answers.items()}
        time.sleep(0.2)
    raise AssertionError(f"job {job} not failed within {timeout_s} s: "
                         f"{ {n: (a.status_code, a.text[:300]) for n, a in answers.items()} }")


@pytest.mark.parametrize(("point", "backup"), CASES)
def test_a_killed_agents_copy_is_cleaned_and_failed_once_by_another_and_the_retry_succeeds(fleet, point, backup):
    fleet.start(faults={"A": f"{point}:kill"})
    a, b, c = fleet["A"], fleet["B"], fleet["C"]
    volume = fleet.make_volume(16 * MiB)
    bs = fleet.ceph_bs if backup == "ceph" else fleet.file_bs
    image, job = uuid.uuid4().hex, uuid.uuid4().hex
    assert a.create(volume.uuid, image, [bs], job=job, hook=fleet.hook.url).status_code == 202
    assert a.wait_exit(120) == -9, a.tail()
    died = time.monotonic()
    assert b.poll(job).status_code == 202  # a dead agent's job is running until its lease ran out

    bodies = wait_failed_everywhere(fleet, job, LEASE_S + TAKEOVER_MARGIN_S)
    figure("seconds from a kill -9 to the job failed by another agent", round(time.monotonic() - died, 2))
    said = {f"agent {who} stopped during copy" for who in (a.agent_id, socket.gethostname())}  # the id or its host
    for name, body in bodies.items():
        assert body["error"]["details"] in said, (name, body)
    # what is in Ceph is removed by B or C; files on the filesystem backup storage wait for A's own host
    deadline = died + LEFTOVERS_BOUND_S
    while (left := cluster_leftovers(fleet, volume.uuid, image)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], left
    figure("seconds from a kill -9 to nothing left of its copy in Ceph", round(time.monotonic() - died, 2))

    headers, hook_body = fleet.hook.wait_for(job, timeout_s=TAKEOVER_MARGIN_S)
    assert headers["X-Job-Success"] == "false"
    assert "stopped during copy" in hook_body["error"]["details"]
    time.sleep(HOOK_QUIET_S)  # B and C both saw A's lease run out: only one of them may tell
    assert len(fleet.hook_calls(job)) == 1, fleet.hook_calls(job)
    assert b.get_image(image) == c.get_image(image) == []

    # A comes back: nothing of its last run is left for it, and nobody is told twice
    a.start()
    a.wait_serving()
    restarted = a.poll(job)
    assert restarted.status_code == 503 and "stopped during copy" in restarted.json()["error"]["details"]
    left, _ = fleet.wait_no_leftovers(volume.uuid, image, timeout_s=60)  # A's host-local files too
    assert left == [], left
    assert len(fleet.hook_calls(job)) == 1, fleet.hook_calls(job)
    assert "stopped during copy" in c.poll(job).json()["error"]["details"]  # not "restarted" since

    retry = c.create(volume.uuid, image, [bs], timeout_s=120)
    assert retry.status_code == 200, retry.text
    inventory = retry.json()["inventory"]
    path = inventory["backupStorageRefs"][0]["installPath"]
    assert inventory["md5Sum"] == fleet.template_md5(path) == volume.md5
    assert [i["md5Sum"] for i in a.get_image(image)] == [volume.md5]
    assert fleet.leftovers(volume.uuid, image, published=[path]) == []
    figure("multi-agent kill points survived", f"{backup}@{point}")


@pytest.mark.reliability
def test_a_request_queued_behind_a_killed_agents_copy_runs_once_the_lock_lease_ran_out(fleet):
    """B waits for the volume while A copies it; A is killed: B's copy starts after A's volume lock
    lease expired (nobody releases it), succeeds, and A's job is failed with nothing left of it."""
    fleet.start(faults={"A": "copy-first-chunk:sleep=4,copy-mid:kill"})
    a, b = fleet["A"], fleet["B"]
    volume = fleet.make_volume(16 * MiB)
    first, second = uuid.uuid4().hex, uuid.uuid4().hex
    images = {first: uuid.uuid4().hex, second: uuid.uuid4().hex}
    assert a.create(volume.uuid, images[first], [fleet.ceph_bs], job=first).status_code == 202
    deadline = time.monotonic() + 60
    while (a.progress(first) or {}).get("phase") not in ("snapshot", "copying"):  # held for 4 s from the first chunk
        assert time.monotonic() < deadline, "A's copy never started"
        time.sleep(0.05)
    assert b.create(volume.uuid, images[second], [fleet.ceph_bs], job=second).status_code == 202
    time.sleep(0.5)
    assert b.progress(second)["phase"] == "queued"
    assert a.wait_exit(120) == -9, a.tail()

    done = b.wait_job(second, timeout_s=LEASE_S + TAKEOVER_MARGIN_S + 60)
    assert done.status_code == 200, done.text
    path = done.json()["inventory"]["backupStorageRefs"][0]["installPath"]
    assert done.json()["inventory"]["md5Sum"] == fleet.template_md5(path) == volume.md5
    bodies = wait_failed_everywhere(fleet, first, LEASE_S + TAKEOVER_MARGIN_S)
    assert all("stopped during copy" in body["error"]["details"] for body in bodies.values()), bodies
    deadline = time.monotonic() + LEFTOVERS_BOUND_S
    while (left := cluster_leftovers(fleet, volume.uuid, images[first])) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == [], left
