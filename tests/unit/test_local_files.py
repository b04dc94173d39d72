"""The local publisher every file sink shares: no-clobber publish, and a commit that fails after the
file got its final name takes it back (nothing is left that nobody was told about)."""

from __future__ import annotations

import pytest
from support import MemorySource, RecordingJournal

from zsagent.copy.errors import AllSinksFailed
from zsagent.copy.pipeline import PipelineConfig, run_copy
from zsagent.sinks import local_files
from zsagent.sinks.file_stream import FileStreamTarget
from zsagent.sinks.qcow2_stream import Qcow2StreamSink
from zsagent.sinks.raw_file import RawFileSink

CONFIG = PipelineConfig(chunk_bytes=16384, depth=2)


def sinks(path, journal):
    return {"raw": RawFileSink(path, journal, root=path.parent.parent),
            "qcow2": Qcow2StreamSink(FileStreamTarget(path, journal, root=path.parent.parent))}


@pytest.mark.parametrize("kind", ["raw", "qcow2"])
def test_a_commit_failing_after_publish_leaves_nothing(tmp_path, monkeypatch, kind):
    def broken_fsync(directory):
        raise OSError(5, "injected: directory fsync failed")

    monkeypatch.setattr(local_files, "fsync_dir", broken_fsync)
    path, journal = tmp_path / "bs" / "img" / "t.img", RecordingJournal()
    with pytest.raises(AllSinksFailed, match="directory fsync failed"):
        run_copy(MemorySource(b"\x05" * 65536), [sinks(path, journal)[kind]], CONFIG)
    assert list(tmp_path.rglob("*")) == [] and journal.live == {}
    assert [s["path"] for _, s in journal.recorded] == [str(path) + ".part", str(path)]


@pytest.mark.parametrize("kind", ["raw", "stream"])
def test_a_published_template_is_never_replaced(tmp_path, kind):
    path = tmp_path / "bs" / "img" / "t.img"
    path.parent.mkdir(parents=True)
    journal = RecordingJournal()
    if kind == "raw":
        target = RawFileSink(path, journal)
        target.open(65536, [])
    else:
        target = FileStreamTarget(path, journal)
        target.open()
        target.write(b"\x01" * 4096)
    path.write_bytes(b"someone else's")  # appears between open and commit
    with pytest.raises(FileExistsError):
        target.commit(None)
    target.abort()
    assert path.read_bytes() == b"someone else's" and journal.live == {}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["bs", "img", "t.img"]
