"""The management-node simulator and the ZStack-agent stand-in, talking to each other (no services)."""

from __future__ import annotations

import http.client
import json
import socket
import urllib.parse

import pytest
from mn_simulator import MnCallFailed, MnSimulator, now_ms
from upstream_agent import UpstreamAgent

CP = "/ceph/primarystorage/volume/cp"
CREATE_TEMPLATE = "/localstorage/volume/createtemplate"


@pytest.fixture
def mn():
    with MnSimulator() as sim:
        yield sim


@pytest.fixture
def agent():
    with UpstreamAgent() as upstream:
        yield upstream


def raw_post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("POST", parts.path, body=body, headers=headers)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def test_command_reaches_the_agent_as_sent_and_its_callback_completes_the_call(mn, agent):
    agent.reply_with(CP, lambda cmd: {"installPath": cmd["dstPath"], "size": 0})
    cmd = {"sendCommandUrl": mn.send_command_url, "srcPath": "ceph://pool/vol@snap",
           "dstPath": "ceph://bs/img", "shareable": False, "fsId": "f", "uuid": "ps", "token": None}
    call = mn.post_command(agent.url, CP, cmd, api_id="a" * 32, task_stage="10-90", timeout_ms=60_000)

    assert call.result(5) == {"success": True, "error": "", "installPath": "ceph://bs/img", "size": 0}
    assert call.sync_status == 200 and call.sync_body == b""
    [seen] = agent.requests_to(CP)
    assert seen.body == mn.sent_bytes(call.task_uuid)
    names = [k for k, _ in seen.raw_headers]
    assert names[:3] == [b"taskuuid", b"callbackurl", b"Content-Type"]
    assert seen.header("taskuuid") == call.task_uuid and len(call.task_uuid) == 32
    assert seen.header("callbackurl") == mn.callback_url == mn.base_url + "/asyncrest/callback"
    assert seen.header("Content-Type") == "application/json; charset=utf-8"
    sent = seen.json()
    assert "token" not in sent  # null fields are omitted
    assert sent["threadContext"] == {"api": "a" * 32, "task-stage": "10-90"}
    assert sent["threadContextStack"] == []
    assert sent["taskContext"]["__messagetimeout__"] == "60000"
    assert int(sent["taskContext"]["__messagedeadline__"]) == call.deadline_ms
    # the agent's callback, as ZStack's agent writes it, arrived untouched
    [delivery] = call.deliveries()
    assert delivery.status == 200 and delivery.body == agent.callbacks_sent[0].body
    assert agent.callbacks_sent[0].wait() == 200


def test_body_is_written_as_the_mn_gson_writes_it(mn, agent):
    cmd = {"name": "a<b>&c='d'", "note": "line\u2028sep", "none": None, "list": [1, None], "n": 5}
    call = mn.post_command(agent.url, "/x/y", cmd, thread_context=False)
    call.result(5)
    assert mn.sent_bytes(call.task_uuid) == (
        b'{"name":"a<b>&c=\'d\'","note":"line\\u2028sep","list":[1,null],"n":5}')
    assert call.api_id is None


def test_progress_report_reaches_the_mn_under_the_commands_api_id(mn, agent):
    def copy_with_progress(cmd: dict) -> dict:
        report = {"threadContextMap": cmd["threadContext"], "threadContextStack": cmd["threadContextStack"],
                  "progress": "50", "processType": "CephCpVolume", "resourceUuid": None}
        status, _ = raw_post(cmd["sendCommandUrl"], json.dumps(report).encode(),
                             {"commandpath": "/progress/report", "Content-Type": "application/json"})
        assert status == 200
        return {"installPath": cmd["dstPath"]}

    agent.reply_with(CP, copy_with_progress)
    call = mn.post_command(agent.url, CP, {"sendCommandUrl": mn.send_command_url, "dstPath": "ceph://bs/i"},
                           task_stage="10-90")
    assert call.result(5)["installPath"] == "ceph://bs/i"
    [report] = mn.progress_for(call.api_id)
    assert report["progress"] == "50" and report["threadContextMap"]["task-stage"] == "10-90"
    assert mn.progress_for("someone-else") == []
    # the channel's own checks: commandpath missing → 400, unknown → 404
    assert raw_post(mn.send_command_url, b"{}", {})[0] == 400
    assert raw_post(mn.send_command_url, b"{}", {"commandpath": "/nothing"})[0] == 404


def test_kvm_call_appends_host_addons_even_when_the_command_has_them(mn, agent):
    cmd = {"installPath": "/ps/templateWorkspace/image-i/i.qcow2", "volumePath": "/ps/v.qcow2",
           "kvmHostAddons": {"own": 1}}
    call = mn.post_command(agent.url, CREATE_TEMPLATE, cmd, kvm_host_uuid="h" * 32,
                           kvm_host_addons={"qcow2Options": " -o cluster_size=2097152"})
    call.result(5)
    [seen] = agent.requests_to(CREATE_TEMPLATE)
    sent = mn.sent_bytes(call.task_uuid)
    assert seen.body == sent
    assert sent.count(b'"kvmHostAddons"') == 2
    assert sent.endswith(b',"kvmHostAddons":{"qcow2Options":" -o cluster_size=2097152"}}')
    assert seen.header("X-Resource-UUID") == "h" * 32


def test_missing_taskuuid_is_rejected_by_both_sides(mn, agent):
    status, body = raw_post(agent.url + CP, b"{}", {"callbackurl": mn.callback_url})
    assert (status, body) == (400, b"taskUuid missing in request header")
    assert raw_post(mn.callback_url, b'{"success":true}', {})[0] == 400
    assert [d.status for d in mn.orphan_callbacks] == [400]


def test_second_callback_is_recorded_and_answered_404(mn, agent):
    call = mn.post_command(agent.url, CP, {})
    assert call.result(5)["success"] is True
    again = {"taskuuid": call.task_uuid, "Content-Type": "application/json"}
    assert raw_post(mn.callback_url, b'{"success": false, "error": "late"}', again)[0] == 404
    assert [d.status for d in call.deliveries()] == [200, 404]
    assert call.callbacks()[1] == {"success": False, "error": "late"}
    assert call.result(0)["success"] is True  # the first callback decided
    assert raw_post(mn.callback_url, b"{}", {"taskuuid": "0" * 32})[0] == 404  # never sent


def test_no_callback_before_the_deadline_fails_with_sys_1001(mn, agent):
    agent.reply_with(CP, {}, delay_s=3)
    call = mn.post_command(agent.url, CP, {}, deadline_ms=now_ms() + 300)
    with pytest.raises(MnCallFailed) as failed:
        call.result(5)
    assert failed.value.code == "SYS.1001"


def test_deadline_already_passed_sends_nothing(mn, agent):
    call = mn.post_command(agent.url, CP, {}, deadline_ms=now_ms() - 1)
    with pytest.raises(MnCallFailed, match="skip post async call"):
        call.result(1)
    assert agent.received == []


def test_unparsable_callback_fails_with_sys_1000(mn, agent):
    def broken(cmd: dict) -> dict:
        raise RuntimeError("handler blew up")

    agent.reply_with(CP, broken)
    call = mn.post_command(agent.url, CP, {})
    with pytest.raises(MnCallFailed) as failed:
        call.result(5)
    assert failed.value.code == "SYS.1000"
    assert b"handler blew up" in call.deliveries()[0].body
    assert call.deliveries()[0].status == 200  # the MN answers before it parses


def test_unreachable_agent_fails_with_sys_1015(mn):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    call = mn.post_command(f"http://127.0.0.1:{port}", CP, {})
    with pytest.raises(MnCallFailed) as failed:
        call.result(1)
    assert failed.value.code == "SYS.1015" and call.sync_status == 0


def test_agent_error_status_fails_with_sys_1015(mn, agent):
    agent.not_found_paths.add("/ceph/primarystorage/check/snapshot")
    call = mn.post_command(agent.url, "/ceph/primarystorage/check/snapshot", {})
    with pytest.raises(MnCallFailed) as failed:
        call.result(1)
    assert failed.value.code == "SYS.1015" and call.sync_status == 404


def test_echo_is_synchronous_and_sync_paths_refuse_a_taskuuid(mn, agent):
    assert mn.echo(agent.url, "/ceph/primarystorage/echo") == 200
    [seen] = agent.requests_to("/ceph/primarystorage/echo")
    assert seen.header("taskuuid") is None and seen.body == b""
    call = mn.post_command(agent.url, "/host/echo", {})
    assert call.sync_status == 500
    with pytest.raises(MnCallFailed):
        call.result(1)



def test_agent_records_the_request_head_byte_for_byte(agent):
    head = (b"POST /ceph/primarystorage/volume/cp HTTP/1.1\r\nHost: x\r\nTASKUUID:  " + b"b" * 32 +
            b"\r\nx-Odd-Case: v\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", int(agent.url.rsplit(":", 1)[1])), timeout=5) as conn:
        conn.sendall(head + b"3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n")
        assert conn.recv(1024).startswith(b"HTTP/1.1 200 ")
    [seen] = agent.received
    assert seen.head == head
    assert seen.raw_headers[1:3] == [(b"TASKUUID", b"b" * 32), (b"x-Odd-Case", b"v")]
    assert seen.body == b'{"a":1}'


def test_callback_body_is_read_as_the_mn_servlet_reads_it(mn, agent):
    agent.reply_with(CP, {}, delay_s=0.5)  # keep the agent's own callback out of the way
    call = mn.post_command(agent.url, CP, {})
    # no charset in Content-Type: the servlet decodes ISO-8859-1, so raw UTF-8 arrives mangled;
    # line breaks are dropped before parsing
    body = '{"success": false,\n "error": "disque plein: é"}'.encode()
    status, _ = raw_post(mn.callback_url, body, {"taskuuid": call.task_uuid, "Content-Type": "application/json"})
    assert status == 200
    assert call.result(5) == {"success": False, "error": "disque plein: Ã©"}
