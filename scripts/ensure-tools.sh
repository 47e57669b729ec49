#!/usr/bin/env bash
# Installs the Debian packages that the tests need, when a command is missing.
# Usage: scripts/ensure-tools.sh COMMAND:PACKAGE ...
# `apt-get update` runs at most once, and only when something must be installed.
set -euo pipefail

missing=()
for pair in "$@"; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    if ! command -v "$cmd" >/dev/null 2>&1; then
        missing+=("$pkg")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "ensure-tools: missing packages: ${missing[*]} (run as root, or install them)" >&2
    exit 1
fi
echo "ensure-tools: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
stamp=/tmp/.lbagent-apt-updated
if [ ! -e "$stamp" ]; then
    apt-get update -qq
    touch "$stamp"
fi
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
