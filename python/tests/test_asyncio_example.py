"""examples/asyncio_server.py run as a real server: UP when ready, load, a blocked event loop
caught by the watchdog, recovery, and a drain on SIGTERM."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

from lbagent import Reason, State
from conftest import eventually, probe

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "asyncio_server.py"


def wait_state(port, state, message=None):
    last = []

    def hit():
        answer = probe(port)
        last[:] = [answer]
        return answer is not None and answer.state == state and \
            (message is None or answer.message == message)

    assert eventually(hit, within=20), f"waited for {state!r} {message!r}; last {last}"
    return last[0]


def test_the_asyncio_example_server():
    env = dict(os.environ, LBAGENT_CONFIG="listen=127.0.0.1:0 watchdog_ms=1000")
    server = subprocess.Popen([sys.executable, str(EXAMPLE), "0"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: "queue.Queue[str]" = queue.Queue()
    threading.Thread(target=lambda: [lines.put(l) for l in server.stdout], daemon=True).start()
    try:
        first = lines.get(timeout=30)
        ports = re.search(r"agent on UDP port (\d+), serving TCP 127\.0\.0\.1:(\d+)", first)
        assert ports, first
        agent, tcp = int(ports.group(1)), int(ports.group(2))
        assert wait_state(agent, State.UP, "ready").weight_pct == 100

        with socket.create_connection(("127.0.0.1", tcp), timeout=20) as client:
            stream = client.makefile("rw", encoding="utf-8", newline="\n")

            def ask(line):
                stream.write(line + "\n")
                stream.flush()
                return stream.readline()

            assert ask("hello, asyncio") == "hello, asyncio\n"
            assert ask("STATS") == "1\n"
            assert eventually(lambda: probe(agent).in_use == 1)
            assert probe(agent).capacity == 100

            # A blocked loop: no heartbeats, so the watchdog says DOWN; the agent still answers.
            stream.write("BLOCK 2500\n")
            stream.flush()
            down = wait_state(agent, State.DOWN)
            assert down.reason == Reason.WATCHDOG_EXPIRED
            assert stream.readline() == "unblocked\n"
            back = wait_state(agent, State.UP, "ready")
            assert back.reason == Reason.HOST

            server.send_signal(signal.SIGTERM)
            draining = wait_state(agent, State.DRAIN, "shutting down")
            assert draining.drain is not None and not draining.drain.complete
            # Draining, it still serves, until its client leaves and its one director (this
            # test) has been told twice; then it stops by itself.
            assert ask("still there?") == "still there?\n"
            stream.close()  # the socket's file: without this, closing the socket keeps it open
            client.shutdown(socket.SHUT_RDWR)
        # The answer says complete, or the server saw it first (between two probes) and left.
        def drained():
            if server.poll() is not None:
                return True
            answer = probe(agent, timeout=0.5)
            return answer is not None and answer.drain.complete

        assert eventually(drained, within=30)
        assert server.wait(timeout=30) == 0, server.stderr.read()
        assert lines.get(timeout=10) == "asyncio_server: stopped after 2 lines\n"
        assert server.stderr.read() == "", "no warning, no traceback"
        assert probe(agent, timeout=0.5) is None
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
