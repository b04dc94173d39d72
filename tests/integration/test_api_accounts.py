"""Accounts kept apart through the real API: two normal accounts and the admin, over REST and the classic
endpoint. A normal account sees and changes only its own volumes, images and jobs; the admin all of them;
another account's things look as if they were not there, or are refused with ZStack's ID.1002."""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from agent_harness import ACCOUNT, SESSION, file_volume, running_agent, write_config
from support import md5sum_file

from zsagent.auth import sign, signed_path
from zsagent.ownership import ADMIN_ACCOUNT_UUID

MiB = 1024 * 1024
OTHER_SESSION, OTHER_ACCOUNT = uuid.uuid4().hex, uuid.uuid4().hex
ADMIN_SESSION = uuid.uuid4().hex
KEY, KEY_SECRET = "AkAccounts0123456789", "AccountsSecret-0f1e2d3c4b5a69788796"  # an access key of ACCOUNT
CREATE = "/zstack/v1/images/data-volume-templates/from/volumes/{}"
CLASSIC_CREATE = "org.zstack.header.image.APICreateDataVolumeTemplateFromVolumeMsg"
PLAIN_EVENT = "org.zstack.header.message.APIEvent"


def auth(session: str) -> dict[str, str]:
    return {"Authorization": f"OAuth {session}"}


MINE, THEIRS, ADMIN = auth(SESSION), auth(OTHER_SESSION), auth(ADMIN_SESSION)


@pytest.fixture
def site(tmp_path, fake_rbd_env):
    """File and (fake) Ceph primary storage, a raw file backup storage; sessions of ACCOUNT, OTHER_ACCOUNT
    and the admin; the default for volumes whose owner is not known ("deny")."""
    env = fake_rbd_env
    ps_root, bs_root = tmp_path / "ps", tmp_path / "bs"
    ps_root.mkdir()
    bs_root.mkdir()
    raw = write_config(tmp_path, env.ceph_config,
                       [{"uuid": uuid.uuid4().hex, "type": "filesystem", "path": str(ps_root)},
                        {"uuid": uuid.uuid4().hex, "type": "ceph", "pools": [env.src_pool]}],
                       [{"uuid": uuid.uuid4().hex, "type": "filesystem", "path": str(bs_root), "format": "raw",
                         "default": True}])
    del raw["auth"]["unknown_volume_owner"]  # the default
    raw["pipeline"] = {"chunk_bytes": 4096, "depth": 1}  # slow enough to find a copy running
    with open(raw["auth"]["sessions_file"], "a") as f:
        f.write(f"{OTHER_SESSION} {OTHER_ACCOUNT}\n{ADMIN_SESSION} {ADMIN_ACCOUNT_UUID}\n")
    keys = tmp_path / "access-keys"
    keys.write_text(f"{KEY} {KEY_SECRET} {ACCOUNT}\n")
    raw["auth"]["access_keys_file"] = str(keys)
    with running_agent(raw) as agent:
        agent.env, agent.ps_root, agent.bs_root = env, ps_root, bs_root
        yield agent


def create(site, vol, headers, **params):
    return site.client.post(CREATE.format(vol), json={"params": {"name": "t", **params}}, headers=headers)


def listed(site, headers) -> set[str]:
    answer = site.client.get("/zstack/v1/images", headers=headers)
    assert answer.status_code == 200, answer.text
    return {i["uuid"] for i in answer.json()["inventories"]}


def template_dirs(site) -> list[str]:
    return sorted(p.name for p in (site.bs_root / "dataVolumeTemplates").glob("acct-*"))


def test_another_account_can_neither_use_my_volume_nor_see_or_delete_my_image(site):
    vol, volume_path = file_volume(site.ps_root, size=4 * MiB)
    made = create(site, vol, MINE)
    assert made.status_code == 200, made.text
    mine = made.json()["inventory"]
    template = site.bs_root / "dataVolumeTemplates" / f"acct-{ACCOUNT}" / mine["uuid"] / f"{mine['uuid']}.raw"
    assert md5sum_file(template) == mine["md5Sum"] == md5sum_file(volume_path)

    # my file volume (acct-<me>/ in ZStack's layout) is not theirs to copy: ID.1002 sync, async, classic
    refused = create(site, vol, THEIRS)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "ID.1002"
    assert "doesn't belong to the account[uuid: " + OTHER_ACCOUNT in refused.json()["error"]["details"]
    started = create(site, vol, {**THEIRS, "X-Job-UUID": uuid.uuid4().hex})
    polled = site.wait_job(started.json()["location"], session=OTHER_SESSION)
    assert polled.status_code == 503 and polled.json()["error"]["code"] == "ID.1002"
    classic = site.client.post("/zstack/api", json={CLASSIC_CREATE: {"name": "t", "volumeUuid": vol,
                                                                     "session": {"uuid": OTHER_SESSION}}})
    job = classic.json()["uuid"]
    while (envelope := site.client.get(f"/zstack/api/result/{job}").json())["state"] != "Done":
        time.sleep(0.05)
    [(name, event)] = json.loads(envelope["result"]).items()
    assert name == PLAIN_EVENT and event["error"]["code"] == "ID.1002"  # refused before it runs, as ZStack
    assert template_dirs(site) == [f"acct-{ACCOUNT}"]  # nothing was made for them

    # nor may they see my image, delete it, or get it back by replaying my request with its resourceUuid
    assert mine["uuid"] not in listed(site, THEIRS)
    got = site.client.get(f"/zstack/v1/images/{mine['uuid']}", headers=THEIRS)
    assert got.json()["inventories"] == []
    deleted = site.client.delete(f"/zstack/v1/images/{mine['uuid']}", headers=THEIRS)
    assert deleted.status_code == 403 and deleted.json()["error"]["code"] == "ID.1002"
    replay = create(site, vol, THEIRS, resourceUuid=mine["uuid"])
    assert replay.status_code == 400 and replay.json()["error"]["code"] == "SYS.1007"
    assert mine["md5Sum"] not in replay.text and "inventory" not in replay.json()
    queried = site.client.post("/zstack/api", json={"org.zstack.header.image.APIQueryImageMsg": {
        "conditions": [], "session": {"uuid": OTHER_SESSION}}}).json()
    assert mine["uuid"] not in queried["result"]
    assert md5sum_file(template) == mine["md5Sum"]  # untouched

    # my own replay gets my image back; the admin sees it, may copy my volume too, and deletes my image
    assert create(site, vol, MINE, resourceUuid=mine["uuid"]).json()["inventory"] == mine
    assert {mine["uuid"]} <= listed(site, ADMIN)
    assert site.client.get(f"/zstack/v1/images/{mine['uuid']}", headers=ADMIN).json()["inventories"] == [mine]
    by_admin = create(site, vol, ADMIN)
    assert by_admin.status_code == 200, by_admin.text
    assert template_dirs(site) == sorted([f"acct-{ACCOUNT}", f"acct-{ADMIN_ACCOUNT_UUID}"])
    assert by_admin.json()["inventory"]["uuid"] not in listed(site, MINE)  # the admin's, not mine
    assert site.client.delete(f"/zstack/v1/images/{mine['uuid']}", headers=ADMIN).status_code == 200
    assert not template.exists() and mine["uuid"] not in listed(site, MINE)


def test_jobs_are_seen_and_cancelled_by_their_account_and_the_admin_only(site):
    vol, _ = file_volume(site.ps_root, size=4 * MiB)
    path = next(site.ps_root.rglob(f"{vol}.raw"))
    with open(path, "r+b") as f:  # dense, so that the copy (4 KiB chunks, one in flight) runs a while
        f.truncate(128 * MiB)
        f.write(os.urandom(128 * MiB))
    job = uuid.uuid4().hex
    started = create(site, vol, {**MINE, "X-Job-UUID": job})
    assert started.status_code == 202
    location = started.json()["location"]
    progress = f"/zstack/v1/task-progresses/{job}"
    deadline = time.monotonic() + 60
    while site.client.get(progress, headers=MINE).json()["inventories"][0]["phase"] != "copying":
        assert time.monotonic() < deadline
        time.sleep(0.02)

    # to another account the job is not there: poll, progress (REST and classic), classic result, cancel
    for headers in (THEIRS, {}):  # and to a caller with no credentials: it was started with a session
        answer = site.client.get(location, headers=headers)
        assert (answer.status_code, answer.text) == (404, "the job has been expired")
        classic = site.client.get(f"/zstack/api/result/{job}", headers=headers)
        assert (classic.status_code, classic.text) == (404, f"No api result[uuid:{job}] found")
    assert site.client.get(progress, headers=THEIRS).json() == {"inventories": []}
    classic_progress = site.client.post("/zstack/api", json={"org.zstack.header.core.progress.APIGetTaskProgressMsg": {
        "apiId": job, "session": {"uuid": OTHER_SESSION}}}).json()
    assert json.loads(classic_progress["result"])[
        "org.zstack.header.core.progress.APIGetTaskProgressReply"]["inventories"] == []
    cancel = site.client.delete(f"/zstack/v1/api-jobs/{job}", headers=THEIRS)
    assert cancel.status_code == 404 and cancel.json()["error"]["code"] == "SYS.1003"

    # its own account and the admin see it running; the admin may cancel it
    assert site.client.get(location, headers=MINE).status_code == 202
    assert site.client.get(location, headers=ADMIN).status_code == 202
    assert site.client.get(progress, headers=ADMIN).json()["inventories"][0]["phase"] == "copying"
    assert site.client.delete(f"/zstack/v1/api-jobs/{job}", headers=ADMIN).status_code == 202
    ended = site.wait_job(location)
    assert ended.status_code == 503 and ended.json()["error"]["code"] == "SYS.1017"
    assert template_dirs(site) == []  # the cancelled copy left nothing


def signed(method: str, path: str) -> dict[str, str]:
    """KEY's signature of a request, as ZStack's SDK makes it."""
    date = datetime.now().astimezone().strftime("%a, %d %b %Y %H:%M:%S %z")
    return {"Authorization": f"ZStack {KEY}:{sign(KEY_SECRET, method, date, signed_path(path))}", "Date": date}


def test_a_job_signed_with_an_access_key_is_polled_as_zstacks_sdk_does(site):
    vol, _ = file_volume(site.ps_root, size=2 * MiB)
    path = CREATE.format(vol)
    started = site.client.post(path, json={"params": {"name": "signed"}},
                               headers={**signed("POST", path), "X-Job-UUID": uuid.uuid4().hex})
    assert started.status_code == 202, started.text
    location = started.json()["location"]
    # the Java SDK polls what it signed with "OAuth null" (ZSClient.java l.686-692): its uuid is enough
    done = site.wait_job(location, session="null")
    assert done.status_code == 200 and done.json()["inventory"]["name"] == "signed"
    answer = site.client.get(location, headers=THEIRS)  # but not for another account
    assert (answer.status_code, answer.text) == (404, "the job has been expired")
    assert done.json()["inventory"]["uuid"] in listed(site, MINE)


def rbd_volume(env, owner: str | None) -> str:
    vol = uuid.uuid4().hex
    env.rbd.RBD().create(env.src, vol, 2 * MiB, old_format=False)
    with env.rbd.Image(env.src, vol) as image:
        image.write(b"\x5a" * 65536, 0)
        if owner is not None:
            image.metadata_set("zstack.accountUuid", owner)
    return vol


def test_rbd_volume_owner_comes_from_its_metadata_else_only_the_admin_may_use_it(site):
    owned = rbd_volume(site.env, ACCOUNT)
    assert create(site, owned, MINE).status_code == 200
    refused = create(site, owned, THEIRS)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "ID.1002"

    unknown = rbd_volume(site.env, None)  # ZStack writes no owner: the agent cannot tell whose it is
    refused = create(site, unknown, MINE)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "ID.1002"
    assert "unknown_volume_owner" in refused.json()["error"]["details"]
    assert create(site, unknown, ADMIN).status_code == 200


class FakeManagementNode(BaseHTTPRequestHandler):
    """The few read-only calls of ZStack's REST API the agent makes (a management node cannot run here):
    sessions -> accounts in ``sessions``, volumes each account sees in ``volumes``."""

    sessions: dict[str, str] = {}
    volumes: dict[str, set[str]] = {}
    accounts_seen: dict[str, list[str]] = {}

    def do_GET(self):  # noqa: N802
        session = self.headers.get("Authorization", "").removeprefix("OAuth ")
        account = self.sessions.get(session)
        parts = self.path.split("?")[0].strip("/").split("/")  # zstack v1 ...
        if parts[2:4] == ["accounts", "sessions"]:
            return self._answer(200, {"valid": parts[4] in self.sessions})
        if account is None:
            return self._answer(503, {"error": {"code": "ID.1001"}})
        if parts[2:] == ["management-nodes"]:  # admin-only in ZStack's RBAC
            if account == ADMIN_ACCOUNT_UUID:
                return self._answer(200, {"inventories": [{"uuid": "mn"}]})
            return self._answer(503, {"error": {"code": "ID.1002"}})
        if parts[2:] == ["accounts"]:
            return self._answer(200, {"inventories": [{"uuid": a} for a in self.accounts_seen.get(account, [account])]})
        if parts[2] == "volumes":
            seen = parts[3] in self.volumes.get(account, set())
            return self._answer(200, {"inventories": [{"uuid": parts[3]}] if seen else []})
        return self._answer(404, {})

    def _answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_with_a_management_node_it_tells_the_account_and_whose_volume_it_is(tmp_path, fake_rbd_env):
    env = fake_rbd_env
    bs_root = tmp_path / "bs"
    bs_root.mkdir()
    mine, theirs = rbd_volume(env, None), rbd_volume(env, None)  # no owner on the volumes: the MN knows
    confused = uuid.uuid4().hex  # a session whose account the MN's answers do not pin down
    FakeManagementNode.sessions = {SESSION: ACCOUNT, OTHER_SESSION: OTHER_ACCOUNT, ADMIN_SESSION: ADMIN_ACCOUNT_UUID,
                                   confused: OTHER_ACCOUNT}
    FakeManagementNode.volumes = {ACCOUNT: {mine}, OTHER_ACCOUNT: {theirs}}
    FakeManagementNode.accounts_seen = {OTHER_ACCOUNT: [OTHER_ACCOUNT]}
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeManagementNode)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    raw = write_config(tmp_path, env.ceph_config, [{"uuid": uuid.uuid4().hex, "type": "ceph", "pools": [env.src_pool]}],
                       [{"uuid": uuid.uuid4().hex, "type": "filesystem", "path": str(bs_root), "default": True}])
    raw["auth"] = {"zstack_url": f"http://127.0.0.1:{server.server_port}", "session_cache_s": 0}
    try:
        with running_agent(raw) as site:
            made = site.client.post(CREATE.format(mine), json={"params": {"name": "m"}}, headers=MINE)
            assert made.status_code == 200, made.text
            assert made.json()["inventory"]["backupStorageRefs"][0]["installPath"].count(f"acct-{ACCOUNT}") == 1
            refused = site.client.post(CREATE.format(mine), json={"params": {"name": "x"}}, headers=THEIRS)
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "ID.1002"
            assert listed(site, THEIRS) == set() and listed(site, MINE) == {made.json()["inventory"]["uuid"]}
            assert listed(site, ADMIN) == {made.json()["inventory"]["uuid"]}
            FakeManagementNode.accounts_seen[OTHER_ACCOUNT] = [OTHER_ACCOUNT, ACCOUNT]  # ambiguous: refused
            answer = site.client.get("/zstack/v1/images", headers=auth(confused))
            assert answer.json()["error"]["code"] == "ID.1002"
    finally:
        server.shutdown()
