"""The reliability set uses the integration suite's Ceph fixtures (``rbd_env`` and its fake and real
halves), loaded from tests/integration/conftest.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_spec = importlib.util.spec_from_file_location("integration_conftest",
                                               Path(__file__).parent.parent / "integration" / "conftest.py")
_integration = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _integration  # dataclasses look their module up there
_spec.loader.exec_module(_integration)

fake_rbd_env = _integration.fake_rbd_env
real_rbd_env = _integration.real_rbd_env
rbd_env = _integration.rbd_env
