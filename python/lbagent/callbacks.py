"""Python functions that the library calls: host self-checks and the log callback.

C never gets a pointer to a per-registration ctypes object. It gets one of the trampolines
below, which live as long as the module, and an integer key as its userdata; the trampoline
finds the Python callable under that key in a registry. So no callback object can be
collected while C may still call it, and the registry entry is dropped exactly when the
library says it is done with it: a check's entry by its release function (called on the
check's thread once it is removed and its last run has returned, which may be after the agent
was freed, for a check that hung), the log callback's entry after lbagent_free.

A trampoline never lets an exception reach C: a check that raises fails with the exception's
text as its reason; a log callback that raises is ignored.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
from typing import Any, Callable, Dict, Optional

from . import _native
from .enums import LogLevel

_lock = threading.Lock()
_registry: Dict[int, Any] = {}
_keys = itertools.count(1)  # never 0: a NULL userdata reaches Python as None


def register(target: Any) -> int:
    """Keeps `target` alive under a new key (the userdata given to C)."""
    with _lock:
        key = next(_keys)
        _registry[key] = target
        return key


def replace(key: int, target: Any) -> None:
    with _lock:
        _registry[key] = target


def release(key: Optional[int]) -> None:
    with _lock:
        _registry.pop(key, None)


def holds(target: Any) -> bool:
    """True while the library may still call `target` (for tests)."""
    with _lock:
        return any(t is target for t in _registry.values())


def _lookup(key: Optional[int]) -> Any:
    with _lock:
        return _registry.get(key) if key is not None else None


def _write_reason(buffer: Any, size: int, reason: str) -> None:
    """Writes `reason` into the library's buffer, cut at a character boundary, NUL-ended."""
    data = reason.encode("utf-8", "replace")[: max(size - 1, 0)]
    data = data.decode("utf-8", "ignore").encode("utf-8") + b"\0"
    ctypes.memmove(buffer, data, min(len(data), size))


def _run_check(userdata: Optional[int], message: Any, message_len: int) -> int:
    check: Optional[Callable[[], Any]] = _lookup(userdata)
    try:
        if check is None:
            raise RuntimeError("check not registered")
        passed = check() is not False
        if not passed:
            _write_reason(message, message_len, "returned False")
        return 0 if passed else 1
    except BaseException as e:  # never unwind into C
        _write_reason(message, message_len, str(e) or type(e).__name__)
        return 1


def _run_log(userdata: Optional[int], level: int, message: bytes) -> None:
    callback = _lookup(userdata)
    if callback is None:
        return
    try:
        try:
            known: Any = LogLevel(level)
        except ValueError:
            known = level
        callback(known, message.decode("utf-8", "replace"))
    except BaseException:  # never unwind into C; a failing log callback loses its line
        pass


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # another thread may have held it at the fork


os.register_at_fork(after_in_child=_after_fork_in_child)

#: The library calls these; they are never freed.
CHECK_TRAMPOLINE = _native.CHECK_FN(_run_check)
RELEASE_TRAMPOLINE = _native.FREE_FN(release)
LOG_TRAMPOLINE = _native.LOG_FN(_run_log)
