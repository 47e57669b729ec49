#!/usr/bin/env bash
# make test's Python part: a fresh virtual environment, `pip install ./python pytest` (from
# PyPI; python/setup.py builds the library with cargo and bundles it in the package), then the
# pytest suite against the library and lbagent-probe of this build (LBAGENT_LIBRARY), and
# python/tests/test_bundle.py against the bundled one.
# Usage: scripts/python-test.sh [CARGO_OUT_DIR]   (default target/debug)
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(cd "${1:-target/debug}" && pwd)
venv=target/python-venv

# Debian's python3 needs python3-venv for `python3 -m venv` (ensurepip).
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    echo "python-test: installing python3-venv" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -qq --no-install-recommends python3-venv >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv >/dev/null; }
fi

rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check ./python pytest
# The suite must test the installed package, not the source tree.
"$venv/bin/python" -c 'import lbagent, sys; sys.exit("site-packages" not in lbagent.__file__)'

LBAGENT_LIBRARY="$out/liblbagent.so" LBAGENT_PROBE="$out/lbagent-probe" \
    timeout 300 "$venv/bin/python" -m pytest -q -p no:cacheprovider python/tests
