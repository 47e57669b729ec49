"""The Agent: one running lbagent, owned by a Python object."""

from __future__ import annotations

import atexit
import ctypes
import dataclasses
import enum
import operator
import os
import re
import threading
import weakref
from typing import Any, Callable, Dict, Optional, Type, TypeVar, Union

from . import _native, callbacks
from ._handle import HandleOwner
from .enums import Counter, LogLevel, Reason, Result, State
from .errors import ClosedError, ConfigError, InvalidArgumentError, error_for

E = TypeVar("E", bound=enum.IntEnum)


def _known(cls: Type[E], value: int) -> Union[E, int]:
    """The enum member for `value`, or the plain number when this version does not know it."""
    try:
        return cls(value)
    except ValueError:
        return value


@dataclasses.dataclass(frozen=True)
class Status:
    """What a director asking about the server (or a service) is told now."""

    #: The state answered (a plain int only for a state newer than this package).
    state: Union[State, int]
    #: Why the state is what it is.
    reason: Union[Reason, int]
    #: Percent of the weight configured on the director, 0..100.
    weight_pct: int
    #: Work in progress and capacity, as reported with set_load (capacity 0 = unknown).
    in_use: int
    capacity: int
    #: Increases whenever the state, reason, weight or message answered changes.
    generation: int
    #: Milliseconds since the state answered last changed.
    since_ms: int
    #: Random at each start: a restart shows as a new id.
    instance_id: int
    #: The reason text.
    message: str

    @property
    def serving(self) -> bool:
        """True when the server should receive new connections: UP with a weight above 0."""
        return self.state == State.UP and self.weight_pct > 0

    @classmethod
    def _from_c(cls, raw: "_native.lbagent_status") -> "Status":
        return cls(
            state=_known(State, raw.state),
            reason=_known(Reason, raw.reason),
            weight_pct=raw.weight_pct,
            in_use=raw.in_use,
            capacity=raw.capacity,
            generation=raw.generation,
            since_ms=raw.since_ms,
            instance_id=raw.instance_id,
            message=raw.message.decode("utf-8", "replace"),
        )


@dataclasses.dataclass(frozen=True)
class Drain:
    """How far a drain has come (:meth:`Agent.drain_status`)."""

    #: Draining, every prober seen within ``drain_window_ms`` told so ``drain_confirm`` times
    #: in a row, no prober untracked, and no work in progress.
    complete: bool
    #: The answer says "no new connections" (any state but UP, or UP at weight 0).
    draining: bool
    #: Probers seen within the window that were told often enough, and those not yet.
    probers_told: int
    probers_pending: int
    #: More probers asked within the window than the agent tracks.
    probers_untracked: bool
    #: Milliseconds since the answer stopped saying "serving".
    drain_ms: int
    #: Work in progress reported with set_load (the whole server: with its services').
    in_use: int
    #: The state answered.
    state: Union[State, int]

    @classmethod
    def _from_c(cls, raw: "_native.lbagent_drain") -> "Drain":
        return cls(
            complete=bool(raw.complete),
            draining=bool(raw.draining),
            probers_told=raw.probers_told,
            probers_pending=raw.probers_pending,
            probers_untracked=bool(raw.probers_untracked),
            drain_ms=raw.drain_ms,
            in_use=raw.in_use,
            state=_known(State, raw.state),
        )


_UNSAFE_VALUE = re.compile(r"[\s;#]")


def _config_text(config: Optional[str], settings: Dict[str, Any]) -> Optional[bytes]:
    """The configuration string: `config` followed by the keyword settings as key=value."""
    words = [config] if config is not None else []
    for key, value in settings.items():
        if isinstance(value, (list, tuple, set, frozenset)):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = "on" if value else "off"
        text = str(value)
        if _UNSAFE_VALUE.search(text):
            raise ConfigError(f'config: invalid value "{text}" for key "{key}": a value given '
                              'as a keyword cannot contain a space, ";" or "#"',
                              Result.ERR_CONFIG)
        words.append(f"{key}={text}")
    if config is None and not settings:
        return None  # the library reads LBAGENT_CONFIG
    return _text("config", " ".join(words))


def _text(what: str, value: Optional[str]) -> Optional[bytes]:
    """A string for C: UTF-8, NUL-terminated, so an embedded NUL would cut it silently."""
    if value is None:
        return None
    if "\0" in value:
        raise InvalidArgumentError(f"lbagent: {what} {value!r} contains a NUL character",
                                   Result.ERR_INVALID_ARGUMENT)
    return value.encode("utf-8")


def _int(what: str, value: int, bits: int, signed: bool = False) -> int:
    """`value` checked to fit its C type (ctypes would cut it silently: 2**32 + 2 becomes 2)."""
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if isinstance(value, int) and low <= value <= high:
        return value  # the common case, kept short: these checks are on the hot path
    value = operator.index(value)
    if not low <= value <= high:
        raise InvalidArgumentError(f"lbagent: {what} {value} is out of range {low}..{high}",
                                   Result.ERR_INVALID_ARGUMENT)
    return value


class Agent(HandleOwner):
    """A running agent: started by the constructor, stopped and freed by :meth:`close`.

    ``Agent("listen=127.0.0.1:4950 watchdog_ms=3000")``, or with keyword settings
    ``Agent(listen="127.0.0.1:4950", watchdog_ms=3000, services=["game", "chat"])`` (both may
    be combined). With neither, the library reads the ``LBAGENT_CONFIG`` environment variable.
    Raises :class:`ConfigError`, :class:`BindError`, ... whose message is the library's (it
    names the bad key and value, or the address that could not be bound).

    Use it as a context manager, or call :meth:`close` (idempotent). Every method is
    thread-safe, and may be called from a Python signal handler, a check or a log callback
    (but a check or a log callback must not close the agent). After close they raise
    :class:`ClosedError`.
    """

    def __init__(self, config: Optional[str] = None, /, **settings: Any):
        # Set first, so that close() and __del__ work even when the start fails.
        self._handle: Optional[Any] = None
        self._reset_locks()
        self._log_key: Optional[int] = None  # the log callback's key in callbacks
        self._lib = _native.load()
        handle = _native.AGENT_P()
        code = self._lib.lbagent_start(_config_text(config, settings), ctypes.byref(handle))
        if code != Result.OK:
            raise error_for(code, self._lib.failure("lbagent_start", code))
        self._handle = handle
        _live_agents.add(self)

    def _reset_locks(self) -> None:
        # Guards the handle against being freed while a call uses it. Quick calls hold it
        # during the C call; a blocking one (stop) is counted in `_busy` instead, so that the
        # library's threads (checks, log callback) can still call in meanwhile, and close()
        # waits for it. Reentrant: a Python signal handler may call in while this thread
        # holds it.
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)
        self._busy = 0

    # ---- Lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Stops the agent (waiting up to 5 s for its threads) and frees it. Idempotent."""
        with self._lock:
            handle, self._handle = self._handle, None
            while self._busy:
                self._idle.wait()
        if handle is not None:
            self._lib.lbagent_free(handle)
            # The logger thread has ended: nothing calls the log callback any more. (A check
            # releases its own entry, from its thread, after its last run.)
            callbacks.release(self._log_key)
            self._log_key = None

    def __repr__(self) -> str:
        if self._handle is None:
            return "<lbagent.Agent closed>"
        return f"<lbagent.Agent on UDP port {self.local_port()}>"

    # ---- Calling the library --------------------------------------------------------------

    def _call(self, name: str, *args: Any, service: Optional[str] = None) -> None:
        """Calls `name` with the live handle first; raises the matching error on failure
        (naming `service` when it is the service that is unknown)."""
        with self._lock:
            handle = self._handle
            if handle is None:
                raise ClosedError("lbagent: the agent is closed", Result.ERR_BAD_HANDLE)
            code = getattr(self._lib, name)(handle, *args)
            if code == 0:  # LBAGENT_OK, as a plain int: comparing with the enum costs more
                return
            detail = self._lib.failure(name, code)
        if code == Result.ERR_UNKNOWN_SERVICE and f'"{service}"' not in detail:
            # The hot-path calls leave no last error: say which name was wrong here.
            detail = f'{name}: unknown service "{service}": not listed in services='
        raise error_for(code, detail)

    def _call_blocking(self, name: str, *args: Any) -> None:
        """Like _call, for a call that may wait: the handle stays valid without the lock."""
        with self._lock:
            handle = self._handle
            if handle is None:
                raise ClosedError("lbagent: the agent is closed", Result.ERR_BAD_HANDLE)
            self._busy += 1
        try:
            code = getattr(self._lib, name)(handle, *args)
            detail = self._lib.failure(name, code) if code != 0 else ""
        finally:
            with self._lock:
                self._busy -= 1
                self._idle.notify_all()
        if code != 0:
            raise error_for(code, detail)

    # ---- The hot path ---------------------------------------------------------------------

    def heartbeat(self) -> None:
        """Tells the watchdog the host is alive (with ``watchdog_ms``, call it from the loop)."""
        self._call("lbagent_heartbeat")

    def set_state(self, state: Union[State, int], reason: Optional[str] = None, *,
                  service: Optional[str] = None) -> None:
        """Reports the whole server's state, or a configured service's; `reason` is a text for
        operators (None clears it). Raises InvalidArgumentError for UNKNOWN or a non-state,
        UnknownServiceError, StoppedError after stop()."""
        self._call("lbagent_set_state", _text("service", service),
                   _int("state", state, 32, signed=True), _text("reason", reason),
                   service=service)

    def set_weight(self, weight_pct: int, *, service: Optional[str] = None) -> None:
        """Sets the weight in percent (0..100) of the weight configured on the director."""
        self._call("lbagent_set_weight", _text("service", service),
                   _int("weight_pct", weight_pct, 32), service=service)

    def set_load(self, in_use: int, capacity: int = 0, *,
                 service: Optional[str] = None) -> None:
        """Reports the load: `in_use` units of work out of `capacity` (0 = unknown)."""
        self._call("lbagent_set_load", _text("service", service), _int("in_use", in_use, 32),
                   _int("capacity", capacity, 32), service=service)

    # ---- Reading --------------------------------------------------------------------------

    def status(self, service: Optional[str] = None) -> Status:
        """What a director asking about `service` (None: the whole server) is told now. An
        unknown service reads State.UNKNOWN, Reason.UNKNOWN_SERVICE."""
        raw = _native.lbagent_status()
        self._call("lbagent_get_status", _text("service", service), ctypes.byref(raw))
        return Status._from_c(raw)

    def drain_status(self, service: Optional[str] = None) -> Drain:
        """How far a drain of `service` (None: the whole server) has come: whether every
        director that asked within ``drain_window_ms`` was told "no new connections"
        ``drain_confirm`` times, and no work is in progress. Raises UnknownServiceError, or
        WrongProcessError in a forked worker (ask the master)."""
        raw = _native.lbagent_drain()
        self._call("lbagent_drain_status", _text("service", service), ctypes.byref(raw))
        return Drain._from_c(raw)

    def wait_drained(self, timeout_ms: int, service: Optional[str] = None) -> None:
        """Waits until the drain of `service` (None: the whole server) is complete, at most
        `timeout_ms` (0: checks once). Raises TimedOutError, whose message says how far it
        came. Blocks this thread (not the agent's, which keeps answering): drain first
        (``set_state(State.DRAIN)``), keep serving, wait, then stop."""
        self._call_blocking("lbagent_wait_drained", _text("service", service),
                            _int("timeout_ms", timeout_ms, 32))

    def counter(self, which: Union[Counter, int]) -> int:
        """One of the agent's counters (received, answered, dropped by reason)."""
        value = ctypes.c_uint64()
        self._call("lbagent_get_counter", _int("counter", which, 32, signed=True),
                   ctypes.byref(value))
        return value.value

    def counters(self) -> Dict[Counter, int]:
        """Every counter this package knows."""
        return {c: self.counter(c) for c in Counter}

    def local_port(self, index: int = 0) -> int:
        """The UDP port bound for the index-th ``listen=`` address (useful with port 0).
        InvalidArgumentError past the last address."""
        return self._port("lbagent_local_port", index)

    def tcp_agent_port(self, index: int = 0) -> int:
        """The TCP port bound for the index-th ``tcp_agent=`` address (HAProxy agent-check).
        InvalidArgumentError past the last address, or without ``tcp_agent=``."""
        return self._port("lbagent_tcp_agent_port", index)

    def http_port(self, index: int = 0) -> int:
        """The TCP port bound for the index-th ``http=`` address (HTTP health checks).
        InvalidArgumentError past the last address, or without ``http=``."""
        return self._port("lbagent_http_port", index)

    def _port(self, function: str, index: int) -> int:
        port = ctypes.c_uint16()
        self._call(function, _int("index", index, 64), ctypes.byref(port))
        return port.value

    @property
    def port(self) -> int:
        """The UDP port of the first ``listen=`` address."""
        return self.local_port(0)

    def stop(self, timeout_ms: int = 1000) -> None:
        """Stops answering (every answer says STOPPING from now on) and waits up to
        `timeout_ms` for the agent's threads (0: for ever). Idempotent; raises
        StopTimeoutError when the wait was too short (call again to wait again). close()
        stops too."""
        self._call_blocking("lbagent_stop", _int("timeout_ms", timeout_ms, 32))

    # ---- Checks and logging: Python functions the agent calls ------------------------------

    def add_check(self, name: str, check: Callable[[], Any], *, service: Optional[str] = None,
                  interval_ms: int = 1000, timeout_ms: int = 0) -> None:
        """Runs `check()` on a thread of the agent's at once and every `interval_ms`. It passes
        unless it returns False or raises (the exception's text is then the reason); while it
        fails, or a run lasts longer than `timeout_ms` (0: no limit), the answers for
        `service` (None: the whole server) say DOWN, "check failed" or "check timed out". A
        check that hangs never delays probe answers. The agent keeps `check` alive until the
        check is removed and its last run has returned."""
        key = callbacks.register(check)
        try:
            self._call("lbagent_add_check_with_free", _text("service", service),
                       _text("name", name), callbacks.CHECK_TRAMPOLINE, key,
                       callbacks.RELEASE_TRAMPOLINE, _int("interval_ms", interval_ms, 32),
                       _int("timeout_ms", timeout_ms, 32), service=service)
        except BaseException:
            callbacks.release(key)  # on error the library does not call the release function
            raise

    def remove_check(self, name: str) -> None:
        """Removes a check (NotFoundError if there is none of that name); a run in progress
        finishes on its own thread. Does not wait."""
        self._call("lbagent_remove_check", _text("name", name))

    def set_log_callback(self, callback: Optional[Callable[[LogLevel, str], Any]]) -> None:
        """Sends the agent's log lines (rate-limited) to `callback(level, line)`, called on the
        agent's logger thread; None stops it. Exceptions it raises are ignored."""
        with self._lock:
            if self._log_key is None:
                self._log_key = callbacks.register(callback)
            else:
                callbacks.replace(self._log_key, callback)
            if callback is None:
                self._call("lbagent_set_log_callback", _native.LOG_FN(), None)  # NULL
            else:
                self._call("lbagent_set_log_callback", callbacks.LOG_TRAMPOLINE, self._log_key)

    # ---- Worker watchdog slots and fork ----------------------------------------------------

    def register_worker(self) -> "Worker":
        """Claims a worker watchdog slot (config ``workers=N``) for the calling thread or
        process; heart-beat it more often than ``worker_timeout_ms``. FullError when no slot
        is free."""
        slot = ctypes.c_uint()
        self._call("lbagent_worker_register", ctypes.byref(slot))
        return Worker(self, slot.value)

    def release_worker_pid(self, pid: int) -> int:
        """Releases the slots of a worker process that ended (after waitpid); returns how many."""
        released = ctypes.c_uint()
        self._call("lbagent_worker_release_pid", _int("pid", pid, 32, signed=True),
                   ctypes.byref(released))
        return released.value

    def after_fork_child(self) -> None:
        """In a child right after os.fork(), when the child takes the agent over (a daemon
        whose parent exits): starts the agent's threads in the child."""
        self._call("lbagent_after_fork_child")

    def after_fork_worker(self) -> None:
        """In a prefork worker right after os.fork(): the worker's calls then report into the
        answers of the parent, which keeps the agent running."""
        self._call("lbagent_after_fork_worker")


class Worker:
    """A worker watchdog slot (from :meth:`Agent.register_worker`); a context manager that
    unregisters it."""

    def __init__(self, agent: Agent, slot: int):
        self.agent = agent
        self.slot = slot
        self._registered = True

    def heartbeat(self) -> None:
        """Records that this worker is alive."""
        self.agent._call("lbagent_worker_heartbeat", self.slot)

    def close(self) -> None:
        """Releases the slot. Idempotent; nothing to do once the agent is closed."""
        if self._registered and not self.agent.closed:
            self.agent._call("lbagent_worker_unregister", self.slot)
        self._registered = False

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


#: Live agents, so that a forked child gets fresh locks (another thread may have held one at
#: the fork, and would never release it in the child).
_live_agents: "weakref.WeakSet[Agent]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for agent in list(_live_agents):
        agent._reset_locks()


def _close_live_agents() -> None:
    # Before the interpreter goes away: the agents' threads must not call a check or a log
    # callback into a finalized interpreter.
    for agent in list(_live_agents):
        agent.close()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_close_live_agents)


def version() -> str:
    """The C library's version, such as "0.1.0"."""
    return _native.load().lbagent_version().decode()


def state_name(state: Union[State, int]) -> str:
    """The library's lower-case name of a state ("up", "drain", ...; "invalid" otherwise)."""
    return _native.load().lbagent_state_name(_int("state", state, 32, signed=True)).decode()


def reason_name(reason: Union[Reason, int]) -> str:
    """The library's name of a reason ("host", "watchdog-expired", ...; "invalid" otherwise)."""
    return _native.load().lbagent_reason_name(_int("reason", reason, 32, signed=True)).decode()


def strerror(code: Union[Result, int]) -> str:
    """The library's text for a result code."""
    return _native.load().lbagent_strerror(_int("code", code, 32, signed=True)).decode()


def library_path() -> str:
    """Where the library was loaded from (what dlopen was given)."""
    return _native.load().path
