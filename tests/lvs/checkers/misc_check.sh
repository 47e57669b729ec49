# shellcheck shell=bash
# keepalived's MISC_CHECK running lbagent-probe, which README.md offers to MISC_CHECK: its exit
# status is the verdict (0 serving, anything else not; no misc_dynamic, so no weights). One
# fork per check and server: fine for a few real servers, see README.md for the scaling.
# The functions a checker may define are described at the top of guest.sh.

# keepalived refuses to run check scripts as root unless script security is set up.
checker_globals() {
    cat <<'CONF'
global_defs {
    script_user root
    enable_script_security
}
CONF
}

# The probe's own timeout stays below keepalived's misc_timeout, so that a silent agent is
# reported by the probe (exit 2) rather than by keepalived killing it.
checker_block() {
    cat <<CONF
MISC_CHECK {
    misc_path "$LVS_BIN/lbagent-probe --timeout 1000 ${RS_ADDR[$1]}:$AGENT_PORT"
    misc_timeout 3
}
CONF
}
