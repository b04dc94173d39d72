"""Opening libvirt connections, with the process-wide event loop that block-job events need.

The ``libvirt`` binding (Debian's python3-libvirt) is imported here only, and only when first needed, so
the rest of the agent runs on hosts without it.
"""

from __future__ import annotations

import logging
import threading
from types import ModuleType

log = logging.getLogger(__name__)

DEFAULT_URI = "qemu:///system"

_lock = threading.Lock()
_loop_started = False
_handler_set = False


def libvirt_module() -> ModuleType:
    """The libvirt binding; ImportError when python3-libvirt is missing."""
    import libvirt

    return libvirt


def _quiet_handler(_ctx, _err) -> None:
    # libvirt's default handler prints every error to stderr; we get each one as an exception anyway.
    pass


def _run_event_loop(libvirt: ModuleType) -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except Exception:  # noqa: BLE001 - the loop must survive whatever a callback does
            log.exception("libvirt event loop iteration failed")


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation and run it in a daemon thread (once per process).

    Events (BLOCK_JOB_2 READY, ...) are delivered only on connections opened *after* this call, which is
    why every connection of this package is opened through ``open_connection``.
    """
    global _loop_started, _handler_set
    libvirt = libvirt_module()
    with _lock:
        if not _handler_set:
            libvirt.registerErrorHandler(_quiet_handler, None)
            _handler_set = True
        if _loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_event_loop, args=(libvirt,), name="zsagent-libvirt-events",
                         daemon=True).start()
        _loop_started = True


def open_connection(uri: str = DEFAULT_URI):
    """A read-write ``virConnect`` to ``uri`` that receives events. Raises libvirt.libvirtError."""
    ensure_event_loop()
    return libvirt_module().open(uri)


def error_code(error: BaseException) -> int | None:
    """The VIR_ERR_* code of a libvirtError (None for anything else)."""
    get = getattr(error, "get_error_code", None)
    return get() if get else None


def lookup_domain(conn, uuid: str):
    """The domain with ``uuid``, or None when it no longer exists."""
    libvirt = libvirt_module()
    try:
        return conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError as e:
        if error_code(e) == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise
