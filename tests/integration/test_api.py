"""CreateDataVolumeTemplateFromVolume end to end over real HTTP, on the fake backend and real Ceph."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from agent_harness import ACCOUNT, SESSION, file_volume, running_agent, write_config
from support import md5sum_file

KiB, MiB = 1024, 1024 * 1024
DATE_RE = re.compile(r"^[A-Z][a-z]{2} \d{1,2}, \d{4} \d{1,2}:\d{2}:\d{2} [AP]M$")


def resource_uuid():
    return uuid.uuid4().hex  # version 4, variant 8-b: matches ZStack's pattern


def ceph_volume(env, size=6 * MiB + 512, data=True):
    vol = uuid.uuid4().hex
    env.rbd.RBD().create(env.src, vol, size, old_format=False)
    if data:
        with env.rbd.Image(env.src, vol) as image:
            image.write(bytes(range(256)) * 4096, 0)
            image.write(b"\xee" * 100_000, size - 100_000)
    return vol


def snaps_of(env, vol):
    with env.rbd.Image(env.src, vol) as image:
        return [s["name"] for s in image.list_snaps()]


def assert_inventory(inv, *, uuid_, name, volume_uuid, fmt, size):
    assert inv["uuid"] == uuid_
    assert inv["name"] == name
    assert inv["state"] == "Enabled" and inv["status"] == "Ready"
    assert inv["size"] == size
    assert inv["url"] == f"volume://{volume_uuid}"
    assert inv["mediaType"] == "DataVolumeTemplate"
    assert inv["type"] == "zstack"
    assert inv["format"] == fmt
    assert inv["system"] is False
    assert inv["platform"] is None and inv["architecture"] is None  # as ZStack fills a data volume template
    assert inv["guestOsType"] is None and inv["virtio"] is False
    assert DATE_RE.match(inv["createDate"]) and DATE_RE.match(inv["lastOpDate"])
    assert re.fullmatch(r"[0-9a-f]{32}", inv["md5Sum"])
    assert isinstance(inv["actualSize"], int)
    for ref in inv["backupStorageRefs"]:
        assert ref["imageUuid"] == uuid_ and ref["status"] == "Ready"
        assert set(ref) >= {"backupStorageUuid", "installPath", "exportUrl", "exportMd5Sum", "createDate",
                            "lastOpDate"}


def test_the_seed_curl_request_makes_a_ceph_template(api):
    env = api.env
    vol = ceph_volume(env)
    rid = resource_uuid()
    body = {"params": {"name": "My Data Volume Template", "description": "from the docs", "volumeUuid": vol,
                       "backupStorageUuids": [api.ceph_bs], "resourceUuid": rid, "tagUuids": []},
            "systemTags": [], "userTags": ["team::storage"]}
    out = subprocess.run(
        ["curl", "-sS", "-X", "POST", f"{api.url}/zstack/v1/images/data-volume-templates/from/volumes/{vol}",
         "-H", f"Authorization: OAuth {SESSION}", "-H", "Content-Type: application/json;charset=UTF-8",
         "-d", json.dumps(body), "-w", "\n%{http_code}"], capture_output=True, text=True, check=True).stdout
    text, status = out.rsplit("\n", 1)
    assert status == "200"
    answer = json.loads(text)
    assert list(answer) == ["inventory"]  # ZStack's answer: the event's fields, no "success" key
    inv = answer["inventory"]
    assert_inventory(inv, uuid_=rid, name="My Data Volume Template", volume_uuid=vol, fmt="raw",
                     size=6 * MiB + 512)
    assert inv["description"] == "from the docs"
    [ref] = inv["backupStorageRefs"]
    assert ref["backupStorageUuid"] == api.ceph_bs
    assert ref["installPath"] == f"ceph://{env.dst_pool}/{rid}"
    assert inv["md5Sum"] == env.export_md5(env.dst_pool, rid) == env.export_md5(env.src_pool, vol)
    assert ref["exportMd5Sum"] == inv["md5Sum"]
    assert inv["actualSize"] == env.allocated(env.dst_pool, rid)
    assert snaps_of(env, vol) == []  # the temporary snapshot is gone


def test_one_pass_into_ceph_and_a_file_backup_storage(api):
    env = api.env
    vol = ceph_volume(env)
    answer = api.post_create(vol, {"backupStorageUuids": [api.ceph_bs, api.file_bs]})
    assert answer.status_code == 200, answer.text
    inv = answer.json()["inventory"]
    refs = {r["backupStorageUuid"]: r for r in inv["backupStorageRefs"]}
    path = refs[api.file_bs]["installPath"]
    assert path == str(api.bs_root / "dataVolumeTemplates" / f"acct-{ACCOUNT}" / inv["uuid"] / f"{inv['uuid']}.raw")
    assert md5sum_file(path) == inv["md5Sum"] == env.export_md5(env.dst_pool, inv["uuid"])


def test_file_volume_into_a_file_backup_storage(api):
    vol, path = file_volume(api.ps_root)
    answer = api.post_create(vol, {"backupStorageUuids": [api.file_bs]})
    assert answer.status_code == 200, answer.text
    inv = answer.json()["inventory"]
    assert inv["format"] == "raw" and inv["size"] == 8 * MiB
    assert inv["md5Sum"] == md5sum_file(path) == md5sum_file(inv["backupStorageRefs"][0]["installPath"])


@pytest.mark.parametrize("mode", ["clone", "flatten"])
def test_copy_mode_system_tag(api, mode):
    env = api.env
    vol = ceph_volume(env)
    answer = api.post_create(vol, systemTags=[f"ceph::copyMode::{mode}"])
    assert answer.status_code == 200, answer.text
    inv = answer.json()["inventory"]
    assert inv["md5Sum"] == env.export_md5(env.dst_pool, inv["uuid"])
    assert snaps_of(env, vol) == ([inv["uuid"]] if mode == "clone" else [])
    # deleting the clone template also releases the snapshot it kept
    assert api.delete(f"/zstack/v1/images/{inv['uuid']}").status_code == 200
    assert snaps_of(env, vol) == []
    assert inv["uuid"] not in env.rbd.RBD().list(env.dst)


BAD_BODIES = [
    (b"{not json", "not valid JSON"),
    (b"[]", "JSON object"),
    ({"params": "x"}, "params"),
    ({"params": {}}, "'name' is required"),
    ({"params": {"name": 5}}, "'name' must be a string"),
    ({"params": {"name": "x" * 256}}, "limit is 255"),
    ({"params": {"name": "ok", "description": "d" * 2049}}, "limit is 2048"),
    ({"params": {"name": "ok", "backupStorageUuids": []}}, "must not be empty"),
    ({"params": {"name": "ok", "backupStorageUuids": [None]}}, "must not contain null"),
    ({"params": {"name": "ok", "backupStorageUuids": "abc"}}, "must be a list"),
    ({"params": {"name": "ok", "backupStorageUuids": ["NOT-A-UUID"]}}, "not a uuid"),
    ({"params": {"name": "ok", "resourceUuid": "0" * 32}}, "not a valid ZStack uuid"),
    ({"params": {"name": "ok"}, "systemTags": ["nonsense::tag"]}, "not supported"),
    ({"params": {"name": "ok"}, "userTags": [1]}, "only strings"),
]


@pytest.mark.parametrize(("body", "says"), BAD_BODIES)
def test_invalid_requests_get_sys_1007_and_leave_nothing(api, body, says):
    env = api.env
    vol = ceph_volume(env, data=False)
    answer = api.post_create(vol, body=body)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert list(answer.json()) == ["error"]
    assert error["code"] == "SYS.1007" and says in error["details"]
    assert set(error) == {"code", "description", "details", "elaboration", "opaque", "cause"}
    assert snaps_of(env, vol) == []


def test_names_are_trimmed_and_may_be_empty(api):
    vol = ceph_volume(api.env, data=False)
    answer = api.post_create(vol, {"name": "   "})
    assert answer.status_code == 200 and answer.json()["inventory"]["name"] == ""


def test_unknown_resources_get_sys_1003(api):
    missing = api.post_create(uuid.uuid4().hex)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "SYS.1003"
    vol = ceph_volume(api.env, data=False)
    unknown_bs = api.post_create(vol, {"backupStorageUuids": [uuid.uuid4().hex]})
    assert unknown_bs.json()["error"]["code"] == "SYS.1003"
    bad_path = api.post_create("NOT-A-UUID")
    assert bad_path.json()["error"]["code"] == "SYS.1007"


def test_authorization(api):
    vol = ceph_volume(api.env, data=False)
    url = f"/zstack/v1/images/data-volume-templates/from/volumes/{vol}"
    body = {"params": {"name": "x"}}
    # a missing header or another scheme is a transport error: at once, plain text, as ZStack's REST server
    for headers, says in (({}, "missing header 'Authorization'"),
                          ({"Authorization": "Bearer abc"}, "Authorization type must be 'OAuth'")):
        for extra in ({}, {"X-Job-UUID": uuid.uuid4().hex}):
            answer = api.client.post(url, json=body, headers={**headers, **extra})
            assert (answer.status_code, answer.text) == (400, says)
            assert answer.headers["content-type"].startswith("text/plain")
    # any session, well-formed or not, is checked by the API: an unknown one is ID.1001 in the answer
    for session in ("nothex", uuid.uuid4().hex):
        answer = api.client.post(url, json=body, headers={"Authorization": f"OAuth {session}"})
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "ID.1001"
        answer = api.client.post(url, json=body, headers={"Authorization": f"OAuth {session}",
                                                          "X-Job-UUID": uuid.uuid4().hex})
        assert answer.status_code == 202
        result = api.wait_job(answer.json()["location"])
        assert result.status_code == 503 and result.json()["error"]["code"] == "ID.1001"


def test_async_job_with_polling_and_progress(api):
    env = api.env
    vol = ceph_volume(env)
    job = uuid.uuid4().hex
    answer = api.post_create(vol, headers={"X-Job-UUID": job})
    assert answer.status_code == 202
    location = answer.json()["location"]
    assert answer.json() == {"location": f"{api.url}/zstack/v1/api-jobs/{job}", "apiTimeout": 72 * 3600 * 1000}
    result = api.wait_job(location)
    assert result.status_code == 200
    inv = result.json()["inventory"]
    assert inv["md5Sum"] == env.export_md5(env.dst_pool, inv["uuid"])
    progress = api.get(f"/zstack/v1/task-progresses/{job}").json()["inventories"][0]
    assert progress["percent"] == 100 and progress["phase"] == "done"
    # a job uuid is used once: a second POST with it is refused at once, as ZStack refuses it
    again = api.post_create(vol, headers={"X-Job-UUID": job})
    assert (again.status_code, again.text) == (400, f"Duplicate job uuid[{job}]")
    assert api.wait_job(location).json() == result.json()


def test_async_business_errors_come_through_the_job(api):
    answer = api.post_create(uuid.uuid4().hex, body=b"{broken", headers={"Prefer": "respond-async"})
    assert answer.status_code == 202
    result = api.wait_job(answer.json()["location"])
    assert result.status_code == 503 and result.json()["error"]["code"] == "SYS.1007"
    bad_job = api.post_create(uuid.uuid4().hex, headers={"X-Job-UUID": "nope"})
    assert (bad_job.status_code, bad_job.text) == (
        400, "Invalid header[X-Job-UUID], it must be a UUID with '-' stripped")
    unknown = api.client.get(f"/zstack/v1/api-jobs/{uuid.uuid4().hex}")
    assert (unknown.status_code, unknown.text) == (404, "the job has been expired")


def test_web_hook_gets_the_result(api):
    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            length = int(self.headers["Content-Length"])
            received.append((dict(self.headers), json.loads(self.rfile.read(length))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        vol = ceph_volume(api.env)
        answer = api.post_create(vol, headers={"X-Web-Hook": f"http://127.0.0.1:{server.server_port}/hook"})
        assert answer.status_code == 202
        job = answer.json()["location"].rsplit("/", 1)[1]
        deadline = time.monotonic() + 60
        while not received and time.monotonic() < deadline:
            time.sleep(0.05)
        headers, body = received[0]
        assert headers["X-Job-UUID"] == job and headers["X-Job-Success"] == "true"
        assert list(body) == ["inventory"] and body["inventory"]["url"] == f"volume://{vol}"
    finally:
        server.shutdown()


def test_cancel_a_running_job_leaves_nothing(api, monkeypatch):
    env = api.env
    vol = ceph_volume(env, size=64 * MiB)
    with env.rbd.Image(env.src, vol) as image:
        for offset in range(0, 64 * MiB, 4 * MiB):
            image.write(b"\x01" * (4 * MiB), offset)
    from zsagent.sources import rbd_snapshot

    started = threading.Event()
    original = rbd_snapshot.RbdSnapshotSource.read

    def slow_read(self, offset, length):
        started.set()
        time.sleep(0.05)
        return original(self, offset, length)

    monkeypatch.setattr(rbd_snapshot.RbdSnapshotSource, "read", slow_read)
    job = uuid.uuid4().hex
    answer = api.post_create(vol, {"backupStorageUuids": [api.ceph_bs, api.file_bs]}, headers={"X-Job-UUID": job})
    assert answer.status_code == 202
    assert started.wait(30)
    cancel = api.delete(f"/zstack/v1/api-jobs/{job}")
    assert cancel.status_code == 202
    result = api.wait_job(answer.json()["location"])
    assert result.status_code == 503 and result.json()["error"]["code"] == "SYS.1017"
    assert snaps_of(env, vol) == []
    assert [n for n in env.rbd.RBD().list(env.dst) if n.endswith(".part")] == []
    assert not (api.bs_root / "dataVolumeTemplates").exists() or not any(
        p.is_file() for p in (api.bs_root / "dataVolumeTemplates").rglob("*"))
    assert api.agent.store.artifacts() == []


def test_idempotent_retry_with_the_same_resource_uuid(api):
    env = api.env
    vol = ceph_volume(env)
    rid = resource_uuid()
    first = api.post_create(vol, {"resourceUuid": rid, "name": "same"})
    assert first.status_code == 200
    images_before = env.rbd.RBD().list(env.dst)
    again = api.post_create(vol, {"resourceUuid": rid, "name": "same"})
    assert again.status_code == 200 and again.json() == first.json()
    assert env.rbd.RBD().list(env.dst) == images_before
    different = api.post_create(vol, {"resourceUuid": rid, "name": "other"})
    assert different.status_code == 400 and different.json()["error"]["code"] == "SYS.1007"


def test_get_list_and_delete(api):
    env = api.env
    vol = ceph_volume(env)
    made = [api.post_create(vol, {"name": f"img-{i}", "backupStorageUuids": [api.ceph_bs, api.file_bs]})
            .json()["inventory"] for i in range(3)]
    got = api.get(f"/zstack/v1/images/{made[1]['uuid']}").json()
    assert got["inventories"] == [made[1]] and "inventories[0]" in got["schema"]  # a query: always typed
    listed = api.get("/zstack/v1/images", params={"q": "name=img-2"}).json()["inventories"]
    assert [i["uuid"] for i in listed] == [made[2]["uuid"]]
    listed = api.get("/zstack/v1/images", params={"q": [f"url=volume://{vol}", "name~=img-%"], "limit": 2,
                                                  "start": 1}).json()["inventories"]
    assert [i["uuid"] for i in listed] == [made[1]["uuid"], made[2]["uuid"]]
    assert api.get("/zstack/v1/images", params={"q": "name"}).json()["error"]["code"] == "SYS.1007"

    target = made[0]
    file_path = next(r["installPath"] for r in target["backupStorageRefs"] if r["backupStorageUuid"] == api.file_bs)
    assert api.delete(f"/zstack/v1/images/{target['uuid']}").json() == {}
    assert target["uuid"] not in env.rbd.RBD().list(env.dst)
    assert not (api.bs_root / "dataVolumeTemplates" / f"acct-{ACCOUNT}" / target["uuid"]).exists()
    assert not __import__("os").path.exists(file_path)
    assert api.get(f"/zstack/v1/images/{target['uuid']}").json()["inventories"] == []  # a query finds none
    again = api.delete(f"/zstack/v1/images/{target['uuid']}")  # deleting what is gone succeeds, as in ZStack
    assert (again.status_code, again.json()) == (200, {})


def test_restart_keeps_records_and_cleans_interrupted_jobs(api):
    env = api.env
    vol = ceph_volume(env)
    made = api.post_create(vol).json()["inventory"]
    # what a crash mid-copy leaves: a journalled snapshot and .part image, and a running job
    store = api.agent.store
    ghost = uuid.uuid4().hex
    store.add_job("f" * 32, vol, ACCOUNT)
    store.set_job_state("f" * 32, "running")
    store.journal("f" * 32, "rbd-snapshot", {"pool": env.src_pool, "image": vol, "snapshot": ghost})
    store.journal("f" * 32, "rbd-image", {"pool": env.dst_pool, "image": ghost + ".part"})
    with env.rbd.Image(env.src, vol) as image:
        image.create_snap(ghost)
    env.rbd.RBD().create(env.dst, ghost + ".part", MiB)

    with running_agent(api.raw_config) as restarted:
        assert restarted.get(f"/zstack/v1/images/{made['uuid']}").json()["inventories"] == [made]
        failed = restarted.get(f"/zstack/v1/api-jobs/{'f' * 32}")
        assert failed.status_code == 503
        assert failed.json()["error"]["details"] == "agent restarted during copy"
        assert snaps_of(env, vol) == []
        assert ghost + ".part" not in env.rbd.RBD().list(env.dst)
        assert restarted.agent.store.artifacts() == []


def test_requests_for_one_volume_are_serialized(api, monkeypatch):
    env = api.env
    from zsagent import service as service_module

    intervals, lock = {}, threading.Lock()
    original = service_module.open_source

    @contextlib.contextmanager
    def recording_open(volume, *args, **kwargs):
        start = time.monotonic()
        time.sleep(0.4)
        with original(volume, *args, **kwargs) as source:
            yield source
        with lock:
            intervals.setdefault(volume.image, []).append((start, time.monotonic()))

    monkeypatch.setattr(service_module, "open_source", recording_open)
    one, other = ceph_volume(env), ceph_volume(env)
    jobs = [api.post_create(v, headers={"Prefer": "respond-async"}).json()["location"] for v in (one, one, other)]
    for location in jobs:
        assert api.wait_job(location).status_code == 200
    (a_start, a_end), (b_start, b_end) = sorted(intervals[one])
    assert a_end <= b_start  # never both at once for one volume
    (c_start, c_end), = intervals[other]
    assert c_start < max(a_end, b_end)  # another volume did not wait for both of them


def test_a_failing_backup_storage_leaves_nothing_and_reports_why(api, tmp_path):
    env = api.env
    vol = ceph_volume(env)
    raw = dict(api.raw_config)
    broken_bs = uuid.uuid4().hex
    raw["backup_storage"] = [*raw["backup_storage"],
                             {"uuid": broken_bs, "type": "ceph", "pool": "no-such-pool-here"}]
    with running_agent(raw) as agent:
        answer = agent.post_create(vol, {"backupStorageUuids": [broken_bs]})
        assert answer.status_code == 503
        error = answer.json()["error"]
        assert error["code"] == "SYS.1006" and error["cause"]["code"] == "SYS.1006"
        assert snaps_of(env, vol) == []
        # with a good one beside it, the call succeeds with the good one only
        answer = agent.post_create(vol, {"backupStorageUuids": [broken_bs, api.file_bs]})
        assert answer.status_code == 200
        assert [r["backupStorageUuid"] for r in answer.json()["inventory"]["backupStorageRefs"]] == [api.file_bs]


def test_health_and_openapi_need_no_session(api):
    assert api.client.get("/health").json() == {"status": "ok"}
    spec = api.client.get("/openapi.json").json()
    operation = spec["paths"]["/zstack/v1/images/data-volume-templates/from/volumes/{volumeUuid}"]["post"]
    assert operation["summary"] == "CreateDataVolumeTemplateFromVolume"
    assert "params" in operation["requestBody"]["content"]["application/json"]["schema"]["properties"]


def test_job_results_expire_after_the_retention_time(rbd_env, tmp_path):
    env = rbd_env
    raw = write_config(tmp_path, env.ceph_config, [{"uuid": uuid.uuid4().hex, "type": "ceph", "pools": [env.src_pool]}],
                       [{"uuid": uuid.uuid4().hex, "type": "ceph", "pool": env.dst_pool, "default": True}],
                       job_retention_s=0)
    with running_agent(raw) as agent:
        vol = ceph_volume(env, data=False)
        answer = agent.post_create(vol, headers={"Prefer": "respond-async"})
        location = answer.json()["location"]
        agent.agent.jobs.wait_all(60)
        time.sleep(0.05)
        gone = agent.get(location)
        assert (gone.status_code, gone.text) == (404, "the job has been expired")
