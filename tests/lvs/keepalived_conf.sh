# shellcheck shell=bash
# The director configuration of the LVS test, taken from the tagged code blocks of
# docs/DIRECTORS.md (the blocks tests/directors_doc.rs checks), so that what operators copy is
# what runs against the kernel's IPVS table. Sourced by guest.sh, which defines VIP, SERVERS,
# RS_ADDR and RS_INHIBIT.
#
# The documentation's addresses and install paths become the test's (doc_localize):
#   10.0.0.100 (the virtual server)       -> $VIP
#   10.0.0.5, 10.0.0.6 (real servers)      -> the addresses of servers A and B
#   /usr/local/bin                         -> $LVS_BIN_DIR (the crate's binaries, copied there)
#   /etc/lbagent                           -> $LVS_ETC_DIR
# Ports (7000 for the service, 4950 for the agent) and /run/lbagent stay as documented.
# keepalived_conf also shapes the real servers (see there); everything else, timers, checks,
# comments, is the documentation's, byte for byte.

DOC=$LVS_REPO/docs/DIRECTORS.md
DOC_VIP=10.0.0.100
declare -A DOC_ADDR=([A]=10.0.0.5 [B]=10.0.0.6)
LVS_BIN_DIR=/run/lvs/bin
LVS_ETC_DIR=/run/lvs/etc

# doc_block LANG NAME: the code block tagged ```LANG NAME in docs/DIRECTORS.md.
doc_block() {
    awk -v tag="\`\`\`$1 $2" '
        $0 == tag { inside = 1; found = 1; next }
        inside && /^```/ { exit }
        inside { print }
        END { exit !found }
    ' "$DOC" || {
        echo "keepalived_conf: no \`\`\`$1 $2 block in docs/DIRECTORS.md" >&2
        return 1
    }
}

# Replaces the documentation's addresses and paths with the test's (stdin to stdout). An
# address is replaced only where no digit follows it (10.0.0.5 but not 10.0.0.50).
doc_localize() {
    local name script
    script="s#${DOC_VIP//./\\.}([^0-9]|\$)#$VIP\\1#g"
    for name in "${SERVERS[@]}"; do
        script+="; s#${DOC_ADDR[$name]//./\\.}([^0-9]|\$)#${RS_ADDR[$name]}\\1#g"
    done
    script+="; s#/usr/local/bin/#$LVS_BIN_DIR/#g; s#/etc/lbagent/#$LVS_ETC_DIR/#g"
    sed -E "$script"
}

# The number of "{" minus the number of "}" in a line (comments already removed).
brace_balance() {
    local opening=${1//[^\{]/} closing=${1//[^\}]/}
    echo $((${#opening} - ${#closing}))
}

# keepalived_conf NAME: the keepalived configuration of the ```keepalived NAME block, for the
# test's servers. Top-level blocks (global_defs, track_file, ...) and the virtual_server are
# kept; inside it, each test server gets the documented real_server block of its address
# (10.0.0.5 for A, 10.0.0.6 for B) or, when the block documents only one real server, a copy
# of A's with the address changed. A server whose RS_INHIBIT is "no" loses
# `inhibit_on_failure`, so that both ways of taking a server out are tested: weight 0 (A) and
# removal from the table (B). Then doc_localize.
keepalived_conf() {
    local snippet=$1 text line code depth=0 in_vs=0 rs='' name
    local -a head=() tail=()
    local -A rs_lines=()
    text=$(doc_block keepalived "$snippet") || return 1
    while IFS= read -r line; do
        code=${line%%#*}
        if [ $in_vs -eq 0 ]; then
            [[ $code =~ ^virtual_server[[:space:]] ]] && in_vs=1
            head+=("$line")
        elif [ -n "$rs" ]; then # inside real_server $rs
            rs_lines[$rs]+="$line"$'\n'
            [ $((depth + $(brace_balance "$code"))) -eq 1 ] && rs=
        elif [[ $code =~ ^[[:space:]]*real_server[[:space:]]+([^[:space:]]+) ]]; then
            rs=${BASH_REMATCH[1]}
            rs_lines[$rs]="$line"$'\n'
        elif [ ${#rs_lines[@]} -eq 0 ]; then
            head+=("$line")
        else
            tail+=("$line")
        fi
        depth=$((depth + $(brace_balance "$code")))
    done <<<"$text"
    if [ -z "${rs_lines[${DOC_ADDR[A]}]:-}" ] || [ ${#tail[@]} -eq 0 ]; then
        echo "keepalived_conf: no virtual_server with a real_server ${DOC_ADDR[A]} in \`\`\`keepalived $snippet" >&2
        return 1
    fi

    {
        printf '%s\n' "${head[@]}"
        for name in "${SERVERS[@]}"; do
            local block=${rs_lines[${DOC_ADDR[$name]}]:-}
            if [ -z "$block" ]; then
                block=${rs_lines[${DOC_ADDR[A]}]//${DOC_ADDR[A]} /${DOC_ADDR[$name]} }
                block=${block//${DOC_ADDR[A]}:/${DOC_ADDR[$name]}:}
            fi
            while IFS= read -r line; do
                code=${line%%#*}
                [[ $code =~ ^[[:space:]]*inhibit_on_failure ]] && [ "${RS_INHIBIT[$name]}" = no ] &&
                    continue
                printf '%s\n' "$line"
            done <<<"${block%$'\n'}"
        done
        printf '%s\n' "${tail[@]}"
    } | doc_localize
}
