# shellcheck shell=bash
# The keepalived configuration of the LVS test, made from README.md's keepalived example so
# that the snippet operators copy is the one tested. Sourced by guest.sh, which defines
# VIP, VPORT, SERVERS, RS_ADDR and RS_INHIBIT.
#
# keepalived_conf prints the README's example with:
#   - the virtual server moved to $VIP $VPORT;
#   - its real_server block repeated for every test server, at the server's address, without
#     `inhibit_on_failure` for a server whose RS_INHIBIT is "no" (IPVS then removes it on
#     failure instead of setting weight 0);
#   - the health check block (UDP_CHECK in the README) replaced by the output of
#     `checker_block NAME` when the checker defines it, and top-level lines from
#     `checker_globals` first (see checkers/).
# Everything else (timers, require_reply, weights, comments) is the README's, byte for byte.

readme_keepalived_example() {
    # The first code block of the section whose heading names keepalived
    # ("## Directors: keepalived, ldirectord").
    awk '
        /^## / { in_section = ($0 ~ /^## .*keepalived/) }
        in_section && /^```/ { if (in_block) exit; in_block = 1; next }
        in_block { print }
    ' "$LVS_REPO/README.md"
}

# The number of "{" minus the number of "}" in a line (comments already removed).
brace_balance() {
    local opening=${1//[^\{]/} closing=${1//[^\}]/}
    echo $((${#opening} - ${#closing}))
}

keepalived_conf() {
    local line code part=before depth=0 name
    local -a before=() real_server=() after=()
    while IFS= read -r line; do
        code=${line%%#*}
        if [ $part = before ] && [[ $code =~ ^[[:space:]]*real_server[[:space:]] ]]; then
            part=real_server
        fi
        case $part in
            before) before+=("$line") ;;
            real_server)
                real_server+=("$line")
                depth=$((depth + $(brace_balance "$code")))
                [ $depth -eq 0 ] && part=after
                ;;
            after) after+=("$line") ;;
        esac
    done < <(readme_keepalived_example)
    if [ ${#real_server[@]} -eq 0 ] || [ ${#after[@]} -eq 0 ]; then
        echo "keepalived_conf: no virtual_server with a real_server block in README.md" >&2
        return 1
    fi

    if declare -F checker_globals >/dev/null; then checker_globals; fi
    for line in "${before[@]}"; do
        if [[ $line =~ ^([[:space:]]*virtual_server)[[:space:]] ]]; then
            line="${BASH_REMATCH[1]} $VIP $VPORT {"
        fi
        printf '%s\n' "$line"
    done
    for name in "${SERVERS[@]}"; do
        real_server_block "$name" "${real_server[@]}"
    done
    printf '%s\n' "${after[@]}"
}

# real_server_block NAME LINES...: the README's real_server block, adapted for server NAME.
real_server_block() {
    local name=$1 line code skip_depth=0
    shift
    for line; do
        code=${line%%#*}
        if [ "$skip_depth" -gt 0 ]; then # inside the check block being replaced
            skip_depth=$((skip_depth + $(brace_balance "$code")))
            continue
        fi
        if [[ $code =~ ^([[:space:]]*)real_server[[:space:]] ]]; then
            line="${BASH_REMATCH[1]}real_server ${RS_ADDR[$name]} $VPORT {"
        elif [[ $code =~ ^[[:space:]]*inhibit_on_failure ]] && [ "${RS_INHIBIT[$name]}" = no ]; then
            continue
        elif [[ $code =~ ^([[:space:]]*)[A-Z_]+_CHECK[[:space:]]*\{ ]] &&
            declare -F checker_block >/dev/null; then
            local indent=${BASH_REMATCH[1]}
            while IFS= read -r line; do
                printf '%s%s\n' "$indent" "$line"
            done < <(checker_block "$name")
            skip_depth=$(brace_balance "$code")
            continue
        fi
        printf '%s\n' "$line"
    done
}
