#!/usr/bin/env bash
# make demo: a C server with lbagent embedded (c-examples/demo_server.c), walked through its
# life while lbagent-probe shows, at each step, what a load-balancing director sees.
# Ends by itself in about 20 seconds; exits non-zero if any step does not show what it should.
set -u
cd "$(dirname "$0")/.."

PROBE=${DEMO_PROBE:-target/release/lbagent-probe}
SERVER=${DEMO_SERVER:-build/bin/demo_server}
AGENT_PORT=${DEMO_AGENT_PORT:-4950}
TCP_PORT=${DEMO_TCP_PORT:-7070}
AGENT=127.0.0.1:$AGENT_PORT
export LBAGENT_CONFIG="listen=$AGENT watchdog_ms=1500"

bold=$'\e[1m'; green=$'\e[32m'; red=$'\e[31m'; plain=$'\e[0m'
[ -t 1 ] || { bold=; green=; red=; plain=; }
failures=0
server_pid=

cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; }
trap cleanup EXIT

# A short pause before each step, so that a reader can follow (DEMO_PAUSE=0 to skip).
step() { sleep "${DEMO_PAUSE:-1}"; printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }

# probe EXPECTED_EXIT: run lbagent-probe, show its answer and exit status, check the status.
probe() {
    local expected=$1 out rc meaning
    out=$("$PROBE" "$AGENT" --timeout 500 2>&1)
    rc=$?
    case $rc in
        0) meaning="serving: director sends new connections" ;;
        1) meaning="not serving: director sends no new connections" ;;
        2) meaning="no answer: director treats the server as failed" ;;
        *) meaning="usage error" ;;
    esac
    printf '  $ lbagent-probe %s\n  %s\n' "$AGENT" "$out"
    if [ "$rc" -eq "$expected" ]; then
        printf '  %s-> exit %d (%s)%s\n' "$green" "$rc" "$meaning" "$plain"
    else
        printf '  %s-> exit %d, expected %d (%s)%s\n' "$red" "$rc" "$expected" "$meaning" "$plain"
        failures=$((failures + 1))
    fi
}

# wait_probe EXPECTED_EXIT SECONDS: probe quietly until the exit status matches, then show it.
wait_probe() {
    local expected=$1 deadline=$((SECONDS + $2))
    while [ $SECONDS -lt $deadline ]; do
        "$PROBE" "$AGENT" --timeout 300 >/dev/null 2>&1
        [ $? -eq "$expected" ] && break
        sleep 0.2
    done
    probe "$expected"
}

# keepalived's view: its default UDP_CHECK payload, and the line it gets back.
keepalived_view() {
    local line=
    exec 4<>"/dev/udp/127.0.0.1/$AGENT_PORT"
    printf 'keepalived check - keepalived ch' >&4
    # One read(2) takes the whole datagram (bash's `read` would take one byte of it).
    line=$(timeout 1 dd bs=512 count=1 status=none <&4 | tr -d '\n')
    exec 4>&-
    printf '  keepalived UDP_CHECK (require_reply 7570 = "up") gets: "%s"\n' "$line"
}

# admin COMMAND...: one request line to the demo server's own TCP protocol.
admin() {
    local reply=
    exec 3<>"/dev/tcp/127.0.0.1/$TCP_PORT" || return
    printf '%s\n' "$*" >&3
    read -r -t 5 reply <&3
    exec 3>&-
    printf '  > %s\n  < %s\n' "$*" "$reply"
}

step "Start demo_server (TCP $TCP_PORT) with lbagent on UDP $AGENT_PORT, watchdog 1500 ms"
"$SERVER" "$TCP_PORT" &
server_pid=$!
for _ in $(seq 50); do
    "$PROBE" "$AGENT" --timeout 100 >/dev/null 2>&1
    [ $? -ne 2 ] && break
    sleep 0.05
done
echo "  The server is still loading its data: it reports STARTING."
probe 1
keepalived_view

step "Warm-up done: the server reports UP"
wait_probe 0 5
keepalived_view
for _ in 1 2 3; do admin INCR; done

step "Operator drains the server before a deploy"
admin ADMIN drain deploy in progress
probe 1
keepalived_view

step "Back in service at half weight"
admin ADMIN up
admin ADMIN weight 50
probe 0
keepalived_view

step "The event loop hangs for 4 s: no more heartbeats"
admin ADMIN hang 4000
echo "  (the agent's own thread keeps answering, and reports the server down by itself)"
wait_probe 1 4
keepalived_view

step "The loop recovers: the next heartbeat restores the host's state"
wait_probe 0 8

step "SIGTERM: the server drains, and serves on until every director has been told"
kill -TERM "$server_pid"
wait_probe 1 2
echo "  (each director must hear \"not serving\" twice: keepalived acts after its retry)"
keepalived_view
keepalived_view
probe 1
wait "$server_pid"
echo "  demo_server exited with status $?"
server_pid=
probe 2

echo
if [ "$failures" -eq 0 ]; then
    printf '%sDemo complete: every step showed what a director should see.%s\n' "$green" "$plain"
else
    printf '%sDemo finished with %d unexpected results.%s\n' "$red" "$failures" "$plain"
    exit 1
fi
