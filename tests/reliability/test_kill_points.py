"""kill -9 of the agent at every step of a job, for every kind of copy, then a restart.

Through the public API on the real test Ceph and sshd: the restarted agent answers at once, the job is
failed with "agent restarted during copy" and its web hook says so, a retry with the same resourceUuid
succeeds with the right md5 (by `rbd export | md5sum`, `md5sum`, `ssh md5sum`), and nothing is left
anywhere: no .part image or file, no snapshot (but a clone's parent), no spool or socket directory, no
qemu-nbd, no journal entry.
"""

from __future__ import annotations

import subprocess
import uuid

import httpx
import pytest
from crash_site import ZSAGENT, CrashSite, figure

from zsagent import faults

pytestmark = [pytest.mark.ceph, pytest.mark.sftp]
MiB = 1024 * 1024

KINDS = ["ceph-copy", "ceph-clone", "ceph-file", "ceph-sftp", "file-file"]
POINTS = ["snapshot-taken", "copy-first-chunk", "copy-mid", "publish-before-rename", "publish-after-rename",
          "record-before"]
ALL_CASES = [(kind, point) for kind in KINDS for point in POINTS] + [("ceph-sftp", "sftp-rename")]
FAST_CASES = [(KINDS[i % len(KINDS)], point) for i, point in enumerate(POINTS)] + [("ceph-sftp", "sftp-rename")]
"""`make test`: every point once and every kind at least once (7 cases, ~1 min); `make reliability`: all 31."""
CASES = [pytest.param(kind, point, id=f"{kind}-{point}",
                      marks=() if (kind, point) in FAST_CASES else pytest.mark.reliability)
         for kind, point in ALL_CASES]

FIRST_ANSWER_BOUND_S = 10
"""Generous: the target is 2 s (the figure is reported); before, a crash mid-copy kept the restarted agent
silent for 20-28 s while Ceph held the dead process' watch."""


def crash_then_retry(site: CrashSite, kind: str, point: str, size: int = 4 * MiB) -> None:
    case = site.case(kind, size)
    job = uuid.uuid4().hex
    crashing = site.start(fault=f"{point}:kill", name=f"crash-{point}")
    crashing.wait_serving()
    assert site.create(case, job).status_code == 202
    assert crashing.process.wait(120) == -9, crashing.log.read_text()[-3000:]

    restarted = site.start(name="restarted")
    try:
        first = restarted.wait_serving()
        figure("seconds to the first answer after a kill -9", first)
        assert first < FIRST_ANSWER_BOUND_S
        failed = site.poll(job)
        assert failed.status_code == 503, failed.text
        assert failed.json()["error"]["details"] == "agent restarted during copy"
        headers, body = site.hook.wait_for(job)
        assert headers["X-Job-Success"] == "false"
        assert body["error"]["details"] == "agent restarted during copy"

        retry = site.create(case, timeout_s=120)  # at once: it waits for what the crash left to be removed
        assert retry.status_code == 200, retry.text
        inventory = retry.json()["inventory"]
        path = inventory["backupStorageRefs"][0]["installPath"]
        assert inventory["md5Sum"] == site.template_md5(case, path) == case.content_md5
        assert site.wait_no_leftovers(case, published=path) == []
        if size > 64 * MiB:  # the shared test cluster keeps its objects in memory
            assert site.delete(case.image).status_code == 200
            site.remove_volume(case)
    finally:
        assert restarted.stop() == 0, restarted.log.read_text()[-4000:]
    assert site.journal() == []
    figure("kill points survived" + (f" ({size // MiB} MiB volumes)" if size > 64 * MiB else ""),
           f"{kind}@{point}")


@pytest.mark.parametrize(("kind", "point"), CASES)
def test_kill_at_each_step_then_restart_leaves_nothing_and_the_retry_succeeds(crash_site, kind, point):
    crash_then_retry(crash_site, kind, point)


LARGE_CASES = [(kind, point) for kind in ("ceph-copy", "ceph-file", "ceph-sftp") for point in POINTS[1:]]


@pytest.mark.reliability
@pytest.mark.parametrize(("kind", "point"), LARGE_CASES, ids=[f"{k}-{p}-1GiB" for k, p in LARGE_CASES])
def test_kill_at_each_step_of_a_1_gib_copy(crash_site, kind, point):
    crash_then_retry(crash_site, kind, point, size=1024 * MiB)


def test_a_second_crash_during_the_cleanup_then_the_retry_cleans_and_succeeds(crash_site):
    """The restarted agent is killed again while it removes what the first crash left; the third run
    then removes it, and a retry with the same resourceUuid never trips over it."""
    site = crash_site
    case = site.case("ceph-copy")
    job = uuid.uuid4().hex
    first = site.start(fault="copy-mid:kill", name="first")
    first.wait_serving()
    assert site.create(case, job).status_code == 202
    assert first.process.wait(120) == -9
    assert any(a.spec.get("image") == f"{case.image}.part" for a in site.journal())

    second = site.start(fault="cleanup:kill", name="second")  # dies at its first removal
    assert second.process.wait(120) == -9, second.log.read_text()[-3000:]
    assert site.leftovers(case) != []  # the .part image and the snapshot are still there, journalled

    third = site.start(name="third")
    try:
        third.wait_serving()
        retry = site.create(case)
        assert retry.status_code == 200, retry.text
        inventory = retry.json()["inventory"]
        path = inventory["backupStorageRefs"][0]["installPath"]
        assert inventory["md5Sum"] == site.template_md5(case, path) == case.content_md5
        assert site.wait_no_leftovers(case, published=path) == []
        assert site.poll(job).json()["error"]["details"] == "agent restarted during copy"
    finally:
        assert third.stop() == 0
    assert site.journal() == []


def test_sigterm_mid_copy_drains_the_copy_to_its_end(crash_site):
    """SIGTERM arrives half-way through an upload: the agent stops taking work, lets the copy finish
    (drain), answers its job and exits 0; the template is complete and nothing else is left."""
    site = crash_site
    case = site.case("ceph-sftp")
    job = uuid.uuid4().hex
    daemon = site.start(fault="copy-mid:term", name="drained")
    daemon.wait_serving()
    assert site.create(case, job).status_code == 202
    assert daemon.process.wait(120) == 0, daemon.log.read_text()[-3000:]
    headers, body = site.hook.wait_for(job)
    assert headers["X-Job-Success"] == "true"
    path = body["inventory"]["backupStorageRefs"][0]["installPath"]
    assert body["inventory"]["md5Sum"] == site.template_md5(case, path) == case.content_md5
    assert site.leftovers(case, published=path) == []
    assert site.journal() == []


def test_a_failed_cleanup_is_retried_in_the_background_and_shown_meanwhile(crash_site):
    """The copy fails and the first removal of what it made fails too: the entry stays journalled, with
    its error, in `zsagent check` and the metrics, and the agent removes it by itself after a backoff; a
    retry with the same resourceUuid then succeeds."""
    site = crash_site
    case = site.case("ceph-copy")
    faults.arm("copy-mid:error,cleanup:error*2")  # the sink's own removal, then the job's cleanup
    try:
        with site.in_process() as agent:
            agent.service.janitor.first_backoff_s = 3  # time to look at it before it is retried
            failed = site.create(case)
            assert failed.status_code != 200
            pending = site.journal()
            assert len(pending) == 1 and pending[0].attempts == 1 and "fault injected" in pending[0].last_error
            check = subprocess.run([*ZSAGENT, "check", "--config", str(site.config)], capture_output=True,
                                   text=True, timeout=120)
            assert f"job {pending[0].job_uuid} left ceph" in check.stdout and "1 removals failed" in check.stdout
            metrics = httpx.get(f"{site.url}/metrics").text
            assert "zsagent_cleanup_pending 1.0" in metrics and "zsagent_cleanup_failures_total 1.0" in metrics
            assert site.wait_no_leftovers(case, timeout_s=30) == []  # by itself, after the backoff
            assert site.journal() == []
            assert "zsagent_cleanup_pending 0.0" in httpx.get(f"{site.url}/metrics").text
            retry = site.create(case)
            assert retry.status_code == 200, retry.text
            assert retry.json()["inventory"]["md5Sum"] == site.export_md5(site.dst_pool, case.image) == case.content_md5
    finally:
        faults.arm(None)
