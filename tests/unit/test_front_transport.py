"""`zsagent front`'s transport between the MN simulator and the stand-in for ZStack's agent (no storage):
byte-exact forwarding, ZStack's answers to bad requests, and an unreachable upstream."""

from __future__ import annotations

import http.client
import json
import socket
import time
import uuid
from urllib.parse import urlsplit

import pytest
from front_harness import front_config, running_front
from mn_simulator import MnSimulator
from upstream_agent import UpstreamAgent

from zsagent.front import paths, wire

CP = "/ceph/primarystorage/volume/cp"


@pytest.fixture
def mn():
    with MnSimulator() as sim:
        yield sim


@pytest.fixture
def upstream():
    with UpstreamAgent() as agent:
        yield agent


def test_forwarded_commands_reach_zstacks_agent_byte_for_byte_and_its_callback_the_mn(tmp_path, mn, upstream):
    upstream.reply_with("/ceph/primarystorage/getvolumesize", {"size": 1 << 30, "actualSize": 4096})
    with running_front(front_config(tmp_path, "ceph", upstream.url)) as front:
        cmd = {"volumeUuid": uuid.uuid4().hex, "installPath": "ceph://pool/" + uuid.uuid4().hex,
               "fsId": "f", "uuid": uuid.uuid4().hex, "name": "<a & b='c'>", "note": "ünïcode"}
        call = mn.post_command(front.url, "/ceph/primarystorage/getvolumesize", cmd, thread_context=False)
        assert call.sync_status == 200
        assert call.result(10) == {"success": True, "error": "", "size": 1 << 30, "actualSize": 4096}
        [got] = upstream.requests_to("/ceph/primarystorage/getvolumesize")
        assert got.body == mn.sent_bytes(call.task_uuid)
        sent = [(k.encode(), v.encode()) for k, v in mn.sent_headers(call.task_uuid)]
        assert [h for h in got.raw_headers if h in sent] == sent  # order and case kept
        assert got.head.startswith(b"POST /ceph/primarystorage/getvolumesize HTTP/1.1\r\n")
        # the front adds nothing and drops nothing: the header block arrives as the MN wrote it
        assert [k for k, _ in got.raw_headers] == [k.encode() for k, _ in mn.sent_headers(call.task_uuid)] + \
            [b"Content-Length", b"Host", b"Connection", b"User-Agent"]


def test_kvm_body_with_a_duplicated_key_passes_untouched(tmp_path, mn, upstream):
    with running_front(front_config(tmp_path, "kvm", upstream.url)) as front:
        host = uuid.uuid4().hex
        call = mn.post_command(front.url, "/localstorage/volume/estimatetemplatesize",
                               {"volumePath": "/ps/x.qcow2", "kvmHostAddons": {"a": "1"}}, thread_context=False,
                               kvm_host_uuid=host, kvm_host_addons={"b": "2"})
        assert call.result(10)["success"] is True
        [got] = upstream.requests_to("/localstorage/volume/estimatetemplatesize")
        assert got.body.count(b'"kvmHostAddons"') == 2
        assert got.body == mn.sent_bytes(call.task_uuid)
        assert got.header("X-Resource-UUID") == host


def test_a_chunked_request_is_forwarded_with_its_head_unchanged(tmp_path, upstream):
    with running_front(front_config(tmp_path, "ceph", upstream.url)) as front:
        parts = urlsplit(front.url)
        with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
            head = (b"POST /ceph/primarystorage/getvolumesize HTTP/1.1\r\nHost: x\r\ntaskuuid: " +
                    uuid.uuid4().hex.encode() + b"\r\ncallbackurl: http://127.0.0.1:9/cb\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n")
            sock.sendall(head + b"5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n")
            assert sock.recv(100).startswith(b"HTTP/1.1 200 ")
        [got] = upstream.wait_for("/ceph/primarystorage/getvolumesize")
        assert got.head == head and got.body == b'{"a":1}'


def test_sync_echo_is_forwarded_and_answered_by_zstacks_agent(tmp_path, mn, upstream):
    with running_front(front_config(tmp_path, "ceph", upstream.url)) as front:
        assert mn.echo(front.url, "/ceph/primarystorage/echo") == 200
        [got] = upstream.requests_to("/ceph/primarystorage/echo")
        assert got.header("taskuuid") is None and got.body == b""


def test_a_command_of_ours_without_taskuuid_gets_zstacks_400(tmp_path, upstream):
    with running_front(front_config(tmp_path, "ceph", upstream.url)) as front:
        parts = urlsplit(front.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        conn.request("POST", CP, body=b"{}", headers={"Content-Type": "application/json"})
        answer = conn.getresponse()
        assert (answer.status, answer.read()) == (400, wire.MISSING_TASK_UUID.encode())
        assert upstream.received == []


@pytest.mark.parametrize("cmd, expected", [
    ({"srcPath": "ceph://pool/../etc@x", "dstPath": "ceph://bs/" + "a" * 32}, "srcPath"),
    ({"dstPath": "ceph://bs/" + "a" * 32}, "field srcPath is missing"),
    ({"srcPath": f"ceph://p/{'a' * 32}@{'b' * 32}", "dstPath": "ceph://bs/../../x"}, "dstPath"),
])
def test_a_malformed_command_gets_a_success_false_callback_not_a_5xx(tmp_path, mn, upstream, cmd, expected):
    with running_front(front_config(tmp_path, "ceph", upstream.url)) as front:
        call = mn.post_command(front.url, CP, {"sendCommandUrl": mn.send_command_url, **cmd})
        assert call.sync_status == 200
        result = call.result(10)
        assert result["success"] is False and expected in result["error"]
        assert "malformed" in result["error"]
        assert upstream.received == []


def test_a_body_that_is_not_json_gets_a_success_false_callback(tmp_path, mn, upstream):
    with running_front(front_config(tmp_path, "ceph", upstream.url)) as front:
        parts = urlsplit(front.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        task = uuid.uuid4().hex
        conn.request("POST", CP, body=b"{not json", headers={"taskuuid": task, "callbackurl": mn.callback_url})
        assert conn.getresponse().status == 200
        front.wait_idle()
        for _ in range(200):
            if mn.orphan_callbacks:
                break
            time.sleep(0.02)
        [delivery] = mn.orphan_callbacks  # a taskuuid the simulator did not send itself
        assert delivery.task_uuid == task
        assert delivery.parsed["success"] is False and "not JSON" in delivery.parsed["error"]
        assert upstream.received == []


def test_a_command_past_its_deadline_is_failed_at_once(tmp_path, mn, upstream):
    raw = front_config(tmp_path, "ceph", upstream.url,
                       primary=[{"uuid": uuid.uuid4().hex, "type": "ceph", "pools": ["p"]}],
                       backup=[{"uuid": uuid.uuid4().hex, "type": "ceph", "pool": "b"}])
    with running_front(raw) as front:
        cmd = {"srcPath": f"ceph://p/{'a' * 32}@{'b' * 32}", "dstPath": f"ceph://b/{'c' * 32}"}
        call = mn.post_command(front.url, CP, cmd, deadline_ms=int(time.time() * 1000) + 500)
        rsp = call.result(5)
        assert rsp["success"] is False and "deadline" in rsp["error"] and "nothing was done" in rsp["error"]
        assert front.store.list_images() == [] and upstream.received == []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_upstream_down_forwarded_commands_fail_as_with_an_unreachable_agent(tmp_path, mn):
    with running_front(front_config(tmp_path, "ceph", f"http://127.0.0.1:{_closed_port()}")) as front:
        call = mn.post_command(front.url, "/ceph/primarystorage/getvolumesize", {"volumeUuid": "v"},
                               thread_context=False)
        outcome = call.wait(10)
        assert outcome.code == "SYS.1015"  # what a refused connection to the agent gives; Ceph tries the next mon
        assert "cannot be reached" in call.sync_body.decode()
        assert mn.echo(front.url, "/ceph/primarystorage/echo") == 502


def test_command_paths_are_checked():
    with pytest.raises(wire.MalformedCommand):
        paths.sftp_template("/bs/dataVolumeTemplates/acct-x/y/y.volume", "p")
    with pytest.raises(wire.MalformedCommand):
        paths.workspace("/ps/templateWorkspace/image-" + "a" * 32 + "/../" + "a" * 32 + ".qcow2", "p")
    img, acct = "b" * 32, "c" * 32
    got = paths.sftp_template(f"/bs/dataVolumeTemplates/acct-{acct}/{img}/{img}.volume", "p")
    assert (got.root, got.account_uuid, got.image_uuid) == ("/bs", acct, img)


def test_progress_is_mapped_into_the_stage_window_and_deadlines_read():
    assert wire.stage_percent(50, wire.stage_window("30-90")) == 60
    assert wire.stage_percent(0, wire.stage_window(None, (10, 90))) == 10
    env = wire.envelope({"threadContext": {"api": "a", "task-stage": "10-30"},
                         "taskContext": {"__messagetimeout__": "5000", "__messagedeadline__": "9999999999999"}},
                        now_epoch=100.0)
    assert (env.api_id, env.task_stage, env.expires_epoch) == ("a", "10-30", 105.0)
    assert json.loads(wire.response_body(wire.failure("é"))) == {"success": False, "error": "é"}
    assert wire.response_body(wire.success(size=None)) == b'{"success":true,"error":""}'
