"""The exception classes of python-rados (Ceph Pacific), same names, bases, messages and errno values."""

from __future__ import annotations


class Error(Exception):
    """`Error` class, derived from `Exception`; ``errno`` is the positive error number or None."""

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


class OSError(Error):  # noqa: A001 - the real module shadows the builtin the same way
    """`OSError` class, derived from `Error`"""


def _cls(name: str, base: type, prefix: str) -> type[Error]:
    return type(name, (base,), {"_prefix": prefix})


InvalidArgumentError = _cls("InvalidArgumentError", Error, "RADOS invalid argument")
InProgress = _cls("InProgress", Error, "RADOS in progress error")
IsConnected = _cls("IsConnected", Error, "RADOS is connected error")
LogicError = _cls("LogicError", Error, "RADOS logic error")
IoctxStateError = _cls("IoctxStateError", Error, "RADOS Ioctx state error")
ObjectStateError = _cls("ObjectStateError", Error, "RADOS object state error")
RadosStateError = _cls("RadosStateError", Error, "RADOS rados state")
PermissionError = _cls("PermissionError", OSError, "RADOS permission error")  # noqa: A001
PermissionDeniedError = _cls("PermissionDeniedError", OSError, "RADOS permission denied")
ObjectNotFound = _cls("ObjectNotFound", OSError, "RADOS object not found")
NoData = _cls("NoData", OSError, "RADOS no data")
ObjectExists = _cls("ObjectExists", OSError, "RADOS object exists")
ObjectBusy = _cls("ObjectBusy", OSError, "RADOS object busy")
IOError = _cls("IOError", OSError, "RADOS I/O error")  # noqa: A001
NoSpace = _cls("NoSpace", OSError, "RADOS no space")
NotConnected = _cls("NotConnected", OSError, "RADOS not connected")
ConnectionShutdown = _cls("ConnectionShutdown", OSError, "RADOS connection was shutdown")
TimedOut = _cls("TimedOut", OSError, "RADOS timed out")
InterruptedOrTimeoutError = _cls("InterruptedOrTimeoutError", OSError, "RADOS interrupted or timeout")


class ExtendMismatch(Error):
    """`ExtendMismatch` class, derived from `Error`; ``offset`` is where the compared content differs."""

    _prefix = "object content does not match"

    def __init__(self, message, errno, offset):
        super().__init__(message, errno)
        self.offset = offset

    def __reduce__(self):
        return (self.__class__, (self.raw_message, self.errno, self.offset))


for _name, _obj in list(globals().items()):
    if isinstance(_obj, type) and issubclass(_obj, BaseException) and _obj.__module__ in (__name__, "types"):
        _obj.__module__ = "zsagent.ceph.fake.rados"


_BY_ERRNO = {
    1: "PermissionError",
    2: "ObjectNotFound",
    4: "InterruptedOrTimeoutError",
    5: "IOError",
    13: "PermissionDeniedError",
    16: "ObjectBusy",
    17: "ObjectExists",
    22: "InvalidArgumentError",
    28: "NoSpace",
    61: "NoData",
    106: "IsConnected",
    107: "NotConnected",
    108: "ConnectionShutdown",
    110: "TimedOut",
    115: "InProgress",
}


def make_ex(code: int, message: str) -> Error:
    """The exception python-rados raises for a failed call returning -``code``: the class named for
    that errno, else the plain OSError (so an ECANCELED guard failure is an OSError, errno 125)."""
    cls = globals().get(_BY_ERRNO.get(code, ""), OSError)
    return cls(message, errno=code)
