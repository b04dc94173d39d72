"""What ZStack's own clients need, over real HTTP: the typed-answer ``schema`` map (X-JSON-Schema), tags
inside ``params`` (where the Java SDK puts them), and the inventory fields as ZStack fills them.

File primary storage, two file backup storages; no Ceph (the fake backend is configured and unused)."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from agent_harness import SESSION, file_volume, running_agent, write_config

IMAGE = "org.zstack.header.image.ImageInventory"
REF = "org.zstack.header.image.ImageBackupStorageRefInventory"
PROGRESS = "org.zstack.header.core.progress.TaskProgressInventory"
SCHEMA_ON = {"X-JSON-Schema": "true"}  # what the SDK sends (ZSClient)
AUTH = {"Authorization": f"OAuth {SESSION}"}
CREATE_SCHEMA = {"inventory": IMAGE, "inventory.backupStorageRefs[1]": REF, "inventory.backupStorageRefs[0]": REF}


def make_agent(tmp_path, image: dict | None = None):
    ps_root, bs_root = tmp_path / "ps", tmp_path / "bs"
    ps_root.mkdir()
    bs_root.mkdir()
    first_bs, second_bs = uuid.uuid4().hex, uuid.uuid4().hex
    raw = write_config(tmp_path, {"backend": "fake", "fake_root": str(tmp_path / "fake-ceph")},
                       [{"uuid": uuid.uuid4().hex, "type": "filesystem", "path": str(ps_root)}],
                       [{"uuid": first_bs, "type": "filesystem", "path": str(bs_root / "a"), "default": True},
                        {"uuid": second_bs, "type": "filesystem", "path": str(bs_root / "b")}])
    raw["virt"] = {"enabled": False}
    if image is not None:
        raw["image"] = image
    return raw, ps_root, (first_bs, second_bs)


@pytest.fixture
def api(tmp_path):
    raw, ps_root, bs = make_agent(tmp_path)
    with running_agent(raw) as agent:
        agent.ps_root, agent.bs = ps_root, list(bs)
        yield agent


def both(api) -> dict:
    return {"backupStorageUuids": api.bs}


def test_create_has_the_schema_only_when_asked(api):
    vol, _ = file_volume(api.ps_root)
    asked = api.post_create(vol, both(api), headers=SCHEMA_ON)
    assert asked.status_code == 200
    body = asked.json()
    assert body["schema"] == CREATE_SCHEMA and list(body["schema"]) == list(CREATE_SCHEMA)
    assert [r["backupStorageUuid"] for r in body["inventory"]["backupStorageRefs"]] == api.bs
    plain = api.post_create(vol, both(api))
    assert plain.status_code == 200 and "schema" not in plain.json()
    # the header counts by its presence, as in ZStack (RestServer: headers.containsKey)
    assert api.post_create(vol, {"backupStorageUuids": api.bs[:1]},
                           headers={"x-json-schema": "false"}).json()["schema"] == {
        "inventory": IMAGE, "inventory.backupStorageRefs[0]": REF}


def test_async_create_poll_and_progress(api):
    vol, _ = file_volume(api.ps_root)
    job = uuid.uuid4().hex
    accepted = api.post_create(vol, both(api), headers={"X-Job-UUID": job, **SCHEMA_ON})
    assert accepted.status_code == 202 and "schema" not in accepted.json()
    location = accepted.json()["location"]
    api.wait_job(location)
    polled = api.client.get(location, headers={**SCHEMA_ON, **AUTH})
    assert polled.status_code == 200 and polled.json()["schema"] == CREATE_SCHEMA
    assert "schema" not in api.get(location).json()  # the polling request's header decides
    progress = api.client.get(f"/zstack/v1/task-progresses/{job}", headers={**AUTH, **SCHEMA_ON}).json()
    assert progress["schema"] == {"inventories[0]": PROGRESS}
    assert "schema" not in api.get(f"/zstack/v1/task-progresses/{job}").json()


def test_errors_have_no_schema(api):
    failed = api.post_create(uuid.uuid4().hex, headers=SCHEMA_ON)
    assert failed.json()["error"]["code"] == "SYS.1003" and "schema" not in failed.json()
    accepted = api.post_create(uuid.uuid4().hex, headers={"Prefer": "respond-async", **SCHEMA_ON})
    api.wait_job(accepted.json()["location"])
    polled = api.client.get(accepted.json()["location"], headers={**SCHEMA_ON, **AUTH})
    assert polled.status_code == 503 and set(polled.json()) >= {"error"} and "schema" not in polled.json()
    bad_session = api.client.get("/zstack/v1/images", headers={"Authorization": f"OAuth {uuid.uuid4().hex}",
                                                                **SCHEMA_ON})
    assert bad_session.status_code == 503 and "schema" not in bad_session.json()
    # a query that finds nothing is no error: an empty list, and a query always has its (empty) map
    missing = api.client.get(f"/zstack/v1/images/{uuid.uuid4().hex}", headers={**AUTH, **SCHEMA_ON})
    assert missing.json() == {"inventories": [], "schema": {}}


def test_queries_always_have_the_schema(api):
    vol, _ = file_volume(api.ps_root)
    made = [api.post_create(vol, {"name": f"img-{i}", **both(api)}).json()["inventory"] for i in range(2)]
    expected = {
        "inventories[1]": IMAGE, "inventories[1].backupStorageRefs[1]": REF,
        "inventories[1].backupStorageRefs[0]": REF,
        "inventories[0]": IMAGE, "inventories[0].backupStorageRefs[1]": REF,
        "inventories[0].backupStorageRefs[0]": REF,
    }
    for headers in (AUTH, {**AUTH, **SCHEMA_ON}):
        listed = api.client.get("/zstack/v1/images", params={"q": f"url=volume://{vol}"}, headers=headers).json()
        assert [i["uuid"] for i in listed["inventories"]] == [m["uuid"] for m in made]
        assert listed["schema"] == expected and list(listed["schema"]) == list(expected)
        got = api.client.get(f"/zstack/v1/images/{made[1]['uuid']}", headers=headers).json()
        assert got["inventories"] == [made[1]]
        assert got["schema"] == {"inventories[0]": IMAGE, "inventories[0].backupStorageRefs[1]": REF,
                                 "inventories[0].backupStorageRefs[0]": REF}
    nothing = api.get("/zstack/v1/images", params={"q": "name=no-such-image"}).json()
    assert nothing["inventories"] == [] and nothing["schema"] == {}


def delete_result(api, uuid_: str, headers: dict):
    """The deletion's answer; polled when it is asynchronous (202 + location)."""
    answer = api.client.delete(f"/zstack/v1/images/{uuid_}", headers={**AUTH, **headers})
    if answer.status_code == 202:
        api.wait_job(answer.json()["location"])
        answer = api.client.get(answer.json()["location"], headers={**AUTH, **headers})
    assert answer.status_code == 200
    return answer.json()


def test_delete_has_an_empty_schema_when_asked(api):
    vol, _ = file_volume(api.ps_root)
    first, second = (api.post_create(vol).json()["inventory"]["uuid"] for _ in range(2))
    assert delete_result(api, first, SCHEMA_ON)["schema"] == {}
    assert "schema" not in delete_result(api, second, {})


def test_web_hook_gets_the_schema_when_the_create_asked(api):
    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        vol, _ = file_volume(api.ps_root)
        hook = {"X-Web-Hook": f"http://127.0.0.1:{server.server_port}/hook"}
        assert api.post_create(vol, both(api), headers={**hook, **SCHEMA_ON}).status_code == 202
        assert api.post_create(vol, both(api), headers=hook).status_code == 202
        deadline = time.monotonic() + 60
        while len(received) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sorted("schema" in body for body in received) == [False, True]
        assert next(body["schema"] for body in received if "schema" in body) == CREATE_SCHEMA
    finally:
        server.shutdown()


# -- tags inside params ----------------------------------------------------------------------------------

def test_an_unknown_system_tag_inside_params_fails(api):
    vol, _ = file_volume(api.ps_root)
    answer = api.post_create(vol, {"systemTags": ["no::such::tag"]})
    error = answer.json()["error"]
    assert error["code"] == "SYS.1007" and "no::such::tag" in error["details"]
    assert not any((api.ps_root.parent / "bs").rglob("*.qcow2"))
    # and in the job, for an asynchronous caller
    accepted = api.post_create(vol, {"systemTags": ["no::such::tag"]}, headers={"Prefer": "respond-async"})
    assert api.wait_job(accepted.json()["location"]).json()["error"]["code"] == "SYS.1007"
    # a list of something else is refused by its name
    bad = api.post_create(vol, {"userTags": "not-a-list"}).json()["error"]
    assert bad["code"] == "SYS.1007" and "params.userTags" in bad["details"]


def test_the_raw_format_tag_inside_params_gives_a_raw_template(api):
    vol, path = file_volume(api.ps_root)
    answer = api.post_create(vol, {"systemTags": ["template::format::raw"], "userTags": ["in-params", "both"]},
                             userTags=["both", "top"])
    assert answer.status_code == 200, answer.text
    inv = answer.json()["inventory"]
    assert inv["format"] == "raw"
    install_path = inv["backupStorageRefs"][0]["installPath"]
    assert install_path.endswith(".raw") and Path(install_path).read_bytes() == path.read_bytes()
    stored = api.agent.service.store.get_image(inv["uuid"])
    assert stored.tags["systemTags"] == ["template::format::raw"]
    assert stored.tags["userTags"] == ["both", "top", "in-params"]  # merged: top level first, each once
    without = api.post_create(vol).json()["inventory"]
    assert without["format"] == "qcow2"


# -- the inventory as ZStack fills it ----------------------------------------------------------------

def test_inventory_fields_are_zstacks_for_a_data_volume_template(api):
    vol, _ = file_volume(api.ps_root)
    inv = api.post_create(vol).json()["inventory"]
    assert inv["platform"] is None and inv["architecture"] is None and inv["guestOsType"] is None
    assert inv["virtio"] is False and inv["system"] is False
    assert api.get(f"/zstack/v1/images/{inv['uuid']}").json()["inventories"][0]["virtio"] is False


def test_what_the_volume_records_wins(api):
    vol, path = file_volume(api.ps_root)
    os.setxattr(path, "user.zstack.platform", b"Windows")
    os.setxattr(path, "user.zstack.architecture", b"aarch64")
    os.setxattr(path, "user.zstack.guestOsType", b"Windows 10")
    inv = api.post_create(vol).json()["inventory"]
    assert (inv["platform"], inv["architecture"], inv["guestOsType"]) == ("Windows", "aarch64", "Windows 10")
    assert inv["virtio"] is False


def test_an_operator_can_still_set_defaults(tmp_path):
    raw, ps_root, _ = make_agent(tmp_path, {"platform": "Linux", "architecture": "x86_64", "virtio": True})
    with running_agent(raw) as agent:
        vol, _ = file_volume(ps_root)
        inv = agent.post_create(vol).json()["inventory"]
    assert (inv["platform"], inv["architecture"], inv["guestOsType"], inv["virtio"]) == (
        "Linux", "x86_64", None, True)
