"""Access keys through the REST API (file primary and backup storage): ZStack's signed requests, its
refusals, accounts kept apart, secrets kept out of the logs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import uuid
from datetime import datetime, timedelta

import pytest
from agent_harness import ACCOUNT, SESSION, file_volume, running_agent, write_config

from zsagent.service import ADMIN_ACCOUNT_UUID

KEY, SECRET = "AkMine0123456789ABCD", "MineSecret-9f8e7d6c5b4a39281706"
OTHER_KEY, OTHER_SECRET, OTHER_ACCOUNT = "AkOther0123456789ABC", "OtherSecret-0a1b2c3d4e5f60718293", uuid.uuid4().hex
ADMIN_KEY, ADMIN_SECRET = "AkAdmin0123456789ABC", "AdminSecret-55aa55aa55aa55aa55aa"
SECRETS = (SECRET, OTHER_SECRET, ADMIN_SECRET)
CREATE = "/zstack/v1/images/data-volume-templates/from/volumes/{}"


def signed(method: str, path: str, key: str = KEY, secret: str = SECRET, *,
           skew: timedelta = timedelta(0)) -> dict[str, str]:
    """Headers as ZStack's SDK makes them: HMAC-SHA1 over "<method>\\n<Date>\\n<path without /zstack>",
    Base64; the Date in the local time (ZStack compares wall clocks by default)."""
    date = (datetime.now().astimezone() + skew).strftime("%a, %d %b %Y %H:%M:%S %z")
    message = f"{method}\n{date}\n{path.removeprefix('/zstack')}".encode()
    signature = base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha1).digest()).decode()
    return {"Authorization": f"ZStack {key}:{signature}", "Date": date}


@pytest.fixture
def api(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    ps_root, bs_root = tmp_path / "ps", tmp_path / "bs"
    ps_root.mkdir()
    bs_root.mkdir()
    keys = tmp_path / "access-keys"
    keys.write_text(f"# <AccessKeyId> <secret> <accountUuid>\n{KEY} {SECRET} {ACCOUNT}\n"
                    f"{OTHER_KEY} {OTHER_SECRET} {OTHER_ACCOUNT}\n{ADMIN_KEY} {ADMIN_SECRET} {ADMIN_ACCOUNT_UUID}\n")
    keys.chmod(0o600)
    raw = write_config(tmp_path, {"backend": "fake", "fake_root": str(tmp_path / "fake-ceph")},
                       [{"uuid": uuid.uuid4().hex, "type": "filesystem", "path": str(ps_root)}],
                       [{"uuid": uuid.uuid4().hex, "type": "filesystem", "path": str(bs_root), "default": True}])
    raw["auth"]["access_keys_file"] = str(keys)
    with running_agent(raw) as agent:
        agent.ps_root = ps_root
        yield agent
    for secret in SECRETS:
        assert secret not in caplog.text


def create(api, vol, name, headers):
    path = CREATE.format(vol)
    return api.client.post(path, json={"params": {"name": name}}, headers=headers("POST", path))


def listed(api, headers, **params):
    answer = api.client.get("/zstack/v1/images", params=params, headers=headers)
    assert answer.status_code == 200, answer.text
    return [i["name"] for i in answer.json()["inventories"]]


def test_signed_requests_act_as_the_keys_account(api):
    vol, _ = file_volume(api.ps_root)
    mine = create(api, vol, "mine", signed)
    assert mine.status_code == 200, mine.text
    their_vol, _ = file_volume(api.ps_root, account=OTHER_ACCOUNT)
    theirs = create(api, their_vol, "theirs", lambda m, p: signed(m, p, OTHER_KEY, OTHER_SECRET))
    assert theirs.status_code == 200, theirs.text
    by_session = api.post_create(vol, {"name": "by-session"})
    assert by_session.status_code == 200, by_session.text

    # each account lists its own images only; the admin account all of them
    assert sorted(listed(api, signed("GET", "/zstack/v1/images"))) == ["by-session", "mine"]
    assert listed(api, signed("GET", "/zstack/v1/images", OTHER_KEY, OTHER_SECRET)) == ["theirs"]
    assert sorted(listed(api, signed("GET", "/zstack/v1/images", ADMIN_KEY, ADMIN_SECRET))) == [
        "by-session", "mine", "theirs"]
    assert sorted(i["name"] for i in api.get("/zstack/v1/images").json()["inventories"]) == [
        "by-session", "mine"]
    other_uuid = theirs.json()["inventory"]["uuid"]
    path = f"/zstack/v1/images/{other_uuid}"
    assert api.client.get(path, headers=signed("GET", path)).json()["inventories"] == []  # not theirs to see
    delete = api.client.delete(path, headers=signed("DELETE", path))  # nor to delete
    assert delete.status_code == 403 and delete.json()["error"]["code"] == "ID.1002"
    answer = api.client.get(path, headers=signed("GET", path, OTHER_KEY, OTHER_SECRET))
    assert answer.json()["inventories"][0]["name"] == "theirs"

    # the query parameters are not signed: only the path
    headers = signed("GET", "/zstack/v1/images")
    assert listed(api, headers, q="name=mine", replyWithCount="true") == ["mine"]
    answer = api.client.get("/zstack/v1/images", params={"count": "true"}, headers=headers)
    assert answer.json() == {"total": 2, "schema": {}}  # a query always has its map


def test_wrong_skewed_unknown_and_malformed_are_refused_at_once(api, caplog):
    vol, _ = file_volume(api.ps_root)
    path = CREATE.format(vol)
    wrong = signed("POST", path, KEY, "not-the-secret")
    wrong_path = signed("POST", CREATE.format(uuid.uuid4().hex))
    skewed = signed("POST", path, skew=timedelta(minutes=16))
    late = signed("POST", path, skew=-timedelta(minutes=16))
    unknown = signed("POST", path, "AkNoSuchKey000000000", SECRET)
    no_date = {"Authorization": signed("POST", path)["Authorization"]}
    bad_date = {**signed("POST", path), "Date": "yesterday"}
    malformed = {**signed("POST", path), "Authorization": f"ZStack {KEY}"}
    cases = [
        (wrong, 403, "wrong accessKey signature"),
        (wrong_path, 403, "wrong accessKey signature"),
        (skewed, 403, "requestTimeTooSkewed"),
        (late, 403, "requestTimeTooSkewed"),
        (unknown, 403, "access key id: AkNoSuchKey000000000 does not existed or disabled"),
        (no_date, 400, "'Date' must be incuded in request header"),
        (bad_date, 400, "'Date' format error, correct format is 'EEE, dd MMM yyyy HH:mm:ss z'"),
        (malformed, 400, "accessKey format is 'ZStack AccessKeyId:Signature'"),
    ]
    for headers, status, text in cases:
        for extra in ({}, {"X-Job-UUID": uuid.uuid4().hex}):  # refused before any job, even async
            answer = api.client.post(path, json={"params": {"name": "x"}}, headers={**headers, **extra})
            assert (answer.status_code, answer.text) == (status, text), headers
            assert answer.headers["content-type"].startswith("text/plain")
        answer = api.client.get("/zstack/v1/images", headers=headers)
        assert answer.status_code == status
    assert "wrong signature for access key " + KEY in caplog.text
    assert api.get("/zstack/v1/images").json()["inventories"] == []  # nothing was created
    assert f"OAuth {SESSION}" not in caplog.text
