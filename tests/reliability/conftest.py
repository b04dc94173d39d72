"""The reliability suite: crashes at every step, faults in Ceph, SSH and the disk, bad input, load.

Tests marked ``reliability`` are the long or heavy ones (large volumes, private clusters): `make test`
leaves them out, `make reliability` runs everything here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from crash_site import FIGURES, CrashSite


def pytest_terminal_summary(terminalreporter):
    """The figures the tests measured (kill points survived, seconds to the first answer, ...)."""
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for name, values in sorted(FIGURES.items()):
        numbers = [v for v in values if isinstance(v, (int, float))]
        if numbers and len(numbers) == len(values):
            terminalreporter.write_line(f"{name}: n={len(numbers)} min={min(numbers):.2f} "
                                        f"max={max(numbers):.2f} mean={sum(numbers) / len(numbers):.2f}")
        else:
            terminalreporter.write_line(f"{name}: {len(values)}: {', '.join(map(str, values))}")


@pytest.fixture(scope="session")
def crash_pools(make_pool) -> tuple[str, str]:
    """(source pool, backup pool) on the session's test cluster for the crash tests."""
    return make_pool("zsc-src"), make_pool("zsc-dst")


@pytest.fixture
def crash_site(ceph_cluster, crash_pools, sshd_server, tmp_path):
    site = CrashSite(tmp_path, ceph_cluster, crash_pools, sshd_server)
    try:
        yield site
    finally:
        site.close()


# the integration suite's Ceph fixtures (``rbd_env`` and its fake and real halves), for the load tests
_spec = importlib.util.spec_from_file_location("integration_conftest",
                                               Path(__file__).parent.parent / "integration" / "conftest.py")
_integration = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _integration  # dataclasses look their module up there
_spec.loader.exec_module(_integration)
fake_rbd_env = _integration.fake_rbd_env
real_rbd_env = _integration.real_rbd_env
rbd_env = _integration.rbd_env
