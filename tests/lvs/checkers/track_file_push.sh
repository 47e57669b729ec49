# shellcheck shell=bash
# lbagent-director with pushed changes: docs/DIRECTORS.md's ```targets lbagent-director-push
# file (every target with key=, so the agents grant the probes' subscriptions), keepalived's
# FILE_CHECK (the ```keepalived track-file block) and the documented unit's command line.
# The agents get the same key (key_file=). The HAProxy servers the documented file also feeds
# are left out: there is no HAProxy in the VM (tests/director.rs runs that part).
# Besides the steps, the latency of pushed changes is measured (checker_latency).
# The functions a checker defines are described at the top of guest.sh.

# shellcheck source=track_file.sh
. "$lvs/checkers/track_file.sh"

checker_snippet() { echo track-file; }

KEY_LINE="7 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

director_targets() {
    doc_block targets lbagent-director-push | sed -E 's/ haproxy=[^ ]+//g' | doc_localize
}

# The key files the documentation names, made before the servers start: the agents' and the
# director's hold the same key.
write_keys() {
    mkdir -p "$LVS_ETC_DIR" || return 1
    local file
    for file in agent.key director.key; do
        [ -f "$LVS_ETC_DIR/$file" ] && continue
        (umask 077 && echo "$KEY_LINE" >"$LVS_ETC_DIR/$file") || return 1
    done
}

checker_agent_config() {
    write_keys || return 1
    echo "key_file=$LVS_ETC_DIR/agent.key auth=optional"
}

checker_latency() { echo push; }
