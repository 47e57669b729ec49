# shellcheck shell=bash
# lbagent-director, the fork-free poller, writing keepalived track files that FILE_CHECK
# watches: docs/DIRECTORS.md's ```keepalived track-file block, its ```targets lbagent-director
# file, and the command line of its ```systemd lbagent-director.service unit (ExecStart).
# Verdicts are in or out (a drain takes the server out like DOWN); the weight files
# (weight=N targets, FILE_CHECK with track_file weight 1) carry the agent's percent, so the
# weight steps apply. Neither keepalived nor the poller may fork while the servers go through
# their transitions.
# The functions a checker defines are described at the top of guest.sh.

checker_snippet() { echo track-file; }

director_targets() { doc_block targets lbagent-director | doc_localize; }

# ExecStart of the documented unit, as systemd runs it (plain words, no shell).
director_command() {
    doc_block systemd lbagent-director.service | sed -n 's/^ExecStart=//p' | doc_localize
}

# The targets file asks about a service on some servers (service=NAME): those servers'
# agents have it (a service follows the whole server until the host sets it).
checker_agent_config() {
    local name=$1 address options option services=
    while read -r _ address options; do
        [ "$address" = "${RS_ADDR[$name]}:$AGENT_PORT" ] || continue
        for option in $options; do
            [[ $option == service=* ]] && services+=${services:+,}${option#service=}
        done
    done < <(director_targets | sed 's/#.*//')
    [ -n "$services" ] && echo "services=$services"
    return 0
}

# The IPVS weight for a reported percent: what the weight file adds to the real server's
# weight N (N x PERCENT / 100, rounded, at least 1 while serving).
checker_ipvs_weight() {
    local weight=$((($1 * RS_WEIGHT + 50) / 100))
    [ "$1" -gt 0 ] && [ $weight -lt 1 ] && weight=1
    echo $weight
}

director_pid=
checker_start() {
    local -a command
    read -ra command < <(director_command)
    [ ${#command[@]} -gt 0 ] || { info "no ExecStart in the lbagent-director.service block"; return 1; }
    # What systemd does for the unit: RuntimeDirectory=lbagent.
    mkdir -p /run/lbagent "$LVS_ETC_DIR" || return 1
    director_targets >"$LVS_ETC_DIR/targets.conf" || return 1
    info "targets file:"
    sed 's/^/  | /' "$LVS_ETC_DIR/targets.conf"
    info "poller: ${command[*]}"
    "${command[@]}" &
    director_pid=$!
}

checker_stop() {
    [ -n "$director_pid" ] || return 0
    kill -TERM "$director_pid" 2>/dev/null
    wait_exit "$director_pid" 10 || info "lbagent-director did not stop on SIGTERM"
    director_pid=
}

# The polled path, measured like the pushed one (track_file_push.sh) for comparison: the
# agents have no key, so they grant no subscription, and changes wait for the next probe.
checker_latency() { echo poll; }
