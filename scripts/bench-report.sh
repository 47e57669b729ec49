#!/bin/bash
# Writes docs/BENCHMARKS.md from its template (benches/BENCHMARKS.md.in) and the results that
# `make bench` left in target/bench/: the last step of `make bench`.
#
# In the template, a line `{{table NAME}}` becomes target/bench/NAME.md (a benchmark's tables),
# and `{{KEY}}` anywhere becomes KEY's value from target/bench/*.values (`KEY=VALUE` lines
# written by the benchmarks, plus the machine's description made here). A placeholder with no
# value is an error: the document never shows a hole.
#
# usage: scripts/bench-report.sh [RESULTS_DIR] [OUTPUT]
set -euo pipefail

results=${1:-target/bench}
output=${2:-docs/BENCHMARKS.md}
template=benches/BENCHMARKS.md.in

# The machine the figures come from.
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)
{
    echo "| machine of this run | |"
    echo "|---|---|"
    echo "| processor | ${cpu:-unknown}, $(nproc) cores seen by the system |"
    echo "| memory | $(free -m | awk '/^Mem:/ { printf "%.1f GiB", $2 / 1024 }') |"
    echo "| kernel | Linux $(uname -r) |"
    echo "| compilers | $(rustc --version | cut -d' ' -f1-2), $(${CC:-gcc} --version | head -n1) |"
    echo "| load average before / after the run | $(cat "$results/load-before" 2>/dev/null || echo '?') / $(cut -d' ' -f1-3 /proc/loadavg) |"
    echo "| commit | $(git describe --always --dirty 2>/dev/null || echo unknown) |"
    echo "| date | $(date -u +%Y-%m-%d) |"
} > "$results/machine.md"

cat "$results"/host_calls.values "$results"/admission.values "$results"/probe_path.values \
    "$results"/director.values \
    > "$results/all.values"

awk -v results="$results" -v values="$results/all.values" '
    BEGIN {
        while ((getline line < values) > 0) {
            eq = index(line, "=")
            value[substr(line, 1, eq - 1)] = substr(line, eq + 1)
        }
    }
    /^\{\{table [a-z_.]+\}\}$/ {
        file = results "/" substr($0, 9, length($0) - 10) ".md"
        found = 0
        while ((getline line < file) > 0) { print line; found = 1 }
        if (!found) { print "bench-report: no results in " file > "/dev/stderr"; failed = 1 }
        next
    }
    {
        out = ""
        rest = $0
        while (match(rest, /\{\{[a-z0-9_]+\}\}/)) {
            key = substr(rest, RSTART + 2, RLENGTH - 4)
            if (!(key in value)) {
                print "bench-report: no value for {{" key "}}" > "/dev/stderr"
                failed = 1
            }
            out = out substr(rest, 1, RSTART - 1) value[key]
            rest = substr(rest, RSTART + RLENGTH)
        }
        print out rest
    }
    END { exit failed }
' "$template" > "$output.tmp"
mv "$output.tmp" "$output"
echo "bench-report: wrote $output"
