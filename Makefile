# lbagent: build, demo, tests, install. `make demo` and `make test` work on a fresh Debian
# machine with only the Rust toolchain; the tests install the Debian packages they need.
# `make help` lists the targets and the variables.

SHELL    := /bin/bash
CARGO    ?= cargo
CC       ?= gcc
CFLAGS   ?= -std=c11 -Wall -Wextra -Werror -pedantic -O2 -g
CXX      ?= g++
CXXFLAGS ?= -std=c++11 -Wall -Wextra -Werror -pedantic -O2 -g
PREFIX   ?= /usr/local
DESTDIR  ?=
DEBUG_INFO ?= strip
VERSION  := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
SOMAJOR  := $(firstword $(subst ., ,$(VERSION)))

RELEASE  := target/release
BUILD    := build

# Tools the tests need: command:debian-package.
TEST_TOOLS := gcc:gcc g++:g++ valgrind:valgrind nm:binutils readelf:binutils pkg-config:pkg-config \
              haproxy:haproxy curl:curl python3:python3 \
              keepalived:keepalived ldirectord:ldirectord systemd-analyze:systemd perl:perl \
              ip:iproute2 promtool:prometheus prometheus:prometheus setpriv:util-linux

# What `make demo` needs: a C and a C++ compiler for the examples (bash talks to the agent).
DEMO_TOOLS := gcc:gcc g++:g++

.PHONY: all help build libs examples demo test lint lvs-test fuzz bench bench-director header install uninstall deb deb-tools tools demo-tools demo-check clean

all: build

## help: this list.
help:
	@echo "make TARGET [VARIABLE=value ...]"
	@awk '/^## [a-z][a-z-]*: /{ sub(/^## /, ""); n = index($$0, ": "); \
		printf "  make %-15s %s\n", substr($$0, 1, n - 1), substr($$0, n + 2); next } \
		/^## /{ sub(/^## /, ""); printf "  %-20s %s\n", "", $$0 }' $(firstword $(MAKEFILE_LIST))
	@echo
	@echo "Variables: PREFIX (install; default /usr/local), DESTDIR (install into a"
	@echo "  staging directory), DEBUG_INFO=strip|separate|keep (install),"
	@echo "  DEMO_AGENT_PORT (default 4950) and DEMO_TCP_PORT (7070) for make demo,"
	@echo "  FUZZ_SECONDS (fuzz), CARGO, CC, CXX, CFLAGS, CXXFLAGS."

## build: the release library in target/release (liblbagent.so, .a), a copy of
## the shared library with its soname links in build/lib (relative links:
## a copy of the directory keeps working), lbagent-probe, lbagent-director
## and lbagent-ctl in target/release, the C and C++ examples in build/bin.
build:
	$(CARGO) build --release
	$(MAKE) --no-print-directory libs examples

# build/lib: the shared library as it is installed (a file, and relative links beside it).
libs: $(BUILD)/lib/liblbagent.so.$(VERSION)

$(BUILD)/lib/liblbagent.so.$(VERSION): $(RELEASE)/liblbagent.so
	@mkdir -p $(BUILD)/lib
	cp -f $< $@
	ln -sfn liblbagent.so.$(VERSION) $(BUILD)/lib/liblbagent.so.$(SOMAJOR)
	ln -sfn liblbagent.so.$(SOMAJOR) $(BUILD)/lib/liblbagent.so

examples: $(BUILD)/bin/demo_server $(BUILD)/bin/dlopen_host $(BUILD)/bin/cpp_server $(BUILD)/bin/worker_pool

$(BUILD)/bin/%: c-examples/%.c include/lbagent.h $(BUILD)/lib/liblbagent.so.$(VERSION)
	@mkdir -p $(BUILD)/bin
	$(CC) $(CFLAGS) -Iinclude $< -o $@ -L$(BUILD)/lib -Wl,-rpath,'$$ORIGIN/../lib' -llbagent

# The legacy host is not linked with the library: it loads it at run time, if it is there.
$(BUILD)/bin/dlopen_host: c-examples/dlopen_host.c include/lbagent.h
	@mkdir -p $(BUILD)/bin
	$(CC) $(CFLAGS) -Iinclude $< -o $@ -ldl

$(BUILD)/bin/%: c-examples/%.cpp include/lbagent.hpp include/lbagent.h $(BUILD)/lib/liblbagent.so.$(VERSION)
	@mkdir -p $(BUILD)/bin
	$(CXX) $(CXXFLAGS) -Iinclude $< -o $@ -L$(BUILD)/lib -Wl,-rpath,'$$ORIGIN/../lib' -llbagent

## demo: a C server with the agent embedded, probed through its state changes
## (about 20 s) on UDP 127.0.0.1:4950 and TCP 7070 (DEMO_AGENT_PORT=N and
## DEMO_TCP_PORT=N change them).
demo: demo-tools build
	scripts/demo.sh

## test: every test (scripts/test-all.sh runs the LVS VM beside the
## rest): unit, loopback UDP, TCP and HTTP, protocol vectors, header,
## symbols, the C and C++ hosts under valgrind, HAProxy and a rolling
## restart behind it, metrics, systemd, packages, the install,
## amplification, soak; make demo's walk-through; the Python package in a
## fresh virtual environment; the fuzzers for a bounded time; the LVS VM.
test: tools lint
	$(CARGO) build --all-targets
	MAKE="$(MAKE)" scripts/test-all.sh

# make demo's walk-through, without pauses, on the debug build, on ports free now (another
# checkout's tests or a real agent may hold the demo's own 4950 and 7070).
FREE_PORTS := import socket; s = [socket.socket(socket.AF_INET, t) for t in (socket.SOCK_DGRAM, socket.SOCK_STREAM)]; [x.bind(("127.0.0.1", 0)) for x in s]; print(*[x.getsockname()[1] for x in s])
demo-check: tools
	$(CARGO) build
	@mkdir -p target/demo-check
	ln -sf ../debug/liblbagent.so target/demo-check/liblbagent.so.$(SOMAJOR)
	$(CC) $(CFLAGS) -Iinclude c-examples/demo_server.c -o target/demo-check/demo_server \
		-Ltarget/debug -Wl,-rpath,'$$ORIGIN' -llbagent
	read -r udp tcp < <(python3 -c '$(FREE_PORTS)') && \
	DEMO_PAUSE=0 DEMO_AGENT_PORT=$$udp DEMO_TCP_PORT=$$tcp DEMO_PROBE=target/debug/lbagent-probe \
		DEMO_SERVER=target/demo-check/demo_server scripts/demo.sh >target/demo-check/log 2>&1 || \
		{ cat target/demo-check/log; exit 1; }
	@tail -n 1 target/demo-check/log

# libFuzzer targets (fuzz/), built with cargo-fuzz's instrumentation flags on the stable
# toolchain (no cargo-fuzz install, no nightly features), each run for FUZZ_SECONDS.
FUZZ_SECONDS ?= 30
FUZZ_TARGET  := $(shell rustc -vV | sed -n 's/^host: //p')
FUZZ_FLAGS   := -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
	-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
	-Cllvm-args=-sanitizer-coverage-trace-compares -Cllvm-args=-sanitizer-coverage-stack-depth \
	--cfg fuzzing -Cdebug-assertions

## fuzz: run every fuzz target for FUZZ_SECONDS (default 30) from the seeds.
fuzz:
	cd fuzz && RUSTFLAGS="$(FUZZ_FLAGS)" $(CARGO) build --release --target $(FUZZ_TARGET) --bins
	@for t in datagram config; do \
		mkdir -p fuzz/target/corpus/$$t fuzz/target/artifacts && \
		echo "fuzz: $$t for $(FUZZ_SECONDS) s" && \
		fuzz/target/$(FUZZ_TARGET)/release/$$t fuzz/target/corpus/$$t fuzz/seeds/$$t \
			-max_total_time=$(FUZZ_SECONDS) -max_len=700 -print_final_stats=1 \
			-artifact_prefix=fuzz/target/artifacts/ 2>&1 \
			| grep -E '^(stat::number_of_executed_units|stat::new_units_added|==|SUMMARY|INFO: Running)' ; \
		test $${PIPESTATUS[0]} -eq 0 || exit 1; \
	done

## lvs-test: real keepalived driving the kernel's IPVS table in a VM, with
## UDP_CHECK, MISC_CHECK and lbagent-director's track files (polled and
## pushed), then a rolling restart under load (about 5 min; installs qemu,
## keepalived, ipvsadm, busybox-static and fetches a Debian kernel on first
## use).
lvs-test: tools
	$(CARGO) build
	tests/lvs/run.sh

# Tools the benchmarks need (they build small C programs and strip the library).
BENCH_TOOLS := gcc:gcc strip:binutils

## bench: every benchmark, then docs/BENCHMARKS.md from their results: host
## calls (criterion), the probe path against minimal C responders, the
## director (about 3 minutes on 2 cores, after the release build).
bench:
	@scripts/ensure-tools.sh $(BENCH_TOOLS)
	@mkdir -p target/bench && cut -d' ' -f1-3 /proc/loadavg > target/bench/load-before
	$(CARGO) bench --no-run
	$(CARGO) bench --bench host_calls
	$(CARGO) bench --bench admission
	$(CARGO) bench --bench probe_path
	$(CARGO) bench --bench director
	scripts/bench-report.sh

## bench-director: lbagent-director polling 10,000 simulated agents at 1 s, against
## a plain UDP exchange loop and MISC_CHECK's fork+exec per check.
bench-director:
	$(CARGO) bench --bench director

## install: make build (skipped where cargo is not found, as under sudo), then
## the libraries with their soname links, the headers, lbagent.pc,
## lbagent-probe, lbagent-director and lbagent-ctl into PREFIX (default
## /usr/local; DESTDIR=DIR stages them), stripped (DEBUG_INFO=separate puts the debug
## information in .debug/, DEBUG_INFO=keep leaves it in). As root, into a
## directory the dynamic linker searches, runs ldconfig; otherwise says
## what a program needs to find the library.
install:
	@if command -v $(CARGO) >/dev/null 2>&1; then \
		$(MAKE) --no-print-directory build; \
	else \
		echo "install: $(CARGO) not found (under sudo?): installing what make build left in $(RELEASE)"; \
	fi
	DESTDIR="$(DESTDIR)" DEBUG_INFO="$(DEBUG_INFO)" scripts/install.sh $(PREFIX) $(RELEASE)

# What make deb needs (debhelper, help2man for the man pages, lintian to check them).
DEB_TOOLS := dh:debhelper dpkg-architecture:dpkg-dev help2man:help2man lintian:lintian man:man-db

## deb: Debian packages into build/deb/ with debhelper: liblbagent0 (the shared
## library), liblbagent-dev (headers, C++ wrapper, static library, lbagent.pc),
## lbagent-tools (lbagent-probe, lbagent-director, lbagent-ctl, man pages from
## --help, the director's unit); then lintian checks them.
deb: deb-tools
	rm -rf $(BUILD)/deb
	@mkdir -p $(BUILD)/deb
	debian/rules binary
	debian/rules clean
	lintian --fail-on error --suppress-tags no-manual-page $(BUILD)/deb/*.deb

deb-tools:
	@scripts/ensure-tools.sh $(DEB_TOOLS)

## uninstall: removes what make install put into PREFIX (same PREFIX, DESTDIR).
uninstall:
	DESTDIR="$(DESTDIR)" scripts/install.sh --uninstall $(PREFIX)

## header: regenerate include/lbagent.h from the Rust source (commit it).
header:
	LBAGENT_BLESS=1 $(CARGO) test --test header committed_header_is_up_to_date

## lint: formatting and clippy with warnings as errors (this enforces the
## crate's deny attributes, such as no unsafe outside src/ffi, src/sys).
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

tools:
	@scripts/ensure-tools.sh $(TEST_TOOLS)

demo-tools:
	@scripts/ensure-tools.sh $(DEMO_TOOLS)

clean:
	$(CARGO) clean
	rm -rf $(BUILD)
