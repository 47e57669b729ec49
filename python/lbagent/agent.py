"""The Agent: one running lbagent, owned by a Python object."""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import operator
import re
import threading
from typing import Any, Dict, Optional, Type, TypeVar, Union

from . import _native
from .enums import Counter, Reason, Result, State
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


class Agent:
    """A running agent: started by the constructor, stopped and freed by :meth:`close`.

    ``Agent("listen=127.0.0.1:4950 watchdog_ms=3000")``, or with keyword settings
    ``Agent(listen="127.0.0.1:4950", watchdog_ms=3000, services=["game", "chat"])`` (both may
    be combined). With neither, the library reads the ``LBAGENT_CONFIG`` environment variable.
    Raises :class:`ConfigError`, :class:`BindError`, ... whose message is the library's (it
    names the bad key and value, or the address that could not be bound).

    Use it as a context manager, or call :meth:`close` (idempotent). Every method is
    thread-safe; after close they raise :class:`ClosedError`.
    """

    def __init__(self, config: Optional[str] = None, /, **settings: Any):
        # Set first, so that close() and __del__ work even when the start fails.
        self._handle: Optional[Any] = None
        # Guards the handle against being freed while a call uses it. Reentrant, because a
        # Python signal handler may run, and call in, while this thread holds it.
        self._lock = threading.RLock()
        # Objects the library holds pointers to (ctypes callbacks and their userdata, once
        # functions take them), by registration. Released only after lbagent_free has
        # returned, so no callback ever outlives the object that C calls.
        self._retained: Dict[Any, Any] = {}
        self._lib = _native.load()
        handle = _native.AGENT_P()
        code = self._lib.lbagent_start(_config_text(config, settings), ctypes.byref(handle))
        if code != Result.OK:
            raise error_for(code, self._lib.last_error())
        self._handle = handle

    # ---- Lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Stops the agent (waiting up to 5 s for its thread) and frees it. Idempotent."""
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is not None:
            self._lib.lbagent_free(handle)
            self._retained.clear()

    @property
    def closed(self) -> bool:
        return self._handle is None

    def __enter__(self) -> "Agent":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit the module may be half torn down
            pass

    def __repr__(self) -> str:
        if self._handle is None:
            return "<lbagent.Agent closed>"
        return f"<lbagent.Agent on UDP port {self.local_port()}>"

    # ---- Calling the library --------------------------------------------------------------

    def _call(self, name: str, *args: Any) -> None:
        """Calls `name` with the live handle first; raises the matching error on failure."""
        with self._lock:
            handle = self._handle
            if handle is None:
                raise ClosedError("lbagent: the agent is closed", Result.ERR_BAD_HANDLE)
            code = getattr(self._lib, name)(handle, *args)
            if code == 0:  # LBAGENT_OK, as a plain int: comparing with the enum costs more
                return
            detail = self._lib.last_error() if name in _native.SETS_LAST_ERROR else ""
        if not detail:
            detail = f"{name}: {strerror(code)}"
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
        self._call("lbagent_set_state", _text("service", service), _int("state", state, 32, signed=True),
                   _text("reason", reason))

    def set_weight(self, weight_pct: int, *, service: Optional[str] = None) -> None:
        """Sets the weight in percent (0..100) of the weight configured on the director."""
        self._call("lbagent_set_weight", _text("service", service), _int("weight_pct", weight_pct, 32))

    def set_load(self, in_use: int, capacity: int = 0, *,
                 service: Optional[str] = None) -> None:
        """Reports the load: `in_use` units of work out of `capacity` (0 = unknown)."""
        self._call("lbagent_set_load", _text("service", service), _int("in_use", in_use, 32),
                   _int("capacity", capacity, 32))

    # ---- Reading --------------------------------------------------------------------------

    def status(self, service: Optional[str] = None) -> Status:
        """What a director asking about `service` (None: the whole server) is told now. An
        unknown service reads State.UNKNOWN, Reason.UNKNOWN_SERVICE."""
        raw = _native.lbagent_status()
        self._call("lbagent_get_status", _text("service", service), ctypes.byref(raw))
        return Status(
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
        """The UDP port bound for the index-th ``listen=`` address (useful with port 0)."""
        port = ctypes.c_uint16()
        self._call("lbagent_local_port", _int("index", index, 64), ctypes.byref(port))
        return port.value

    @property
    def port(self) -> int:
        """The UDP port of the first ``listen=`` address."""
        return self.local_port(0)

    def stop(self, timeout_ms: int = 1000) -> None:
        """Stops answering (every answer says STOPPING from now on) and waits up to
        `timeout_ms` for the monitor thread (0: for ever). Idempotent; raises StopTimeoutError
        when the wait was too short (call again to wait again). Other calls on this agent wait
        meanwhile. close() stops too."""
        self._call("lbagent_stop", _int("timeout_ms", timeout_ms, 32))


def version() -> str:
    """The C library's version, such as "0.1.0"."""
    return _native.load().lbagent_version().decode()


def state_name(state: Union[State, int]) -> str:
    """The library's lower-case name of a state ("up", "drain", ...; "invalid" otherwise)."""
    return _native.load().lbagent_state_name(_int("state", state, 32, signed=True)).decode()


def strerror(code: Union[Result, int]) -> str:
    """The library's text for a result code."""
    return _native.load().lbagent_strerror(_int("code", code, 32, signed=True)).decode()


def library_path() -> str:
    """Where the library was loaded from (what dlopen was given)."""
    return _native.load().path
