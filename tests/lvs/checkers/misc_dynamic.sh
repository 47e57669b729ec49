# shellcheck shell=bash
# keepalived's MISC_CHECK with misc_dynamic running `lbagent-probe --keepalived-dynamic`:
# docs/DIRECTORS.md's ```keepalived misc-dynamic block. The probe's exit code is the IPVS
# weight (2 + W serving, 2 draining: weight 0 but kept in the table, 1 down), so the weight
# steps apply, and a drain leaves both servers in the table at weight 0. keepalived forks and
# executes the probe for every check of every server.
# The functions a checker defines are described at the top of guest.sh.

checker_snippet() { echo misc-dynamic; }

# The IPVS weight for a reported percent, as the probe scales it: round(PERCENT x N / 100),
# at least 1 while serving, where N is misc_path's --max-weight (100 by default).
misc_max_weight=100
[[ $(doc_block keepalived misc-dynamic) =~ --max-weight[[:space:]]+([0-9]+) ]] &&
    misc_max_weight=${BASH_REMATCH[1]}
checker_ipvs_weight() {
    local weight=$((($1 * misc_max_weight + 50) / 100))
    [ "$1" -gt 0 ] && [ $weight -lt 1 ] && weight=1
    echo $weight
}

# A drain is exit 2: weight 0, kept in the table.
checker_drain_kept() { :; }

checker_forks() { echo per-check; }
