"""The [front] section, `zsagent check` in front mode, and createtemplate intents that expire."""

from __future__ import annotations

import time

import pytest
from upstream_agent import UpstreamAgent

from zsagent.checks import front_upstream
from zsagent.config import ConfigError, parse_config
from zsagent.store import FrontRecords, SqliteStore


def test_front_section_is_checked():
    config = parse_config({"front": {"fronts": "kvm", "upstream_url": "http://127.0.0.1:7070"}})
    assert config.front.configured and config.front.listen == "0.0.0.0:7764"
    with pytest.raises(ConfigError, match="front.fronts"):
        parse_config({"front": {"fronts": "nfs"}})
    with pytest.raises(ConfigError, match="front.upstream_url"):
        parse_config({"front": {"fronts": "ceph", "upstream_url": "http://h:1/path"}})
    assert not parse_config({}).front.configured


@pytest.mark.parametrize("fronts, path", [("ceph", "/ceph/primarystorage/echo"), ("kvm", "/host/echo")])
def test_check_says_whether_zstacks_agent_answers_its_echo(fronts, path):
    with UpstreamAgent() as upstream:
        config = parse_config({"front": {"fronts": fronts, "upstream_url": upstream.url}})
        [(ok, what, _)] = front_upstream(config)
        assert ok and path in what
        assert [r.path for r in upstream.received] == [path]
    [(ok, what, fix)] = front_upstream(config)  # now it is gone
    assert not ok and "does not answer" in what and "upstream_url" in fix


def test_intents_expire_and_are_forgotten(tmp_path):
    records = FrontRecords(SqliteStore(tmp_path / "db"))
    records.put_intent("/ps/templateWorkspace/a", "api", {"x": 1}, time.time() + 60)
    records.put_intent("/ps/templateWorkspace/b", "api", {"x": 2}, time.time() - 1)
    assert records.intent("/ps/templateWorkspace/a") == {"x": 1}
    assert records.intent("/ps/templateWorkspace/b") is None  # expired: as if never answered
    assert records.expire_intents() == ["/ps/templateWorkspace/b"]
    assert records.intents_of_api("api") == ["/ps/templateWorkspace/a"]
