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


class NullArgumentError(Error, ValueError):
    """LBAGENT_ERR_NULL_ARGUMENT: a required argument was missing (None)."""


class BadHandleError(Error):
    """LBAGENT_ERR_BAD_HANDLE: not a live agent or prober."""


class InvalidArgumentError(Error, ValueError):
    """LBAGENT_ERR_INVALID_ARGUMENT: a state, weight, counter or index out of range; a probe
    target that is not an address, or a bad service name."""


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


class TimedOutError(Error, TimeoutError):
    """LBAGENT_ERR_TIMEOUT: a probe got no answer in time (agent not running, port filtered,
    or this source not allowed), or stop() waited in vain (the agent's threads are still
    finishing). Also a built-in TimeoutError."""


#: The name this package gave LBAGENT_ERR_TIMEOUT before probes had it too.
StopTimeoutError = TimedOutError


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


class RefusedError(Error, ConnectionRefusedError):
    """LBAGENT_ERR_REFUSED: ICMP port unreachable, nothing listens on the probed UDP port
    (the agent is not running there). Also a built-in ConnectionRefusedError."""


class UnreachableError(Error):
    """LBAGENT_ERR_UNREACHABLE: ICMP host or network unreachable, or no route to the target."""


class NotAnAgentError(Error):
    """LBAGENT_ERR_NOT_AN_AGENT: something that is not an lbagent answered the probe."""


class VersionMismatchError(Error):
    """LBAGENT_ERR_VERSION_MISMATCH: the agent speaks another protocol version."""


class AuthRequiredError(Error):
    """LBAGENT_ERR_AUTH_REQUIRED: the agent answers authenticated probes only (give a key)."""


class WrongKeyError(Error):
    """LBAGENT_ERR_WRONG_KEY: by the deadline the agent had answered the unsealed diagnostic
    probe but not the sealed one (its key file lacks the key, another secret, clocks too far
    apart, or no key file there)."""


class UnauthenticatedError(Error):
    """LBAGENT_ERR_UNAUTHENTICATED: with a key, no sealed answer by the deadline, but replies
    that did not authenticate came (forged, or not from the agent with this key); the text
    counts them, the most telling first."""


_BY_CODE: Dict[Result, Type[Error]] = {
    Result.ERR_NULL_ARGUMENT: NullArgumentError,
    Result.ERR_BAD_HANDLE: BadHandleError,
    Result.ERR_INVALID_ARGUMENT: InvalidArgumentError,
    Result.ERR_CONFIG: ConfigError,
    Result.ERR_BIND: BindError,
    Result.ERR_SYSTEM: SystemCallError,
    Result.ERR_UNKNOWN_SERVICE: UnknownServiceError,
    Result.ERR_STOPPED: StoppedError,
    Result.ERR_TIMEOUT: TimedOutError,
    Result.ERR_PANIC: InternalError,
    Result.ERR_EXISTS: ExistsError,
    Result.ERR_FULL: FullError,
    Result.ERR_NOT_FOUND: NotFoundError,
    Result.ERR_WRONG_PROCESS: WrongProcessError,
    Result.ERR_REFUSED: RefusedError,
    Result.ERR_UNREACHABLE: UnreachableError,
    Result.ERR_NOT_AN_AGENT: NotAnAgentError,
    Result.ERR_VERSION_MISMATCH: VersionMismatchError,
    Result.ERR_AUTH_REQUIRED: AuthRequiredError,
    Result.ERR_WRONG_KEY: WrongKeyError,
    Result.ERR_UNAUTHENTICATED: UnauthenticatedError,
}


def error_for(code: int, detail: str) -> Error:
    """The exception for a failed call's code (a code this version does not know: Error, with
    the number as its code)."""
    try:
        result = Result(code)
    except ValueError:
        return Error(detail, code)  # type: ignore[arg-type]
    return _BY_CODE.get(result, Error)(detail, result)
