"""Bad input, case by case: every one gets ZStack's answer (an ErrorCode, or ZStack's plain-text refusal),
none is half-stored, none poisons what others see, and good text comes back exactly as sent.

The agent runs on 127.0.0.1 with a filesystem primary storage holding a real volume and a raw
filesystem backup storage (the fake Ceph backend is configured but unused), so a create that passes its
checks makes a real template; what is on the backup storage is checked on disk.
"""

from __future__ import annotations

import dataclasses
import json
import uuid

import httpx
import pytest
from agent_harness import SESSION, file_volume, running_agent, write_config

from zsagent.api.classic import CREATE, DELETE_IMAGE, QUERY_IMAGE, TASK_PROGRESS
from zsagent.api.openapi import OPERATIONS, UNDOCUMENTED

AUTH = {"Authorization": f"OAuth {SESSION}"}
JSON = {**AUTH, "Content-Type": "application/json"}
MIB = 1024 * 1024


@pytest.fixture
def agent(tmp_path):
    ps, bs, fake, bs_uuid = tmp_path / "ps", tmp_path / "bs", tmp_path / "fake-ceph", uuid.uuid4().hex
    for directory in (ps, bs, fake):
        directory.mkdir()
    volume, _ = file_volume(ps, size=2 * MIB)
    raw = write_config(tmp_path, {"backend": "fake", "fake_root": str(fake)},
                       [{"uuid": uuid.uuid4().hex, "type": "filesystem", "path": str(ps)}],
                       [{"uuid": bs_uuid, "type": "filesystem", "path": str(bs), "format": "raw", "default": True}])
    with running_agent(raw) as running:
        running.volume, running.bs_root, running.bs_uuid = volume, bs, bs_uuid
        yield running


def create_path(volume: str) -> str:
    return f"/zstack/v1/images/data-volume-templates/from/volumes/{volume}"


def post_raw(agent, body: bytes | str, volume: str | None = None, headers: dict | None = None) -> httpx.Response:
    return agent.client.post(create_path(volume or agent.volume), content=body, headers={**JSON, **(headers or {})})


def invalid_details(answer: httpx.Response) -> str:
    """The details of a synchronous SYS.1007 answer (asserting that it is one)."""
    assert answer.status_code == 400, (answer.status_code, answer.text)
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert error["code"] == "SYS.1007" and error["description"] and "Traceback" not in error["details"]
    return error["details"]


def stored_files(agent) -> list[str]:
    return sorted(str(p.relative_to(agent.bs_root)) for p in agent.bs_root.rglob("*") if p.is_file())


def classic(agent, message_class: str, **fields) -> tuple[str, dict]:
    """Post one classic message (session included); poll it when it runs as a job; (answer class, answer)."""
    body = json.dumps({message_class: {**fields, "session": {"uuid": SESSION}}})  # ASCII: surrogates escaped
    envelope = agent.client.post("/zstack/api", content=body).json()
    while envelope["state"] == "Processing":
        envelope = agent.client.get(f"/zstack/api/result/{envelope['uuid']}").json()
    [(answer_class, answer)] = json.loads(envelope["result"]).items()
    return answer_class, answer


def classic_raw(agent, body: bytes) -> dict:
    answer = agent.client.post("/zstack/api", content=body)
    assert answer.status_code == 200
    [(_, result)] = json.loads(answer.json()["result"]).items()
    return result


# ---------------------------------------------------------------- malformed and oversized JSON


def test_json_nested_100000_deep_is_an_invalid_argument_not_a_500(agent):
    deep = "[" * 100_000
    assert "nested too deeply" in invalid_details(post_raw(agent, deep))
    below_the_parser_limit = '{"params": {"name": ' + "[" * 500 + "]" * 500 + "}}"
    assert "nested too deeply" in invalid_details(post_raw(agent, below_the_parser_limit))
    accepted = post_raw(agent, deep, headers={"X-Job-UUID": uuid.uuid4().hex})  # ZStack: checked by the job
    polled = agent.wait_job(accepted.json()["location"])
    assert polled.status_code == 503 and polled.json()["error"]["code"] == "SYS.1007"
    error = classic_raw(agent, deep.encode())["error"]
    assert error["code"] == "SYS.1007" and "nested too deeply" in error["details"]
    assert stored_files(agent) == []


@pytest.mark.parametrize("body", [
    b"", b"{", b"[]", b"null", b'"x"', b"\xff\xfe{}", b"\xef\xbb\xbf{}", b'{"params": NaN}',
    b'{"params": {"name": "x"}} trailing', b'{"params": {"name": ' + b"9" * 5000 + b"}}",
    b'{"params": {"name": 1e999}}', b'{"params": {"name": ["x"]}}', b'{"params": "x"}', b'{"params": {}}',
], ids=["empty", "unclosed", "array", "null", "string", "utf16-bytes", "bom", "nan", "trailing", "5000-digits",
        "infinity", "name-list", "params-string", "no-name"])
def test_malformed_bodies_are_invalid_arguments(agent, body):
    invalid_details(post_raw(agent, body))
    assert classic_raw(agent, body)["error"]["code"] in ("SYS.1007", "SYS.1008")


def test_a_body_over_the_limit_is_refused_with_413_before_it_is_read(agent):
    huge = json.dumps({"params": {"name": "x"}, "junk": "a" * (10 * MIB)})
    answer = post_raw(agent, huge)
    assert answer.status_code == 413 and answer.headers["content-type"].startswith("text/plain")
    assert "max_body_bytes" in answer.text and str(MIB) in answer.text

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"params": {"name": "x"}, "junk": "'
        for _ in range(20):
            yield b"a" * (256 * 1024)
        yield b'"}'

    chunked = httpx.post(agent.url + create_path(agent.volume), content=chunks(), headers=JSON)
    assert chunked.status_code == 413
    assert httpx.post(agent.url + "/zstack/api", content=huge).status_code == 413
    assert stored_files(agent) == [] and agent.get("/zstack/v1/images").json()["inventories"] == []


def test_a_body_within_the_limit_with_an_unknown_key_is_told_which(agent):
    body = json.dumps({"params": {"name": "x", "nmae": "typo"}, "junk": "a" * (MIB // 2)})
    details = invalid_details(post_raw(agent, body))
    assert "'junk'" in details  # the top level is checked first
    details = invalid_details(post_raw(agent, json.dumps({"params": {"name": "x", "nmae": "typo"}})))
    assert "'nmae'" in details and "name, description" in details
    # requestIp is what ZStack's Java SDK adds: taken (and ignored)
    made = post_raw(agent, json.dumps({"params": {"name": "sdk", "requestIp": "10.0.0.1"}}))
    assert made.status_code == 200 and made.json()["inventory"]["name"] == "sdk"


# ---------------------------------------------------------------- unicode and control characters


def test_a_lone_surrogate_is_refused_and_nothing_is_stored(agent):
    for body in ('{"params": {"name": "\\ud800"}}', '{"params": {"name": "ok", "description": "a\\udfffb"}}',
                 '{"params": {"name": "ok"}, "userTags": ["\\udbff"]}', '{"params": {"name": "ok", "\\ud800": 1}}'):
        details = invalid_details(post_raw(agent, body))
        assert "lone UTF-16 surrogate" in details, details
    # the same code point as raw bytes (CESU-8), which json.loads would decode with surrogatepass
    assert "surrogate" in invalid_details(post_raw(agent, b'{"params": {"name": "\xed\xa0\x80"}}'))
    _, answer = classic(agent, CREATE, name="\ud800", volumeUuid=agent.volume)
    assert answer["error"]["code"] == "SYS.1007" and "surrogate" in answer["error"]["details"]
    assert stored_files(agent) == [] and agent.get("/zstack/v1/images").json()["inventories"] == []


def test_a_stored_name_that_is_not_unicode_does_not_poison_the_list(agent):
    """A record an older agent stored with a lone surrogate in its name: every answer still renders."""
    good = post_raw(agent, json.dumps({"params": {"name": "good"}})).json()["inventory"]
    [record] = agent.agent.store.list_images()
    bad_uuid = uuid.uuid4().hex
    bad = dataclasses.replace(record, uuid=bad_uuid,
                              inventory={**record.inventory, "uuid": bad_uuid, "name": "\ud800x"})
    agent.agent.store.put_image(bad)
    listed = agent.get("/zstack/v1/images")
    assert listed.status_code == 200
    assert {i["uuid"]: i["name"] for i in listed.json()["inventories"]} == {good["uuid"]: "good", bad_uuid: "\ud800x"}
    one = agent.get(f"/zstack/v1/images/{bad_uuid}")
    assert one.status_code == 200 and one.json()["inventories"][0]["name"] == "\ud800x"
    assert agent.get(f"/zstack/v1/images/{good['uuid']}").json()["inventories"][0]["name"] == "good"
    _, answer = classic(agent, QUERY_IMAGE, conditions=[])
    assert answer["success"] is True and len(answer["inventories"]) == 2


# Java's trim takes every character up to U+0020 off both ends (controls included) and nothing else.
NAMES = [
    ("名前のテンプレート", "名前のテンプレート"),
    ("emoji 🎉👩‍💻 and ZWJ", "emoji 🎉👩‍💻 and ZWJ"),
    ("rtl \u202eevil.exe", "rtl \u202eevil.exe"),
    ("nul\x00bell\x07tab\tnewline\ninside", "nul\x00bell\x07tab\tnewline\ninside"),
    ("\x00\x1f  controls at the ends \r\n\x01", "controls at the ends"),
    ("\u3000ideographic space kept\u3000", "\u3000ideographic space kept\u3000"),
    ("\ufeffbom\u200bzero-width", "\ufeffbom\u200bzero-width"),
    ("e\u0301 combining, \\ backslash, \" quote, ' apostrophe, <b>&amp;</b>", None),
    ("", ""),
]


def test_unicode_and_control_characters_are_stored_and_returned_exactly(agent):
    description = "".join(chr(c) for c in range(1, 0x2000) if not 0xD800 <= c < 0xE000)[:2000] + "🎉" * 23
    made = {}
    for sent, expected in NAMES:
        expected = sent if expected is None else expected
        answer = post_raw(agent, json.dumps({"params": {"name": sent, "description": "x" + description + "x"}}))
        assert answer.status_code == 200, answer.text
        inventory = answer.json()["inventory"]
        assert inventory["name"] == expected and inventory["description"] == "x" + description + "x"
        made[inventory["uuid"]] = expected
    listed = {i["uuid"]: i["name"] for i in agent.get("/zstack/v1/images").json()["inventories"]}
    assert listed == made
    for image_uuid, name in made.items():
        assert agent.get(f"/zstack/v1/images/{image_uuid}").json()["inventories"][0]["name"] == name
        assert agent.agent.store.get_image(image_uuid).inventory["name"] == name
    _, answer = classic(agent, QUERY_IMAGE, conditions=[{"name": "name", "op": "=", "value": NAMES[0][0]}])
    assert [i["name"] for i in answer["inventories"]] == [NAMES[0][0]]


def test_name_and_description_are_limited_in_java_characters(agent):
    for name, ok in (("a" * 255, True), ("a" * 256, False), ("🎉" * 127 + "a", True), ("🎉" * 128, False),
                     ("  " + "a" * 255 + "\t\n", True)):
        answer = post_raw(agent, json.dumps({"params": {"name": name}}))
        if ok:
            assert answer.status_code == 200, answer.text
        else:
            assert "the limit is 255" in invalid_details(answer)
    assert "the limit is 2048" in invalid_details(post_raw(agent, json.dumps(
        {"params": {"name": "x", "description": "🎉" * 1025}})))


# ---------------------------------------------------------------- uuids and paths


def test_uuids_with_path_characters_are_refused(agent):
    for params in ({"backupStorageUuids": ["../../../etc"]}, {"backupStorageUuids": [agent.bs_uuid + "/.."]},
                   {"resourceUuid": "../" + uuid.uuid4().hex}, {"resourceUuid": uuid.uuid4().hex + "/x"},
                   {"tagUuids": ["/etc/passwd"]}, {"backupStorageUuids": [agent.bs_uuid.upper()]}):
        details = invalid_details(post_raw(agent, json.dumps({"params": {"name": "x", **params}})))
        assert "uuid" in details.lower()
    for volume in ("..", "%2e%2e", "..%5C..%5Cwindows", agent.volume + "%2F..", agent.volume.upper(), "a" * 1000,
                   agent.volume[:31] + "%00"):
        answer = agent.client.post(create_path(volume), json={"params": {"name": "x"}}, headers=AUTH)
        assert answer.status_code in (400, 404), (volume, answer.text)
        assert "uuid" in answer.text.lower() or answer.text.startswith("no api mapping"), answer.text
    # a uuid with NUL at its end is the uuid: ZStack trims every string field as Java does, URL variables too
    trimmed = agent.client.post(create_path(agent.volume + "%00"), json={"params": {"name": "x"}}, headers=AUTH)
    assert trimmed.status_code == 200 and trimmed.json()["inventory"]["url"] == f"volume://{agent.volume}"
    made = stored_files(agent)
    for path in ("/zstack/v1/images/..%2F..%2Fetc", "/zstack/v1/images/../../etc/passwd"):
        answer = agent.client.get(path, headers=AUTH)
        assert answer.status_code in (200, 404) and "root:" not in answer.text
    assert stored_files(agent) == made


def test_deleting_an_image_named_by_a_path_removes_nothing(agent):
    made = post_raw(agent, json.dumps({"params": {"name": "kept"}})).json()["inventory"]
    files = stored_files(agent)
    assert files
    for weird in ("..", "%2e%2e", made["uuid"] + "%2F..", "*", "%25", made["uuid"][:31]):
        answer = agent.client.delete(f"/zstack/v1/images/{weird}", headers=AUTH)
        assert answer.status_code in (200, 404), answer.text  # ZStack: deleting what is not there succeeds
    for weird in ("../../" + made["uuid"], made["uuid"] + "/../x", "*"):
        _, answer = classic(agent, DELETE_IMAGE, uuid=weird)
        assert answer["success"] is True
        _, progress = classic(agent, TASK_PROGRESS, apiId=weird)
        assert progress["inventories"] == []
    assert stored_files(agent) == files
    assert [i["uuid"] for i in agent.get("/zstack/v1/images").json()["inventories"]] == [made["uuid"]]


def test_job_headers_with_path_characters_or_bad_urls_are_refused_at_once(agent):
    body = json.dumps({"params": {"name": "x"}})
    for headers in ({"X-Job-UUID": "../../../../../../../../../../ab"}, {"X-Job-UUID": "0" * 31 + "/"},
                    {"X-Job-UUID": "z" * 32}, {"X-Web-Hook": "file:///etc/passwd"}, {"X-Web-Hook": "http://"},
                    {"X-Web-Hook": "javascript:alert(1)"}, {"X-Web-Hook": "ftp://127.0.0.1/x"},
                    {"X-Web-Hook": "http://127.0.0.1:99999/x"}, {"X-Web-Hook": "http://exa mple/"}):
        answer = post_raw(agent, body, headers=headers)
        assert answer.status_code == 400 and answer.text.startswith("Invalid header["), (headers, answer.text)
    for job in ("..%2F..%2Fhealth", "../../health", "%00"):
        answer = agent.client.get(f"/zstack/v1/api-jobs/{job}")
        assert answer.status_code == 404 and answer.headers["content-type"].startswith("text/plain"), job
    assert stored_files(agent) == []


# ---------------------------------------------------------------- tags


@pytest.mark.parametrize("tag", [
    "ceph::copyMode::clone::extra", "ceph::copyMode::", "::", "ceph::copyMode", "CEPH::copyMode::clone",
    "template::format::raw::template::format::qcow2", "template::format::raw\nconsistency::quiesced",
    "sftp::bandwidth::0", "sftp::bandwidth::-1", "sftp::bandwidth::1e9", "sftp::bandwidth::1" + "0" * 15,
    "template::format::q\u0441ow2", "consistency::quiesced::", "template::compression::zstd,zlib",
])
def test_system_tags_with_colon_tricks_are_invalid(agent, tag):
    for body in ({"params": {"name": "x"}, "systemTags": [tag]}, {"params": {"name": "x", "systemTags": [tag]}}):
        assert "not supported" in invalid_details(post_raw(agent, json.dumps(body)))


def test_two_values_of_one_system_tag_conflict(agent):
    body = {"params": {"name": "x", "systemTags": ["template::format::qcow2"]}, "systemTags": ["template::format::raw"]}
    assert "conflict" in invalid_details(post_raw(agent, json.dumps(body)))
    same = {"params": {"name": "x", "systemTags": ["template::format::raw"]}, "systemTags": ["template::format::raw"]}
    assert post_raw(agent, json.dumps(same)).status_code == 200  # the same tag twice is one tag


def test_user_tags_are_free_text_kept_as_given(agent):
    tags = ["a::b::c", "::", "ceph::copyMode::clone", "名前::値", "x" * 1000]
    made = post_raw(agent, json.dumps({"params": {"name": "tagged"}, "userTags": tags}))
    assert made.status_code == 200
    record = agent.agent.store.get_image(made.json()["inventory"]["uuid"])
    assert tags[0] in json.dumps(record.tags, ensure_ascii=False) and "名前::値" in json.dumps(record.tags,
                                                                                              ensure_ascii=False)
    assert made.json()["inventory"]["format"] == "raw"  # a user tag that looks like a system tag does nothing


def test_an_ssh_key_field_is_not_taken(agent):
    """The API has no sshKey (SFTP keys are configuration); one sent in the body is an unknown field."""
    for key in ("not a key", "-----BEGIN OPENSSH PRIVATE KEY-----"):
        params = {"name": "x", "sshKey": key}
        details = invalid_details(post_raw(agent, json.dumps({"params": params})))
        assert "'sshKey'" in details and "BEGIN" not in details


# ---------------------------------------------------------------- queries, paths and methods


@pytest.mark.parametrize("query", ["limit=abc", "limit=-1", "start=1.5", "count=maybe", "sort=nope", "fields=",
                                   "fields=uuid,nope", "q=name", "q=size>abc", "q=nope=1", "unknown=1",
                                   "limit=" + "9" * 5000])
def test_query_parameter_errors_are_zstack_error_codes(agent, query):
    answer = agent.client.get(f"/zstack/v1/images?{query}", headers=AUTH)
    invalid_details(answer)
    assert "detail" not in answer.json()  # not FastAPI's 422 shape


def test_unknown_paths_and_methods_get_zstacks_answers_with_allow(agent):
    missing = agent.client.get("/zstack/v1/nothing", headers=AUTH)
    assert (missing.status_code, missing.text) == (404, "no api mapping to /zstack/v1/nothing")
    for method, path, allowed in (("PATCH", "/zstack/v1/images", "GET"),
                                  ("OPTIONS", f"/zstack/v1/images/{uuid.uuid4().hex}", "DELETE, GET"),
                                  ("POST", f"/zstack/v1/api-jobs/{uuid.uuid4().hex}", "DELETE, GET"),
                                  ("DELETE", "/zstack/api", "POST, PUT"), ("GET", create_path(agent.volume), "POST")):
        answer = agent.client.request(method, path, headers=AUTH)
        assert answer.status_code == 405 and answer.headers["allow"] == allowed, (method, path, answer.headers)
        assert answer.text == f"The method[{method}] is not allowed for the path[{path}]"


def test_metrics_and_health_answer_as_documented(agent):
    spec = agent.client.get("/openapi.json").json()
    [metrics_type] = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    answer = agent.client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"] == metrics_type
    assert "zsagent" in answer.text
    assert "422" not in json.dumps(spec["paths"]) and "HTTPValidationError" not in json.dumps(spec)
    documented = {(method, path) for path, methods in spec["paths"].items() for method in methods}
    assert documented == set(OPERATIONS)  # every route described, no description of a route that is gone
    assert UNDOCUMENTED not in json.dumps(spec)
