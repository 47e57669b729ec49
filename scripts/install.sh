#!/usr/bin/env bash
# Installs lbagent into PREFIX from a cargo output directory (make install uses
# target/release), or removes what it installs (--uninstall).
#
# Usage: scripts/install.sh [--uninstall] PREFIX [CARGO_OUT_DIR]
# Environment:
#   DESTDIR      a staging directory: files go to $DESTDIR$PREFIX, and lbagent.pc still says
#                PREFIX (for packages); ldconfig is then left to the package's installation
#   DEBUG_INFO   strip (default): no debug information; separate: stripped, with the debug
#                information in .debug/NAME.debug beside each program and the shared library
#                (gdb finds it through the .gnu_debuglink section); keep: as built
#   STRIP, OBJCOPY   the binutils programs (default strip, objcopy)
#   LIBDIR       where the libraries go (default PREFIX/lib; the Debian packages use
#                /usr/lib/<multiarch triplet>)
#   TOOLS        the programs installed (default: lbagent-probe lbagent-director lbagent-ctl)
#
# What goes where (LIB = PREFIX/lib):
#   LIB/liblbagent.so.VERSION, LIB/liblbagent.so.MAJOR -> it, LIB/liblbagent.so -> .MAJOR
#   LIB/liblbagent.a, LIB/pkgconfig/lbagent.pc
#   PREFIX/include/lbagent.h, PREFIX/include/lbagent.hpp
#   PREFIX/bin/lbagent-probe, PREFIX/bin/lbagent-director, PREFIX/bin/lbagent-ctl
#
# Run as root with no DESTDIR into a directory the dynamic linker searches (/usr/lib,
# /usr/local/lib, ...: ldconfig's configuration), it runs ldconfig. Otherwise it says what a
# program needs to find the library (an rpath, or LD_LIBRARY_PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

uninstall=0
if [ "${1:-}" = "--uninstall" ]; then
    uninstall=1
    shift
fi
prefix=${1:?usage: install.sh [--uninstall] PREFIX [CARGO_OUT_DIR]}
src=${2:-target/release}
destdir=${DESTDIR:-}
debug_info=${DEBUG_INFO:-strip}
strip_cmd=${STRIP:-strip}
objcopy_cmd=${OBJCOPY:-objcopy}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
major=${version%%.*}

case $prefix in
    /*) ;;
    *) echo "install: PREFIX must be an absolute path, not \"$prefix\"" >&2; exit 64 ;;
esac
case $debug_info in
    strip | separate | keep) ;;
    *) echo "install: DEBUG_INFO=$debug_info: expected strip, separate or keep" >&2; exit 64 ;;
esac

lib=${LIBDIR:-$prefix/lib}
case $lib in
    /*) ;;
    *) echo "install: LIBDIR must be an absolute path, not \"$lib\"" >&2; exit 64 ;;
esac
read -r -a tools <<<"${TOOLS:-lbagent-probe lbagent-director lbagent-ctl}"
stage=$destdir$prefix
slib=$destdir$lib
installed=(
    "$lib/liblbagent.so.$version" "$lib/liblbagent.so.$major" "$lib/liblbagent.so"
    "$lib/liblbagent.a" "$lib/pkgconfig/lbagent.pc"
    "$prefix/include/lbagent.h" "$prefix/include/lbagent.hpp"
)
debug_files=("$lib/.debug/liblbagent.so.$version.debug")
for tool in "${tools[@]}"; do
    installed+=("$prefix/bin/$tool")
    debug_files+=("$prefix/bin/.debug/$tool.debug")
done

if [ "$uninstall" -eq 1 ]; then
    for f in "${installed[@]}" "${debug_files[@]}"; do
        if [ -e "$destdir$f" ] || [ -L "$destdir$f" ]; then
            rm -f "$destdir$f"
            echo "removed $destdir$f"
        fi
    done
    rmdir "$slib/.debug" "$stage/bin/.debug" 2>/dev/null || true
    exit 0
fi

for f in liblbagent.so liblbagent.a "${tools[@]}"; do
    [ -f "$src/$f" ] || { echo "install: $src/$f is missing: run make build first" >&2; exit 1; }
done
if [ "$debug_info" != keep ]; then
    for tool in "$strip_cmd" "$objcopy_cmd"; do
        command -v "$tool" >/dev/null ||
            { echo "install: $tool not found (apt-get install binutils), or DEBUG_INFO=keep" >&2; exit 1; }
    done
fi

# Strips an installed file (FILE, strip options...); with DEBUG_INFO=separate its debug
# information goes to .debug/NAME.debug beside it first.
strip_file() {
    local file=$1
    shift
    case $debug_info in
        keep) return ;;
        separate)
            local dir
            dir=$(dirname "$file")/.debug
            install -d "$dir"
            "$objcopy_cmd" --only-keep-debug "$file" "$dir/$(basename "$file").debug"
            chmod 0644 "$dir/$(basename "$file").debug"
            "$strip_cmd" "$@" "$file"
            (cd "$(dirname "$file")" &&
                "$objcopy_cmd" --add-gnu-debuglink=".debug/$(basename "$file").debug" "$(basename "$file")")
            ;;
        strip) "$strip_cmd" "$@" "$file" ;;
    esac
}

install -d "$slib/pkgconfig" "$stage/include" "$stage/bin"
install -m 0755 "$src/liblbagent.so" "$slib/liblbagent.so.$version"
strip_file "$slib/liblbagent.so.$version" --strip-unneeded
ln -sf "liblbagent.so.$version" "$slib/liblbagent.so.$major"
ln -sf "liblbagent.so.$major" "$slib/liblbagent.so"
install -m 0644 "$src/liblbagent.a" "$slib/liblbagent.a"
# Separate debug information does not apply to an archive: it keeps its own only with keep.
[ "$debug_info" = keep ] || "$strip_cmd" --strip-debug "$slib/liblbagent.a"
install -m 0644 include/lbagent.h include/lbagent.hpp "$stage/include/"
for tool in "${tools[@]}"; do
    install -m 0755 "$src/$tool" "$stage/bin/$tool"
    strip_file "$stage/bin/$tool"
done
if [ "$lib" = "$prefix/lib" ]; then
    pc_libdir='${exec_prefix}/lib'
else
    pc_libdir=$lib
fi
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" -e "s|@LIBDIR@|$pc_libdir|" \
    lbagent.pc.in >"$slib/pkgconfig/lbagent.pc"
chmod 0644 "$slib/pkgconfig/lbagent.pc"

echo "installed lbagent $version into $stage:"
for f in "${installed[@]}"; do
    if [ -L "$destdir$f" ]; then
        printf '  %s -> %s\n' "$destdir$f" "$(readlink "$destdir$f")"
    else
        printf '  %s (%s bytes)\n' "$destdir$f" "$(stat -c %s "$destdir$f")"
    fi
done
[ "$debug_info" = separate ] && printf '  debug information: %s/.debug/, %s/bin/.debug/\n' "$slib" "$stage"

# Can programs find the shared library?
if [ -n "$destdir" ]; then
    echo "staged for $prefix: installing the package there runs ldconfig (if $lib is searched)"
    exit 0
fi
ldconfig_cmd=$(command -v ldconfig || echo /sbin/ldconfig)
searched=0
real_lib=$(realpath "$lib")
while read -r dir; do
    if [ "$(realpath "$dir" 2>/dev/null)" = "$real_lib" ]; then
        searched=1
    fi
done < <("$ldconfig_cmd" -v -N -X 2>/dev/null | sed -n 's|^\(/[^:]*\):.*|\1|p')
if [ "$searched" -eq 1 ] && [ "$(id -u)" -eq 0 ]; then
    "$ldconfig_cmd"
    echo "ran ldconfig: programs find liblbagent.so.$major in $lib"
elif [ "$searched" -eq 1 ]; then
    echo "run ldconfig as root so that programs find liblbagent.so.$major in $lib"
else
    cat <<EOF
$lib is not a directory the dynamic linker searches: a program linked with
\$(pkg-config --libs lbagent) needs -Wl,-rpath,$lib when it is built, or
LD_LIBRARY_PATH=$lib when it runs (or add $lib to /etc/ld.so.conf.d/ and run ldconfig).
For pkg-config: export PKG_CONFIG_PATH=$lib/pkgconfig
EOF
fi
