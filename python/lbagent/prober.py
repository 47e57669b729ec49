"""Asking agents for their status, as a director does: the blocking :func:`probe`, and the
non-blocking :class:`Prober` for event loops (selectors, asyncio's ``add_reader``).

Both send protocol v1 probes through the library's prober (lbagent_probe, lbagent_prober_*):
a probe is answered with a :class:`Status`, or fails with the exception that says why there
is no answer: :class:`TimedOutError` (also a built-in ``TimeoutError``),
:class:`RefusedError` (nothing listens there), :class:`UnreachableError`,
:class:`NotAnAgentError`, :class:`VersionMismatchError`, :class:`AuthRequiredError`,
:class:`WrongKeyError`.
"""

from __future__ import annotations

import ctypes
import dataclasses
import itertools
import math
import os
import threading
import weakref
from typing import Any, Dict, List, Optional, Tuple, Union

from . import _native
from ._handle import HandleOwner
from .agent import Status, _config_text, _text, strerror
from .enums import Result
from .errors import ClosedError, ConfigError, Error, error_for

#: A probe target: ``"HOST:PORT"``, ``"[IPv6]:PORT"``, a bare address (port 4950), or a
#: ``(host, port)`` tuple as the socket module uses.
Target = Union[str, Tuple[Any, ...]]
KeyFile = Union[str, "os.PathLike[str]"]


def _target_text(target: Target) -> str:
    if isinstance(target, str):
        return target
    if isinstance(target, tuple) and len(target) >= 2:
        host, port = str(target[0]), target[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    raise TypeError(f"lbagent: a probe target is a str or a (host, port) tuple, not {target!r}")


def _about(where: str, failure: str) -> str:
    """A probe's failure as "TARGET: what happened" (the library's "lbagent_probe: " prefix
    gives way to the target, which says more)."""
    _, _, detail = failure.partition(": ")
    return f"{where}: {detail or failure}"


def _options(timeout: float, key_file: Optional[KeyFile], key_id: Optional[int],
             subscribe: Optional[float] = None) -> bytes:
    """The prober options string: timeout_ms=N [key_file=PATH [key_id=N]] [subscribe_ms=N]."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not 0 < timeout <= 60:
        raise ConfigError(f"lbagent: invalid timeout {timeout!r}: a probe timeout is in "
                          "seconds, above 0 and at most 60", Result.ERR_CONFIG)
    settings: Dict[str, Any] = {"timeout_ms": math.ceil(timeout * 1000)}
    if key_file is not None:
        settings["key_file"] = os.fspath(key_file)
    if key_id is not None:
        settings["key_id"] = key_id
    if subscribe is not None:
        if isinstance(subscribe, bool) or not isinstance(subscribe, (int, float)) \
                or not 0 < subscribe <= 60:
            raise ConfigError(f"lbagent: invalid subscribe {subscribe!r}: a lease in seconds, "
                              "above 0 and at most 60", Result.ERR_CONFIG)
        settings["subscribe_ms"] = math.ceil(subscribe * 1000)
    options = _config_text(None, settings)
    assert options is not None
    return options


def probe(target: Target, service: str = "", timeout: float = 1.0,
          key_file: Optional[KeyFile] = None, key_id: Optional[int] = None) -> Status:
    """Asks the agent at `target` about `service` ("": the whole server) and waits for the
    answer, at most `timeout` seconds. Names are resolved (this may wait on DNS).

    With `key_file` (a keys file, mode 600, see docs/SECURITY.md), the probe is sealed with
    its first key, or with `key_id`, and only answers sealed with that key count.

    Returns the :class:`Status` the agent answered (``status.serving`` says whether the server
    should receive new connections). Raises, with the library's text: TimedOutError,
    RefusedError, UnreachableError, NotAnAgentError, VersionMismatchError, AuthRequiredError,
    WrongKeyError; InvalidArgumentError (a bad target or service name), ConfigError (bad
    options or an unreadable keys file). The GIL is released while it waits.
    """
    lib = _native.load()
    where = _target_text(target)
    options = _options(timeout, key_file, key_id)
    raw = _native.lbagent_status()
    code = lib.lbagent_probe(_text("target", where), _text("service", service), options,
                             ctypes.byref(raw))
    if code != Result.OK:
        raise error_for(code, _about(where, lib.failure("lbagent_probe", code)))
    return Status._from_c(raw)


@dataclasses.dataclass(frozen=True)
class Completion:
    """One finished probe of a :class:`Prober`: answered (``status``) or not (``error``)."""

    #: The token given to :meth:`Prober.send`.
    token: Any
    #: The target and service as sent.
    target: str
    service: str
    #: The agent's answer; None when there is none.
    status: Optional[Status]
    #: Why there is no answer (TimedOutError, RefusedError, WrongKeyError, ...); None when
    #: answered.
    error: Optional[Error]
    #: Round-trip time in seconds (0.0 without an answer, and for a pushed change).
    rtt: float
    #: A change the agent pushed (``Prober(subscribe=...)``), not the answer to a probe.
    pushed: bool = False

    @property
    def ok(self) -> bool:
        """True when the agent answered (whatever it said: see ``status.serving``)."""
        return self.error is None

    def result(self) -> Status:
        """The answer, or raises the error that says why there is none."""
        if self.error is not None:
            raise self.error
        assert self.status is not None
        return self.status


class Prober(HandleOwner):
    """A non-blocking prober: one UDP socket on which any number of probes are in flight.

    ``Prober(timeout=1.0, key_file=None, key_id=None)``: every probe sent through it has that
    timeout (seconds) and, with `key_file`, is sealed with that key: only an answer sealed
    with it completes the probe, and nothing that fails authentication ends it before its
    timeout. Like :func:`probe`, the prober sends one unsealed probe half-way through the
    timeout of a sealed probe still without a valid answer; at the timeout an agent that
    answered that one but not the sealed probe (it lacks the key) finishes as
    :class:`WrongKeyError`, other replies as :class:`UnauthenticatedError`, silence as
    :class:`TimedOutError`. Use it in an event loop:

    1. :meth:`send` for each target, with any token (to know the answer again);
    2. wait until :meth:`fileno` is readable or :meth:`timeout` seconds have passed
       (``selectors``, or asyncio's ``loop.add_reader(prober.fileno(), ...)`` plus
       ``loop.call_later(prober.timeout(), ...)``);
    3. :meth:`receive`: every finished probe, answered, failed or timed out, comes out once
       as a :class:`Completion`; repeat from 2 while :attr:`pending`.

    With ``subscribe=SECONDS`` (a lease, at most 60) every probe also asks the agent to push
    its changes; an agent that grants it (the probe is sealed with a key it knows, or it runs
    with ``subscribe=allow``) sends each change at once, and :meth:`receive` returns it as a
    Completion with ``pushed`` set and the token of that target's last answered probe. Keep
    probing more often than the lease: each probe renews it, and stays the liveness check.

    A context manager; :meth:`close` is idempotent (remove the descriptor from your selector
    or loop first); a closed Prober raises :class:`ClosedError`. Thread-safe.
    """

    #: How many results one lbagent_prober_receive call collects (it is called until done).
    _BATCH = 64

    def __init__(self, timeout: float = 1.0, key_file: Optional[KeyFile] = None,
                 key_id: Optional[int] = None, subscribe: Optional[float] = None):
        self._handle: Optional[Any] = None  # first, so that close() works if this fails
        self._lock = threading.RLock()  # held during every C call, so close() cannot free
        # What was sent, by the integer token the library carries: (token, target, service).
        self._sent: Dict[int, Tuple[Any, str, str]] = {}
        # With subscribe: the last answered probe of each (target, service), whose token the
        # agent's pushes carry.
        self._answered: Dict[Tuple[str, str], int] = {}
        self._pushable: Dict[int, Tuple[Any, str, str]] = {}
        self._subscribe = subscribe is not None
        options = _options(timeout, key_file, key_id, subscribe)
        self._timeout_ms = math.ceil(timeout * 1000)
        self._ids = itertools.count(1)
        self._results = (_native.lbagent_probe_result * self._BATCH)()
        self._lib = _native.load()
        handle = _native.PROBER_P()
        code = self._lib.lbagent_prober_new(options, ctypes.byref(handle))
        if code != Result.OK:
            raise error_for(code, self._lib.failure("lbagent_prober_new", code))
        self._handle = handle
        _live_probers.add(self)

    # ---- Lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the socket and frees the prober; probes in flight are dropped. Idempotent."""
        with self._lock:
            handle, self._handle = self._handle, None
            self._sent.clear()
            self._answered.clear()
            self._pushable.clear()
            if handle is not None:
                self._lib.lbagent_prober_free(handle)

    def __repr__(self) -> str:
        if self._handle is None:
            return "<lbagent.Prober closed>"
        return f"<lbagent.Prober fd={self.fileno()} pending={self.pending}>"

    def _live(self) -> Any:
        if self._handle is None:
            raise ClosedError("lbagent: the prober is closed", Result.ERR_BAD_HANDLE)
        return self._handle

    # ---- The event loop -------------------------------------------------------------------

    def fileno(self) -> int:
        """The socket to wait on for reading (it belongs to the prober: do not read, write or
        close it). Makes the Prober usable with selectors directly."""
        with self._lock:
            return self._lib.lbagent_prober_fd(self._live())

    def send(self, target: Target, service: str = "", token: Any = None) -> None:
        """Sends one probe about `service` ("": the whole server) to `target` and returns at
        once; it finishes through :meth:`receive` with `token` (any object). `target` is
        numeric, never resolved: ``"IPv4[:PORT]"``, ``"[IPv6]:PORT"``, a bare IPv6 address,
        or a ``(host, port)`` tuple. Raises InvalidArgumentError (not a numeric address, port
        0, a bad service name) or UnreachableError (no route); nothing is then in flight."""
        where = _target_text(target)
        c_target, c_service = _text("target", where), _text("service", service)
        with self._lock:
            ident = next(self._ids)
            code = self._lib.lbagent_prober_send(self._live(), c_target, c_service, ident)
            if code == Result.OK:
                self._sent[ident] = (token, where, service)
                return
            detail = self._lib.failure("lbagent_prober_send", code)
        raise error_for(code, _about(where, detail))

    def receive(self) -> List[Completion]:
        """Every probe finished since the last call, each exactly once (answers, ICMP errors,
        expired timeouts), and with ``subscribe`` every change an agent pushed (``pushed``,
        with the token of that target's last answered probe); never blocks. An empty list
        when none has finished."""
        finished: List[Completion] = []
        count = ctypes.c_size_t()
        with self._lock:
            handle = self._live()
            while True:
                code = self._lib.lbagent_prober_receive(handle, self._results, self._BATCH,
                                                        ctypes.byref(count))
                if code != Result.OK:
                    raise error_for(code, self._lib.failure("lbagent_prober_receive", code))
                finished.extend(self._completion(r) for r in self._results[:count.value])
                if count.value < self._BATCH:
                    return finished

    def _completion(self, raw: "_native.lbagent_probe_result") -> Completion:
        if raw.result == Result.OK and raw.rtt_us == 0:
            # A change the agent pushed, for the probe whose subscription it granted.
            token, where, service = self._pushable.get(raw.token, (raw.token, "?", ""))
            return Completion(token, where, service, Status._from_c(raw.status), None, 0.0,
                              pushed=True)
        token, where, service = self._sent.pop(raw.token, (raw.token, "?", ""))
        if raw.result == Result.OK:
            if self._subscribe:
                older = self._answered.get((where, service))
                if older is not None:
                    self._pushable.pop(older, None)
                self._answered[(where, service)] = raw.token
                self._pushable[raw.token] = (token, where, service)
            return Completion(token, where, service, Status._from_c(raw.status), None,
                              raw.rtt_us / 1e6)
        if raw.result == Result.ERR_TIMEOUT:
            why = f"timeout: no answer within {self._timeout_ms} ms"
        else:
            why = strerror(raw.result)
        about = f"{where} (service {service})" if service else where
        return Completion(token, where, service, None, error_for(raw.result, f"{about}: {why}"),
                          0.0)

    def timeout(self) -> Optional[float]:
        """Seconds until :meth:`receive` has something to do (a probe to expire, or a keyed
        probe's diagnostic to send); 0.0 when finished probes are waiting; None when nothing is
        in flight. The timeout for ``selector.select()``."""
        with self._lock:
            ms = self._lib.lbagent_prober_timeout_ms(self._live())
        return None if ms < 0 else ms / 1000

    @property
    def pending(self) -> int:
        """Probes sent and not yet returned by :meth:`receive`."""
        with self._lock:
            return self._lib.lbagent_prober_pending(self._live())


#: Live probers, so that a forked child gets fresh locks (as for agents).
_live_probers: "weakref.WeakSet[Prober]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for prober in list(_live_probers):
        prober._lock = threading.RLock()


os.register_at_fork(after_in_child=_after_fork_in_child)
