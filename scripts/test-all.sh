#!/usr/bin/env bash
# make test's suites, the long independent ones side by side: the cargo tests, the demo's
# walk-through, the Python package and the fuzzers one after the other, and beside them the
# LVS VM test (software emulation on one virtual CPU, mostly waiting on the VM). Each suite's
# output goes to target/test-logs/NAME.log; a failed suite's log is printed whole, and the LVS
# test's tables always. Exits non-zero when any suite fails (or did not run).
set -uo pipefail
cd "$(dirname "$0")/.."
make=${MAKE:-make}
logs=target/test-logs
rm -rf "$logs"
mkdir -p "$logs"
suites=(cargo demo python fuzz lvs)

run() { # run NAME COMMAND...: one suite, into its log and its status file.
    local name=$1 started=$SECONDS status
    shift
    "$@" >"$logs/$name.log" 2>&1
    status=$?
    echo $status >"$logs/$name.status"
    printf 'test-all: %-6s %s in %d s\n' "$name" "$([ $status -eq 0 ] && echo passed || echo FAILED)" \
        $((SECONDS - started))
    return $status
}

{
    run cargo cargo test --all-targets -- --test-threads=2 &&
        run demo "$make" --no-print-directory demo-check &&
        run python scripts/python-test.sh target/debug &&
        run fuzz "$make" --no-print-directory fuzz
} &
# run.sh directly: `make lvs-test` would run `cargo build`, which waits for the lock the cargo
# tests hold (make test built everything first).
run lvs tests/lvs/run.sh &
wait

failed=0
for name in "${suites[@]}"; do
    status=$(cat "$logs/$name.status" 2>/dev/null || echo "did not run")
    if [ "$status" != 0 ]; then
        echo "=== $name: $status ($logs/$name.log)"
        [ -f "$logs/$name.log" ] && cat "$logs/$name.log"
        failed=1
    fi
done
if [ "$(cat "$logs/lvs.status" 2>/dev/null)" = 0 ]; then
    sed -n '/detection times/,$p' "$logs/lvs.log"
fi
[ $failed -eq 0 ] && echo "test-all: every suite passed"
exit $failed
