"""Three agents on one Ceph cluster with the RADOS store: any agent answers for the work of any other.

Real `zsagent serve` daemons (tests/multi_agent.py) on the session's test Ceph: an image made through A
is got, queried, polled and deleted through B and C with the same md5 (by `rbd export | md5sum`) and
installPath; two creates of one volume through A and B run one after the other, the second queued while
the first copies; a store that cannot be used is said clearly.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
from multi_agent import Fleet, FleetPools, MiB
from support import unavailable

pytestmark = [pytest.mark.ceph]

SLOW_COPY = "copy-mid@0.25:sleep=0.5*6"
"""ZSAGENT_FAULT that makes a copy take 3 s more, from a quarter of the way on, while its progress moves:
time for the other agents to see it running."""
ACTIVE = ("snapshot", "copying", "publishing")
"""The phases of a job that holds its volume (zsagent.jobs.Job.phase)."""


def test_an_image_made_through_one_agent_is_polled_got_queried_and_deleted_through_the_others(fleet):
    fleet.start(faults={"A": SLOW_COPY})
    a, b, c = fleet["A"], fleet["B"], fleet["C"]
    volume = fleet.make_volume(16 * MiB)
    image, job = uuid.uuid4().hex, uuid.uuid4().hex
    assert a.create(volume.uuid, image, [fleet.ceph_bs, fleet.file_bs], job=job,
                    hook=fleet.hook.url).status_code == 202

    # while A copies, B and C know the job and how far it is
    seen_on_b = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if b.poll(job).status_code != 202:
            break
        progress = b.progress(job)
        if progress is not None:
            seen_on_b.append(progress)
        time.sleep(0.05)
    assert any(p["phase"] == "copying" and p["bytesDone"] > 0 for p in seen_on_b), seen_on_b
    assert all(p["bytesTotal"] in (None, 0, volume.size) for p in seen_on_b), seen_on_b
    assert c.poll(job).status_code in (200, 202)

    answers = {agent.name: agent.wait_job(job) for agent in (a, b, c)}
    assert {name: r.status_code for name, r in answers.items()} == {"A": 200, "B": 200, "C": 200}, \
        {name: r.text for name, r in answers.items()}
    inventory = answers["A"].json()["inventory"]
    assert answers["B"].json()["inventory"] == answers["C"].json()["inventory"] == inventory
    paths = sorted((ref["installPath"] for ref in inventory["backupStorageRefs"]),
                   key=lambda path: not path.startswith("ceph://"))
    assert paths[0] == f"ceph://{fleet.pools.backup}/{image}"
    assert paths[1].startswith(str(fleet.shared_dir))
    assert inventory["md5Sum"] == volume.md5
    assert [fleet.template_md5(path) for path in paths] == [volume.md5, volume.md5]
    assert b.progress(job)["phase"] == "done"
    assert len(fleet.hook_calls(job)) == 1  # from A, which ran it

    # `zsagent check` on B names the shared store and the three live agents
    check = b.check()
    assert check.returncode == 0, check.stdout
    assert f"store: RADOS pool {fleet.pools.store}, namespace {fleet.namespace}" in check.stdout
    alive = [line for line in check.stdout.splitlines() if line.startswith("ok: agent ") and ": alive, lease" in line]
    assert len(alive) == 3 and any(f"agent {b.agent_id} (this one)" in line for line in alive), check.stdout

    # every agent has the image, with the same inventory
    for agent in (a, b, c):
        found = agent.get_image(image)
        assert [i["md5Sum"] for i in found] == [volume.md5], agent.name
        assert sorted(r["installPath"] for r in found[0]["backupStorageRefs"]) == sorted(paths), agent.name
    assert [i["uuid"] for i in c.query_images(q=f"uuid={image}")] == [image]
    assert image in [i["uuid"] for i in b.query_images()]

    # a retry of the same create through C answers the same image, without a second copy
    again = c.create(volume.uuid, image, [fleet.ceph_bs, fleet.file_bs])
    assert again.status_code == 200, again.text
    assert again.json()["inventory"]["md5Sum"] == volume.md5

    # deleted through C: gone for all of them, and its bits from both backup storages
    assert c.delete(image).status_code == 200
    for agent in (a, b, c):
        assert agent.get_image(image) == [], agent.name
    assert image not in fleet.backup_images()
    assert not [p for p in fleet.shared_dir.rglob("*") if p.is_file()]
    assert fleet.leftovers(volume.uuid, image) == []


def _sample(fleet: Fleet, jobs: dict[str, str], stop: threading.Event, samples: list, polls: list) -> None:
    """Until ``stop``: one round polls each job's phase as the agent running it says; ``samples`` gets
    (monotonic time, {job: phase}) per round, ``polls`` (time before, time after, job, phase) per poll,
    so that an overlap is judged by when each answer was made, not by when its round began."""
    while not stop.is_set():
        phases = {}
        for job, name in jobs.items():
            before = time.monotonic()
            progress = fleet[name].progress(job)
            phases[job] = progress["phase"] if progress else None
            polls.append((before, time.monotonic(), job, phases[job]))
        samples.append((time.monotonic(), phases))
        time.sleep(0.05)


def test_two_creates_of_one_volume_through_two_agents_run_one_after_the_other(fleet):
    fleet.start(faults={"A": SLOW_COPY, "B": SLOW_COPY})
    a, b = fleet["A"], fleet["B"]
    volume = fleet.make_volume(8 * MiB)
    jobs = {uuid.uuid4().hex: "A", uuid.uuid4().hex: "B"}
    images = {job: uuid.uuid4().hex for job in jobs}
    stop, samples, polls = threading.Event(), [], []
    sampler = threading.Thread(target=_sample, args=(fleet, jobs, stop, samples, polls), daemon=True)

    def create(job: str) -> int:
        return fleet[jobs[job]].create(volume.uuid, images[job], [fleet.ceph_bs], job=job).status_code

    senders = [threading.Thread(target=create, args=(job,)) for job in jobs]
    for thread in senders:
        thread.start()
    sampler.start()
    for thread in senders:
        thread.join()
    try:
        answers = {job: fleet[name].wait_job(job) for job, name in jobs.items()}
    finally:
        stop.set()
        sampler.join(10)
    assert [r.status_code for r in answers.values()] == [200, 200], [r.text for r in answers.values()]
    for answer in answers.values():
        inventory = answer.json()["inventory"]
        assert inventory["md5Sum"] == volume.md5
        assert fleet.template_md5(inventory["backupStorageRefs"][0]["installPath"]) == volume.md5

    waiting = [phases for _, phases in samples
               if sorted(phases.values(), key=str) == sorted(["copying", "queued"], key=str)]
    assert waiting, f"never one copying while the other queued: {samples[:: max(1, len(samples) // 20)]}"
    active = {job: [(before, after) for before, after, j, phase in polls if j == job and phase in ACTIVE]
              for job in jobs}
    first, second = sorted(jobs, key=lambda job: active[job][0][0])
    # an overlap is proven when the first was seen active after an answer that saw the second active
    last_first_asked = max(before for before, _ in active[first])
    first_second_answered = min(after for _, after in active[second])
    assert last_first_asked <= first_second_answered, "both copies held the volume at once"
    # the second, while it waited, was queued as the agent that holds it says, and as the other says
    assert fleet[jobs[second]].poll(second).status_code == 200
    assert {a.progress(second)["phase"], b.progress(second)["phase"]} == {"done"}


def test_a_store_pool_that_is_not_there_stops_the_agent_at_start_with_a_clear_message(tmp_path, ceph_cluster,
                                                                                      fleet_pools):
    missing = f"zsm-missing-{uuid.uuid4().hex[:8]}"
    site = Fleet(tmp_path, ceph_cluster, fleet_pools, names=("A",), store_pool=missing)
    try:
        agent = site["A"]
        agent.start()
        status = agent.wait_exit(120)
        log = agent.tail()
        assert status != 0, log
        assert missing in log and "Traceback" not in log, log
        check = agent.check()
        assert check.returncode != 0
        assert missing in check.stdout, check.stdout
    finally:
        site.close()



def _wait_health(ceph, check: str, present: bool, timeout_s: float = 120) -> None:
    """Until `ceph health detail` names (or no longer names) ``check``, e.g. OSD_FULL."""
    deadline = time.monotonic() + timeout_s
    while (check in ceph.ceph_cli("health", "detail").decode()) != present:
        assert time.monotonic() < deadline, f"{check} {'never raised' if present else 'still raised'}"
        time.sleep(1)


@pytest.mark.reliability  # a private cluster of its own, filled up
def test_a_full_cluster_fails_the_create_clearly_through_the_store_and_leaves_nothing(tmp_path, ceph_cluster):
    """The store's pool is full (the cluster's one OSD is past its full ratio): a create answers a clear
    ZStack error, nothing of it is left, and once there is room again the same create succeeds."""
    root = tmp_path / "ceph"
    script = str(Path(__file__).resolve().parents[2] / "scripts" / "ceph-cluster")
    up = subprocess.run([script, "up", str(root), "--store", "memstore", "--memstore-bytes", str(1 << 30)],
                        capture_output=True, text=True, timeout=300)
    if up.returncode != 0:
        unavailable(f"ceph-cluster up failed:\n{up.stderr[-3000:]}")
    exports = dict(line.removeprefix("export ").split("=", 1) for line in up.stdout.splitlines()
                   if line.startswith("export "))
    try:
        ceph = dataclasses.replace(ceph_cluster, conf=exports["ZSAGENT_TEST_CEPH_CONF"],
                                   keyring=exports["ZSAGENT_TEST_CEPH_KEYRING"])  # the same tools, this cluster
        pools = FleetPools("zsm-ps", "zsm-bs", "zsm-store")
        for pool in (pools.primary, pools.backup, pools.store):
            ceph.create_rbd_pool(pool)
        site = Fleet(tmp_path / "site", ceph, pools, names=("A",))
        try:
            site.start()
            agent = site["A"]
            volume = site.make_volume(4 * MiB)
            site.make_volume(64 * MiB)  # with the full ratio at 3 % of 1 GiB, more than fits
            for ratio, value in (("set-nearfull-ratio", "0.01"), ("set-backfillfull-ratio", "0.02"),
                                 ("set-full-ratio", "0.03")):
                ceph.ceph_cli("osd", ratio, value)
            _wait_health(ceph, "OSD_FULL", True)

            image = uuid.uuid4().hex
            failed = agent.create(volume.uuid, image, [site.ceph_bs], timeout_s=300)
            assert failed.status_code >= 400, failed.text
            error = failed.json()["error"]
            assert error["code"].startswith("SYS.") and "full" in json.dumps(error).lower(), error
            assert "Traceback" not in agent.tail(), agent.tail()
            assert site.leftovers(volume.uuid, image) == []

            for ratio, value in (("set-full-ratio", "0.95"), ("set-backfillfull-ratio", "0.9"),
                                 ("set-nearfull-ratio", "0.85")):
                ceph.ceph_cli("osd", ratio, value)
            _wait_health(ceph, "OSD_FULL", False)
            deadline = time.monotonic() + 120  # the agent renews its lease again first
            while (retry := agent.create(volume.uuid, image, [site.ceph_bs])).status_code != 200:
                assert time.monotonic() < deadline, retry.text
                time.sleep(2)
            assert retry.json()["inventory"]["md5Sum"] == site.export_md5(pools.backup, image) == volume.md5
        finally:
            site.close()
    finally:
        subprocess.run([script, "down", str(root)], capture_output=True, timeout=120)
