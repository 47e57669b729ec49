# shellcheck shell=bash
# The rolling restart behind IPVS, sourced by guest.sh (docs/LIFECYCLE.md, "Behind IPVS").
#
#   namespace client       10.0.1.2   rolling_client -> the virtual address 10.0.0.100:7000
#   the guest (director)   10.0.0.100 on lo; keepalived, IPVS (NAT, wrr); lbagent-director
#   namespaces rs5..rs7    10.0.0.5..7: rolling_server (with its agent, or without one)
#
# Each namespace is joined to the director by a veth pair (point to point, /32 routes); the
# director forwards, and IPVS rewrites the addresses both ways. The servers and the client
# are tests/c/rolling_server.c and tests/c/rolling_client.c, linked by run.sh.
#
# roll_run MODE (lbagent or plain) restarts the three servers one by one under load, with the
# keepalived configuration ```keepalived rolling-MODE of docs/LIFECYCLE.md, and prints
#   LVS-ROLLING MODE REQUESTS FAILED SLOW P50_MS P99_MS MAX_MS FIRST_SECONDS VERDICT
# VERDICT is pass or fail for lbagent (no failed and no slow request), report for plain.

ROLL_DOC=$LVS_REPO/docs/LIFECYCLE.md
ROLL_VIP=10.0.0.100
ROLL_PORT=7000
ROLL_CLIENT=10.0.1.2
ROLL_SERVERS=(5 6 7) # the last byte of each real server's address, and its name rs5..rs7
ROLL_RATE=${LVS_ROLLING_RATE:-60}
ROLL_STARTUP_MS=3000
ROLL_SERVICE_MS=20
ROLL_SLOW_MS=1000 # a lost SYN is sent again after 1 s: anything slower waited
declare -A ROLL_PID=()

roll_block() { DOC=$ROLL_DOC doc_block "$@"; }
roll_ms() { echo $((${EPOCHREALTIME/./} / 1000)); }

roll_net() {
    local n
    sysctl -qw net.ipv4.ip_forward=1 || return 1
    ip addr add "$ROLL_VIP/32" dev lo || return 1
    ip netns add client && ip link add vc0 type veth peer name vc1 && ip link set vc1 netns client &&
        ip addr add 10.0.1.1/32 dev vc0 && ip link set vc0 up &&
        ip route add "$ROLL_CLIENT/32" dev vc0 &&
        ip -n client link set lo up && ip -n client addr add "$ROLL_CLIENT/32" dev vc1 &&
        ip -n client link set vc1 up && ip -n client route add 10.0.1.1/32 dev vc1 &&
        ip -n client route add default via 10.0.1.1 || return 1
    for n in "${ROLL_SERVERS[@]}"; do
        ip netns add "rs$n" && ip link add "vr${n}0" type veth peer name "vr${n}1" &&
            ip link set "vr${n}1" netns "rs$n" &&
            ip addr add "10.0.0.1/32" dev "vr${n}0" && ip link set "vr${n}0" up &&
            ip route add "10.0.0.$n/32" dev "vr${n}0" &&
            ip -n "rs$n" link set lo up && ip -n "rs$n" addr add "10.0.0.$n/32" dev "vr${n}1" &&
            ip -n "rs$n" link set "vr${n}1" up && ip -n "rs$n" route add 10.0.0.1/32 dev "vr${n}1" &&
            ip -n "rs$n" route add default via 10.0.0.1 || return 1
    done
}

# roll_server N INSTANCE MODE: starts rolling_server sN#INSTANCE in namespace rsN.
roll_server() {
    local n=$1 instance=$2 mode=$3 config=
    if [ "$mode" = lbagent ]; then
        config=$(roll_block sh rolling-agent-lvs | sed -n 's/^LBAGENT_CONFIG="\(.*\)"$/\1/p')
    fi
    ip netns exec "rs$n" env ${config:+LBAGENT_CONFIG="$config"} \
        ROLLING_STARTUP_MS=$ROLL_STARTUP_MS ROLLING_SERVICE_MS=$ROLL_SERVICE_MS \
        "$LVS_ROLLING_SERVER" "s$n#$instance" "10.0.0.$n" "$ROLL_PORT" \
        >>"/run/lvs/rolling-rs$n.log" 2>&1 &
    ROLL_PID[$n]=$!
}

# roll_wait_log N TEXT: waits (LVS_BOUND) for a line with TEXT in server N's log.
roll_wait_log() {
    local deadline=$((SECONDS + LVS_BOUND))
    while [ $SECONDS -lt $deadline ]; do
        grep -qF -- "$2" "/run/lvs/rolling-rs$1.log" 2>/dev/null && return 0
        sleep 0.2
    done
    info "rolling: no line '$2' from server $1 within $LVS_BOUND s"
    return 1
}

# roll_wait_weight N: waits (LVS_BOUND) until IPVS has server N at weight 100.
roll_wait_weight() {
    local deadline=$((SECONDS + LVS_BOUND)) arrow address weight
    while [ $SECONDS -lt $deadline ]; do
        while read -r arrow address _ weight _; do
            [ "$arrow" = "->" ] && [ "$address" = "10.0.0.$1:$ROLL_PORT" ] &&
                [ "$weight" = 100 ] && return 0
        done < <(ipvsadm -Ln -t "$ROLL_VIP:$ROLL_PORT" 2>/dev/null)
        sleep 0.2
    done
    info "rolling: server $1 not at weight 100 within $LVS_BOUND s"
    ipvsadm -Ln
    return 1
}

# roll_summary MODE FILE: the LVS-ROLLING line from the client's records.
roll_summary() {
    local mode=$1 file=$2
    sort -n -k2 "$file" | awk -v mode="$mode" -v slow="$ROLL_SLOW_MS" -v service="$ROLL_SERVICE_MS" '
        { n++; lat[n] = $2
          if ($3 ~ /^error/) failed++
          else if ($2 > service + slow) slowc++
          if ($3 ~ /#2$/) { done = $1 + $2; served[$3, ++count[$3]] = done
                             if (!($3 in first) || done < first[$3]) first[$3] = done } }
        END {
            p50 = lat[int((n - 1) * 0.5) + 1]; p99 = lat[int((n - 1) * 0.99) + 1]
            firsts = ""
            for (s = 5; s <= 7; s++) {
                name = "s" s "#2"; c = 0
                for (i = 1; i <= count[name]; i++) if (served[name, i] < first[name] + 1000) c++
                firsts = firsts (s > 5 ? "," : "") c
                if (count[name] == 0) missing = 1
            }
            verdict = mode == "lbagent" ? ((failed + slowc == 0 && !missing) ? "pass" : "fail") : "report"
            if (missing && mode != "lbagent") verdict = "fail"
            printf "LVS-ROLLING %s %d %d %d %d %d %d %s %s\n", mode, n, failed + 0, slowc + 0, p50, p99, lat[n], firsts, verdict
        }'
}

# roll_run MODE: the rolling restart with keepalived's ```keepalived rolling-MODE.
roll_run() {
    local mode=$1 keepalived_pid director_pid= client_pid n status=0
    local conf=/run/lvs/rolling-$mode.conf out=/run/lvs/rolling-$mode.out
    info "=== rolling restart behind IPVS: $mode"
    rm -f /run/lvs/rolling-rs*.log /run/lbagent/rs*
    roll_block keepalived "rolling-$mode" >"$conf" || return 1
    keepalived -t -f "$conf" || { info "keepalived -t rejects $conf"; return 1; }
    for n in "${ROLL_SERVERS[@]}"; do roll_server "$n" 1 "$mode"; done
    for n in "${ROLL_SERVERS[@]}"; do roll_wait_log "$n" ": up" || status=1; done
    if [ "$mode" = lbagent ]; then
        # The poller as docs/DIRECTORS.md's unit runs it, on the targets of the rolling restart.
        local -a command
        mkdir -p /run/lbagent "$LVS_ETC_DIR"
        roll_block targets rolling-lvs >"$LVS_ETC_DIR/targets.conf"
        read -ra command < <(doc_block systemd lbagent-director.service | sed -n 's/^ExecStart=//p' |
            sed "s#/usr/local/bin/#$LVS_BIN_DIR/#g; s#/etc/lbagent/#$LVS_ETC_DIR/#g")
        "${command[@]}" 2>/run/lvs/rolling-director.log &
        director_pid=$!
    fi
    keepalived -n -l -D -G -C -f "$conf" -p /run/lvs/rolling-keepalived.pid \
        -c /run/lvs/rolling-checkers.pid >/run/lvs/rolling-keepalived.log 2>&1 &
    keepalived_pid=$!
    for n in "${ROLL_SERVERS[@]}"; do roll_wait_weight "$n" || status=1; done

    if [ $status -eq 0 ]; then
        local t0
        t0=$(roll_ms)
        ip netns exec client "$LVS_ROLLING_CLIENT" "$ROLL_VIP" "$ROLL_PORT" "$ROLL_RATE" >"$out" &
        client_pid=$!
        sleep 3
        for n in "${ROLL_SERVERS[@]}"; do
            info "rolling: $(($(roll_ms) - t0)) ms: SIGTERM to server $n"
            kill -TERM "${ROLL_PID[$n]}"
            wait_exit "${ROLL_PID[$n]}" "$LVS_BOUND" || { info "server $n did not stop"; status=1; }
            info "rolling: $(($(roll_ms) - t0)) ms: server $n exited"
            sleep 0.5
            roll_server "$n" 2 "$mode"
            roll_wait_log "$n" "s$n#2: up" || status=1
            info "rolling: $(($(roll_ms) - t0)) ms: server $n#2 up"
            roll_wait_weight "$n" || status=1
            info "rolling: $(($(roll_ms) - t0)) ms: server $n#2 at weight 100"
            sleep 2
        done
        kill -TERM "$client_pid"
        wait "$client_pid"
        roll_summary "$mode" "$out"
        # The requests that failed or waited, for the record (the client's clock starts at
        # about the first time above).
        awk -v limit=$((ROLL_SERVICE_MS + ROLL_SLOW_MS)) '$3 ~ /^error/ || $2 > limit' "$out" |
            head -n 20 | sed 's/^/LVS-INFO rolling: due ms, latency ms, outcome: /'
        ipvsadm -Ln --stats | sed 's/^/LVS-INFO rolling: /' 
        grep -h 'drain' /run/lvs/rolling-rs*.log | sed 's/^/LVS-INFO rolling: /'
    fi
    [ $status -eq 0 ] || echo "LVS-ROLLING $mode - - - - - - - fail"
    kill -TERM "$keepalived_pid"
    wait_exit "$keepalived_pid" 10 || info "keepalived did not stop"
    if [ -n "$director_pid" ]; then
        kill -TERM "$director_pid"
        wait_exit "$director_pid" 10 || info "lbagent-director did not stop"
    fi
    for n in "${ROLL_SERVERS[@]}"; do
        kill -KILL "${ROLL_PID[$n]}" 2>/dev/null
        wait "${ROLL_PID[$n]}" 2>/dev/null
    done
    ipvsadm -C
    return $status
}

rolling_main() {
    roll_net || { echo "LVS-ROLLING setup - - - - - - - fail"; info "rolling: cannot build the namespaces"; return 1; }
    local status=0
    roll_run lbagent || status=1
    roll_run plain || status=1
    return $status
}
