"""Python functions the agent calls (checks, the log callback), worker watchdog slots, and
fork, checked with real probes."""

from __future__ import annotations

import gc
import os
import socket
import threading
import weakref

import pytest

import lbagent
from lbagent import LogLevel, Reason, Result, State, callbacks
from conftest import eventually, probe


def answer_is(port, state, reason=None, message=None, service=""):
    def check():
        a = probe(port, service)
        return a is not None and a.state == state and \
            (reason is None or a.reason == reason) and (message is None or a.message == message)
    return eventually(check, within=20)


def test_a_check_passes_fails_with_the_exception_text_and_is_kept_alive(make_agent):
    agent = make_agent(services=["db"])
    port = agent.port
    agent.set_state(State.UP, "ready")
    healthy = threading.Event()
    healthy.set()
    runs = []

    def database_reachable():
        runs.append(threading.get_ident())
        if not healthy.is_set():
            raise ConnectionError("db unreachable")

    agent.add_check("db-ping", database_reachable, service="db", interval_ms=50)
    held = weakref.ref(database_reachable)
    del database_reachable
    gc.collect()
    assert held() is not None, "the agent keeps the function alive"
    assert eventually(lambda: len(runs) >= 2)
    assert threading.get_ident() not in runs, "checks run on the agent's threads"
    assert probe(port, "db").state == State.UP

    healthy.clear()
    assert answer_is(port, State.DOWN, Reason.CHECK_FAILED, "db-ping: db unreachable", "db")
    assert probe(port).state == State.UP, "a service's check leaves the whole server alone"
    healthy.set()
    assert answer_is(port, State.UP, service="db")

    agent.remove_check("db-ping")
    with pytest.raises(lbagent.NotFoundError) as caught:
        agent.remove_check("db-ping")
    assert caught.value.code == Result.ERR_NOT_FOUND
    # The agent lets go of the function once its last run has returned.
    assert eventually(lambda: gc.collect() is not None and held() is None)


def test_a_check_returning_false_or_hanging(make_agent):
    agent = make_agent()
    port = agent.port
    agent.set_state(State.UP, "ready")
    agent.add_check("flag", lambda: False, interval_ms=100)
    assert answer_is(port, State.DOWN, Reason.CHECK_FAILED, "flag: returned False")
    agent.remove_check("flag")
    assert answer_is(port, State.UP, Reason.HOST, "ready")

    release = threading.Event()
    agent.add_check("stuck", lambda: release.wait(30), interval_ms=100, timeout_ms=200)
    assert answer_is(port, State.DOWN, Reason.CHECK_TIMED_OUT)
    assert probe(port) is not None, "a hung check never delays answers"
    release.set()
    assert answer_is(port, State.UP, Reason.HOST)


def test_check_errors_are_clear_and_keep_nothing(make_agent):
    agent = make_agent()
    kept, refused = (lambda: True), [lambda: True, lambda: True, lambda: True]
    agent.add_check("twice", kept)
    with pytest.raises(lbagent.ExistsError, match="exists"):
        agent.add_check("twice", refused[0])
    with pytest.raises(lbagent.UnknownServiceError):
        agent.add_check("x", refused[1], service="nope")
    with pytest.raises(lbagent.InvalidArgumentError):
        agent.add_check("zero", refused[2], interval_ms=0)
    assert callbacks.holds(kept)
    assert not any(callbacks.holds(f) for f in refused), "failed registrations keep nothing"
    agent.close()
    assert eventually(lambda: not callbacks.holds(kept)), "closing lets go of the checks"


def test_the_log_callback_gets_lines_on_the_logger_thread(make_agent):
    agent = make_agent(log_drops_ms=100)
    lines = []
    agent.set_log_callback(lambda level, line: lines.append((level, line, threading.get_ident())))
    garbage = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0

    def dropped_line_logged():
        # The agent sums drops up when a datagram comes at least log_drops_ms after the last
        # summary (it never wakes up on its own), so keep sending.
        nonlocal sent
        garbage.sendto(b"LBAP-garbage", ("127.0.0.1", agent.port))
        sent += 1
        return any("dropped_malformed=" in line for _, line, _ in lines)

    assert eventually(dropped_line_logged), lines
    garbage.close()
    # The last datagrams may still be on their way to the counter.
    assert eventually(lambda: agent.counter(lbagent.Counter.DROPPED_MALFORMED) == sent)
    assert {level for level, _, _ in lines} == {LogLevel.WARN}
    assert threading.get_ident() not in {t for _, _, t in lines}

    def broken(level, line):
        raise RuntimeError("a log callback that raises loses its line, nothing else")

    agent.set_log_callback(broken)
    dropped = agent.counter(lbagent.Counter.DROPPED_MALFORMED)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"LBAP-garbage", ("127.0.0.1", agent.port))
    assert eventually(lambda: agent.counter(lbagent.Counter.DROPPED_MALFORMED) == dropped + 1)
    agent.set_log_callback(lines.append)
    agent.set_log_callback(None)
    agent.stop()
    assert not [line for line in lines if isinstance(line, str)], "None stopped the callback"
    agent.close()


def test_worker_slots(make_agent):
    agent = make_agent(workers=2, worker_timeout_ms=300, worker_policy="any")
    port = agent.port
    agent.set_state(State.UP, "ready")
    with agent.register_worker() as first, agent.register_worker() as second:
        assert first.slot != second.slot
        with pytest.raises(lbagent.FullError):
            agent.register_worker()
        stop = threading.Event()

        def beat(worker):
            while not stop.is_set():
                worker.heartbeat()
                stop.wait(0.05)

        beater = threading.Thread(target=beat, args=(first,))
        beater.start()
        try:
            second.heartbeat()
            # The second worker stops heart-beating: the server is DOWN, "worker stalled".
            assert answer_is(port, State.DOWN, Reason.WORKER_STALLED)
            second.heartbeat()
            assert answer_is(port, State.UP, Reason.HOST, "ready")
        finally:
            stop.set()
            beater.join()
    with pytest.raises(lbagent.NotFoundError):
        first.agent._call("lbagent_worker_heartbeat", first.slot)
    assert agent.release_worker_pid(os.getpid()) == 0


def test_a_prefork_worker_reports_into_the_parents_answers(make_agent):
    agent = make_agent()
    port = agent.port
    agent.set_state(State.UP, "ready")
    pid = os.fork()
    if pid == 0:  # the worker
        code = 1
        try:
            agent.after_fork_worker()
            agent.set_state(State.DRAIN, "worker says drain")
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert answer_is(port, State.DRAIN, Reason.HOST, "worker says drain")


def test_a_daemon_child_takes_the_agent_over():
    agent = lbagent.Agent("listen=127.0.0.1:0")
    port = agent.port
    ready_r, ready_w = os.pipe()
    quit_r, quit_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        code = 1
        try:
            os.close(ready_r)
            os.close(quit_w)
            agent.after_fork_child()
            agent.set_state(State.UP, "daemonized")
            os.write(ready_w, b"ok")
            os.read(quit_r, 1)
            agent.close()
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(quit_r)
    try:
        assert os.read(ready_r, 2) == b"ok"
        agent.close()  # the parent's copy only: the child keeps answering
        assert answer_is(port, State.UP, Reason.HOST, "daemonized")
    finally:
        os.write(quit_w, b"q")
        _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert probe(port, timeout=0.5) is None
