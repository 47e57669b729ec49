#!/usr/bin/env bash
# The LVS scenarios, run inside the test VM by tests/lvs/init (as root, chrooted into the
# host's root filesystem; the guest has no network device, only its loopback).
#
# Two real servers embed lbagent (c-examples/demo_server.c), each with its agent on its own
# loopback address; keepalived (the host's binary) checks them and drives the kernel's IPVS
# table for the virtual service 127.0.0.1:7000. For each checker (a file in checkers/ naming
# one of docs/DIRECTORS.md's keepalived configurations: UDP_CHECK, MISC_CHECK, FILE_CHECK with
# lbagent-director, ...), the servers are walked through the transitions of run_steps, and
# after each one the IPVS table (`ipvsadm -Ln`) must show every server as expected within
# LVS_BOUND seconds. Then the kernel's count of the processes that keepalived and the poller
# forked during the steps is checked (none, unless the checker forks per check).
#
#   server A  127.0.0.2  real_server with inhibit_on_failure: out of service = weight 0
#   server B  127.0.0.3  real_server without it:              out of service = removed
#
# Output, one line per server and transition (tests/lvs/run.sh reads them off the console):
#   LVS-RESULT CHECKER STEP SERVER EXPECTED SECONDS pass|fail
# SECONDS is the measured detection time: from the change on the server to the table showing
# it. And one line per checker for the forks:
#   LVS-FORKS CHECKER SECONDS COUNT EXPECTED pass|fail     (COUNT forks in SECONDS of steps)
# And the rolling restart under load (rolling.sh), one line per way of doing it:
#   LVS-ROLLING MODE REQUESTS FAILED SLOW P50_MS P99_MS MAX_MS FIRST_SECONDS pass|fail|report
# Other lines (LVS-INFO, keepalived's, the poller's and the servers' logs) are for debugging.
#
# Environment (from run.sh, through init): LVS_REPO (the repository), LVS_DEMO_SERVER,
# LVS_BIN (lbagent-probe and lbagent-director, copied to LVS_BIN_DIR at start), LVS_CHECKERS
# (names of files in checkers/, default all), LVS_BOUND (seconds allowed per transition),
# LVS_HANG_MS (length of the simulated hang), LVS_ROLLING (1: run the rolling restart too),
# LVS_ROLLING_SERVER and LVS_ROLLING_CLIENT (its programs).
#
# A checker file says how keepalived checks the servers:
#   checker_snippet             required: NAME of the ```keepalived NAME block of
#                               docs/DIRECTORS.md (made into the test's configuration by
#                               keepalived_conf.sh: addresses and paths only)
#   checker_agent_config NAME   optional: more LBAGENT_CONFIG for server NAME (services=...)
#   checker_start, checker_stop optional: director-side daemons, started before keepalived,
#                               stopped after
#   checker_ipvs_weight PERCENT optional: the IPVS weight for a host weight in percent;
#                               defining it says that the checker conveys weights: it adds the
#                               weight steps
#   checker_drain_kept          optional: defined when a draining server stays in the table at
#                               weight `checker_ipvs_weight 0` instead of going out
#   checker_forks               optional: "per-check" when keepalived forks for every check;
#                               otherwise no fork of keepalived or the poller is allowed
#   checker_latency             optional: "push" or "poll": after the steps, measure how long
#                               a host's drain, a DOWN and a watchdog expiry take to reach the
#                               IPVS table, in milliseconds (LVS-LATENCY lines)
set -u

lvs=$LVS_REPO/tests/lvs
VIP=127.0.0.1
VPORT=7000 # the documentation's
AGENT_PORT=4950
RS_WEIGHT=100 # `weight` of the documented real_server
WATCHDOG_MS=1000

SERVERS=(A B)
declare -A RS_ADDR=([A]=127.0.0.2 [B]=127.0.0.3)
declare -A RS_ADMIN_PORT=([A]=7002 [B]=7003) # the demo server's TCP port, on 127.0.0.1
declare -A RS_INHIBIT=([A]=yes [B]=no)
declare -A RS_PID=()
TRACE=/sys/kernel/tracing # tracefs, mounted by init

# shellcheck source=keepalived_conf.sh
. "$lvs/keepalived_conf.sh"
# shellcheck source=rolling.sh
. "$lvs/rolling.sh"

checker= # the checker being run
hang_ends=0 # when the event loops of hang_all come back (microseconds)
failures=0

now_us() { echo "${EPOCHREALTIME/./}"; }
seconds() { printf '%d.%d' $(($1 / 1000000)) $(($1 / 100000 % 10)); }
# LVS-INFO [seconds since the guest booted] message
info() {
    local up _
    read -r up _ </proc/uptime
    echo "LVS-INFO [$up] $*"
}
result() { echo "LVS-RESULT $checker $*"; }

# --- the real servers ------------------------------------------------------------------------

start_server() {
    local name=$1 config
    config="listen=${RS_ADDR[$name]}:$AGENT_PORT watchdog_ms=$WATCHDOG_MS"
    if declare -F checker_agent_config >/dev/null; then
        config+=" $(checker_agent_config "$name")"
    fi
    LBAGENT_CONFIG=$config "$LVS_DEMO_SERVER" "${RS_ADMIN_PORT[$name]}" &
    RS_PID[$name]=$!
}

# Waits until the server's agent says UP (the demo server warms up for 1.5 s first).
wait_serving() {
    local name=$1 deadline=$((SECONDS + LVS_BOUND))
    while [ $SECONDS -lt $deadline ]; do
        "$LVS_BIN_DIR/lbagent-probe" "${RS_ADDR[$name]}:$AGENT_PORT" --timeout 500 >/dev/null 2>&1 && return 0
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

# hang_all [MS]: every server's event loop stops for MS (default LVS_HANG_MS) milliseconds.
# The effect ends by itself: ACTION_EXPIRES_US tells transition when.
hang_all() {
    local ms=${1:-$LVS_HANG_MS}
    hang_ends=$(($(now_us) + ms * 1000))
    admin_all hang "$ms" || return 1
    ACTION_EXPIRES_US=$hang_ends
}

# The event loops come back by themselves: wait for the end of the hang, so that the
# detection time counts from the recovery.
wait_hang_over() {
    local left_us=$((hang_ends - $(now_us)))
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
# in@PERCENT (serving at that host weight), out (not to get new connections), drained (the
# host drains: out, or kept at weight 0 by a checker that says so).
expected() {
    local name=$1 state=$2
    case $state in
        out) [ "${RS_INHIBIT[$name]}" = yes ] && echo weight=0 || echo absent ;;
        in) expected "$name" in@100 ;;
        drained)
            if declare -F checker_drain_kept >/dev/null; then
                echo "weight=$(checker_ipvs_weight 0)"
            else
                expected "$name" out
            fi
            ;;
        in@*)
            if declare -F checker_ipvs_weight >/dev/null; then
                echo "weight=$(checker_ipvs_weight "${state#in@}")"
            else
                echo "weight=$RS_WEIGHT"
            fi
            ;;
    esac
}

# await_table START DEADLINE: polls the table until every server shows WANT[server] or
# DEADLINE passes (microseconds); TOOK[server] is the time from START until it first did.
# Fails when some server did not.
declare -A WANT=() TOOK=()
ACTION_EXPIRES_US=0
await_table() {
    local start=$1 deadline=$2 now table name pending
    TOOK=()
    while :; do
        table=$(ipvs_table)
        now=$(now_us)
        pending=0
        for name in "${SERVERS[@]}"; do
            [ -n "${TOOK[$name]:-}" ] && continue
            if [ "$(observed "$name" "$table")" = "${WANT[$name]}" ]; then
                TOOK[$name]=$((now - start))
            else
                pending=1
            fi
        done
        [ $pending -eq 0 ] && return 0
        [ "$now" -ge "$deadline" ] && return 1
        sleep 0.2
    done
}

# transition STEP STATE ACTION...: runs ACTION, then polls the table until every server shows
# STATE (or LVS_BOUND seconds pass), and reports each server with its detection time (from
# the end of ACTION, when the servers have changed). The whole table is checked once more at
# the end: every server must show STATE at once.
#
# An action whose effect ends by itself (a hang) sets ACTION_EXPIRES_US. When the effect ends
# before the table shows it, the machine is slower than the effect is long: that is no wrong
# table. Once every server is back in, the action runs again with LVS_BOUND seconds as its
# last argument (for hang_all: a hang that long), and that attempt counts.
transition() {
    local step=$1 state=$2 start name
    shift 2
    want_all "$state"
    ACTION_EXPIRES_US=0
    "$@" || { transition_failed "$step" "the action '$*' failed"; return 1; }
    start=$(now_us) # the action has taken effect on the servers
    if [ "$ACTION_EXPIRES_US" -eq 0 ]; then
        await_table "$start" $((start + LVS_BOUND * 1000000))
    elif ! await_table "$start" "$ACTION_EXPIRES_US"; then
        info "step $step: the effect of '$*' ended before the table showed it; once more, for $LVS_BOUND s"
        want_all in
        await_table "$(now_us)" $(($(now_us) + LVS_BOUND * 1000000)) ||
            { transition_failed "$step" "the servers are not back in after '$*'"; return 1; }
        want_all "$state"
        "$@" $((LVS_BOUND * 1000)) || { transition_failed "$step" "the action '$*' failed"; return 1; }
        start=$(now_us)
        await_table "$start" $((start + LVS_BOUND * 1000000))
    fi

    local failed=0 got table
    table=$(ipvs_table)
    for name in "${SERVERS[@]}"; do
        got=$(observed "$name" "$table")
        if [ -n "${TOOK[$name]:-}" ] && [ "$got" = "${WANT[$name]}" ]; then
            result "$step" "$name" "${WANT[$name]}" "$(seconds "${TOOK[$name]}")" pass
        else
            result "$step" "$name" "${WANT[$name]}" - fail
            info "step $step: server $name shows $got, expected ${WANT[$name]} within $LVS_BOUND s"
            failed=1
        fi
    done
    if [ $failed -ne 0 ]; then
        info "IPVS table:"
        ipvsadm -Ln
    fi
    return $failed
}

want_all() {
    local name
    for name in "${SERVERS[@]}"; do WANT[$name]=$(expected "$name" "$1"); done
}

transition_failed() {
    result "$1" - - - fail
    info "step $1: $2"
}

# --- latency ----------------------------------------------------------------------------------

# How /proc/net/ip_vs shows server NAME: its weight, or "absent". Read with builtins only (no
# fork), so that the table can be looked at every millisecond.
ipvs_weight() {
    local name=$1 table ip hex port line
    read -r -d '' table </proc/net/ip_vs
    IFS=. read -r -a ip <<<"${RS_ADDR[$name]}"
    printf -v hex '%02X%02X%02X%02X:%04X' "${ip[0]}" "${ip[1]}" "${ip[2]}" "${ip[3]}" "$VPORT"
    while IFS= read -r line; do
        if [[ $line =~ -\>\ $hex\ +[A-Za-z]+\ +([0-9]+) ]]; then
            echo "${BASH_REMATCH[1]}"
            return
        fi
    done <<<"$table"
    echo absent
}

# latency_until NAME WANT START: waits (polling the table every millisecond or so) until
# server NAME shows WANT ("absent" or a weight), at most LVS_BOUND s; prints the milliseconds
# from START (microseconds), or "-" when it never did.
latency_until() {
    local name=$1 want=$2 start=$3 deadline=$(($3 + LVS_BOUND * 1000000)) now
    while :; do
        now=$(now_us)
        if [ "$(ipvs_weight "$name")" = "$want" ]; then
            echo $(((now - start) / 1000))
            return 0
        fi
        [ "$now" -ge "$deadline" ] && { echo -; return 1; }
        sleep 0.001
    done
}

# measure_latency KIND COUNT: COUNT times, server A goes out and back in through KIND
# (drain, down or watchdog); prints LVS-LATENCY CHECKER PATH KIND out|in MS for each change.
# A drain and a DOWN are timed from just before the host's call (the demo server calls
# lbagent_set_state when its ADMIN command arrives); a watchdog expiry from when the deadline
# passed (the hang's start plus watchdog_ms), its recovery from the hang's end.
measure_latency() {
    local kind=$1 count=$2 path out_weight in_weight i start ms hang_ms
    path=$(checker_latency)
    # Long enough for the expiry to be seen: at once when pushed, at the next probe (the
    # documented poller probes every second) when polled.
    case $path in
        push) hang_ms=$((WATCHDOG_MS + 600)) ;;
        *) hang_ms=$((WATCHDOG_MS + 3000)) ;;
    esac
    in_weight=$(expected A in)
    in_weight=${in_weight#weight=}
    out_weight=$(expected A out)
    out_weight=${out_weight#weight=}
    for ((i = 0; i < count; i++)); do
        case $kind in
            drain | down)
                start=$(now_us)
                admin A "$kind" || return 1
                ;;
            watchdog)
                hang_ends=$(($(now_us) + hang_ms * 1000))
                start=$((hang_ends - (hang_ms - WATCHDOG_MS) * 1000))
                admin A hang "$hang_ms" || return 1
                ;;
        esac
        ms=$(latency_until A "$out_weight" "$start")
        echo "LVS-LATENCY $checker $path $kind out $ms"
        [ "$ms" = - ] && return 1
        case $kind in
            drain | down)
                sleep 0.1
                start=$(now_us)
                admin A up || return 1
                ;;
            watchdog)
                wait_hang_over
                start=$hang_ends
                ;;
        esac
        ms=$(latency_until A "$in_weight" "$start")
        echo "LVS-LATENCY $checker $path $kind in $ms"
        [ "$ms" = - ] && return 1
        sleep 0.1
    done
}

# The latency measurements of a checker that asks for them: more samples of the fast pushed
# path, fewer of the slow polled one (each waits for the next probe).
measure_latencies() {
    local n
    case $(checker_latency) in
        push) n=10 ;;
        *) n=5 ;;
    esac
    measure_latency drain "$n" && measure_latency down "$n" && measure_latency watchdog $((n / 2))
}

# --- forks --------------------------------------------------------------------------------

# The kernel's sched_process_fork event (tracefs) for the processes named keepalived (all of
# keepalived's: parent, checker, and the children it forks before they execute a script) and
# lbagent-director (15 characters of it, as the kernel keeps names): it counts every fork and
# every thread they create, however short-lived, with no sampling.
FORK_EVENT=$TRACE/events/sched/sched_process_fork
fork_trace_started=0

fork_trace_start() {
    if ! { echo 0 >"$TRACE/tracing_on" &&
        echo 'parent_comm == "keepalived" || parent_comm == "lbagent-directo"' >"$FORK_EVENT/filter" &&
        echo 1 >"$FORK_EVENT/enable" && : >"$TRACE/trace" && echo 1 >"$TRACE/tracing_on"; }; then
        info "cannot trace forks in $TRACE"
        return 1
    fi
    fork_trace_started=$(now_us)
}

# Stops the trace and checks the forks seen since fork_trace_start against checker_forks.
fork_check() {
    local elapsed=$(($(now_us) - fork_trace_started)) expect=none count by_name lost verdict=pass
    echo 0 >"$TRACE/tracing_on"
    echo 0 >"$FORK_EVENT/enable"
    count=$(grep -c 'sched_process_fork:' "$TRACE/trace")
    by_name=$(grep -o 'sched_process_fork: comm=[^ ]*' "$TRACE/trace" | sort | uniq -c |
        awk '{ sub(/.*comm=/, "", $3); printf "%s%s=%d", sep, $3, $1; sep = "," }')
    lost=$(awk '$1 == "overrun:" { n += $2 } END { print n + 0 }' "$TRACE"/per_cpu/cpu*/stats)
    if declare -F checker_forks >/dev/null; then expect=$(checker_forks); fi
    case $expect in
        none) [ "$count" -eq 0 ] || verdict=fail ;;
        per-check) [ "$count" -gt 0 ] || verdict=fail ;; # the count sees forks when there are
        *) verdict=fail ;;
    esac
    [ "$lost" -eq 0 ] || verdict=fail
    echo "LVS-FORKS $checker $(seconds $elapsed) $count $expect $verdict"
    info "forks during the steps: ${by_name:-none}; trace events lost: $lost"
    [ $verdict = pass ]
}

# --- the scenario ----------------------------------------------------------------------------

# The transitions every checker goes through after `start`, in order: STEP STATE ACTION.
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
host-down         out     admin_all down
host-up           in      admin_all up
drain             drained admin_all drain
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
    unset -f checker_snippet checker_agent_config checker_start checker_stop \
        checker_ipvs_weight checker_drain_kept checker_forks checker_latency
    # shellcheck source=/dev/null
    if ! . "$lvs/checkers/$checker.sh" || ! declare -F checker_snippet >/dev/null; then
        result config - - - fail
        info "checkers/$checker.sh cannot be read or defines no checker_snippet"
        return 1
    fi

    # The servers warm up (1.5 s) while keepalived's configuration is made and checked.
    for name in "${SERVERS[@]}"; do start_server "$name"; done
    if ! keepalived_conf "$(checker_snippet)" >"$conf"; then
        result config - - - fail
        status=1
    else
        info "keepalived configuration for $checker (docs/DIRECTORS.md, $(checker_snippet)):"
        sed 's/^/  | /' "$conf"
        if ! keepalived -t -f "$conf"; then
            result config - - - fail
            info "keepalived -t rejects the configuration"
            status=1
        fi
    fi
    if [ $status -eq 0 ]; then
        for name in "${SERVERS[@]}"; do wait_serving "$name" || status=1; done
        if [ $status -eq 0 ] && declare -F checker_start >/dev/null; then checker_start || status=1; fi
        [ $status -eq 0 ] || result startup - - - fail
    fi
    if [ $status -eq 0 ]; then
        info "servers up; starting keepalived"
        # Health checkers only (-C), in the foreground (-n), logging to the console only
        # (-l -D -G).
        keepalived -n -l -D -G -C -f "$conf" -p /run/lvs/keepalived.pid -c /run/lvs/checkers.pid &
        keepalived_pid=$!
        # Forks are counted once keepalived has started and filled the table.
        if transition start in true && fork_trace_start; then
            run_steps || status=1
            fork_check || status=1
            if [ $status -eq 0 ] && declare -F checker_latency >/dev/null; then
                measure_latencies || { result latency - - - fail; status=1; }
            fi
        else
            status=1
        fi
        kill -TERM $keepalived_pid
        wait_exit $keepalived_pid 10 || info "keepalived did not stop on SIGTERM"
    fi
    if declare -F checker_stop >/dev/null; then checker_stop; fi
    for name in "${SERVERS[@]}"; do stop_server "$name"; done
    ipvsadm -C
    return $status
}

main() {
    ip link set lo up || return 1
    # The crate's binaries, where no user but root can replace them (keepalived's
    # enable_script_security checks every directory of a script's path).
    install -d -m 0755 /run/lvs "$LVS_BIN_DIR" &&
        install -m 0755 "$LVS_BIN/lbagent-probe" "$LVS_BIN/lbagent-director" "$LVS_BIN_DIR/" ||
        return 1
    info "guest up; $(keepalived --version 2>&1 | head -n1)"
    local checkers=${LVS_CHECKERS:-}
    if [ -z "$checkers" ]; then
        checkers=$(cd "$lvs/checkers" && ls ./*.sh | sed 's|^\./||; s|\.sh$||')
    fi
    [ "$checkers" = none ] && checkers=
    for checker in $checkers; do
        info "=== checker $checker"
        run_checker || failures=$((failures + 1))
    done
    if [ "${LVS_ROLLING:-1}" = 1 ]; then
        rolling_main || failures=$((failures + 1))
    fi
    info "guest done"
    return $((failures > 0))
}

main
