"""Probing from Python, as a director does: lbagent.probe() and lbagent.Prober against real
agents started here, dead and silent ports, an impostor, keys, selectors and asyncio; and the
agent's TCP listeners (tcp_agent=, http=)."""

from __future__ import annotations

import asyncio
import os
import selectors
import socket
import threading
import time
from pathlib import Path
from typing import Dict, List

import pytest

import lbagent
from lbagent import Reason, Result, State
from conftest import eventually

SECRET = "a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0"
OTHER = "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20"


def keys_file(path: Path, text: str, mode: int = 0o600) -> Path:
    """A keys file (docs/SECURITY.md): `ID SECRET_HEX` per line, readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, mode)  # whatever the umask
    return path


@pytest.fixture
def dead_port():
    """A UDP port on 127.0.0.1 where nothing listens (ICMP port unreachable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def silent_port():
    """A UDP port on 127.0.0.1 that receives and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture
def impostor_port():
    """Another UDP service on 127.0.0.1: answers every datagram with a text line."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.1)
        done = threading.Event()

        def serve():
            while not done.is_set():
                try:
                    _, peer = s.recvfrom(2048)
                except socket.timeout:
                    continue
                s.sendto(b"hello\n", peer)

        thread = threading.Thread(target=serve)
        thread.start()
        yield s.getsockname()[1]
        done.set()
        thread.join()


# ---- lbagent.probe: blocking -------------------------------------------------------------

def test_probe_a_live_agent_as_a_director_does(make_agent):
    agent = make_agent("rate_per_source=0", services=["game"])
    port = agent.port
    first = lbagent.probe(f"127.0.0.1:{port}")
    assert (first.state, first.reason, first.serving) == (State.STARTING, Reason.HOST, False)
    agent.set_state(State.UP, "ready")
    agent.set_weight(40)
    agent.set_load(3, 10)
    agent.set_state(State.MAINT, "patching", service="game")
    status = lbagent.probe(("127.0.0.1", port), timeout=2.0)  # a socket-style address too
    assert isinstance(status, lbagent.Status) and isinstance(status.state, State)
    assert (status.state, status.message, status.weight_pct, status.in_use, status.capacity) \
        == (State.UP, "ready", 40, 3, 10)
    assert status.serving
    own = agent.status()
    assert (status.instance_id, status.generation) == (own.instance_id, own.generation)
    game = lbagent.probe(f"127.0.0.1:{port}", "game")
    assert (game.state, game.message, game.serving) == (State.MAINT, "patching", False)
    nope = lbagent.probe(f"127.0.0.1:{port}", service="nope")
    assert (nope.state, nope.reason) == (State.UNKNOWN, Reason.UNKNOWN_SERVICE)


def test_probe_over_ipv6_loopback():
    agent = lbagent.Agent("listen=[::1]:0 initial_state=up")
    try:
        assert lbagent.probe(f"[::1]:{agent.port}").state == State.UP
        assert lbagent.probe(("::1", agent.port)).state == State.UP
    finally:
        agent.close()


def test_probe_says_what_happened_when_there_is_no_answer(make_agent, dead_port, silent_port,
                                                          impostor_port):
    with pytest.raises(lbagent.RefusedError) as refused:
        lbagent.probe(f"127.0.0.1:{dead_port}")
    assert refused.value.code == Result.ERR_REFUSED
    assert str(refused.value).startswith(f"127.0.0.1:{dead_port}: refused")
    assert isinstance(refused.value, ConnectionRefusedError)

    # An agent that was closed: nothing listens on its port any more.
    agent = make_agent()
    port = agent.port
    agent.close()
    with pytest.raises(lbagent.RefusedError):
        lbagent.probe(f"127.0.0.1:{port}")

    with pytest.raises(lbagent.TimedOutError) as silent:
        lbagent.probe(f"127.0.0.1:{silent_port}", timeout=0.2)
    assert silent.value.code == Result.ERR_TIMEOUT
    assert "no answer within 200 ms" in str(silent.value)
    assert isinstance(silent.value, TimeoutError)

    with pytest.raises(lbagent.NotAnAgentError) as impostor:
        lbagent.probe(f"127.0.0.1:{impostor_port}")
    assert impostor.value.code == Result.ERR_NOT_AN_AGENT
    assert "not an lbagent" in str(impostor.value)


def test_probe_rejects_bad_input_clearly(make_agent, tmp_path):
    agent = make_agent()
    target = f"127.0.0.1:{agent.port}"
    with pytest.raises(lbagent.InvalidArgumentError):
        lbagent.probe("127.0.0.1:99999")
    with pytest.raises(lbagent.InvalidArgumentError):
        lbagent.probe(target, "bad\nname")
    with pytest.raises(lbagent.InvalidArgumentError):
        lbagent.probe("127.0.0.1\0:4950")
    with pytest.raises(TypeError):
        lbagent.probe(4950)  # type: ignore[arg-type]
    for timeout in (0, -1, 61, float("nan"), "1"):
        with pytest.raises(lbagent.ConfigError, match="invalid timeout"):
            lbagent.probe(target, timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(lbagent.ConfigError, match="cannot contain a space"):
        lbagent.probe(target, key_file="/etc/my keys")
    missing = tmp_path / "missing"
    with pytest.raises(lbagent.ConfigError) as caught:
        lbagent.probe(target, key_file=missing)
    assert str(missing) in str(caught.value)


# ---- Keys ----------------------------------------------------------------------------------

def test_keys_the_right_one_the_wrong_one_and_none(make_agent, tmp_path, silent_port):
    agent_keys = keys_file(tmp_path / "agent", f"1 {OTHER}\n7 {SECRET}\n")
    right = keys_file(tmp_path / "right", f"7 {SECRET}\n")
    wrong = keys_file(tmp_path / "wrong", f"7 {OTHER}\n")
    agent = make_agent(f"key_file={agent_keys} initial_state=up")
    target = f"127.0.0.1:{agent.port}"

    assert lbagent.probe(target, key_file=right).serving
    assert lbagent.probe(target, key_file=agent_keys, key_id=7).serving
    assert lbagent.probe(target, key_file=agent_keys).serving  # its first key, id 1
    with pytest.raises(lbagent.AuthRequiredError) as unsealed:
        lbagent.probe(target)
    assert unsealed.value.code == Result.ERR_AUTH_REQUIRED
    # The agent drops probes sealed with another secret; the prober tells that from a dead
    # agent with one unsealed probe half-way through its timeout.
    with pytest.raises(lbagent.WrongKeyError) as wrong_key:
        lbagent.probe(target, key_file=wrong, timeout=1.0)
    assert wrong_key.value.code == Result.ERR_WRONG_KEY
    assert str(wrong_key.value).startswith(f"{target}: wrong key")
    with pytest.raises(lbagent.ConfigError, match=f"{right}: no key with id 9"):
        lbagent.probe(target, key_file=right, key_id=9)

    # The non-blocking prober tells them apart the same way: a probe the agent drops for its
    # key is a wrong key; a silent port times out. Unsealed answers (the agent without keys)
    # end nothing early, since anyone may forge them: `good` is not serviced until after its
    # deadline here, so no diagnostic went out and the probe fails as unauthenticated.
    keyless = make_agent("initial_state=up")
    with lbagent.Prober(timeout=1.0, key_file=right) as good, \
            lbagent.Prober(timeout=1.0, key_file=wrong) as bad:
        good.send(target, token="right key")
        good.send(f"127.0.0.1:{keyless.port}", token="agent without keys")
        bad.send(target, token="wrong key")
        bad.send(f"127.0.0.1:{silent_port}", token="silent")
        # `bad` first: its diagnostics are sent by a receive() half-way through the timeout
        # (good's answers wait on its socket meanwhile).
        done = {c.token: c for c in collect(bad) + collect(good)}
    assert done["right key"].ok and done["right key"].status.serving
    unsealed = done["agent without keys"].error
    assert isinstance(unsealed, lbagent.UnauthenticatedError)
    assert unsealed.code == Result.ERR_UNAUTHENTICATED
    assert "no authenticated answer" in str(unsealed)
    dropped = done["wrong key"].error
    assert isinstance(dropped, lbagent.WrongKeyError) and dropped.code == Result.ERR_WRONG_KEY
    assert isinstance(done["silent"].error, lbagent.TimedOutError)


def test_a_keys_file_readable_by_others_is_refused(tmp_path):
    loose = keys_file(tmp_path / "loose", f"7 {SECRET}\n", mode=0o644)
    with pytest.raises(lbagent.ConfigError) as caught:
        lbagent.Agent(f"listen=127.0.0.1:0 key_file={loose}")
    assert str(loose) in str(caught.value)


# ---- lbagent.Prober: non-blocking ----------------------------------------------------------

def collect(prober: lbagent.Prober, within: float = 20.0) -> List[lbagent.Completion]:
    """Runs a selectors loop on the prober until nothing is pending (bounded)."""
    finished: List[lbagent.Completion] = []
    deadline = time.monotonic() + within
    with selectors.DefaultSelector() as selector:
        selector.register(prober, selectors.EVENT_READ)  # through prober.fileno()
        while prober.pending and time.monotonic() < deadline:
            selector.select(prober.timeout())
            finished += prober.receive()
    return finished


def test_a_prober_in_a_selectors_loop(make_agent, dead_port, silent_port, impostor_port):
    agent = make_agent("rate_per_source=0 initial_state=up", services=["game"])
    agent.set_weight(50, service="game")
    target = f"127.0.0.1:{agent.port}"
    with lbagent.Prober(timeout=0.5) as prober:
        assert prober.timeout() is None and prober.pending == 0 and prober.receive() == []
        for i in range(100):  # more than one receive batch
            prober.send(target, ("", "game", "nope")[i % 3], token=("agent", i))
        prober.send(("127.0.0.1", dead_port), token="dead")
        prober.send(f"127.0.0.1:{silent_port}", "game", token="silent")
        prober.send(f"127.0.0.1:{impostor_port}", token="impostor")
        assert prober.pending == 103
        assert 0 < prober.timeout() <= 0.5
        finished = collect(prober)
        assert prober.pending == 0 and prober.timeout() is None

    by_token: Dict[object, lbagent.Completion] = {}
    for completion in finished:
        assert completion.token not in by_token, "each probe finishes exactly once"
        by_token[completion.token] = completion
    assert len(by_token) == 103
    for i in range(100):
        c = by_token[("agent", i)]
        assert c.ok and c.error is None and c.rtt > 0 and c.target == target
        want = (State.UP, 100) if i % 3 == 0 else (State.UP, 50) if i % 3 == 1 else \
            (State.UNKNOWN, 0)
        assert (c.status.state, c.status.weight_pct) == want, c
        assert c.result() is c.status

    dead = by_token["dead"]
    assert isinstance(dead.error, lbagent.RefusedError) and dead.status is None
    assert str(dead.error) == f"127.0.0.1:{dead_port}: " + lbagent.strerror(Result.ERR_REFUSED)
    silent = by_token["silent"]
    assert isinstance(silent.error, lbagent.TimedOutError) and silent.rtt == 0.0
    assert str(silent.error) == \
        f"127.0.0.1:{silent_port} (service game): timeout: no answer within 500 ms"
    with pytest.raises(lbagent.TimedOutError):
        silent.result()
    assert isinstance(by_token["impostor"].error, lbagent.NotAnAgentError)


def test_prober_misuse_and_closing(make_agent):
    prober = lbagent.Prober()
    fd = prober.fileno()
    assert fd >= 0 and repr(prober) == f"<lbagent.Prober fd={fd} pending=0>"
    with pytest.raises(lbagent.InvalidArgumentError, match="names are not resolved"):
        prober.send("localhost:4950")
    with pytest.raises(lbagent.InvalidArgumentError):
        prober.send("127.0.0.1:0")
    with pytest.raises(lbagent.InvalidArgumentError):
        prober.send("127.0.0.1", "bad\nname")
    assert prober.pending == 0, "a failed send leaves nothing in flight"
    prober.send("127.0.0.1:9", token=object())  # closing with probes in flight is fine
    assert prober.pending == 1
    prober.close()
    prober.close()
    assert prober.closed and repr(prober) == "<lbagent.Prober closed>"
    for call in (prober.fileno, prober.receive, prober.timeout, lambda: prober.pending,
                 lambda: prober.send("127.0.0.1:9")):
        with pytest.raises(lbagent.ClosedError):
            call()
    with pytest.raises(lbagent.ConfigError, match="invalid timeout 120"):
        lbagent.Prober(timeout=120)
    with pytest.raises(lbagent.ConfigError):
        lbagent.Prober(key_file="/nonexistent/keys")


# ---- asyncio -------------------------------------------------------------------------------

async def probe_all(prober: lbagent.Prober, targets: List[str]) -> Dict[str, lbagent.Completion]:
    """Probes every target from the running event loop: the prober's descriptor is watched
    with add_reader, and a timer set from prober.timeout() expires the silent ones."""
    loop = asyncio.get_running_loop()
    finished: Dict[str, lbagent.Completion] = {}
    all_done = loop.create_future()
    timer = None

    def collect_finished() -> None:
        nonlocal timer
        for completion in prober.receive():
            finished[completion.token] = completion
        if timer is not None:
            timer.cancel()
        wait = prober.timeout()
        if prober.pending == 0:
            if not all_done.done():
                all_done.set_result(None)
        elif wait is not None:
            timer = loop.call_later(wait, collect_finished)

    for target in targets:
        prober.send(target, token=target)
    loop.add_reader(prober.fileno(), collect_finished)
    try:
        collect_finished()
        await asyncio.wait_for(all_done, 20)
    finally:
        loop.remove_reader(prober.fileno())
        if timer is not None:
            timer.cancel()
    return finished


def test_a_prober_on_an_asyncio_event_loop(make_agent, dead_port, silent_port):
    agents = [make_agent("initial_state=up") for _ in range(3)]
    agents[1].set_state(State.DRAIN, "deploy")
    targets = [f"127.0.0.1:{a.port}" for a in agents]
    targets += [f"127.0.0.1:{dead_port}", f"127.0.0.1:{silent_port}"]

    async def main():
        ticks = 0

        async def ticker():  # the loop keeps running while probes are in flight
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticking = asyncio.ensure_future(ticker())
        with lbagent.Prober(timeout=0.3) as prober:
            finished = await probe_all(prober, targets)
        ticking.cancel()
        return finished, ticks

    finished, ticks = asyncio.run(main())
    assert sorted(finished) == sorted(targets)
    assert [finished[t].status.state for t in targets[:3]] == [State.UP, State.DRAIN, State.UP]
    assert finished[targets[1]].status.message == "deploy"
    assert isinstance(finished[targets[3]].error, lbagent.RefusedError)
    assert isinstance(finished[targets[4]].error, lbagent.TimedOutError)
    assert ticks > 1, "probing never blocked the event loop"


# ---- The agent's TCP listeners -------------------------------------------------------------

def tcp_exchange(port: int, request: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        answer = b""
        while True:
            data = s.recv(4096)
            if not data:
                return answer
            answer += data


def test_tcp_agent_and_http_ports(make_agent):
    agent = make_agent("tcp_agent=127.0.0.1:0 http=127.0.0.1:0")
    agent.set_state(State.UP, "ready")
    agent.set_weight(60)
    tcp, http = agent.tcp_agent_port(), agent.http_port(0)
    assert tcp > 0 and http > 0 and tcp != http
    assert tcp_exchange(tcp) == b"up ready 60% #ready\n"
    answer = tcp_exchange(http, b"GET /health HTTP/1.1\r\nHost: lb\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"up ready 60% #ready\n")
    for index in (1, 2**40):
        with pytest.raises(lbagent.InvalidArgumentError):
            agent.tcp_agent_port(index)
        with pytest.raises(lbagent.InvalidArgumentError):
            agent.http_port(index)
    assert eventually(lambda: agent.counter(lbagent.Counter.ANSWERED_AGENT) == 1
                      and agent.counter(lbagent.Counter.ANSWERED_HTTP) == 1
                      and agent.counter(lbagent.Counter.CONN_ACCEPTED) == 2)

    plain = make_agent()  # no TCP listener configured
    with pytest.raises(lbagent.InvalidArgumentError):
        plain.tcp_agent_port()
    with pytest.raises(lbagent.InvalidArgumentError):
        plain.http_port()
    plain.close()
    with pytest.raises(lbagent.ClosedError):
        plain.http_port()


def _wait(prober: lbagent.Prober, count: int, within: float = 10.0) -> List[lbagent.Completion]:
    """Receives until `count` completions came (or `within` seconds passed)."""
    finished: List[lbagent.Completion] = []
    deadline = time.monotonic() + within
    while len(finished) < count and time.monotonic() < deadline:
        finished += prober.receive()
        time.sleep(0.005)
    assert len(finished) == count, finished
    return finished


def test_a_subscribing_prober_hears_pushed_changes(make_agent):
    agent = make_agent("subscribe=allow allow=127.0.0.0/8 initial_state=up")
    port = agent.local_port()
    with lbagent.Prober(timeout=2.0, subscribe=30) as prober:
        prober.send(("127.0.0.1", port), token="web")
        answered = _wait(prober, 1)
        assert answered[0].ok and not answered[0].pushed
        agent.set_state(State.DRAIN, "deploy")
        pushed = _wait(prober, 1)
        assert pushed[0].pushed and pushed[0].token == "web"
        assert pushed[0].status.state == State.DRAIN and pushed[0].status.message == "deploy"
        assert pushed[0].rtt == 0.0
    with pytest.raises(lbagent.ConfigError):
        lbagent.Prober(subscribe=61)
