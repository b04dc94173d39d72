"""Access key authentication: ZStack's HMAC-SHA1 signature, the Date window, and the keys file."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from zsagent.auth import AccessKeysFile, Authenticator, SessionsFile, check_date, sign, signed_path
from zsagent.errors import RestRefusal, ZsError

KEY_ID, SECRET, ACCOUNT = "N3Tf05yXZUmSjCf6mYIB", "Wb8dPq2LsK9vTx4ZrYc7Hn1Ja6GmEf3U", uuid.uuid4().hex
SESSION, SESSION_ACCOUNT = uuid.uuid4().hex, uuid.uuid4().hex
DATE = "Thu, 06 Sep 2018 13:54:10 PRC"  # the form of ZStack's own example (zstackio/zstack issue 1286)
WALL_CLOCK = datetime(2018, 9, 6, 13, 54, 10)


def reference_signature(secret: str, method: str, date: str, path: str) -> str:
    """The signature as ZStack specifies it, written out here independently of zsagent.auth."""
    message = (method + "\n" + date + "\n" + path).encode()
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha1).digest()).decode()


@pytest.fixture
def auth(tmp_path):
    keys = tmp_path / "access-keys"
    keys.write_text(f"# id secret account\n{KEY_ID} {SECRET} {ACCOUNT}\nbroken-line-with-{SECRET[:8]}\n")
    sessions = tmp_path / "sessions"
    sessions.write_text(f"{SESSION} {SESSION_ACCOUNT}\n")
    return Authenticator(SessionsFile(str(sessions)), AccessKeysFile(str(keys)),
                         clock=lambda: WALL_CLOCK.astimezone())


def signed(method="GET", path="/zstack/v1/images", date=DATE, key_id=KEY_ID, secret=SECRET):
    signature = reference_signature(secret, method, date, signed_path(path))
    return {"Authorization": f"ZStack {key_id}:{signature}", "Date": date}


def refusal(call) -> tuple[int, str]:
    with pytest.raises(RestRefusal) as info:
        call()
    return info.value.status, info.value.text


def test_signature_is_zstack_hmac_sha1_over_method_date_and_path():
    assert signed_path("/zstack/v1/images/abc") == "/v1/images/abc"
    expected = reference_signature(SECRET, "GET", DATE, "/v1/images")
    assert sign(SECRET, "GET", DATE, "/v1/images") == expected
    assert sign(SECRET, "POST", DATE, "/v1/images") != expected
    assert sign(SECRET + "x", "GET", DATE, "/v1/images") != expected


def test_a_correctly_signed_request_is_the_keys_account(auth):
    assert auth.authenticate("GET", "/zstack/v1/images", signed()) == ACCOUNT
    path = f"/zstack/v1/images/data-volume-templates/from/volumes/{uuid.uuid4().hex}"
    headers = {k.lower(): v for k, v in signed("POST", path).items()}  # header names in any case
    assert auth.authenticate("POST", path, headers) == ACCOUNT


def test_wrong_signature_unknown_key_and_bad_format_are_refused_at_once(auth):
    wrong = signed(secret="not-the-secret")
    assert refusal(lambda: auth.credentials("GET", "/zstack/v1/images", wrong)) == (
        403, "wrong accessKey signature")
    other_path = signed(path="/zstack/v1/images/x")
    assert refusal(lambda: auth.credentials("GET", "/zstack/v1/images", other_path))[0] == 403
    other_method = signed(method="DELETE")
    assert refusal(lambda: auth.credentials("GET", "/zstack/v1/images", other_method))[0] == 403
    unknown = signed(key_id="NoSuchKey")
    assert refusal(lambda: auth.credentials("GET", "/zstack/v1/images", unknown)) == (
        403, "access key id: NoSuchKey does not existed or disabled")
    for header in (f"ZStack {KEY_ID}", f"ZStack {KEY_ID}:", "ZStack a:b:c", "ZStack"):
        assert refusal(lambda h=header: auth.credentials("GET", "/zstack/v1/images",
                                                         {"Authorization": h, "Date": DATE})) == (
            400, "accessKey format is 'ZStack AccessKeyId:Signature'")


def test_the_date_must_be_there_well_formed_and_within_15_minutes(auth):
    no_date = {"Authorization": signed()["Authorization"]}
    assert refusal(lambda: auth.credentials("GET", "/zstack/v1/images", no_date)) == (
        400, "'Date' must be incuded in request header")
    for bad in ("2018-09-06T13:54:10Z", "Fri, 06 Sep 2018 13:54:10 GMT", "Thu, 6 Sep 2018 13:54:10 GMT",
                "Thu, 06 Sep 2018 13:54:10 Nowhere/Zone"):
        status, text = refusal(lambda d=bad: auth.credentials("GET", "/zstack/v1/images", signed(date=d)))
        assert status == 400 and text.startswith("'Date' format error"), bad
    for minutes, accepted in ((15, True), (-15, True), (16, False), (-16, False)):
        when = WALL_CLOCK + timedelta(minutes=minutes)
        date = when.strftime("%a, %d %b %Y %H:%M:%S") + " CST"
        def call(d=date):
            return auth.authenticate("GET", "/zstack/v1/images", signed(date=d))
        if accepted:
            assert call() == ACCOUNT
        else:
            assert refusal(call) == (403, "requestTimeTooSkewed")


def test_the_zone_counts_only_when_asked():
    now = datetime(2018, 9, 6, 13, 54, 10, tzinfo=UTC)
    # ZStack's default: the wall clock of the header against the agent's, whatever the zone says
    check_date("Thu, 06 Sep 2018 13:54:10 Asia/Shanghai", now, check_time_zone=False)
    with pytest.raises(RestRefusal):
        check_date("Thu, 06 Sep 2018 13:54:10 Asia/Shanghai", now, check_time_zone=True)
    check_date("Thu, 06 Sep 2018 21:54:10 Asia/Shanghai", now, check_time_zone=True)
    check_date("Thu, 06 Sep 2018 21:54:10 +08:00", now, check_time_zone=True)
    check_date("Thu, 06 Sep 2018 13:54:10 GMT", now, check_time_zone=True)


def test_sessions_still_work_and_are_checked_when_the_request_runs(auth):
    credentials = auth.credentials("POST", "/zstack/v1/x", {"Authorization": f"OAuth {SESSION}"})
    assert auth.account_of(credentials) == SESSION_ACCOUNT
    later = auth.credentials("POST", "/zstack/v1/x", {"Authorization": "OAuth not-a-session"})  # no error yet
    with pytest.raises(ZsError) as info:
        auth.account_of(later)
    assert info.value.error.code == "ID.1001"
    assert refusal(lambda: auth.credentials("GET", "/zstack/v1/images", {})) == (
        400, "missing header 'Authorization'")
    assert refusal(lambda: auth.credentials("GET", "/zstack/v1/images", {"Authorization": "Bearer x"})) == (
        400, "Authorization type must be 'OAuth'")


def test_the_keys_file_is_reread_and_its_secrets_never_logged(auth, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    assert auth.authenticate("GET", "/zstack/v1/images", signed()) == ACCOUNT
    for headers in (signed(secret="wrong"), signed(key_id="Unknown")):
        with pytest.raises(RestRefusal):
            auth.credentials("GET", "/zstack/v1/images", headers)
    new_secret, new_account = "Another-Secret-0123456789", uuid.uuid4().hex
    keys = tmp_path / "access-keys"
    replacement = tmp_path / "access-keys.new"
    replacement.write_text(f"{KEY_ID} {new_secret} {new_account}\n")
    os.replace(replacement, keys)
    with pytest.raises(RestRefusal):
        auth.credentials("GET", "/zstack/v1/images", signed())  # the old secret no longer works
    assert auth.authenticate("GET", "/zstack/v1/images", signed(secret=new_secret)) == new_account
    assert "access-keys:3: expected" in caplog.text  # the broken line is named by number only
    for secret in (SECRET, SECRET[:8], new_secret):
        assert secret not in caplog.text
    assert SECRET not in repr(AccessKeysFile(str(keys)).find(KEY_ID))


def test_no_keys_file_means_every_access_key_is_unknown(tmp_path):
    auth = Authenticator(SessionsFile(str(tmp_path / "none")), None, clock=lambda: WALL_CLOCK.astimezone())
    assert refusal(lambda: auth.credentials("GET", "/zstack/v1/images", signed()))[0] == 403
