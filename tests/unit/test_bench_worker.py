"""bench/worker.py: the CPU of a copy's window, per thread, and the stalls of concurrent jobs."""

from __future__ import annotations

import hashlib
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import worker  # noqa: E402


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        hashlib.md5(bytes(65536)).digest()


def test_the_copy_window_counts_the_cpu_of_every_thread_and_names_them():
    timed = worker.Timed().__enter__()
    helper = threading.Thread(target=_burn, args=(0.3,), name="busy-helper")
    helper.start()
    _burn(0.2)
    alive = threading.Event()
    lingering = threading.Thread(target=lambda: (_burn(0.2), alive.wait()), name="lingering")
    lingering.start()
    helper.join()
    time.sleep(0.3)  # the lingering thread has burnt its CPU and waits
    timing = timed.stop()
    threads = timed.threads()
    alive.set()
    lingering.join()
    assert timing["copy_cpu_s"] == pytest.approx(0.7, abs=0.15)
    # Python 3.11 does not name OS threads: the main and the lingering thread are both "python" (librados'
    # own threads carry their names); the helper has ended and is counted apart.
    assert threads["python"] == pytest.approx(0.4, abs=0.08)
    assert threads["ended threads"] == pytest.approx(0.3, abs=0.08)
    assert sum(threads.values()) == pytest.approx(timing["copy_cpu_s"], abs=0.03)


def test_concurrent_jobs_report_their_longest_stall(monkeypatch):
    def job(spec: dict) -> dict:
        for pause_s in spec["pauses_s"]:
            time.sleep(pause_s)
            spec["progress"](1, 1)
        return {"seconds": sum(spec["pauses_s"])}

    monkeypatch.setitem(worker.RUNNERS, "pausing", job)
    out = worker.run_many({"jobs": [{"kind": "pausing", "pauses_s": [0.05] * 6},
                                    {"kind": "pausing", "pauses_s": [0.05, 0.4, 0.05]}]})
    steady, starved = (j["stalls_s"] for j in out["jobs"])
    assert steady == pytest.approx(0.05, abs=0.04)
    assert starved == pytest.approx(0.4, abs=0.1)
    assert out["seconds"] >= 0.5
