"""The Agent used like a real host would, checked with real UDP probes on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading

import pytest

import lbagent
from lbagent import Counter, Reason, Result, State
from conftest import REPO, ask_text, eventually, probe, probe_binary


def test_a_context_manager_starts_answers_and_closes(make_agent):
    with lbagent.Agent("listen=127.0.0.1:0") as agent:
        port = agent.port
        first = probe(port)
        assert first.state == State.STARTING and first.reason == Reason.HOST
        agent.set_state(State.UP, "ready")
        assert probe(port).state == State.UP
        assert repr(agent) == f"<lbagent.Agent on UDP port {port}>"
    assert agent.closed
    assert repr(agent) == "<lbagent.Agent closed>"
    assert probe(port, timeout=0.5) is None, "a closed agent answers nothing"


def test_close_is_idempotent_and_a_closed_agent_raises(make_agent):
    agent = make_agent()
    agent.close()
    agent.close()
    for call in (agent.heartbeat, lambda: agent.set_state(State.UP), agent.status,
                 lambda: agent.set_weight(5), lambda: agent.stop(), lambda: agent.port):
        with pytest.raises(lbagent.ClosedError) as caught:
            call()
        assert caught.value.code == Result.ERR_BAD_HANDLE
        assert isinstance(caught.value, ValueError)


def test_states_reasons_weight_and_load_reach_the_director(make_agent):
    agent = make_agent()
    port = agent.port
    generation = agent.status().generation
    for state in (State.UP, State.DRAIN, State.MAINT, State.DOWN, State.STARTING, State.UP):
        agent.set_state(state, f"now {state.name.lower()}")
        answer = probe(port)
        assert (answer.state, answer.reason, answer.message) == \
            (state, Reason.HOST, f"now {state.name.lower()}")
        status = agent.status()
        assert (status.state, status.message) == (state, f"now {state.name.lower()}")
        assert status.generation > generation
        generation = status.generation
    agent.set_state(State.UP, None)
    assert agent.status().message == ""
    agent.set_weight(40)
    agent.set_load(3, 10)
    answer = probe(port)
    assert (answer.weight_pct, answer.in_use, answer.capacity) == (40, 3, 10)
    assert ask_text(port) == b"up ready 40%\n"
    status = agent.status()
    assert status.serving and isinstance(status.state, State)
    assert status.instance_id == answer.instance_id
    agent.set_weight(0)
    assert not agent.status().serving
    assert ask_text(port).startswith(b"drain")


def test_services_and_the_unknown_service(make_agent):
    agent = make_agent(services=["game", "chat"])
    port = agent.port
    agent.set_state(State.UP, "ready")
    agent.set_state(State.MAINT, "patching", service="game")
    agent.set_weight(50, service="chat")
    agent.set_load(7, 8, service="chat")
    assert probe(port, "game").state == State.MAINT
    assert probe(port, "game").message == "patching"
    chat = agent.status("chat")
    assert (chat.state, chat.weight_pct, chat.in_use) == (State.UP, 50, 7)
    assert probe(port).state == State.UP

    unknown = agent.status("nope")
    assert (unknown.state, unknown.reason) == (State.UNKNOWN, Reason.UNKNOWN_SERVICE)
    answer = probe(port, "nope")
    assert (answer.state, answer.reason) == (State.UNKNOWN, Reason.UNKNOWN_SERVICE)
    # One rule in every language: a call that reports about a service not in services= is an
    # error (here an exception that names it); reading about one answers UNKNOWN, as a
    # director is told.
    for call, text in (
            (lambda: agent.set_state(State.UP, service="gmae"),
             'lbagent_set_state: unknown service "gmae": not listed in services='),
            (lambda: agent.set_weight(1, service="gmae"),
             'lbagent_set_weight: unknown service "gmae": not listed in services='),
            (lambda: agent.set_load(1, 2, service="gmae"),
             'lbagent_set_load: unknown service "gmae": not listed in services='),
            (lambda: agent.add_check("db", lambda: True, service="gmae"),
             'lbagent_add_check_with_free: unknown service "gmae": not listed in services= '
             '(game, chat)')):
        with pytest.raises(lbagent.UnknownServiceError) as caught:
            call()
        assert caught.value.code == Result.ERR_UNKNOWN_SERVICE
        assert str(caught.value) == text
    assert agent.counter(lbagent.Counter.HOST_UNKNOWN_SERVICE) == 4


def test_the_watchdog_reports_a_host_that_stopped_heartbeating(make_agent):
    agent = make_agent(watchdog_ms=300)
    port = agent.port
    agent.set_state(State.UP, "ready")
    assert eventually(lambda: probe(port).reason == Reason.WATCHDOG_EXPIRED)
    expired = probe(port)
    assert (expired.state, expired.message) == (State.DOWN, "watchdog expired")
    assert agent.status().reason == Reason.WATCHDOG_EXPIRED
    agent.heartbeat()
    back = probe(port)
    assert (back.state, back.reason, back.message) == (State.UP, Reason.HOST, "ready")


def test_bad_values_are_clear_errors(make_agent):
    agent = make_agent()
    cases = [
        (lambda: agent.set_state(State.UNKNOWN), "lbagent_set_state: argument out of range"),
        (lambda: agent.set_state(7), "lbagent_set_state: argument out of range"),
        (lambda: agent.set_state(2**32 + 2), "state 4294967298 is out of range"),
        (lambda: agent.set_weight(101), "lbagent_set_weight: argument out of range"),
        (lambda: agent.set_weight(-1), "weight_pct -1 is out of range"),
        (lambda: agent.set_load(2**32, 1), "in_use 4294967296 is out of range"),
        (lambda: agent.counter(99), "lbagent_get_counter: 99 is not an LBAGENT_COUNTER_*"),
        (lambda: agent.local_port(1), "lbagent_local_port: index 1: the configuration has 1 listen="),
        (lambda: agent.set_state(State.UP, "bad\0reason"), "contains a NUL character"),
        (lambda: agent.set_state(State.UP, service="ga\0me"), "contains a NUL character"),
    ]
    for call, text in cases:
        with pytest.raises(lbagent.InvalidArgumentError) as caught:
            call()
        assert text in str(caught.value)
        assert caught.value.code == Result.ERR_INVALID_ARGUMENT
    with pytest.raises(TypeError):
        agent.set_weight(1.5)
    assert agent.status().state == State.STARTING, "no bad call changed anything"


def test_configuration_and_bind_errors_carry_the_library_text():
    with pytest.raises(lbagent.ConfigError) as caught:
        lbagent.Agent("listen=127.0.0.1:0 watchdog_ms=soon")
    assert caught.value.code == Result.ERR_CONFIG
    assert '"watchdog_ms"' in str(caught.value) and '"soon"' in str(caught.value)
    assert isinstance(caught.value, ValueError)

    with pytest.raises(lbagent.ConfigError, match='unknown key "colour"'):
        lbagent.Agent("listen=127.0.0.1:0", colour="blue")
    with pytest.raises(lbagent.ConfigError, match='for key "services"'):
        lbagent.Agent(listen="127.0.0.1:0", services="a b")

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(lbagent.BindError) as caught:
            lbagent.Agent(listen=address)
        assert caught.value.code == Result.ERR_BIND
        assert address in caught.value.detail and "in use" in caught.value.detail


def test_keyword_settings_and_the_environment(make_agent, monkeypatch):
    agent = make_agent(services=("a", "b"), text=False, initial_state="up")
    assert agent.status().state == State.UP
    assert ask_text(agent.port, timeout=0.5) is None, "text=off"
    assert eventually(lambda: agent.counter(Counter.DROPPED_TEXT_OFF) == 1)
    assert agent.status("b").state == State.UP

    monkeypatch.setenv("LBAGENT_CONFIG", "listen=127.0.0.1:0 initial_state=maint")
    with lbagent.Agent() as from_env:
        assert from_env.status().state == State.MAINT


def test_stop_then_close(make_agent):
    agent = make_agent()
    port = agent.port
    agent.set_state(State.UP)
    agent.stop(5000)
    agent.stop()
    status = agent.status()
    assert (status.state, status.reason) == (State.STOPPING, Reason.AGENT_STOPPING)
    with pytest.raises(lbagent.StoppedError) as caught:
        agent.set_state(State.UP)
    assert caught.value.code == Result.ERR_STOPPED
    with pytest.raises(lbagent.StoppedError):
        agent.heartbeat()
    assert probe(port, timeout=0.5) is None
    agent.close()
    agent.close()


def test_counters_count_what_the_director_sent(make_agent):
    agent = make_agent()
    port = agent.port
    probe(port)
    ask_text(port)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"LBAP-garbage", ("127.0.0.1", port))
    assert eventually(lambda: agent.counter(Counter.DROPPED_MALFORMED) == 1)
    counters = agent.counters()
    assert set(counters) == set(Counter)
    assert counters[Counter.RECEIVED] == 3
    assert counters[Counter.ANSWERED_STATUS] == 1
    assert counters[Counter.ANSWERED_TEXT] == 1


def test_lbagent_probe_gives_the_verdict(make_agent):
    agent = make_agent()
    target = f"127.0.0.1:{agent.port}"
    agent.set_state(State.UP, "ready")
    run = lambda *args: subprocess.run([str(probe_binary()), target, *args],
                                       capture_output=True, text=True, timeout=30)
    assert run().returncode == 0
    agent.set_state(State.DRAIN, "deploy")
    out = run("--json")
    assert out.returncode == 1
    assert json.loads(out.stdout)["state"] == "drain"


def test_threads_use_it_while_another_closes(make_agent):
    agent = make_agent(watchdog_ms=1000)
    outcomes = []
    start = threading.Barrier(5)

    def hammer():
        start.wait()
        try:
            while True:
                agent.heartbeat()
                agent.set_load(1, 2)
                agent.set_state(State.UP, "busy")
                agent.status()
        except lbagent.ClosedError:
            outcomes.append("closed")
        except lbagent.StoppedError:
            outcomes.append("stopped")

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    start.wait()
    assert eventually(lambda: agent.status().generation > 0)
    agent.close()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive()
    assert len(outcomes) == 4


def test_a_python_signal_handler_can_call_in_while_the_main_thread_does():
    # Python runs handlers between bytecodes of the main thread, possibly while it is inside
    # an Agent call: the agent's lock is reentrant, so this must not deadlock.
    with lbagent.Agent("listen=127.0.0.1:0") as agent:
        handled = []

        def on_usr1(signum, frame):
            agent.set_state(State.MAINT)
            handled.append(signum)

        previous = signal.signal(signal.SIGUSR1, on_usr1)
        try:
            sender = threading.Thread(
                target=lambda: [os.kill(os.getpid(), signal.SIGUSR1) for _ in range(200)])
            sender.start()
            while sender.is_alive() or not handled:
                agent.set_state(State.UP, "serving")
                agent.heartbeat()
            sender.join()
        finally:
            signal.signal(signal.SIGUSR1, previous)
        agent.set_state(State.MAINT, "done")
        assert probe(agent.port).state == State.MAINT
        assert handled


def test_the_readme_snippet(capsys):
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Python and asyncio\n", 1)[1]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(snippet.replace('"0.0.0.0:4950"', '"127.0.0.1:0"'), {})
    printed = capsys.readouterr().out
    assert printed.startswith("Status(state=<State.UP: 2>, reason=<Reason.HOST: 0>, "), printed


def test_a_drain_completes_once_the_director_was_told_and_the_work_is_done(make_agent):
    agent = make_agent("initial_state=up drain_confirm=2")
    port = agent.port
    before = probe(port)
    assert before.drain is not None and not before.drain.draining
    assert not agent.drain_status().draining
    agent.set_load(1, 10)
    agent.set_state(State.DRAIN, "deploy")
    drain = agent.drain_status()
    assert isinstance(drain, lbagent.Drain)
    assert (drain.draining, drain.complete, drain.probers_pending, drain.in_use) == \
        (True, False, 1, 1)
    assert drain.state == State.DRAIN
    # Told once, then twice (this test's prober is the only director).
    assert probe(port).drain.told_you == 1
    told = probe(port).drain
    assert (told.told_you, told.probers_told, told.complete) == (2, 1, False)
    with pytest.raises(lbagent.TimedOutError) as caught:
        agent.wait_drained(50)
    assert caught.value.code == Result.ERR_TIMEOUT
    assert "1 of 1 probers told" in str(caught.value) and "in_use 1" in str(caught.value)
    agent.set_load(0, 10)
    agent.wait_drained(5000)
    assert agent.drain_status().complete
    assert probe(port).drain.complete
    with pytest.raises(lbagent.UnknownServiceError):
        agent.drain_status("nope")
