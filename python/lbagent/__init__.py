"""lbagent for Python: embed the health agent that tells load balancers the real state of a
server (ctypes bindings of liblbagent; no compiled extension).

    import lbagent

    with lbagent.Agent(listen="0.0.0.0:4950", watchdog_ms=3000) as agent:
        agent.set_state(lbagent.State.UP, "ready")
        while serving:
            serve_one_batch()
            agent.heartbeat()

The library is loaded on first use (see _native.candidates for where it is looked for);
``import lbagent`` works without it, and Agent() then raises LibraryNotFoundError.
"""

from .agent import Agent, Status, Worker, library_path, state_name, strerror, version
from .enums import Counter, LogLevel, Reason, Result, State
from .errors import (
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
    NotFoundError,
    StoppedError,
    StopTimeoutError,
    SystemCallError,
    UnknownServiceError,
    WrongProcessError,
)

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "BadHandleError",
    "BindError",
    "ClosedError",
    "ConfigError",
    "Counter",
    "Error",
    "ExistsError",
    "FullError",
    "InternalError",
    "InvalidArgumentError",
    "LibraryNotFoundError",
    "LogLevel",
    "NotFoundError",
    "Reason",
    "Result",
    "State",
    "Status",
    "StopTimeoutError",
    "StoppedError",
    "SystemCallError",
    "UnknownServiceError",
    "Worker",
    "WrongProcessError",
    "library_path",
    "state_name",
    "strerror",
    "version",
]
