"""The load target held strictly: during 32 concurrent creates on 8 volumes /health answers within
100 ms, every time, and the agent's memory stays bounded. On a shared 2-core machine a burst of other
work can break the 100 ms, which is why this runs in the reliability set (``make reliability``), not in
``make test`` (tests/integration/test_load.py checks the same load with a bound a user would notice)."""

from __future__ import annotations

import pytest
from figures import report
from load_support import MiB, run_32_creates_on_8_volumes

pytestmark = pytest.mark.reliability

HEALTH_TARGET_MS = 100


def test_health_answers_within_100_ms_throughout_32_concurrent_creates(rbd_env, tmp_path):
    run = run_32_creates_on_8_volumes(rbd_env, tmp_path)
    report(f"reliability load ({rbd_env.kind} Ceph): 32 creates on 8 volumes", run.summary())
    slow = [round(ms) for ms in run.watch.health_ms if ms > HEALTH_TARGET_MS]
    assert run.rss_peak < 400 * MiB
    assert not slow, (f"{len(slow)} of {len(run.watch.health_ms)} /health answers took over "
                      f"{HEALTH_TARGET_MS} ms: {slow}")
