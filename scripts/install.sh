#!/usr/bin/env bash
# Installs lbagent into PREFIX from a cargo output directory (make install uses
# target/release): the shared library with its soname links, the static library, the headers,
# a pkg-config file, lbagent-probe and lbagent-director. Usage: scripts/install.sh PREFIX [CARGO_OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${1:?usage: install.sh PREFIX [CARGO_OUT_DIR]}
src=${2:-target/release}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
major=${version%%.*}

install -d "$prefix/lib/pkgconfig" "$prefix/include" "$prefix/bin"
install -m 0755 "$src/liblbagent.so" "$prefix/lib/liblbagent.so.$version"
ln -sf "liblbagent.so.$version" "$prefix/lib/liblbagent.so.$major"
ln -sf "liblbagent.so.$major" "$prefix/lib/liblbagent.so"
install -m 0644 "$src/liblbagent.a" "$prefix/lib/liblbagent.a"
for header in include/*.h include/*.hpp; do
    [ -e "$header" ] && install -m 0644 "$header" "$prefix/include/"
done
install -m 0755 "$src/lbagent-probe" "$prefix/bin/lbagent-probe"
install -m 0755 "$src/lbagent-director" "$prefix/bin/lbagent-director"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" lbagent.pc.in \
    >"$prefix/lib/pkgconfig/lbagent.pc"
echo "installed lbagent $version into $prefix"
