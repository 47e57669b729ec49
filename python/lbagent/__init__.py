"""lbagent for Python: embed the health agent that tells load balancers the real state of a
server (ctypes bindings of liblbagent; no compiled extension).

    import lbagent

    with lbagent.Agent(listen="0.0.0.0:4950", watchdog_ms=3000) as agent:
        agent.set_state(lbagent.State.UP, "ready")
        while serving:
            serve_one_batch()
            agent.heartbeat()

    status = lbagent.probe("10.0.0.7:4950", timeout=0.5)   # as a director asks
    print(status.state, status.serving)

The library is loaded on first use (see _native.candidates for where it is looked for);
``import lbagent`` works without it, and Agent() then raises LibraryNotFoundError.
"""

from .agent import (Agent, Drain, Status, Worker, library_path, reason_name, state_name,
                    strerror, version)
from .enums import Counter, LogLevel, Reason, Result, State
from .errors import (
    AuthRequiredError,
    BadHandleError,
    BindError,
    ClosedError,
    ConfigError,
    Error,
    ExistsError,
    FullError,
    InternalError,
    InvalidArgumentError,
    LibraryNotFoundError,
    NotAnAgentError,
    NotFoundError,
    NullArgumentError,
    RefusedError,
    StoppedError,
    StopTimeoutError,
    SystemCallError,
    TimedOutError,
    UnknownServiceError,
    UnreachableError,
    VersionMismatchError,
    WrongKeyError,
    UnauthenticatedError,
    WrongProcessError,
)
from .prober import Completion, Prober, probe

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AuthRequiredError",
    "BadHandleError",
    "BindError",
    "ClosedError",
    "Completion",
    "ConfigError",
    "Counter",
    "Drain",
    "Error",
    "ExistsError",
    "FullError",
    "InternalError",
    "InvalidArgumentError",
    "LibraryNotFoundError",
    "LogLevel",
    "NotAnAgentError",
    "NotFoundError",
    "NullArgumentError",
    "Prober",
    "Reason",
    "RefusedError",
    "Result",
    "State",
    "Status",
    "StopTimeoutError",
    "StoppedError",
    "SystemCallError",
    "TimedOutError",
    "UnknownServiceError",
    "UnreachableError",
    "VersionMismatchError",
    "Worker",
    "WrongKeyError",
    "UnauthenticatedError",
    "WrongProcessError",
    "library_path",
    "probe",
    "reason_name",
    "state_name",
    "strerror",
    "version",
]
