# lbagent: build, demo, tests. `make demo` and `make test` work on a fresh Debian machine
# with only the Rust toolchain; the tests install the Debian packages they need.

CARGO    ?= cargo
CC       ?= gcc
CFLAGS   ?= -std=c11 -Wall -Wextra -Werror -pedantic -O2 -g
PREFIX   ?= /usr/local
SOMAJOR  := $(shell sed -n 's/^version = "\([0-9]*\)\..*/\1/p' Cargo.toml | head -n1)

RELEASE  := target/release
BUILD    := build

# Tools the tests need: command:debian-package.
TEST_TOOLS := gcc:gcc g++:g++ valgrind:valgrind nm:binutils readelf:binutils pkg-config:pkg-config \
              keepalived:keepalived ldirectord:ldirectord systemd-analyze:systemd perl:perl

.PHONY: all build examples demo test bench bench-director header install tools clean

all: build

## build: the release library (.so, .a), lbagent-probe, and the C examples in build/bin.
build:
	$(CARGO) build --release
	@mkdir -p $(BUILD)/lib $(BUILD)/bin
	ln -sf ../../$(RELEASE)/liblbagent.so $(BUILD)/lib/liblbagent.so
	ln -sf ../../$(RELEASE)/liblbagent.so $(BUILD)/lib/liblbagent.so.$(SOMAJOR)
	$(MAKE) --no-print-directory examples

examples: $(BUILD)/bin/demo_server

$(BUILD)/bin/%: c-examples/%.c include/lbagent.h $(RELEASE)/liblbagent.so
	$(CC) $(CFLAGS) -Iinclude $< -o $@ -L$(BUILD)/lib -Wl,-rpath,'$$ORIGIN/../lib' -llbagent

## demo: a C server with the agent embedded, probed through its state changes (~20 s).
demo: tools build
	scripts/demo.sh

## test: every test (unit, loopback UDP, protocol vectors, header, symbols, C under valgrind).
test: tools
	$(CARGO) build --all-targets
	$(CARGO) test --all-targets -- --test-threads=2

## bench: benchmarks; results in target/bench/ (recorded in docs/BENCHMARKS.md).
bench: bench-director

## bench-director: lbagent-director polling 10,000 simulated agents at 1 s, against a plain
## UDP exchange loop and MISC_CHECK's fork+exec per check (about a minute).
bench-director:
	$(CARGO) bench --bench director

## install: PREFIX=/usr/local: libraries with soname links, headers, pkg-config file, probe.
install: build
	scripts/install.sh $(PREFIX) $(RELEASE)

## header: regenerate include/lbagent.h from the Rust source (commit the result).
header:
	LBAGENT_BLESS=1 $(CARGO) test --test header committed_header_is_up_to_date

tools:
	@scripts/ensure-tools.sh $(TEST_TOOLS)

clean:
	$(CARGO) clean
	rm -rf $(BUILD)
