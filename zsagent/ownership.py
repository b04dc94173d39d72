"""Who may see and change what: ZStack's rule that a normal account sees and changes only its own
resources, and the admin account all of them.

zstackio/zstack at 5a29293bd5 ("[zs]"):
- the admin is the account ``INITIAL_SYSTEM_ADMIN_UUID`` ([zs] header/src/main/java/org/zstack/header/
  identity/AccountConstant.java l.10; AccountManagerImpl.isAdmin, identity/.../AccountManagerImpl.java
  l.208-209);
- an API naming another account's resource in a ``checkAccount``/``operationTarget`` field (the create's
  ``volumeUuid``, the delete's ``uuid``) is refused before it runs with ID.1002 "operation denied. The
  resource[...] doesn't belong to the account[...]" ([zs] identity/.../AccountAPIRequestChecker.java
  l.71 skips the admin, l.147-151 refuses); queries leave out what is not the caller's
  ([zs] identity/.../IdentityZQLExtension.java l.56-64).

Jobs have no account in ZStack: its job poll needs no credentials ([zs] rest/.../RestServer.java
handleJobQuery l.705-740) and task progress is looked up by API id alone ([zs] core/.../progress/
ProgressReportService.java l.271-280). Here a job carries the account that started it (``Job.account_uuid``)
and ``may_read_job`` decides who sees it.
"""

from __future__ import annotations

from zsagent import errors
from zsagent.errors import ZsError

ADMIN_ACCOUNT_UUID = "36c27e8ff05c4780bf6d2fa65700f22e"  # [zs] AccountConstant.java l.10


def is_admin(account_uuid: str | None) -> bool:
    return account_uuid == ADMIN_ACCOUNT_UUID


def may_access(owner_uuid: str | None, caller_uuid: str | None) -> bool:
    """The caller is the owner or the admin. An owner that is not known (None) is the admin's only."""
    return is_admin(caller_uuid) or (caller_uuid is not None and caller_uuid == owner_uuid)


def may_read_job(owner_uuid: str | None, readable_by_uuid: bool, caller_uuid: str | None) -> bool:
    """Whether a job's answer or progress is shown to ``caller_uuid`` (None: the request showed no
    credentials that name an account).

    Its owner and the admin always; another account never (it is told the job is not there, as if its
    uuid were unknown); a caller without credentials only when the job is ``readable_by_uuid``: jobs whose
    clients poll without credentials (ZStack's classic result path carries none, and ZStack's Java SDK
    polls a job it signed with an access key with ``OAuth null``: sdk/.../ZSClient.java l.686-692), and
    jobs whose caller could not be identified at all (they only hold their ID.1001 error)."""
    if may_access(owner_uuid, caller_uuid):
        return True
    if owner_uuid is None:  # never identified: anyone with its uuid (a job of an older agent: the admin)
        return readable_by_uuid
    return caller_uuid is None and readable_by_uuid


def operation_denied(resource_uuid: str, resource_type: str, caller_uuid: str) -> ZsError:
    """ID.1002 in ZStack's words (AccountAPIRequestChecker.java l.149), without the owner's name and uuid:
    this agent does not tell one account who another is."""
    return ZsError(errors.PERMISSION_DENIED, f"operation denied. The resource[uuid: {resource_uuid}, type: "
                                             f"{resource_type}] doesn't belong to the account[uuid: {caller_uuid}]")
