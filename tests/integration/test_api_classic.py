"""ZStack's classic endpoint (POST /zstack/api, GET /zstack/api/result/<uuid>) over real HTTP: with curl the
way shell scripts use it, and with a real third-party client, zstack-mcp-server's ZStackClient."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid

import httpx
import pytest
from agent_harness import ACCOUNT, SESSION, file_volume, running_agent, write_config
from support import md5sum_file
from zstack_mcp.zstack_client import ZStackApiError, ZStackClient

CREATE = "org.zstack.header.image.APICreateDataVolumeTemplateFromVolumeMsg"
CREATE_EVENT = "org.zstack.header.image.APICreateDataVolumeTemplateFromVolumeEvent"
QUERY = "org.zstack.header.image.APIQueryImageMsg"
QUERY_REPLY = "org.zstack.header.image.APIQueryImageReply"
DELETE = "org.zstack.header.image.APIDeleteImageMsg"
DELETE_EVENT = "org.zstack.header.image.APIDeleteImageEvent"
PROGRESS = "org.zstack.header.core.progress.APIGetTaskProgressMsg"
PROGRESS_REPLY = "org.zstack.header.core.progress.APIGetTaskProgressReply"
PLAIN_EVENT = "org.zstack.header.message.APIEvent"
PLAIN_REPLY = "org.zstack.header.message.APIReply"


@pytest.fixture
def classic(tmp_path):
    """A running agent with a filesystem primary storage and one raw filesystem backup storage."""
    ps_root, bs_root = tmp_path / "ps", tmp_path / "bs"
    ps_root.mkdir()
    bs_root.mkdir()
    bs = uuid.uuid4().hex
    raw = write_config(tmp_path, {"backend": "fake", "fake_root": str(tmp_path / "fake-ceph")},
                       [{"uuid": uuid.uuid4().hex, "type": "filesystem", "path": str(ps_root)}],
                       [{"uuid": bs, "type": "filesystem", "path": str(bs_root), "format": "raw", "default": True}])
    with running_agent(raw) as agent:
        agent.bs, agent.ps_root, agent.bs_root = bs, ps_root, bs_root
        yield agent


def message(message_class, session=SESSION, **fields):
    return {message_class: {**fields, **({"session": {"uuid": session}} if session else {})}}


def answer_of(envelope):
    """The (class, body) in an envelope's result text."""
    assert envelope["state"] == "Done", envelope
    [(name, body)] = json.loads(envelope["result"]).items()
    return name, body


def call(agent, body):
    """POST one message; follow an asynchronous one to its end; the final envelope."""
    answer = agent.client.post("/zstack/api", content=body if isinstance(body, bytes) else json.dumps(body))
    assert answer.status_code == 200, answer.text
    envelope = answer.json()
    deadline = time.monotonic() + 120
    while envelope["state"] == "Processing":
        assert time.monotonic() < deadline, envelope
        time.sleep(0.05)
        polled = agent.client.get(f"/zstack/api/result/{envelope['uuid']}")
        assert polled.status_code == 200, polled.text
        envelope = polled.json()
    return envelope


def curl(*args):
    return subprocess.run(["curl", "-sS", "--fail", *args], capture_output=True, text=True, check=True).stdout


def test_curl_creates_a_template_and_polls_until_done(classic):
    vol, path = file_volume(classic.ps_root)
    body = message(CREATE, name="from curl", description="a shell script", volumeUuid=vol,
                   backupStorageUuids=[classic.bs], systemTags=[], userTags=["team::storage"])
    first = json.loads(curl("-X", "POST", f"{classic.url}/zstack/api", "-H", "Content-Type: application/json",
                            "-d", json.dumps(body)))
    assert first["state"] == "Processing" and "result" not in first
    job = first["uuid"]
    deadline = time.monotonic() + 120
    while True:
        envelope = json.loads(curl(f"{classic.url}/zstack/api/result/{job}"))
        assert envelope["uuid"] == job
        if envelope["state"] == "Done":
            break
        assert envelope["state"] == "Processing" and time.monotonic() < deadline
        time.sleep(0.1)
    assert set(envelope) == {"uuid", "state", "createdDate", "finishedDate", "result"}
    name, event = answer_of(envelope)
    assert name == CREATE_EVENT and event["success"] is True and "error" not in event
    inv = event["inventory"]
    assert inv["name"] == "from curl" and inv["description"] == "a shell script"
    assert inv["mediaType"] == "DataVolumeTemplate" and inv["status"] == "Ready"
    [ref] = inv["backupStorageRefs"]
    install = classic.bs_root / "dataVolumeTemplates" / f"acct-{ACCOUNT}" / inv["uuid"] / f"{inv['uuid']}.raw"
    assert ref["installPath"] == str(install)
    assert inv["md5Sum"] == md5sum_file(install) == md5sum_file(path)
    assert all(v is not None for v in [*inv.values(), *ref.values()])  # ZStack's gson drops nulls
    # the REST API sees the same image
    assert classic.get(f"/zstack/v1/images/{inv['uuid']}").json()["inventories"][0]["md5Sum"] == inv["md5Sum"]


async def _client_session(url, steps):
    client = ZStackClient(api_url=url, session_id=SESSION)
    assert client.auth_mode == "session_id"
    try:
        return await steps(client)
    finally:
        await client.close()


def test_zstack_mcp_client_creates_queries_and_deletes(classic):
    vol, path = file_volume(classic.ps_root)
    name = f"mcp-{uuid.uuid4().hex[:8]}"

    async def steps(client):
        created = await client.execute("CreateDataVolumeTemplateFromVolume", CREATE,
                                       {"name": name, "volumeUuid": vol, "backupStorageUuids": [classic.bs]},
                                       is_async=True)
        by_name = await client.execute("QueryImage", QUERY, {"conditions": [{"name": "name", "op": "=",
                                                                             "value": name}]})
        like = await client.execute("QueryImage", QUERY,
                                    {"conditions": [{"name": "name", "op": "like", "value": "mcp-%"},
                                                    {"name": "mediaType", "op": "in",
                                                     "value": "DataVolumeTemplate,RootVolumeTemplate"}],
                                     "limit": 50, "replyWithCount": True})
        deleted = await client.execute("DeleteImage", DELETE, {"uuid": created["inventory"]["uuid"]},
                                       is_async=True)
        after = await client.execute("QueryImage", QUERY, {"conditions": [{"name": "name", "op": "=",
                                                                           "value": name}]})
        again = await client.execute("DeleteImage", DELETE, {"uuid": created["inventory"]["uuid"]}, is_async=True)
        return created, by_name, like, deleted, after, again

    created, by_name, like, deleted, after, again = asyncio.run(_client_session(classic.url, steps))
    inv = created["inventory"]
    install = inv["backupStorageRefs"][0]["installPath"]
    assert created["success"] is True and inv["name"] == name
    assert inv["md5Sum"] == md5sum_file(path)
    assert [i["uuid"] for i in by_name["inventories"]] == [inv["uuid"]] and "total" not in by_name
    assert [i["uuid"] for i in like["inventories"]] == [inv["uuid"]] and like["total"] == 1
    assert deleted == {"success": True}
    assert after == {"success": True, "inventories": []}
    assert again == {"success": True}  # ZStack: deleting an image that is gone succeeds
    assert not (classic.bs_root / install).exists()


@pytest.mark.parametrize(("params", "tags", "code", "words"), [
    ({"volumeUuid": "0" * 32}, [], "SYS.1003", "volume[uuid:" + "0" * 32),
    ({}, ["no::such::tag"], "SYS.1007", "system tag 'no::such::tag' is not supported"),
])
def test_zstack_mcp_client_surfaces_the_zstack_error_of_a_failing_create(classic, params, tags, code, words):
    vol, _ = file_volume(classic.ps_root)

    async def steps(client):
        with pytest.raises(ZStackApiError) as failed:
            await client.execute("CreateDataVolumeTemplateFromVolume", CREATE,
                                 {"name": "bad", "volumeUuid": vol, "systemTags": tags, **params}, is_async=True)
        return failed.value

    error = asyncio.run(_client_session(classic.url, steps))
    assert error.code == code
    assert words in error.details["details"]
    assert classic.agent.service.list_images() == []


def test_zstack_mcp_client_with_an_unknown_session_gets_id_1001(classic):
    async def steps(client):
        client.session.uuid = uuid.uuid4().hex
        with pytest.raises(ZStackApiError) as failed:
            await client.execute("QueryImage", QUERY, {"conditions": []})
        return failed.value

    error = asyncio.run(_client_session(classic.url, steps))
    assert error.code == "ID.1001"


def test_the_mcp_servers_execute_api_tool_drives_the_agent(classic, monkeypatch):
    """The MCP tool an assistant calls, with its own query rewriting (default limit, replyWithCount)."""
    import zstack_mcp.server as server  # needs mcp<2 (pyproject.toml)
    monkeypatch.setenv("ZSTACK_API_URL", classic.url)
    monkeypatch.setenv("ZSTACK_SESSION_ID", SESSION)
    monkeypatch.setenv("ZSTACK_ALLOW_ALL_API", "true")
    vol, path = file_volume(classic.ps_root)

    async def steps():
        created = json.loads(await server.execute_api("CreateDataVolumeTemplateFromVolume",
                                                      {"name": "via mcp", "volumeUuid": vol}))
        queried = json.loads(await server.execute_api("QueryImage", {"conditions": [
            {"name": "name", "op": "=", "value": "via mcp"}]}))
        await server._session_mgr.logout_all()
        return created, queried

    created, queried = asyncio.run(steps())
    assert created["success"] is True, created
    inv = created["result"]["inventory"]
    assert inv["md5Sum"] == md5sum_file(path)
    assert queried["success"] is True and queried["resultCount"] == 1 and queried["totalCount"] == 1


def test_query_limit_start_count_sort_and_fields(classic):
    uuids = []
    for size in (6 << 20, 2 << 20, 4 << 20):  # file_volume writes 1 MiB at 1 MiB
        vol, _ = file_volume(classic.ps_root, size=size)
        _, event = answer_of(call(classic, message(CREATE, name=f"q{size}", volumeUuid=vol)))
        uuids.append((size, event["inventory"]["uuid"]))
    by_size = [u for _, u in sorted(uuids)]
    everything = [{"name": "mediaType", "op": "=", "value": "DataVolumeTemplate"}]

    def query(**fields):
        name, reply = answer_of(call(classic, message(QUERY, **{"conditions": everything, **fields})))
        assert name == QUERY_REPLY and reply["success"] is True, reply
        return reply

    assert [i["uuid"] for i in query(sortBy="size")["inventories"]] == by_size
    assert [i["uuid"] for i in query(sortBy="size", sortDirection="desc", start=1, limit=1)["inventories"]] \
        == [by_size[1]]
    assert query(count=True) == {"success": True, "total": 3}
    page = query(sortBy="size", limit=2, replyWithCount=True, fields=["uuid", "size"])
    assert page["total"] == 3 and page["inventories"] == [{"uuid": u, "size": s} for s, u in sorted(uuids)[:2]]
    above = query(conditions=[{"name": "size", "op": ">", "value": 3 << 20}], sortBy="size")  # a number as value
    assert [i["uuid"] for i in above["inventories"]] == by_size[1:]


@pytest.mark.parametrize(("fields", "words"), [
    ({}, "field[conditions]"),
    ({"conditions": [{"name": "name", "op": "regexp", "value": "x"}]}, "unknown QueryOp type[regexp]"),
    ({"conditions": [{"name": "a=b", "op": "=", "value": "x"}]}, "'name' must be a field name"),
    ({"conditions": [{"name": "size", "op": ">", "value": "=1"}]}, "cannot start with '='"),
    ({"conditions": [], "limit": -1}, "field[limit]"),
    ({"conditions": [], "sortBy": "name", "sortDirection": "up"}, "field[sortDirection]"),
    ({"conditions": [], "groupBy": "name"}, "field[groupBy]"),
])
def test_a_bad_query_is_sys_1007_at_once(classic, fields, words):
    name, reply = answer_of(call(classic, message(QUERY, **fields)))
    assert name == PLAIN_REPLY
    assert reply["success"] is False and reply["error"]["code"] == "SYS.1007"
    assert words in reply["error"]["details"]


def test_errors_before_the_work_are_plain_api_events_on_the_poll(classic):
    no_session = call(classic, message(CREATE, session=None, name="x", volumeUuid="0" * 32))
    assert "uuid" in no_session
    name, event = answer_of(no_session)
    assert name == PLAIN_EVENT and event["error"]["code"] == "ID.1001"
    assert event["error"]["details"] == f"session of message[{CREATE}] is null"
    name, event = answer_of(call(classic, message(CREATE, name="x" * 256, volumeUuid="0" * 32)))
    assert name == PLAIN_EVENT and event["error"]["code"] == "SYS.1007"


def test_task_progress(classic):
    vol, _ = file_volume(classic.ps_root)
    job = classic.client.post("/zstack/api", json=message(CREATE, name="p", volumeUuid=vol)).json()["uuid"]
    deadline = time.monotonic() + 120
    while classic.client.get(f"/zstack/api/result/{job}").json()["state"] != "Done":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    name, reply = answer_of(call(classic, message(PROGRESS, apiId=job)))
    assert name == PROGRESS_REPLY and reply["success"] is True
    [progress] = reply["inventories"]
    assert progress["taskUuid"] == job and progress["taskName"] == CREATE
    assert progress["type"] == "Progress" and progress["content"] == "100"
    assert progress["opaque"]["phase"] == "done" and isinstance(progress["time"], int)
    assert answer_of(call(classic, message(PROGRESS, apiId=uuid.uuid4().hex)))[1] == {"success": True,
                                                                                      "inventories": []}


def test_a_rest_job_can_be_polled_on_the_classic_result_path(classic):
    vol, _ = file_volume(classic.ps_root)
    started = classic.post_create(vol, headers={"X-Job-UUID": uuid.uuid4().hex})
    assert started.status_code == 202
    job = started.json()["location"].rsplit("/", 1)[1]
    classic.wait_job(started.json()["location"])
    # a job started with a session is read with that session's account, on either path
    name, event = answer_of(classic.get(f"/zstack/api/result/{job}").json())
    assert name == CREATE_EVENT and event["inventory"]["url"] == f"volume://{vol}"
    anonymous = classic.client.get(f"/zstack/api/result/{job}")
    assert (anonymous.status_code, anonymous.text) == (404, f"No api result[uuid:{job}] found")


def test_unknown_message_is_sys_1008(classic):
    envelope = call(classic, message("org.zstack.header.vm.APICreateVmInstanceMsg", name="vm"))
    name, event = answer_of(envelope)
    assert name == PLAIN_EVENT and event["success"] is False
    assert event["error"]["code"] == "SYS.1008"
    assert event["error"]["details"].startswith("No service deals with message: "
                                                "org.zstack.header.vm.APICreateVmInstanceMsg")

    async def steps(client):
        with pytest.raises(ZStackApiError) as failed:
            await client.execute("QueryVmInstance", "org.zstack.header.vm.APIQueryVmInstanceMsg",
                                 {"conditions": []})
        return failed.value

    assert asyncio.run(_client_session(classic.url, steps)).code == "SYS.1008"


@pytest.mark.parametrize("body", [b"{not json", b"", b"[]", b'{"a": {}, "b": {}}', b'{"a": 1}', b"\xff\xfe"])
def test_a_malformed_body_is_sys_1007_never_a_traceback(classic, body):
    answer = classic.client.post("/zstack/api", content=body)
    assert answer.status_code == 200
    assert "Traceback" not in answer.text
    name, event = answer_of(answer.json())
    assert name == PLAIN_EVENT and event["success"] is False
    assert event["error"]["code"] == "SYS.1007" and event["error"]["description"]


def test_the_slash_form_and_an_unknown_result(classic):
    answer = classic.client.post("/zstack/api/", json=message(QUERY, conditions=[]))
    assert answer_of(answer.json()) == (QUERY_REPLY, {"success": True, "inventories": []})
    missing = uuid.uuid4().hex
    unknown = httpx.get(f"{classic.url}/zstack/api/result/{missing}")
    assert unknown.status_code == 404 and unknown.text == f"No api result[uuid:{missing}] found"


def test_put_works_as_post_and_the_openapi_document_says_so(classic):
    answer = classic.client.put("/zstack/api", json=message(QUERY, conditions=[]))
    assert answer_of(answer.json()) == (QUERY_REPLY, {"success": True, "inventories": []})
    paths = classic.client.get("/openapi.json").json()["paths"]
    assert set(paths["/zstack/api"]) == {"post", "put"} and set(paths["/zstack/api/result/{uuid}"]) == {"get", "put"}
