"""The numbers of lbagent.h as IntEnums (tests/test_native.py checks them against the header)."""

from __future__ import annotations

import enum


class State(enum.IntEnum):
    """The state of the whole server or of one service (``LBAGENT_STATE_*``)."""

    #: Only in answers about a service that does not exist; cannot be set.
    UNKNOWN = 0
    #: The initial state: not ready yet.
    STARTING = 1
    #: Serving: the server should receive new connections (when the weight is above 0).
    UP = 2
    #: Finishing existing work; takes no new connections.
    DRAIN = 3
    #: Administratively out of service.
    MAINT = 4
    #: Failed (also: the watchdog expired).
    DOWN = 5
    #: Shutting down (final; also after stop()).
    STOPPING = 6


class Reason(enum.IntEnum):
    """Why the state is what it is (``LBAGENT_REASON_*``)."""

    HOST = 0
    WATCHDOG_EXPIRED = 1
    CHECK_FAILED = 2
    AGENT_STOPPING = 3
    UNKNOWN_SERVICE = 4
    AGENT_FAULT = 5
    CHECK_TIMED_OUT = 6
    WORKER_STALLED = 7
    #: The start did not end within ``start_timeout_ms`` (no heartbeat, still STARTING).
    START_TIMED_OUT = 8
    #: An operator took the server out (``control=``, ``lbagent-ctl drain|maint``).
    OPERATOR = 9


class Counter(enum.IntEnum):
    """The agent's counters (``LBAGENT_COUNTER_*``): datagrams received, answered, dropped;
    TCP connections accepted, answered, dropped."""

    RECEIVED = 0
    ANSWERED_STATUS = 1
    ANSWERED_TEXT = 2
    ANSWERED_ERROR = 3
    DROPPED_NOT_ALLOWED = 4
    DROPPED_SOURCE_PORT = 5
    DROPPED_NOT_UNICAST = 6
    DROPPED_MALFORMED = 7
    DROPPED_TEXT_OFF = 8
    DROPPED_LOOKS_LIKE_REPLY = 9
    SEND_FAILED = 10
    FAULTS = 11
    DROPPED_RATE_LIMITED = 12
    DROPPED_GLOBAL_LIMIT = 13
    DROPPED_AUTH_FAILED = 14
    DROPPED_AUTH_STALE = 15
    # The TCP listeners (tcp_agent=, http=): connections accepted, answered, dropped.
    CONN_ACCEPTED = 16
    ANSWERED_AGENT = 17
    ANSWERED_HTTP = 18
    HTTP_BAD_REQUEST = 19
    CONN_DROPPED_LIMIT = 20
    CONN_DROPPED_NOT_ALLOWED = 21
    CONN_TIMED_OUT = 22
    CONN_FAILED = 23
    #: Host calls (set_state, set_weight, set_load, add_check) that named a service not in
    #: ``services=``.
    HOST_UNKNOWN_SERVICE = 24
    PUSHED = 25
    PUSH_FAILED = 26
    # Sealed probes refused as replays or over their key's budget; connections over the
    # per-source share.
    DROPPED_REPLAY = 27
    DROPPED_KEY_LIMIT = 28
    CONN_DROPPED_SOURCE_LIMIT = 29
    # Operator control socket connections (control=).
    CONTROL_ANSWERED = 30
    CONTROL_REFUSED = 31
    CONTROL_FAILED = 32


class Result(enum.IntEnum):
    """The outcome of a C call (``lbagent_result``); errors raise the matching exception."""

    OK = 0
    ERR_NULL_ARGUMENT = 1
    ERR_BAD_HANDLE = 2
    ERR_INVALID_ARGUMENT = 3
    ERR_CONFIG = 4
    ERR_BIND = 5
    ERR_SYSTEM = 6
    ERR_UNKNOWN_SERVICE = 7
    ERR_STOPPED = 8
    ERR_TIMEOUT = 9
    ERR_PANIC = 10
    ERR_EXISTS = 11
    ERR_FULL = 12
    ERR_NOT_FOUND = 13
    ERR_WRONG_PROCESS = 14
    ERR_REFUSED = 15
    ERR_UNREACHABLE = 16
    ERR_NOT_AN_AGENT = 17
    ERR_VERSION_MISMATCH = 18
    ERR_AUTH_REQUIRED = 19
    ERR_WRONG_KEY = 20
    ERR_UNAUTHENTICATED = 21


class LogLevel(enum.IntEnum):
    """The level of a line given to a log callback (``LBAGENT_LOG_LEVEL_*``)."""

    ERROR = 0
    WARN = 1
    INFO = 2
