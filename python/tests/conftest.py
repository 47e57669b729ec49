"""Helpers for the suite: agents on loopback, and a prober that speaks protocol v1 from
docs/PROTOCOL.md (written from the document, independently of the Rust client)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

import lbagent

REPO = Path(__file__).resolve().parents[2]
HEADER = REPO / "include" / "lbagent.h"


def probe_binary() -> Path:
    """lbagent-probe of this build (make test passes LBAGENT_PROBE)."""
    path = Path(os.environ.get("LBAGENT_PROBE", REPO / "target" / "debug" / "lbagent-probe"))
    assert path.is_file(), f"lbagent-probe not found at {path}: build it, or set LBAGENT_PROBE"
    return path


@dataclass
class DrainProgress:
    """The drain progress that follows a STATUS's message (flag bit 3, 0x0008)."""

    draining: bool
    complete: bool
    untracked: bool
    told_you: int
    probers_told: int
    probers_pending: int
    drain_ms: int


DRAIN = struct.Struct(">BBHHI")  # 10 bytes


@dataclass
class Answer:
    """A decoded STATUS."""

    instance_id: int
    generation: int
    state: int
    reason: int
    weight_pct: int
    since_ms: int
    in_use: int
    capacity: int
    message: str
    drain: Optional[DrainProgress] = None


STATUS_HEAD = struct.Struct(">4sBBH8sQIBBHIIIB")  # 45 bytes, then the message


def probe(port: int, service: str = "", length: int = 338, timeout: float = 2.0,
          host: str = "127.0.0.1", drain: bool = True) -> Optional[Answer]:
    """Sends a PROBE (asking for the drain progress unless `drain` is False) and returns the
    STATUS, or None when nothing valid came back in time."""
    nonce = os.urandom(8)
    name = service.encode("ascii")
    flags = b"\0\x08" if drain else b"\0\0"
    request = b"LBAP" + bytes([1, 1]) + flags + nonce + bytes([len(name)]) + name
    request += bytes(length - len(request))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect((host, port))
        s.send(request)
        try:
            data = s.recv(2048)
        except (socket.timeout, ConnectionRefusedError):
            return None
    assert len(data) <= len(request), "an answer is never longer than its request"
    head = STATUS_HEAD.unpack_from(data)
    magic, version, kind, flags, echoed, instance, generation, state, reason, weight, since, \
        in_use, capacity, mlen = head
    assert (magic, version, kind, echoed) == (b"LBAP", 1, 2, nonce), head
    end = STATUS_HEAD.size + mlen
    message = data[STATUS_HEAD.size:end].decode("utf-8")
    progress = None
    if drain:
        assert flags & 0x0008, "the agent sends the drain progress when asked"
        dflags, told_you, told, pending, drain_ms = DRAIN.unpack_from(data, end)
        progress = DrainProgress(bool(dflags & 1), bool(dflags & 2), bool(dflags & 4),
                                 told_you, told, pending, drain_ms)
        end += DRAIN.size
    else:
        assert not flags & 0x0008, "no drain progress unless asked"
    assert len(data) == end
    return Answer(instance, generation, state, reason, weight, since, in_use, capacity, message,
                  progress)


def ask_text(port: int, payload: bytes = b"keepalived check - keepalived ch",
             timeout: float = 2.0) -> Optional[bytes]:
    """Sends a text request (keepalived's default payload) and returns the line."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))
        s.send(payload)
        try:
            return s.recv(2048)
        except (socket.timeout, ConnectionRefusedError):
            return None


def eventually(condition: Callable[[], bool], within: float = 10.0) -> bool:
    """Polls `condition` until it holds or `within` seconds pass (never a timing assertion)."""
    deadline = time.monotonic() + within
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


def run_python(code: str, env: Dict[str, Optional[str]], cwd: Optional[Path] = None,
               timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter (the library is loaded once per process) with the
    environment changed by `env` (None removes a variable)."""
    full = dict(os.environ)
    for key, value in env.items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    return subprocess.run([sys.executable, "-c", code], env=full, cwd=cwd, timeout=timeout,
                          capture_output=True, text=True)


def unbundled_package(tmp_path: Path) -> str:
    """A copy of the installed package without the library that `pip install ./python`
    bundles (as LBAGENT_BUNDLE=never installs it); returns the PYTHONPATH that finds it."""
    import shutil

    root = tmp_path / "unbundled"
    shutil.copytree(Path(lbagent.__file__).resolve().parent, root / "lbagent",
                    ignore=shutil.ignore_patterns("*.so*", "__pycache__"))
    return str(root)


@pytest.fixture
def make_agent():
    """Starts agents on 127.0.0.1 with a system-chosen port; closes them after the test."""
    started: List[lbagent.Agent] = []

    def start(config: str = "", **settings) -> lbagent.Agent:
        agent = lbagent.Agent(f"listen=127.0.0.1:0 {config}", **settings)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.close()
