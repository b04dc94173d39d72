"""The classic /zstack/api endpoint fuzzed with generated JSON: wrong types, missing fields, huge values,
unknown messages and shapes that are not a message at all.

Whatever arrives, the answer is ZStack's envelope with status 200 (RESTApiController), its ``result`` is the
JSON text of one event or reply, and a failure in it is an ErrorCode that is never an internal error
(SYS.1000). A message that runs as a job is polled to its end. Drawn volume uuids are sometimes the real
volume, so drawn names, descriptions and tags also reach a real copy. Deterministic (derandomized).
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from agent_harness import SESSION, file_volume, running_agent, write_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zsagent.api.classic import CREATE, DELETE_IMAGE, QUERY_IMAGE, TASK_PROGRESS

POLL_LIMIT_S = 60
FIELDS = {
    CREATE: ("name", "description", "volumeUuid", "backupStorageUuids", "resourceUuid", "tagUuids", "systemTags",
             "userTags"),
    DELETE_IMAGE: ("uuid", "backupStorageUuids", "deleteMode"),
    QUERY_IMAGE: ("conditions", "limit", "start", "count", "replyWithCount", "sortBy", "sortDirection", "fields",
                  "groupBy", "filterName"),
    TASK_PROGRESS: ("apiId",),
}


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("classic-fuzz")
    ps, bs, fake = tmp / "ps", tmp / "bs", tmp / "fake-ceph"
    for directory in (ps, bs, fake):
        directory.mkdir()
    volume, _ = file_volume(ps, size=1 << 20)
    raw = write_config(tmp, {"backend": "fake", "fake_root": str(fake)},
                       [{"uuid": uuid.uuid4().hex, "type": "filesystem", "path": str(ps)}],
                       [{"uuid": uuid.uuid4().hex, "type": "filesystem", "path": str(bs), "format": "raw",
                         "default": True}])
    with running_agent(raw) as running:
        running.volume, running.bs_root = volume, bs
        yield running


def values(volume: str) -> st.SearchStrategy:
    """Any JSON value, leaning on what breaks servers: huge numbers and strings, control characters, lone
    surrogates, deep lists; and the strings this API takes (uuids, operators, tags)."""
    text = st.one_of(
        st.text(max_size=40),
        st.text(st.characters(max_codepoint=0x1F), max_size=10),
        st.sampled_from(["", " ", "\ud800", "../../etc/passwd", "%s%n", "a" * 70_000, volume, SESSION,
                         uuid.uuid4().hex, "=", "in", "is null", "like", "ceph::copyMode::clone",
                         "template::format::raw", "name", "uuid", "asc", "desc", "Enforcing", "true"]))
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63, max_value=2**200),
                        st.floats(allow_nan=False), text)
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.one_of(text, st.sampled_from(["name", "op", "value"])), inner,
                                          max_size=4), max_leaves=12)


@st.composite
def bodies(draw, volume: str):
    """A request body: mostly one message of a known class with drawn fields, sometimes anything else."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(values(volume))  # not a message at all
    name = draw(st.sampled_from([*FIELDS, "org.zstack.header.vm.APIStartVmInstanceMsg", ""]))
    known = FIELDS.get(name, ())
    fields = draw(st.dictionaries(st.sampled_from(known) if known else st.text(max_size=8), values(volume),
                                  max_size=6))
    session = draw(st.one_of(st.just({"uuid": SESSION}), st.just({"uuid": SESSION}), values(volume)))
    if draw(st.booleans()) or kind > 1:
        fields["session"] = session
    if kind == 1:
        return {name: fields, "another": {}}
    return {name: fields}


def post(agent, body) -> dict:
    answer = agent.client.post("/zstack/api", content=json.dumps(body))  # ASCII: surrogates escaped
    assert answer.status_code == 200, answer.text[:500]
    return answer.json()


def check_envelope(agent, envelope: dict) -> None:
    assert envelope.get("state") in ("Processing", "Done"), envelope
    deadline = time.monotonic() + POLL_LIMIT_S
    while envelope["state"] == "Processing":
        assert time.monotonic() < deadline, f"job {envelope['uuid']} still running after {POLL_LIMIT_S} s"
        time.sleep(0.02)
        polled = agent.client.get(f"/zstack/api/result/{envelope['uuid']}")
        assert polled.status_code == 200, polled.text[:500]
        envelope = polled.json()
        assert envelope.get("state") in ("Processing", "Done"), envelope
    assert "Traceback" not in envelope["result"]
    result = json.loads(envelope["result"])
    assert isinstance(result, dict) and len(result) == 1, envelope["result"][:500]
    [(answer_class, answer)] = result.items()
    assert answer_class.startswith("org.zstack.header.") and isinstance(answer, dict), result
    if answer.get("success") is False:
        error = answer.get("error")
        assert isinstance(error, dict) and all(isinstance(error.get(k), str) for k in ("code", "description",
                                                                                      "details")), answer
        assert error["code"] != "SYS.1000", f"internal error: {error}"
    else:
        assert answer.get("success") is True, answer


def fuzz(agent, examples: int) -> None:
    @settings(max_examples=examples, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(bodies(agent.volume))
    def one(body):
        check_envelope(agent, post(agent, body))

    one()
    assert agent.client.get("/zstack/v1/images", headers={"Authorization": f"OAuth {SESSION}"}).status_code == 200
    assert agent.agent.jobs.wait_all(60) and agent.agent.store.artifacts() == []
    assert not [p for p in agent.bs_root.rglob("*") if p.name.endswith(".part")]


def test_generated_messages_get_zstacks_envelope(agent):
    fuzz(agent, 150)


@pytest.mark.reliability
def test_many_generated_messages_get_zstacks_envelope(agent):
    fuzz(agent, 3000)
