"""The door's checks on their own: JSON bodies, Java's string rules, the job headers, the body limit and
the OpenAPI document's coverage of the routes."""

from __future__ import annotations

import asyncio

import pytest
from fastapi import FastAPI

from zsagent.api import openapi
from zsagent.api.body_limit import BodyLimit
from zsagent.api.job_headers import MAX_API_TIMEOUT_S, api_timeout_s, check_job_uuid, check_web_hook
from zsagent.errors import RestRefusal, ZsError
from zsagent.json_input import MAX_DEPTH, load_json
from zsagent.request import java_length, java_trim, parse_body


def refused(call) -> str:
    with pytest.raises(ZsError) as info:
        call()
    assert info.value.error.code == "SYS.1007"
    return info.value.error.details


def test_deep_json_is_refused_at_any_depth():
    assert "nested too deeply" in refused(lambda: load_json("[" * 100_000))
    assert "nested too deeply" in refused(lambda: load_json("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)))
    assert load_json("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None


@pytest.mark.parametrize("raw, where", [
    ('{"params": {"name": "\\ud800"}}', "params.name"),
    ('{"params": {"userTags": ["ok", "\\udc00"]}}', "params.userTags[1]"),
    ('{"params": {"\\ud800": 1}}', "params.\\ud800 (the key)"),
    (b'{"a": "\xed\xa0\x80"}', "a"),
])
def test_lone_surrogates_are_refused_naming_the_field(raw, where):
    details = refused(lambda: load_json(raw))
    assert f"field '{where}'" in details and "surrogate" in details
    details.encode("utf-8")  # the error itself can be sent


def test_valid_unicode_and_pairs_pass():
    assert load_json('{"n": "\\ud83c\\udf89 \\u0000 名前"}') == {"n": "🎉 \x00 名前"}


def test_java_trim_and_length():
    assert java_trim("\x00\x1f \tname\r\n\x01") == "name"
    assert java_trim("\u3000name\xa0") == "\u3000name\xa0"  # Java's trim keeps what is above U+0020
    assert java_length("🎉a") == 3 and java_length("名前") == 2


def test_unknown_keys_and_conflicting_tags():
    assert "'nmae'" in refused(lambda: parse_body({"params": {"nmae": "x", "name": "y"}}, "0" * 32))
    assert "'extra'" in refused(lambda: parse_body({"params": {"name": "y"}, "extra": 1}, "0" * 32))
    assert parse_body({"params": {"name": "y", "requestIp": "10.0.0.1"}}, "0" * 32).name == "y"
    assert "conflict" in refused(lambda: parse_body(
        {"params": {"name": "y"}, "systemTags": ["ceph::copyMode::copy", "ceph::copyMode::clone"]}, "0" * 32))


class _Jobs:
    def exists(self, job_uuid: str) -> bool:
        return job_uuid == "a" * 32


def test_job_headers():
    assert check_job_uuid(None, _Jobs()) is None and check_job_uuid("AbC" + "0" * 29, _Jobs()) == "AbC" + "0" * 29
    for bad in ("a" * 31, "g" * 32, "../" * 10 + "ab", "0" * 32 + "\n"):
        with pytest.raises(RestRefusal, match="Invalid header"):
            check_job_uuid(bad, _Jobs())
    with pytest.raises(RestRefusal, match="Duplicate job uuid"):
        check_job_uuid("a" * 32, _Jobs())
    assert api_timeout_s(None, 300) == 300 and api_timeout_s(" 60 ", 300) == 60
    for bad in ("0", "-1", "1.5", "soon", str(MAX_API_TIMEOUT_S + 1), "9" * 30):
        with pytest.raises(RestRefusal) as info:
            api_timeout_s(bad, 300)
        assert info.value.status == 400
    for good in ("http://127.0.0.1:8080/hook?x=1", "https://mn.example.com/cb", "http://[::1]:1/x"):
        assert check_web_hook(good) == good
    for bad in ("file:///etc/passwd", "http://", "http://h:65536/", "http://a b/", "gopher://h/", "http://é/"):
        with pytest.raises(RestRefusal, match="X-Web-Hook"):
            check_web_hook(bad)


def _send(app, body_parts: list[bytes], content_length: int | None = None) -> list[dict]:
    headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]
    scope = {"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}
    parts = [{"type": "http.request", "body": p, "more_body": i < len(body_parts) - 1}
             for i, p in enumerate(body_parts)]
    sent: list[dict] = []

    async def receive():
        return parts.pop(0) if parts else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_the_body_limit_counts_declared_and_streamed_bytes():
    seen: list[bytes] = []

    async def echo(scope, receive, send):
        seen.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    limited = BodyLimit(echo, max_bytes=10)
    assert _send(limited, [b"12345", b"67890"])[0]["status"] == 200 and seen == [b"1234567890"]
    assert _send(limited, [b"123456", b"78901"])[0]["status"] == 413
    assert _send(limited, [b"1"], content_length=11)[0]["status"] == 413
    assert len(seen) == 1  # the app never saw the refused ones


def test_a_route_without_an_entry_is_marked_undocumented():
    app = FastAPI()

    @app.get("/undocumented")
    async def undocumented() -> dict:
        return {}

    @app.get("/health")
    async def health() -> dict:
        return {}

    paths = openapi.document(app, app.openapi())["paths"]
    assert "GET /undocumented" in paths["/undocumented"]["get"][openapi.UNDOCUMENTED]
    assert openapi.UNDOCUMENTED not in paths["/health"]["get"] and "422" not in paths["/health"]["get"]["responses"]
