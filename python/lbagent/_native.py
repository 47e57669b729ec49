"""The C library: finding and loading it, and the prototype of every function of lbagent.h.

Every function is declared once, in PROTOTYPES, with its ctypes return and argument types,
and every callback type as a ctypes.CFUNCTYPE; tests/test_native.py parses include/lbagent.h
and fails when they differ.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from ctypes import (POINTER, c_char, c_char_p, c_int, c_size_t, c_uint, c_uint16, c_uint32,
                    c_uint64, c_void_p)
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .errors import LibraryNotFoundError

#: The environment variable naming the library to load (a path or a name for dlopen).
LIBRARY_ENV = "LBAGENT_LIBRARY"
#: The shared library's soname.
SONAME = "liblbagent.so.0"


class lbagent(ctypes.Structure):
    """`struct lbagent`: the opaque agent handle (only pointers to it exist)."""


class lbagent_status(ctypes.Structure):
    """`struct lbagent_status`, filled in by lbagent_get_status and by the probers."""

    _fields_ = [
        ("state", c_int),
        ("reason", c_int),
        ("weight_pct", c_uint),
        ("in_use", c_uint32),
        ("capacity", c_uint32),
        ("generation", c_uint32),
        ("since_ms", c_uint32),
        ("instance_id", c_uint64),
        ("message", c_char * 256),
    ]


class lbagent_drain(ctypes.Structure):
    """`struct lbagent_drain`, filled in by lbagent_drain_status."""

    _fields_ = [
        ("complete", c_int),
        ("draining", c_int),
        ("probers_told", c_uint32),
        ("probers_pending", c_uint32),
        ("probers_untracked", c_int),
        ("drain_ms", c_uint32),
        ("in_use", c_uint64),
        ("state", c_int),
    ]


class lbagent_prober(ctypes.Structure):
    """`struct lbagent_prober`: the opaque prober handle (only pointers to it exist)."""


class lbagent_probe_result(ctypes.Structure):
    """`struct lbagent_probe_result`: one finished probe, filled in by lbagent_prober_receive."""

    _fields_ = [
        ("token", c_uint64),
        ("result", c_int),
        ("rtt_us", c_uint32),
        ("status", lbagent_status),
    ]


AGENT_P = POINTER(lbagent)
PROBER_P = POINTER(lbagent_prober)

#: `lbagent_check_fn`: int (*)(void *userdata, char *message, size_t message_len)
CHECK_FN = ctypes.CFUNCTYPE(c_int, c_void_p, POINTER(c_char), c_size_t)
#: `lbagent_free_fn`: void (*)(void *userdata)
FREE_FN = ctypes.CFUNCTYPE(None, c_void_p)
#: `lbagent_log_fn`: void (*)(void *userdata, int level, const char *message)
LOG_FN = ctypes.CFUNCTYPE(None, c_void_p, c_int, c_char_p)

#: name: (restype, argtypes), exactly as in include/lbagent.h.
PROTOTYPES: Dict[str, Tuple[object, List[object]]] = {
    "lbagent_start": (c_int, [c_char_p, POINTER(AGENT_P)]),
    "lbagent_set_state": (c_int, [AGENT_P, c_char_p, c_int, c_char_p]),
    "lbagent_set_weight": (c_int, [AGENT_P, c_char_p, c_uint]),
    "lbagent_set_load": (c_int, [AGENT_P, c_char_p, c_uint32, c_uint32]),
    "lbagent_heartbeat": (c_int, [AGENT_P]),
    "lbagent_get_status": (c_int, [AGENT_P, c_char_p, POINTER(lbagent_status)]),
    "lbagent_drain_status": (c_int, [AGENT_P, c_char_p, POINTER(lbagent_drain)]),
    "lbagent_wait_drained": (c_int, [AGENT_P, c_char_p, c_uint32]),
    "lbagent_get_counter": (c_int, [AGENT_P, c_int, POINTER(c_uint64)]),
    "lbagent_local_port": (c_int, [AGENT_P, c_size_t, POINTER(c_uint16)]),
    "lbagent_tcp_agent_port": (c_int, [AGENT_P, c_size_t, POINTER(c_uint16)]),
    "lbagent_http_port": (c_int, [AGENT_P, c_size_t, POINTER(c_uint16)]),
    "lbagent_stop": (c_int, [AGENT_P, c_uint32]),
    "lbagent_free": (None, [AGENT_P]),
    "lbagent_state_name": (c_char_p, [c_int]),
    "lbagent_reason_name": (c_char_p, [c_int]),
    "lbagent_strerror": (c_char_p, [c_int]),
    "lbagent_last_error": (c_size_t, [POINTER(c_char), c_size_t]),
    "lbagent_version": (c_char_p, []),
    "lbagent_add_check": (c_int, [AGENT_P, c_char_p, c_char_p, CHECK_FN, c_void_p, c_uint32,
                                  c_uint32]),
    "lbagent_add_check_with_free": (c_int, [AGENT_P, c_char_p, c_char_p, CHECK_FN, c_void_p,
                                            FREE_FN, c_uint32, c_uint32]),
    "lbagent_remove_check": (c_int, [AGENT_P, c_char_p]),
    "lbagent_set_log_callback": (c_int, [AGENT_P, LOG_FN, c_void_p]),
    "lbagent_worker_register": (c_int, [AGENT_P, POINTER(c_uint)]),
    "lbagent_worker_heartbeat": (c_int, [AGENT_P, c_uint]),
    "lbagent_worker_unregister": (c_int, [AGENT_P, c_uint]),
    "lbagent_worker_release_pid": (c_int, [AGENT_P, c_int, POINTER(c_uint)]),
    "lbagent_after_fork_child": (c_int, [AGENT_P]),
    "lbagent_after_fork_worker": (c_int, [AGENT_P]),
    "lbagent_probe": (c_int, [c_char_p, c_char_p, c_char_p, POINTER(lbagent_status)]),
    "lbagent_prober_new": (c_int, [c_char_p, POINTER(PROBER_P)]),
    "lbagent_prober_fd": (c_int, [PROBER_P]),
    "lbagent_prober_send": (c_int, [PROBER_P, c_char_p, c_char_p, c_uint64]),
    "lbagent_prober_receive": (c_int, [PROBER_P, POINTER(lbagent_probe_result), c_size_t,
                                       POINTER(c_size_t)]),
    "lbagent_prober_timeout_ms": (c_int, [PROBER_P]),
    "lbagent_prober_pending": (c_size_t, [PROBER_P]),
    "lbagent_prober_free": (None, [PROBER_P]),
}

class Library:
    """The loaded library, with every function of PROTOTYPES typed (as attributes)."""

    def __init__(self, cdll: ctypes.CDLL, path: str):
        self.cdll = cdll
        #: Where the library was found (what was passed to dlopen).
        self.path = path
        for name, (restype, argtypes) in PROTOTYPES.items():
            function = getattr(cdll, name)
            function.restype = restype
            function.argtypes = argtypes
            setattr(self, name, function)

    def last_error(self) -> str:
        """This thread's lbagent_last_error() text ("" when no call failed)."""
        length = self.lbagent_last_error(None, 0)
        if length == 0:
            return ""
        buf = ctypes.create_string_buffer(length + 1)
        self.lbagent_last_error(buf, len(buf))
        return buf.value.decode("utf-8", "replace")

    def failure(self, name: str, code: int) -> str:
        """Why the call `name` just failed with `code`: this thread's last error, which every
        failing call sets as "name: what was wrong", or, for the hot-path calls that never
        touch it (heartbeat, set_state, set_weight, set_load, worker heartbeat), the code's
        description."""
        detail = self.last_error()
        if detail.startswith(name + ":"):
            return detail
        description = self.lbagent_strerror(code).decode("utf-8", "replace")
        return f"{name}: {description}"


def candidates() -> List[Tuple[str, str]]:
    """Where to look, in order: (what dlopen gets, why it is tried)."""
    explicit = os.environ.get(LIBRARY_ENV)
    if explicit:
        # An explicit choice is the only one: never fall back to another library silently.
        return [(explicit, LIBRARY_ENV)]
    here = Path(__file__).resolve().parent
    found: List[Tuple[str, str]] = [
        (str(here / name), "package directory")
        for name in (SONAME, "liblbagent.so")
        if (here / name).exists()
    ]
    found.append((SONAME, "system search path"))
    name = ctypes.util.find_library("lbagent")
    if name is not None and name != SONAME:
        found.append((name, "ctypes.util.find_library"))
    return found


_lock = threading.Lock()
_library: Optional[Library] = None


def load() -> Library:
    """The library, loaded on first use; raises LibraryNotFoundError saying where it looked."""
    global _library
    with _lock:
        if _library is None:
            tried = []
            for path, why in candidates():
                try:
                    _library = Library(ctypes.CDLL(path), path)
                    break
                except OSError as e:
                    tried.append(f"{path} ({why}): {e}")
                except AttributeError as e:  # a library without lbagent's functions
                    tried.append(f"{path} ({why}): not lbagent: {e}")
            else:
                if os.environ.get(LIBRARY_ENV):
                    fix = (f"fix {LIBRARY_ENV} (the path of {SONAME}), or unset it to search "
                           "the system")
                else:
                    fix = (f"to fix it, set {LIBRARY_ENV} to the path of {SONAME} (make build "
                           "puts it in build/lib/), or install it (make install) and run "
                           "ldconfig, or add its directory to LD_LIBRARY_PATH")
                raise LibraryNotFoundError(
                    "lbagent: cannot load the library; tried " + "; ".join(tried) + "; " + fix
                )
        return _library
