"""Exceptions: one class per lbagent_result error code, all derived from :class:`Error`."""

from __future__ import annotations

from typing import Dict, Optional, Type, Union

from .enums import Result


class Error(Exception):
    """Every error this package raises.

    ``code`` is the :class:`Result` of the failed C call (None when no call failed, such as a
    library that cannot be found); ``detail`` is the library's text for it (the key and value
    of a bad configuration, the address that could not be bound, ...).
    """

    def __init__(self, detail: str, code: Optional[Union[Result, int]] = None):
        super().__init__(detail)
        self.detail = detail
        self.code = code


class LibraryNotFoundError(Error):
    """liblbagent could not be loaded; the message says where it was looked for."""


class ClosedError(Error, ValueError):
    """The Agent was closed; it cannot be used any more."""


class BadHandleError(Error):
    """LBAGENT_ERR_BAD_HANDLE: not a live agent."""


class InvalidArgumentError(Error, ValueError):
    """LBAGENT_ERR_INVALID_ARGUMENT: a state, weight, counter or index out of range."""


class ConfigError(Error, ValueError):
    """LBAGENT_ERR_CONFIG: the configuration is invalid; the detail names the key and value."""


class BindError(Error):
    """LBAGENT_ERR_BIND: a listen address could not be bound; the detail says which and why."""


class SystemCallError(Error):
    """LBAGENT_ERR_SYSTEM: a system call failed (thread, poller, socket option)."""


class UnknownServiceError(Error, LookupError):
    """LBAGENT_ERR_UNKNOWN_SERVICE: the service is not listed in ``services=``."""


class StoppedError(Error):
    """LBAGENT_ERR_STOPPED: the agent was stopped and takes no more updates."""


class StopTimeoutError(Error):
    """LBAGENT_ERR_TIMEOUT: stop() waited in vain; the monitor thread is still finishing."""


class InternalError(Error):
    """LBAGENT_ERR_PANIC: the library caught an internal error; the call had no effect."""


class ExistsError(Error):
    """LBAGENT_ERR_EXISTS: a check with that name exists already."""


class FullError(Error):
    """LBAGENT_ERR_FULL: no room left (64 checks; no free worker slot)."""


class NotFoundError(Error, LookupError):
    """LBAGENT_ERR_NOT_FOUND: no such check, or the worker slot is not registered."""


class WrongProcessError(Error):
    """LBAGENT_ERR_WRONG_PROCESS: the call belongs to another process (see fork)."""


_BY_CODE: Dict[Result, Type[Error]] = {
    Result.ERR_BAD_HANDLE: BadHandleError,
    Result.ERR_INVALID_ARGUMENT: InvalidArgumentError,
    Result.ERR_CONFIG: ConfigError,
    Result.ERR_BIND: BindError,
    Result.ERR_SYSTEM: SystemCallError,
    Result.ERR_UNKNOWN_SERVICE: UnknownServiceError,
    Result.ERR_STOPPED: StoppedError,
    Result.ERR_TIMEOUT: StopTimeoutError,
    Result.ERR_PANIC: InternalError,
    Result.ERR_EXISTS: ExistsError,
    Result.ERR_FULL: FullError,
    Result.ERR_NOT_FOUND: NotFoundError,
    Result.ERR_WRONG_PROCESS: WrongProcessError,
}


def error_for(code: int, detail: str) -> Error:
    """The exception for a failed call's code (a code this version does not know: Error, with
    the number as its code)."""
    try:
        result = Result(code)
    except ValueError:
        return Error(detail, code)  # type: ignore[arg-type]
    return _BY_CODE.get(result, Error)(detail, result)
