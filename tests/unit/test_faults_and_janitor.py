"""The fault hook's syntax and the janitor's rules: what it may touch, backoff, settling a retry."""

from __future__ import annotations

import time

import pytest

from zsagent import cleanup, faults
from zsagent.errors import ZsError
from zsagent.janitor import Janitor
from zsagent.store import SqliteStore


def test_fault_specs_parse_and_bad_ones_are_refused():
    armed = faults.parse("copy-mid@0.25:sleep=1.5, cleanup:error*2,record-before")
    assert (armed["copy-mid"].action, armed["copy-mid"].fraction, armed["copy-mid"].seconds) == ("sleep", 0.25, 1.5)
    assert (armed["cleanup"].action, armed["cleanup"].times) == ("error", 2)
    assert armed["record-before"].action == "kill"
    assert faults.parse(None) == {} and faults.parse("") == {}
    with pytest.raises(ValueError, match="unknown point"):
        faults.parse("nowhere:kill")
    with pytest.raises(ValueError, match="unknown action"):
        faults.parse("cleanup:explode")


def test_an_armed_point_fires_its_number_of_times_and_progress_waits_for_its_fraction():
    try:
        faults.arm("cleanup:error*2,copy-mid@0.5:error")
        for _ in range(2):
            with pytest.raises(faults.FaultInjected):
                faults.hit("cleanup")
        faults.hit("cleanup")  # spent
        faults.progressed("copy-mid", 49, 100)
        with pytest.raises(faults.FaultInjected):
            faults.progressed("copy-mid", 50, 100)
    finally:
        faults.arm(None)
    faults.hit("cleanup")  # disarmed: nothing happens


class Removals:
    """cleanup.remove stand-in: fails ``failures`` times per artifact path, records what it removed."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.tries: dict[str, int] = {}
        self.removed: list[str] = []

    def __call__(self, kind, spec, runtime):
        self.tries[spec["path"]] = self.tries.get(spec["path"], 0) + 1
        if self.tries[spec["path"]] <= self.failures:
            raise OSError(16, "busy")
        self.removed.append(spec["path"])


@pytest.fixture
def store(tmp_path):
    s = SqliteStore(tmp_path / "db")
    yield s
    s.close()


def test_the_janitor_leaves_running_jobs_alone_and_retries_with_backoff(store, monkeypatch):
    removals = Removals(failures=2)
    monkeypatch.setattr(cleanup, "remove", removals)
    store.add_job("a" * 32, "v1")
    store.finish_job("a" * 32, "failed", 503, {})
    store.journal("a" * 32, "spool", {"path": "/old"}, "v1", "i1")
    store.add_job("b" * 32, "v2")
    store.set_job_state("b" * 32, "running")  # another process' job: not ours to clean
    store.journal("b" * 32, "spool", {"path": "/running"}, "v2", "i2")
    store.journal("c" * 32, "spool", {"path": "/active"}, "v3", "i3")
    janitor = Janitor(store, None, active=lambda: {"c" * 32}, first_backoff_s=0.05, max_backoff_s=0.2)
    assert [a.spec["path"] for a in janitor.cleanable()] == ["/old"]
    assert janitor.sweep(lambda a: True) != []  # failed once: due again later
    assert janitor.sweep(lambda a: True) != []  # not yet due: not tried
    assert removals.tries == {"/old": 1}
    left = store.artifacts("a" * 32)[0]
    assert (left.attempts, left.last_error) == (1, "OSError: [Errno 16] busy")
    deadline = time.monotonic() + 5
    while janitor.sweep(lambda a: True) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert removals.removed == ["/old"] and removals.tries["/old"] == 3
    assert [a.spec["path"] for a in store.artifacts()] == ["/running", "/active"]


def test_settle_removes_what_an_earlier_attempt_left_or_says_what_is_still_there(store, monkeypatch):
    removals = Removals(failures=1)
    monkeypatch.setattr(cleanup, "remove", removals)
    store.add_job("a" * 32, "v1")
    store.finish_job("a" * 32, "failed", 503, {})
    store.journal("a" * 32, "spool", {"path": "/same-volume"}, "v1", "i1")
    store.journal("a" * 32, "spool", {"path": "/other"}, "v9", "i9")
    janitor = Janitor(store, None, active=set, first_backoff_s=0.05)
    janitor.settle("v1", "i-new", timeout_s=5)
    assert removals.removed == ["/same-volume"]  # retried after its backoff; the other volume's stays
    removals.failures = 100
    store.journal("a" * 32, "spool", {"path": "/stuck"}, "v2", "i2")
    with pytest.raises(ZsError) as refused:
        janitor.settle("v-other", "i2", timeout_s=0.3)  # the same resourceUuid counts too
    assert refused.value.error.code == "SYS.1006" and "/stuck" in refused.value.error.cause.details
