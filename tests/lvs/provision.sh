#!/usr/bin/env bash
# shellcheck shell=bash
# Provisioning for the LVS test VM (tests/lvs/run.sh sources this file).
#
# 1. Debian packages, installed when missing: qemu (the VM, software emulation), a static
#    busybox (the initramfs), keepalived and ipvsadm (run inside the guest from the host's
#    root filesystem), xz-utils (to unpack the kernel).
# 2. A kernel with IPVS: this machine's own kernel has none. Debian's linux-image-amd64 builds
#    ip_vs as modules. Its .deb is fetched with `apt-get download` and only the files the VM
#    needs are unpacked into the build directory (the kernel image, uncompressed for a faster
#    boot, and a few modules): installing the package would pull in initramfs-tools, udev and a
#    systemd upgrade, and write /boot, none of which the test needs.
#
# Result: $KERNEL_DIR holds `vmlinux` and `lib/modules/$KERNEL_VERSION/` with modules.dep.

LVS_PACKAGES=(qemu-system-x86 busybox-static keepalived ipvsadm xz-utils)

# The kernel's modules the VM loads; their dependencies come along (modules.dep).
# Kept to the directories they live in, so that unpacking stays small.
KERNEL_MODULE_DIRS=(drivers/virtio fs/9p fs/netfs fs/fscache net/9p net/netfilter
    net/ipv4/netfilter net/ipv6/netfilter lib crypto)
# Single modules from directories too large to unpack whole: veth, which links the network
# namespaces of the rolling restart (a client, the director, the real servers).
KERNEL_MODULE_FILES=(drivers/net/veth.ko)

provision_packages() {
    local pkg missing=()
    for pkg in "${LVS_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "lvs-test: missing packages: ${missing[*]} (run as root, or install them)" >&2
        return 1
    fi
    echo "lvs-test: installing ${missing[*]}"
    apt_update_once
    # Lock timeout: another worktree's test may be installing at the same moment.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o DPkg::Lock::Timeout=300 "${missing[@]}" >/dev/null
}

# `apt-get update` at most once per boot of this machine (shared with scripts/ensure-tools.sh).
apt_update_once() {
    local stamp=/tmp/.lbagent-apt-updated
    [ -e "$stamp" ] && return 0
    apt-get update -qq && touch "$stamp"
}

# The versioned kernel package that linux-image-amd64 currently points to.
kernel_package() {
    local pkg
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
        awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
    if [ -z "$pkg" ]; then
        apt_update_once
        pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
            awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
    fi
    [ -n "$pkg" ] && echo "$pkg"
}

# Sets KERNEL_DIR and KERNEL_VERSION; fetches and unpacks the kernel on first use.
provision_kernel() {
    local cache=$1 pkg
    pkg=$(kernel_package) || true
    if [ -z "$pkg" ]; then
        # No package index (offline): use whatever kernel was unpacked before, if any.
        pkg=$(cd "$cache" 2>/dev/null && ls -d linux-image-* 2>/dev/null | tail -n1)
        if [ -z "$pkg" ]; then
            echo "lvs-test: cannot resolve linux-image-amd64 (apt-get update failed?)" >&2
            return 1
        fi
    fi
    KERNEL_DIR=$cache/$pkg
    # .complete records what was unpacked: a changed module list unpacks again.
    if [ "$(cat "$KERNEL_DIR/.complete" 2>/dev/null)" != "${KERNEL_MODULE_DIRS[*]} ${KERNEL_MODULE_FILES[*]}" ]; then
        unpack_kernel "$pkg" "$KERNEL_DIR" || return 1
        # A kernel that linux-image-amd64 no longer points to is not needed any more.
        find "$cache" -mindepth 1 -maxdepth 1 -name 'linux-image-*' ! -name "$pkg" \
            -exec rm -rf {} +
    fi
    KERNEL_VERSION=$(basename "$(ls -d "$KERNEL_DIR"/lib/modules/*)")
}

unpack_kernel() {
    local pkg=$1 dest=$2 work deb image dir file patterns=()
    echo "lvs-test: fetching $pkg (kernel with IPVS modules for the VM)"
    rm -rf "${dest:?}" && mkdir -p "$dest"
    work=$(mktemp -d "$dest/.fetch.XXXXXX")
    # As root, apt warns that the download is not sandboxed: expected here.
    (cd "$work" && apt-get download -qq "$pkg" 2>&1 | { grep -v 'unsandboxed' >&2 || true; })
    deb=$(ls "$work"/*.deb 2>/dev/null | head -n1)
    [ -n "$deb" ] || { echo "lvs-test: apt-get download $pkg failed" >&2; return 1; }

    for dir in "${KERNEL_MODULE_DIRS[@]}"; do
        patterns+=("./lib/modules/*/kernel/$dir/*")
    done
    for file in "${KERNEL_MODULE_FILES[@]}"; do
        patterns+=("./lib/modules/*/kernel/$file*")
    done
    dpkg-deb --fsys-tarfile "$deb" |
        tar -x -C "$dest" --wildcards './boot/vmlinuz-*' './lib/modules/*/modules.*' \
            "${patterns[@]}"
    image=$(ls "$dest"/boot/vmlinuz-*)
    extract_vmlinux "$image" "$dest/vmlinux" || return 1
    rm -rf "$work" "${dest:?}/boot"
    # modules.dep is written by the package's postinst, not shipped: make it for this subset.
    busybox depmod -b "$dest" "$(basename "$(ls -d "$dest"/lib/modules/*)")"
    echo "${KERNEL_MODULE_DIRS[*]} ${KERNEL_MODULE_FILES[*]}" >"$dest/.complete"
}

# The uncompressed kernel (an ELF that qemu boots through its PVH entry point) out of a
# bzImage: the setup header tells where the compressed payload starts (setup_sects at 0x1f1,
# payload_offset at 0x248, payload_length at 0x24c); Debian compresses it with xz. Booting
# it saves the guest about 2.5 s of decompression under software emulation.
extract_vmlinux() {
    local image=$1 out=$2 setup_sects offset length
    setup_sects=$(od -An -tu1 -j $((0x1f1)) -N1 "$image" | tr -d ' ')
    [ "$setup_sects" -eq 0 ] && setup_sects=4
    offset=$(od -An -tu4 -j $((0x248)) -N4 "$image" | tr -d ' ')
    length=$(od -An -tu4 -j $((0x24c)) -N4 "$image" | tr -d ' ')
    tail -c +$(((setup_sects + 1) * 512 + offset + 1)) "$image" | head -c "$length" |
        xz -dc --single-stream >"$out" 2>/dev/null
    if [ "$(head -c 4 "$out" | od -An -c | tr -d ' ')" != '177ELF' ]; then
        echo "lvs-test: could not extract an uncompressed kernel from $image" >&2
        return 1
    fi
}
