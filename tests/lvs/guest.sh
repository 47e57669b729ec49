#!/usr/bin/env bash
# The LVS scenarios, run inside the test VM by tests/lvs/init (as root, chrooted into the
# host's root filesystem; the guest has no network device, only its loopback).
#
# Two real servers embed lbagent (c-examples/demo_server.c), each with its agent on its own
# loopback address; keepalived (the host's binary) checks them and drives the kernel's IPVS
# table for the virtual service 127.0.0.1:9000. For each checker (a file in checkers/ saying
# how keepalived checks a real server: UDP_CHECK, MISC_CHECK, ...), the servers are walked
# through the transitions of run_steps, and after each one the IPVS table (`ipvsadm -Ln`)
# must show every server as expected within LVS_BOUND seconds.
#
#   server A  127.0.0.2  real_server with inhibit_on_failure: out of service = weight 0
#   server B  127.0.0.3  real_server without it:              out of service = removed
#
# Output, one line per server and transition (tests/lvs/run.sh reads them off the console):
#   LVS-RESULT CHECKER STEP SERVER EXPECTED SECONDS pass|fail
# SECONDS is the measured detection time: from the change on the server to the table showing
# it. Other lines (LVS-INFO, keepalived's and the servers' logs) are for debugging.
#
# Environment (from run.sh, through init): LVS_REPO (the repository), LVS_DEMO_SERVER,
# LVS_BIN (cargo's target/debug: lbagent-probe and any other binary of the crate),
# LVS_CHECKERS (names of files in checkers/, default all), LVS_BOUND (seconds allowed per
# transition), LVS_HANG_MS (length of the simulated hang).
#
# A checker file defines how keepalived checks the servers. All functions are optional:
#   checker_block NAME          the health check inside real_server NAME (default: README's)
#   checker_globals             top-level keepalived config (for example track_file blocks)
#   checker_start, checker_stop director-side daemons, started before keepalived, stopped after
#   checker_ipvs_weight PERCENT the IPVS weight for a host weight in percent; defining it
#                               says that the checker conveys weights, and adds the weight steps
set -u

lvs=$LVS_REPO/tests/lvs
VIP=127.0.0.1
VPORT=9000
AGENT_PORT=4950
RS_WEIGHT=100 # `weight` of the README's real_server
WATCHDOG_MS=1000

SERVERS=(A B)
declare -A RS_ADDR=([A]=127.0.0.2 [B]=127.0.0.3)
declare -A RS_ADMIN_PORT=([A]=7002 [B]=7003) # the demo server's TCP port, on 127.0.0.1
declare -A RS_INHIBIT=([A]=yes [B]=no)
declare -A RS_PID=()

# shellcheck source=keepalived_conf.sh
. "$lvs/keepalived_conf.sh"

checker= # the checker being run
hang_started=0
failures=0

now_us() { echo "${EPOCHREALTIME/./}"; }
seconds() { printf '%d.%d' $(($1 / 1000000)) $(($1 / 100000 % 10)); }
info() { echo "LVS-INFO $*"; }
result() { echo "LVS-RESULT $checker $*"; }

# --- the real servers ------------------------------------------------------------------------

start_server() {
    local name=$1
    LBAGENT_CONFIG="listen=${RS_ADDR[$name]}:$AGENT_PORT watchdog_ms=$WATCHDOG_MS" \
        "$LVS_DEMO_SERVER" "${RS_ADMIN_PORT[$name]}" &
    RS_PID[$name]=$!
}

# Waits until the server's agent says UP (the demo server warms up for 1.5 s first).
wait_serving() {
    local name=$1 deadline=$((SECONDS + LVS_BOUND))
    while [ $SECONDS -lt $deadline ]; do
        "$LVS_BIN/lbagent-probe" "${RS_ADDR[$name]}:$AGENT_PORT" --timeout 500 >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    info "server $name did not report UP within $LVS_BOUND s"
    return 1
}

# wait_exit PID SECONDS: waits for a child to exit by itself; kills it after SECONDS.
wait_exit() {
    local pid=$1 deadline=$((SECONDS + $2))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        return 1
    fi
    wait "$pid" 2>/dev/null
    return 0
}

stop_server() {
    local name=$1 pid=${RS_PID[$1]:-}
    [ -n "$pid" ] || return 0
    kill -CONT "$pid" 2>/dev/null
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    RS_PID[$name]=
}

# admin NAME COMMAND...: one operator command on the demo server's TCP port (ADMIN drain,
# ADMIN up, ADMIN hang MS, ...); the server answers one line ("OK", or "hanging" at once
# for a hang).
admin() {
    local name=$1 fd reply=
    shift
    exec {fd}<>"/dev/tcp/127.0.0.1/${RS_ADMIN_PORT[$name]}" || return 1
    printf 'ADMIN %s\n' "$*" >&"$fd"
    read -r -t 5 reply <&"$fd"
    exec {fd}>&-
    reply=${reply%$'\r'}
    [ "$reply" = OK ] || [ "$reply" = hanging ] || {
        info "server $name answered '$reply' to ADMIN $*"
        return 1
    }
}

signal() { kill -"$2" "${RS_PID[$1]}"; }

admin_all() { local name; for name in "${SERVERS[@]}"; do admin "$name" "$@" || return 1; done; }
signal_all() { local name; for name in "${SERVERS[@]}"; do signal "$name" "$1" || return 1; done; }

hang_all() {
    hang_started=$(now_us)
    admin_all hang "$LVS_HANG_MS"
}

# The event loops come back by themselves: wait for the end of the hang, so that the
# detection time counts from the recovery.
wait_hang_over() {
    local left_us=$((hang_started + LVS_HANG_MS * 1000 - $(now_us)))
    [ $left_us -gt 0 ] && sleep "$(seconds "$left_us")"
    return 0
}

# A new process, hence a new agent instance. The old one drained on SIGTERM and must exit
# by itself.
restart_all() {
    local name
    for name in "${SERVERS[@]}"; do
        if ! wait_exit "${RS_PID[$name]}" "$LVS_BOUND"; then
            info "server $name did not exit within $LVS_BOUND s of SIGTERM"
            return 1
        fi
        start_server "$name"
    done
}

# --- the IPVS table --------------------------------------------------------------------------

ipvs_table() { ipvsadm -Ln -t "$VIP:$VPORT" 2>/dev/null; }

# How the table shows server NAME: weight=N, absent, or no-service.
observed() {
    local name=$1 table=$2 arrow address weight rest
    [[ $table == *"$VIP:$VPORT"* ]] || { echo no-service; return; }
    while read -r arrow address _ weight rest; do
        if [ "$arrow" = "->" ] && [ "$address" = "${RS_ADDR[$name]}:$VPORT" ]; then
            echo "weight=$weight"
            return
        fi
    done <<<"$table"
    echo absent
}

# What the table must show for server NAME in STATE: in (serving, host weight 100 %),
# in@PERCENT (serving at that host weight), out (not to get new connections).
expected() {
    local name=$1 state=$2
    case $state in
        out) [ "${RS_INHIBIT[$name]}" = yes ] && echo weight=0 || echo absent ;;
        in) expected "$name" in@100 ;;
        in@*)
            if declare -F checker_ipvs_weight >/dev/null; then
                echo "weight=$(checker_ipvs_weight "${state#in@}")"
            else
                echo "weight=$RS_WEIGHT"
            fi
            ;;
    esac
}

# transition STEP STATE ACTION...: runs ACTION, then polls the table until every server shows
# STATE (or LVS_BOUND seconds pass), and reports each server with its detection time (from
# the end of ACTION, when the servers have changed). The whole table is checked once more at
# the end: every server must show STATE at once.
transition() {
    local step=$1 state=$2 start now deadline name table pending
    shift 2
    local -A took=()
    if ! "$@"; then
        result "$step" - - - fail
        info "step $step: the action '$*' failed"
        return 1
    fi
    start=$(now_us) # the action has taken effect on the servers
    deadline=$((start + LVS_BOUND * 1000000))
    while :; do
        table=$(ipvs_table)
        now=$(now_us)
        pending=0
        for name in "${SERVERS[@]}"; do
            [ -n "${took[$name]:-}" ] && continue
            if [ "$(observed "$name" "$table")" = "$(expected "$name" "$state")" ]; then
                took[$name]=$((now - start))
            else
                pending=1
            fi
        done
        [ $pending -eq 0 ] || [ "$now" -ge $deadline ] && break
        sleep 0.2
    done

    local failed=0 got want
    table=$(ipvs_table)
    for name in "${SERVERS[@]}"; do
        got=$(observed "$name" "$table")
        want=$(expected "$name" "$state")
        if [ -n "${took[$name]:-}" ] && [ "$got" = "$want" ]; then
            result "$step" "$name" "$want" "$(seconds "${took[$name]}")" pass
        else
            result "$step" "$name" "$want" - fail
            info "step $step: server $name shows $got, expected $want within $LVS_BOUND s"
            failed=1
        fi
    done
    if [ $failed -ne 0 ]; then
        info "IPVS table:"
        ipvsadm -Ln
    fi
    return $failed
}

# --- the scenario ----------------------------------------------------------------------------

# The transitions every checker goes through, in order: STEP STATE ACTION.
run_steps() {
    local step state action
    while read -r step state action; do
        [ -z "$step" ] || [ "${step:0:1}" = "#" ] && continue
        # Weight steps only for checkers that convey the host's weight to IPVS.
        [[ $state == in@* ]] && ! declare -F checker_ipvs_weight >/dev/null && continue
        # shellcheck disable=SC2086 # the action is a command line
        transition "$step" "$state" $action || return 1
    done <<'EOF'
# step            state   action
start             in      true
host-down         out     admin_all down
host-up           in      admin_all up
drain             out     admin_all drain
undrain           in      admin_all up
weight-half       in@50   admin_all weight 50
weight-full       in@100  admin_all weight 100
watchdog          out     hang_all
loop-recovered    in      wait_hang_over
frozen            out     signal_all STOP
thawed            in      signal_all CONT
terminated        out     signal_all TERM
restarted         in      restart_all
EOF
}

run_checker() {
    local conf=/run/lvs/$checker.conf keepalived_pid status=0 name
    unset -f checker_block checker_globals checker_start checker_stop checker_ipvs_weight
    # shellcheck source=/dev/null
    if ! . "$lvs/checkers/$checker.sh"; then
        result config - - - fail
        info "checkers/$checker.sh cannot be read"
        return 1
    fi

    if ! keepalived_conf >"$conf"; then
        result config - - - fail
        return 1
    fi
    info "keepalived configuration for $checker:"
    sed 's/^/  | /' "$conf"
    if ! keepalived -t -f "$conf"; then
        result config - - - fail
        info "keepalived -t rejects the configuration"
        return 1
    fi

    for name in "${SERVERS[@]}"; do start_server "$name"; done
    for name in "${SERVERS[@]}"; do wait_serving "$name" || status=1; done
    if declare -F checker_start >/dev/null; then checker_start || status=1; fi
    if [ $status -eq 0 ]; then
        # Health checkers only (-C), in the foreground (-n), logging to the console only
        # (-l -D -G).
        keepalived -n -l -D -G -C -f "$conf" -p /run/lvs/keepalived.pid -c /run/lvs/checkers.pid &
        keepalived_pid=$!
        run_steps || status=1
        kill -TERM $keepalived_pid
        wait_exit $keepalived_pid 10 || info "keepalived did not stop on SIGTERM"
    else
        result startup - - - fail
    fi
    if declare -F checker_stop >/dev/null; then checker_stop; fi
    for name in "${SERVERS[@]}"; do stop_server "$name"; done
    ipvsadm -C
    return $status
}

main() {
    ip link set lo up || return 1
    mkdir -p /run/lvs
    info "guest up after $(cut -d' ' -f1 /proc/uptime) s; $(keepalived --version 2>&1 | head -n1)"
    local checkers=${LVS_CHECKERS:-}
    if [ -z "$checkers" ]; then
        checkers=$(cd "$lvs/checkers" && ls ./*.sh | sed 's|^\./||; s|\.sh$||')
    fi
    for checker in $checkers; do
        info "=== checker $checker"
        run_checker || failures=$((failures + 1))
    done
    info "guest done after $(cut -d' ' -f1 /proc/uptime) s"
    return $((failures > 0))
}

main
