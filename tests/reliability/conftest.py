"""The reliability suite: crashes at every step, faults in Ceph, SSH and the disk, bad input, load.

Tests marked ``reliability`` are the long or heavy ones (large volumes, private clusters): `make test`
leaves them out, `make reliability` runs everything here.
"""

from __future__ import annotations

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
