"""Whose volume is it? Decides whether a caller may make a template of a volume, from what the agent
can know, in this order:

1. the volume itself: a file volume's path in ZStack's layout (``.../acct-<accountUuid>/vol-<uuid>/``,
   zsagent.catalog), an RBD image's metadata ``zstack.accountUuid`` (ZStack does not write it; an
   operator or a provisioning tool may);
2. else, with ``[auth] zstack_url``, the management node, asked with the caller's own session whether it
   sees the volume (``GET /zstack/v1/volumes/{uuid}``: header/.../volume/APIQueryVolumeMsg.java l.15-20;
   its queries leave out other accounts' resources, identity/.../IdentityZQLExtension.java l.56-64);
3. else ``[auth] unknown_volume_owner``: "deny" (the default) lets only the admin use it, "allow" any
   account.

The admin may use every volume (AccountAPIRequestChecker.java l.71). A refusal is ID.1002.
"""

from __future__ import annotations

import logging

import httpx

from zsagent import errors
from zsagent.catalog import Volume
from zsagent.errors import ZsError
from zsagent.ownership import is_admin, operation_denied

log = logging.getLogger(__name__)

POLICIES = ("deny", "allow")
VOLUME_TYPE = "VolumeVO"  # the resource type ZStack names in its ID.1002


class ManagementNodeVolumes:
    """Asks a management node whether a session's account sees a volume."""

    def __init__(self, url: str, timeout_s: float = 10) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def sees(self, session_uuid: str, volume_uuid: str) -> bool:
        try:
            answer = httpx.get(f"{self.url}/zstack/v1/volumes/{volume_uuid}", timeout=self.timeout_s,
                               headers={"Authorization": f"OAuth {session_uuid}"})
            if answer.status_code != 200:
                raise ValueError(f"HTTP {answer.status_code}")
            return any(v.get("uuid") == volume_uuid for v in answer.json().get("inventories") or [])
        except (httpx.HTTPError, ValueError, AttributeError) as e:
            raise errors.operation_failed(f"cannot ask the management node who owns volume[uuid:{volume_uuid}]: "
                                          f"{type(e).__name__}: {e}") from None


class VolumeOwnership:
    """``policy``: what a volume whose owner is not known gets (POLICIES); ``management_node``: asked
    before the policy applies, for callers that come with a session (None: no management node)."""

    def __init__(self, policy: str = "deny", management_node: ManagementNodeVolumes | None = None) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown_volume_owner: {policy!r} is not one of {', '.join(POLICIES)}")
        self.policy = policy
        self.management_node = management_node

    def check(self, volume: Volume, caller_uuid: str, session_uuid: str | None = None) -> None:
        """Raises ID.1002 unless ``caller_uuid`` may make a template of ``volume``."""
        if is_admin(caller_uuid):
            return
        if volume.account_uuid is not None:
            if volume.account_uuid != caller_uuid:
                raise operation_denied(volume.uuid, VOLUME_TYPE, caller_uuid)
            return
        if self.management_node is not None and session_uuid:
            if not self.management_node.sees(session_uuid, volume.uuid):
                raise operation_denied(volume.uuid, VOLUME_TYPE, caller_uuid)
            return
        if self.policy == "allow":
            return
        raise ZsError(errors.PERMISSION_DENIED,
                      f"operation denied. The owner of volume[uuid: {volume.uuid}] is not known to this agent "
                      f"(no account in its path or its metadata 'zstack.accountUuid'), so only the admin "
                      f"account may use it (set [auth] unknown_volume_owner = \"allow\" to let every account)")
