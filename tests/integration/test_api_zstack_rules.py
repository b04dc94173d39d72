"""ZStack's own rules for what is answered at once and what through the job, call by call
(zstackio/zstack rest/src/main/java/org/zstack/rest/RestServer.java), as its Java SDK relies on them."""

from __future__ import annotations

import threading
import time
import uuid

from agent_harness import SESSION
from test_api import MiB, ceph_volume, snaps_of

from zsagent.sources import rbd_snapshot

AUTH = {"Authorization": f"OAuth {SESSION}"}


def slow_copies(monkeypatch) -> threading.Event:
    started, original = threading.Event(), rbd_snapshot.RbdSnapshotSource.read

    def slow_read(self, offset, length):
        started.set()
        time.sleep(0.05)
        return original(self, offset, length)

    monkeypatch.setattr(rbd_snapshot.RbdSnapshotSource, "read", slow_read)
    return started


def dense_volume(env) -> str:
    vol = ceph_volume(env, size=32 * MiB)
    with env.rbd.Image(env.src, vol) as image:
        for offset in range(0, 32 * MiB, 4 * MiB):
            image.write(b"\x01" * (4 * MiB), offset)
    return vol


def test_a_job_that_outlives_its_api_timeout_fails_with_sys_1001_and_leaves_nothing(api, monkeypatch):
    env = api.env
    vol = dense_volume(env)
    slow_copies(monkeypatch)
    answer = api.post_create(vol, {"backupStorageUuids": [api.ceph_bs, api.file_bs]},
                             headers={"X-Job-UUID": uuid.uuid4().hex, "X-API-Timeout": "1"})
    assert answer.status_code == 202 and answer.json()["apiTimeout"] == 1000
    result = api.wait_job(answer.json()["location"])
    assert result.status_code == 503 and result.json()["error"]["code"] == "SYS.1001"
    assert "API timeout of 1 s" in result.json()["error"]["details"]
    assert snaps_of(env, vol) == [] and not any(n.endswith(".part") for n in env.rbd.RBD().list(env.dst))
    assert api.agent.store.artifacts() == []


def test_a_bad_api_timeout_header_is_refused_at_once(api):
    # ZStack's Long.parseLong fails with a 500; a client error is a 400 here, with ZStack's wording
    for value in ("soon", "0", "-5", "1e3", "99999999999999999999"):
        answer = api.post_create(uuid.uuid4().hex, headers={"X-Job-UUID": uuid.uuid4().hex, "X-API-Timeout": value})
        assert answer.status_code == 400 and answer.text.startswith("Invalid header[X-API-Timeout]"), value
        assert answer.headers["content-type"].startswith("text/plain")


def test_delete_is_asynchronous_for_a_client_that_polls(api):
    vol = ceph_volume(api.env, data=False)
    made = api.post_create(vol).json()["inventory"]
    job = uuid.uuid4().hex
    answer = api.client.delete(f"/zstack/v1/images/{made['uuid']}", headers={**AUTH, "X-Job-UUID": job})
    assert answer.status_code == 202 and answer.json()["location"].endswith(f"/api-jobs/{job}")
    assert answer.json()["apiTimeout"] == 5 * 60 * 1000
    result = api.wait_job(answer.json()["location"])
    assert (result.status_code, result.json()) == (200, {})
    assert made["uuid"] not in api.env.rbd.RBD().list(api.env.dst)
    # deleting it again (an image that is not there) succeeds too
    again = api.client.delete(f"/zstack/v1/images/{made['uuid']}", headers={**AUTH, "X-Job-UUID": uuid.uuid4().hex})
    assert api.wait_job(again.json()["location"]).status_code == 200


def test_synchronous_calls_answer_a_bad_session_with_503(api):
    bad = {"Authorization": f"OAuth {uuid.uuid4().hex}"}
    for path in ("/zstack/v1/images", f"/zstack/v1/images/{uuid.uuid4().hex}",
                 f"/zstack/v1/task-progresses/{uuid.uuid4().hex}"):
        answer = api.client.get(path, headers=bad)
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "ID.1001", path
    missing = api.client.get("/zstack/v1/images")
    assert (missing.status_code, missing.text) == (400, "missing header 'Authorization'")


def test_progress_of_an_unknown_job_is_an_empty_list(api):
    answer = api.get(f"/zstack/v1/task-progresses/{uuid.uuid4().hex}")
    assert (answer.status_code, answer.json()) == (200, {"inventories": []})


def test_a_job_is_polled_with_its_session(api):
    vol = ceph_volume(api.env, data=False)
    answer = api.post_create(vol, headers={"X-Job-UUID": uuid.uuid4().hex})
    result = api.get(answer.json()["location"])  # ZStack's SDK polls with the session that started it
    while result.status_code == 202:
        time.sleep(0.05)
        result = api.get(answer.json()["location"])
    assert result.status_code == 200 and list(result.json()) == ["inventory"]
    # without one, a job started with a session is not there (ZStack asks for none: the agent does)
    anonymous = api.client.get(answer.json()["location"])
    assert (anonymous.status_code, anonymous.text) == (404, "the job has been expired")
