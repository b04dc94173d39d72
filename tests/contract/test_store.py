"""The store protocol (zsagent.store.protocol.Store), one suite for every backend: SQLite, RADOS on the
session's real cluster (a namespace of its own per test in one pool), and RADOS on the fake backend once
it has the omap and write-op calls (zsagent.ceph.fake.rados).

Each test opens stores through ``open_store`` as the agent does; two stores of different owners on the
same records stand for two agents.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from pathlib import Path

import pytest

from zsagent import errors
from zsagent.ceph.fake import rados as fake_rados
from zsagent.config import parse_config
from zsagent.errors import ZsError
from zsagent.store import FrontCall, FrontRecords, ImageRecord, JobJournal, Store, open_store

FAKE_HAS_OMAP = hasattr(fake_rados.Ioctx, "set_omap")
"""The fake backend joins the suite once it has the RADOS calls the RADOS store needs."""

BACKENDS = ["sqlite", pytest.param("rados-real", marks=pytest.mark.ceph)] + (["rados-fake"] if FAKE_HAS_OMAP else [])


class Stores:
    """Opens stores on one set of records: ``open(owner)`` (each with a data dir of its own, as agents on
    different hosts have); ``config(...)`` the configuration they are opened with."""

    def __init__(self, tmp: Path, ceph: dict, store: dict) -> None:
        self.tmp = tmp
        self.ceph = ceph
        self.store = store
        self.opened: list[Store] = []

    def config(self, data_dir: Path, **store):
        return parse_config({"agent": {"data_dir": str(data_dir)}, "ceph": self.ceph,
                             "store": {**self.store, **store}})

    def open(self, owner: str = "host-a:7762", data_dir: Path | None = None) -> Store:
        if data_dir is None:  # SQLite: one file is the records, every owner shares it
            data_dir = self.tmp / ("data" if self.store["backend"] == "sqlite" else owner.replace(":", "-"))
        store = open_store(self.config(data_dir), owner)
        self.opened.append(store)
        return store

    def close(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(scope="module")
def store_pool(request):
    """(ceph settings, pool) of the real cluster, for RADOS stores."""
    cluster = request.getfixturevalue("ceph_cluster")
    pool = request.getfixturevalue("make_pool")("zss")
    return {"backend": "rados", "conf": cluster.conf, "keyring": cluster.keyring, "client": cluster.client}, pool


@pytest.fixture(params=BACKENDS)
def stores(request, tmp_path):
    namespace = f"t-{secrets.token_hex(4)}"
    if request.param == "sqlite":
        made = Stores(tmp_path, {}, {"backend": "sqlite"})
    elif request.param == "rados-real":
        ceph, pool = request.getfixturevalue("store_pool")
        made = Stores(tmp_path, ceph, {"backend": "rados", "pool": pool, "namespace": namespace})
    else:
        root = tmp_path / "fake-ceph"
        ceph = {"backend": "fake", "fake_root": str(root)}
        cluster = fake_rados.Rados(conf={"fake_root": str(root)})
        cluster.connect()
        cluster.create_pool("records")
        cluster.shutdown()
        made = Stores(tmp_path, ceph, {"backend": "rados", "pool": "records", "namespace": namespace})
    made.kind = request.param
    yield made
    made.close()


def image(uuid_: str | None = None, account: str = "acct-1") -> ImageRecord:
    uuid_ = uuid_ or uuid.uuid4().hex
    return ImageRecord(uuid_, account, "vol-1", "fp-1", {"uuid": uuid_, "md5Sum": "ab" * 16}, [{"kind": "rbd"}],
                       {"systemTags": [], "userTags": ["u"], "tagUuids": []})


# ---------------------------------------------------------------- images


def test_images_put_get_list_delete_and_a_second_put_of_the_same_uuid_is_refused(stores):
    a, b = stores.open("host-a:7762"), stores.open("host-b:7762")
    first, second = image(), image()
    a.put_image(first)
    time.sleep(0.01)
    b.put_image(second)
    assert b.get_image(first.uuid) == first  # made through A, seen through B
    assert [r.uuid for r in a.list_images()] == [first.uuid, second.uuid]  # oldest first
    with pytest.raises(ZsError) as refused:
        b.put_image(image(first.uuid, account="acct-2"))
    assert refused.value.error.code == errors.INVALID_ARGUMENT and first.uuid in refused.value.error.details
    assert a.get_image(first.uuid) == first  # the first record is untouched
    b.delete_image(first.uuid)
    assert a.get_image(first.uuid) is None and [r.uuid for r in a.list_images()] == [second.uuid]
    assert a.get_image("0" * 32) is None


def test_put_image_forgets_the_journal_entries_it_owns_in_the_same_change(stores):
    a = stores.open()
    a.add_job("job-1", "vol-1")
    kept = a.journal("job-1", "spool", {"path": "/tmp/x"})
    owned = [a.journal("job-1", "rbd", {"pool": "p", "image": f"i{n}"}) for n in range(2)]
    a.put_image(image(), owned)
    assert [x.id for x in a.artifacts()] == [kept]


# ---------------------------------------------------------------- jobs


def test_job_life_owner_progress_and_unfinished_per_owner(stores):
    a, b = stores.open("host-a:7762"), stores.open("host-b:7762")
    a.add_job("job-a", "vol-1", "acct-1", webhook="http://127.0.0.1:1/hook")
    b.add_job("job-b", "vol-2")
    a.set_job_state("job-a", "running")
    a.set_job_account("job-a", "acct-9", True)
    assert b.get_job("job-a").progress is None
    a.set_job_progress("job-a", {"phase": "copying", "percent": 40, "bytesDone": 4, "bytesTotal": 10})
    seen = b.get_job("job-a")
    assert (seen.state, seen.owner, seen.account_uuid, seen.readable_by_uuid, seen.webhook) == (
        "running", "host-a:7762", "acct-9", True, "http://127.0.0.1:1/hook")
    assert seen.progress == {"phase": "copying", "percent": 40, "bytesDone": 4, "bytesTotal": 10}
    assert {j.uuid for j in b.unfinished_jobs()} == {"job-a", "job-b"}
    assert [j.uuid for j in b.unfinished_jobs(owner="host-a:7762")] == ["job-a"]
    assert b.unfinished_jobs(owner="host-c:7762") == []

    a.finish_job("job-a", "done", 200, {"inventory": {"uuid": "x"}}, [{"bs": "e"}], {"consistency": "crash"})
    done = b.get_job("job-a")
    assert (done.state, done.http_status, done.result, done.errors, done.point_in_time) == (
        "done", 200, {"inventory": {"uuid": "x"}}, [{"bs": "e"}], {"consistency": "crash"})
    assert done.finished_epoch is not None and done.finished_epoch >= done.created_epoch
    assert [j.uuid for j in a.unfinished_jobs()] == ["job-b"]


def test_forget_jobs_before_removes_only_jobs_finished_before_the_cutoff(stores):
    a = stores.open()
    for uuid_ in ("old", "new", "running"):
        a.add_job(uuid_, None)
    a.finish_job("old", "failed", 503, {"error": {}})
    cutoff = time.time()
    time.sleep(0.01)
    a.finish_job("new", "done", 200, {})
    assert a.forget_jobs_before(cutoff) == 1
    assert a.get_job("old") is None and a.get_job("new") is not None and a.get_job("running") is not None
    assert a.forget_jobs_before(time.time() + 1) == 1
    assert [j.uuid for j in a.unfinished_jobs()] == ["running"]


def test_fail_job_if_unfinished_exactly_one_of_eight_racing_callers_on_two_agents_wins(stores):
    a, b = stores.open("host-a:7762"), stores.open("host-b:7762")
    a.add_job("job-1", "vol-1")
    a.set_job_state("job-1", "running")
    start = threading.Barrier(8)
    won: list[bool] = []

    def race(store: Store, n: int) -> None:
        start.wait()
        won.append(store.fail_job_if_unfinished("job-1", {"error": {"details": f"by {n}"}}, 503))

    threads = [threading.Thread(target=race, args=(a if n % 2 else b, n)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(won) == [False] * 7 + [True]
    failed = a.get_job("job-1")
    assert (failed.state, failed.http_status) == ("failed", 503)
    assert failed.result["error"]["details"].startswith("by ")
    assert a.unfinished_jobs() == []
    a.add_job("job-2", None)
    a.finish_job("job-2", "done", 200, {})
    assert not b.fail_job_if_unfinished("job-2", {"error": {}})  # finished: left as it is
    assert a.get_job("job-2").state == "done"
    assert not b.fail_job_if_unfinished("no-such-job", {"error": {}})


# ---------------------------------------------------------------- journal


def test_journal_entries_carry_their_owner_and_are_listed_oldest_first(stores):
    a, b = stores.open("host-a:7762"), stores.open("host-b:7762")
    journal = JobJournal(a, "job-a", "vol-1", "img-1")
    first = journal.record("ceph-snapshot", {"pool": "p", "image": "vol-1", "snapshot": "s"})
    second = journal.record("rbd", {"pool": "b", "image": "img-1.part"})
    other = b.journal("job-b", "spool", {"path": "/spool/x"})
    assert [x.id for x in b.artifacts()] == [first, second, other]
    assert [x.id for x in b.artifacts(owner="host-a:7762")] == [first, second]
    assert [x.id for x in a.artifacts(job_uuid="job-b")] == [other]
    entry = a.artifacts(job_uuid="job-a", owner="host-a:7762")[1]
    assert (entry.kind, entry.spec, entry.volume_uuid, entry.image_uuid, entry.owner, entry.attempts) == (
        "rbd", {"pool": "b", "image": "img-1.part"}, "vol-1", "img-1", "host-a:7762", 0)
    b.artifact_failed(second, "ImageBusy: watched")
    b.artifact_failed(second, "ImageBusy: still watched")
    failed = a.artifacts(job_uuid="job-a")[1]
    assert (failed.attempts, failed.last_error) == (2, "ImageBusy: still watched")
    b.clear_artifact(first)
    assert [x.id for x in a.artifacts("job-a")] == [second]
    a.clear_journal("job-a")
    assert [x.id for x in b.artifacts()] == [other]


def test_journal_ids_stay_unique_when_two_agents_record_at_once(stores):
    a, b = stores.open("host-a:7762"), stores.open("host-b:7762")
    ids: list[int] = []
    lock = threading.Lock()

    def record(store: Store, n: int) -> None:
        for i in range(10):
            artifact_id = store.journal(f"job-{n}", "spool", {"path": f"/s/{n}/{i}"})
            with lock:
                ids.append(artifact_id)

    threads = [threading.Thread(target=record, args=(a if n % 2 else b, n)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 40
    assert sorted(x.id for x in a.artifacts()) == sorted(ids)


# ---------------------------------------------------------------- the store itself


def test_records_outlive_a_restart_and_the_front_records_stay_local(stores, tmp_path):
    a = stores.open("host-a:7762", tmp_path / "a")
    a.put_image(made := image())
    a.add_job("job-1", "vol-1")
    artifact = a.journal("job-1", "spool", {"path": "/s"})
    FrontRecords(a).add_call(FrontCall("job-1", "task-1", "http://mn/callback", "/ceph/x", time.time() + 60))
    a.close()
    stores.opened.remove(a)
    again = stores.open("host-a:7762", tmp_path / "a")
    assert again.get_image(made.uuid) == made
    assert again.get_job("job-1").state == "queued" and [x.id for x in again.artifacts()] == [artifact]
    assert [c.task_uuid for c in FrontRecords(again).calls()] == ["task-1"]
    if stores.kind != "sqlite":  # another host's agent shares the records, not this host's front calls
        assert FrontRecords(stores.open("host-b:7762", tmp_path / "b")).calls() == []


def test_describe_says_where_the_records_are(stores):
    where = stores.open().describe()
    if stores.kind == "sqlite":
        assert where["backend"] == "sqlite" and where["path"].endswith("zsagent.db")
    else:
        assert (where["backend"], where["pool"], where["namespace"]) == (
            "rados", stores.store["pool"], stores.store["namespace"])


def test_a_missing_pool_is_a_clear_error_naming_the_pool_and_how_to_create_it(stores, tmp_path):
    if stores.kind == "sqlite":
        pytest.skip("RADOS only: a SQLite store has no pool")
    with pytest.raises(ZsError) as refused:
        open_store(stores.config(tmp_path / "x", pool="zsagent-no-such-pool"), "host-a:7762")
    assert refused.value.error.code == errors.OPERATION_FAILURE
    assert "zsagent-no-such-pool does not exist" in refused.value.error.details
    assert "ceph osd pool create zsagent-no-such-pool" in refused.value.error.details
