"""The exception classes of python-rbd (Ceph Pacific), same names, bases, messages and errno values."""

from __future__ import annotations

import errno as _errno


class Error(Exception):
    pass


class OSError(Error):  # noqa: A001 - the real module shadows the builtin the same way
    """`OSError` class, derived from `Error`; ``errno`` is the positive error number or None."""

    _prefix: str | None = None

    def __init__(self, message, errno=None):
        self.raw_message = message
        if self._prefix is not None:
            message = f"{self._prefix} ({message})"
        super().__init__(message)
        self.errno = errno

    def __str__(self):
        msg = super().__str__()
        if self.errno is None:
            return msg
        return f"[errno {self.errno}] {msg}"

    def __reduce__(self):
        return (self.__class__, (self.raw_message, self.errno))


def _cls(name: str, prefix: str) -> type[OSError]:
    return type(name, (OSError,), {"_prefix": prefix})


PermissionError = _cls("PermissionError", "RBD permission error")  # noqa: A001
ImageNotFound = _cls("ImageNotFound", "RBD image not found")
ObjectNotFound = _cls("ObjectNotFound", "RBD object not found")
ImageExists = _cls("ImageExists", "RBD image already exists")
ObjectExists = _cls("ObjectExists", "RBD object already exists")
IOError = _cls("IOError", "RBD I/O error")  # noqa: A001
NoSpace = _cls("NoSpace", "RBD insufficient space available")
IncompleteWriteError = _cls("IncompleteWriteError", "RBD incomplete write")
InvalidArgument = _cls("InvalidArgument", "RBD invalid argument")
LogicError = _cls("LogicError", "RBD logic error")
ReadOnlyImage = _cls("ReadOnlyImage", "RBD read-only image")
ImageBusy = _cls("ImageBusy", "RBD image is busy")
ImageHasSnapshots = _cls("ImageHasSnapshots", "RBD image has snapshots")
FunctionNotSupported = _cls("FunctionNotSupported", "RBD function not supported")
ArgumentOutOfRange = _cls("ArgumentOutOfRange", "RBD arguments out of range")
ConnectionShutdown = _cls("ConnectionShutdown", "RBD connection was shutdown")
Timeout = _cls("Timeout", "RBD operation timeout")
DiskQuotaExceeded = _cls("DiskQuotaExceeded", "RBD disk quota exceeded")
OperationNotSupported = _cls("OperationNotSupported", "RBD operation not supported")
OperationCanceled = _cls("OperationCanceled", "RBD operation canceled")

ECANCELED = 125

_ERRNO_TO_EXCEPTION = {
    _errno.EPERM: PermissionError,
    _errno.ENOENT: ImageNotFound,
    _errno.EIO: IOError,
    _errno.ENOSPC: NoSpace,
    _errno.EEXIST: ImageExists,
    _errno.EINVAL: InvalidArgument,
    _errno.EROFS: ReadOnlyImage,
    _errno.EBUSY: ImageBusy,
    _errno.ENOTEMPTY: ImageHasSnapshots,
    _errno.ENOSYS: FunctionNotSupported,
    _errno.EDOM: ArgumentOutOfRange,
    _errno.ESHUTDOWN: ConnectionShutdown,
    _errno.ETIMEDOUT: Timeout,
    _errno.EDQUOT: DiskQuotaExceeded,
    _errno.EOPNOTSUPP: OperationNotSupported,
    ECANCELED: OperationCanceled,
}


def make_ex(err: int, msg: str) -> OSError:
    """The exception python-rbd raises for a librbd return code ``-err``."""
    err = abs(err)
    return _ERRNO_TO_EXCEPTION.get(err, OSError)(msg, errno=err)


class LibrbdAbort(BaseException):  # noqa: N818 - named after what happens, not an "Error" to handle
    """Raised by the fake where real librbd 16.2.15 hits a ceph_assert and aborts the whole process.

    Not an ``rbd.Error`` (nothing in the real module can be caught there) and not even an ``Exception``,
    so ``except Exception`` in the agent cannot hide it: code that triggers it is a bug.
    """


for _name, _obj in list(globals().items()):
    if isinstance(_obj, type) and issubclass(_obj, BaseException) and _obj.__module__ == __name__:
        _obj.__module__ = "zsagent.ceph.fake.rbd"
