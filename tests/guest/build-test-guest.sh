#!/usr/bin/env bash
# Builds banger's test guest from Debian packages, without installing anything:
#   vmlinuz            Debian cloud kernel (bzImage, for QEMU -kernel)
#   vmlinux            the same kernel as an ELF (for Firecracker), from the LZ4 payload
#   initramfs.cpio.gz  busybox + virtio/vsock/overlay modules + /init (init.sh beside this
#                      script) + /sbin/banger-agent
#   rootfs.ext4        the image's base root filesystem (ext4, made with mkfs.ext4 -d, no
#                      mount): busybox + applet links + /sbin/banger-agent + init.sh as
#                      /sbin/init; the initramfs's early init mounts it (see init.sh)
#
# Usage: build-test-guest.sh CACHE_DIR [AGENT_BINARY]
#   AGENT_BINARY defaults to the static release build:
#   target/x86_64-unknown-linux-gnu/release/banger-agent (see README.md beside this script).
#
# The result lives in CACHE_DIR/guest-KEY/, KEY hashing the kernel and busybox package versions,
# the agent binary, init.sh and this script; a second run with the same inputs only prints the
# paths. Prints `name=path` lines on stdout; everything else goes to stderr. Exits non-zero with a
# message on any failure. Needs: apt-get, apt-cache, dpkg-deb, lz4, cpio, gzip, sha256sum, flock,
# mkfs.ext4.
set -euo pipefail

die() {
    echo "build-test-guest: error: $*" >&2
    exit 1
}
log() {
    echo "build-test-guest: $*" >&2
}

[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 CACHE_DIR [AGENT_BINARY]"

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_root=$(cd "$script_dir/../.." && pwd)
cache_dir=$1
agent=${2:-${CARGO_TARGET_DIR:-$repo_root/target}/x86_64-unknown-linux-gnu/release/banger-agent}
init_script=$script_dir/init.sh

# The modules /init loads; their dependencies are added (and ordered) automatically.
wanted_modules=(virtio virtio_ring virtio_mmio virtio_blk virtio_net vsock
    vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport overlay)
# Size of the base rootfs (its files take about 5 MB; the rest is free space VMs never see
# grow: their writes land in their own overlay disk).
rootfs_size=64M

for tool in apt-get apt-cache dpkg-deb lz4 cpio gzip sha256sum flock find sort grep mkfs.ext4; do
    command -v "$tool" >/dev/null || die "'$tool' is not installed"
done
# The guest's sshd and ssh-keygen come from this host, with their libraries (found by ldd).
sshd_bin=/usr/sbin/sshd
keygen_bin=$(command -v ssh-keygen || true)
[ -x "$sshd_bin" ] || die "$sshd_bin not found; install it with: apt-get install -y openssh-server"
[ -n "$keygen_bin" ] || die "ssh-keygen not found; install it with: apt-get install -y openssh-client"
command -v ldd >/dev/null || die "'ldd' is not installed"
[ -f "$agent" ] || die "agent binary $agent not found; build it with:
  RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu -p banger-agent"
[ -x "$agent" ] || die "agent binary $agent is not executable"
if command -v ldd >/dev/null && ldd "$agent" 2>&1 | grep -q '=>'; then
    die "agent binary $agent is dynamically linked; the busybox guest has no libc. Build it with RUSTFLAGS='-C target-feature=+crt-static' and --target x86_64-unknown-linux-gnu"
fi
[ -f "$init_script" ] || die "$init_script is missing"

mkdir -p "$cache_dir" || die "cannot create cache dir $cache_dir"
cache_dir=$(cd "$cache_dir" && pwd)

candidate_version() { # package, `apt-cache policy` output -> candidate version
    awk -v pkg="$1:" '$1 == pkg { found = 1 } found && /Candidate:/ { print $2; exit }' <<<"$2"
}

# The meta package only depends on the real, versioned kernel package.
resolve_kernel_package() {
    apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ { print $2; exit }'
}
kernel_pkg=$(resolve_kernel_package)
if [ -z "$kernel_pkg" ] && [ "$(id -u)" = 0 ]; then
    log "apt lists know no linux-image-cloud-amd64; running apt-get update"
    apt-get update -qq >&2 || die "apt-get update failed"
    kernel_pkg=$(resolve_kernel_package)
fi
[ -n "$kernel_pkg" ] || die "cannot resolve linux-image-cloud-amd64 to a kernel package (run apt-get update?)"
policy=$(apt-cache policy "$kernel_pkg" busybox-static 2>/dev/null) || die "apt-cache policy failed"
kernel_version=$(candidate_version "$kernel_pkg" "$policy")
busybox_version=$(candidate_version busybox-static "$policy")
[ -n "$kernel_version" ] && [ "$kernel_version" != "(none)" ] || die "no installable version of $kernel_pkg"
[ -n "$busybox_version" ] && [ "$busybox_version" != "(none)" ] || die "no installable version of busybox-static"
kernel_release=${kernel_pkg#linux-image-}

sha() { sha256sum "$1" | cut -d' ' -f1; }
key=$(printf '%s\n' "$kernel_pkg=$kernel_version" "busybox-static=$busybox_version" \
    "agent=$(sha "$agent")" "init=$(sha "$init_script")" "builder=$(sha "${BASH_SOURCE[0]}")" \
    "sshd=$(sha "$sshd_bin")" "ssh-keygen=$(sha "$keygen_bin")" |
    sha256sum | cut -c1-16)
out=$cache_dir/guest-$key

print_paths() {
    echo "vmlinuz=$out/vmlinuz"
    echo "vmlinux=$out/vmlinux"
    echo "initramfs=$out/initramfs.cpio.gz"
    echo "rootfs=$out/rootfs.ext4"
    echo "kernel_release=$kernel_release"
}

if [ -f "$out/.complete" ]; then
    print_paths
    exit 0
fi

# One builder at a time per cache dir; whoever waited finds the result made.
exec 9>"$cache_dir/.lock"
flock 9 || die "cannot lock $cache_dir/.lock"
if [ -f "$out/.complete" ]; then
    print_paths
    exit 0
fi

work=$(mktemp -d "$cache_dir/.build.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

log "building test guest $key ($kernel_pkg $kernel_version, busybox-static $busybox_version)"

# --- packages (kept in CACHE_DIR/debs, reused across keys) ----------------------------------
debs=$cache_dir/debs
mkdir -p "$debs"
fetch_deb() { # name version -> path on stdout
    local name=$1 version=$2 file
    file=$debs/${name}_${version//:/%3a}_amd64.deb
    if [ ! -f "$file" ]; then
        (cd "$work" && apt-get download -q "$name=$version" >&2) ||
            die "apt-get download $name=$version failed"
        mv "$work/${name}_${version//:/%3a}_amd64.deb" "$file" ||
            die "apt-get download did not produce ${name}_${version//:/%3a}_amd64.deb"
    fi
    echo "$file"
}
kernel_deb=$(fetch_deb "$kernel_pkg" "$kernel_version")
busybox_deb=$(fetch_deb busybox-static "$busybox_version")

dpkg-deb -x "$kernel_deb" "$work/kernel" || die "extracting $kernel_deb failed"
dpkg-deb -x "$busybox_deb" "$work/busybox" || die "extracting $busybox_deb failed"

# --- kernel images --------------------------------------------------------------------------
mkdir -p "$work/out"
vmlinuz_src=$work/kernel/boot/vmlinuz-$kernel_release
[ -f "$vmlinuz_src" ] || die "$kernel_deb has no boot/vmlinuz-$kernel_release"
cp "$vmlinuz_src" "$work/out/vmlinuz"

# The bzImage carries the kernel as an LZ4 (legacy format) stream starting at 02 21 4c 18.
# lz4 complains about the data after the stream; the ELF magic decides whether it worked.
is_elf() { [ "$(head -c 4 "$1" | od -An -tx1 | tr -d ' \n')" = "7f454c46" ]; }
found_elf=
for offset in $(LC_ALL=C grep -obUaP '\x02\x21\x4c\x18' "$vmlinuz_src" | cut -d: -f1); do
    tail -c +$((offset + 1)) "$vmlinuz_src" | lz4 -dc >"$work/out/vmlinux" 2>/dev/null || true
    if [ -s "$work/out/vmlinux" ] && is_elf "$work/out/vmlinux"; then
        found_elf=1
        break
    fi
done
[ -n "$found_elf" ] || die "no LZ4 stream holding an ELF kernel found in $vmlinuz_src"

# --- OpenSSH ---------------------------------------------------------------------------------
# sshd listens on 127.0.0.1:22 only; the host reaches it through the agent's Connect pipe
# (`banger vm ssh`), so it needs no NIC. Host keys are made at boot by init.sh (ed25519 only).
install_openssh() { # tree root
    local dest=$1 bin lib
    for bin in "$sshd_bin" "$keygen_bin"; do
        mkdir -p "$dest$(dirname "$bin")"
        cp -L "$bin" "$dest$bin"
        for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
            [ -e "$dest$lib" ] && continue
            mkdir -p "$dest$(dirname "$lib")"
            cp -L "$lib" "$dest$lib" || die "copying $lib (needed by $bin) failed"
        done
    done
    mkdir -p "$dest/etc/ssh" "$dest/root"
    cat >"$dest/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
sshd:x:100:65534:sshd privilege separation:/run/sshd:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
    cat >"$dest/etc/group" <<'GROUP'
root:x:0:
tty:x:5:
nogroup:x:65534:
GROUP
    # `*`: no password login, yet not locked (sshd refuses even keys for a `!` account).
    echo 'root:*:19000:0:99999:7:::' >"$dest/etc/shadow"
    chmod 0600 "$dest/etc/shadow"
    printf 'passwd: files\ngroup: files\nshadow: files\n' >"$dest/etc/nsswitch.conf"
    cat >"$dest/etc/ssh/sshd_config" <<'SSHD'
# banger test guest: root with keys only, on loopback (the host comes through the agent).
ListenAddress 127.0.0.1
Port 22
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
HostKey /etc/ssh/ssh_host_ed25519_key
AuthorizedKeysFile .ssh/authorized_keys
PidFile /run/sshd.pid
SSHD
}

# --- initramfs ------------------------------------------------------------------------------
root=$work/root
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,root,etc/banger,lib/modules/banger}
cp "$work/busybox/bin/busybox" "$root/bin/busybox"
applets=$("$root/bin/busybox" --list-full) || die "cannot list busybox applets"
for applet in $applets; do
    [ "$applet" = bin/busybox ] && continue
    mkdir -p "$root/$(dirname "$applet")"
    ln -sf /bin/busybox "$root/$applet"
done
install -m 0755 "$agent" "$root/sbin/banger-agent"
install -m 0755 "$init_script" "$root/init"
echo "banger-guest" >"$root/etc/hostname"
install_openssh "$root"
if [ "$(id -u)" = 0 ]; then
    mknod -m 600 "$root/dev/console" c 5 1
    mknod -m 666 "$root/dev/null" c 1 3
fi

moddir=$work/kernel/lib/modules/$kernel_release
[ -d "$moddir" ] || die "$kernel_deb has no lib/modules/$kernel_release"
declare -A module_file=()
while IFS= read -r file; do
    name=$(basename "$file")
    name=${name%%.ko*}
    module_file[${name//-/_}]=$file
done < <(find "$moddir/kernel" -name '*.ko*')

module_cat() { # path -> module bytes on stdout
    case "$1" in
        *.ko) cat "$1" ;;
        *.ko.xz) xz -dc "$1" ;;
        *.ko.zst) zstd -dcq "$1" ;;
        *.ko.gz) gzip -dc "$1" ;;
        *) die "unknown module format: $1" ;;
    esac
}
is_builtin() {
    LC_ALL=C grep -Eq "/$1\.ko\$|/${1//_/-}\.ko\$" "$moddir/modules.builtin" 2>/dev/null
}
# The package ships no modules.dep (depmod makes it at install time), so dependencies are read
# from each module's .modinfo section, as depmod itself does.
module_depends() {
    module_cat "$1" | tr '\0' '\n' | LC_ALL=C grep -a -m1 '^depends=' | cut -d= -f2 || true
}
declare -A visited=()
module_order=()
visit_module() {
    local name=$1 file dep
    [ -n "${visited[$name]:-}" ] && return 0
    visited[$name]=1
    file=${module_file[$name]:-}
    if [ -z "$file" ]; then
        is_builtin "$name" && return 0
        die "module $name is neither in $kernel_pkg nor built in"
    fi
    for dep in $(module_depends "$file" | tr ',' ' '); do
        visit_module "$dep"
    done
    module_order+=("$name")
}
for module in "${wanted_modules[@]}"; do
    visit_module "$module"
done
: >"$root/etc/banger/modules"
for module in "${module_order[@]}"; do
    module_cat "${module_file[$module]}" >"$root/lib/modules/banger/$module.ko"
    echo "$module" >>"$root/etc/banger/modules"
done
log "modules: ${module_order[*]}"

(cd "$root" && find . -print0 | LC_ALL=C sort -z |
    cpio --null --quiet -o -H newc -R 0:0) | gzip -9n >"$work/out/initramfs.cpio.gz" ||
    die "packing the initramfs failed"

# --- base rootfs ----------------------------------------------------------------------------
# What an image's root filesystem holds for this guest: busybox, the agent, and init.sh as
# /sbin/init (its stage 2). No modules: the initramfs loaded them before switching root.
base=$work/base
mkdir -p "$base"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,root,etc/banger,var}
cp "$work/busybox/bin/busybox" "$base/bin/busybox"
for applet in $applets; do
    [ "$applet" = bin/busybox ] && continue
    mkdir -p "$base/$(dirname "$applet")"
    ln -sf /bin/busybox "$base/$applet"
done
install -m 0755 "$agent" "$base/sbin/banger-agent"
rm -f "$base/sbin/init"
install -m 0755 "$init_script" "$base/sbin/init"
echo "banger-guest" >"$base/etc/hostname"
install_openssh "$base"
echo "base" >"$base/etc/banger/root-origin"
chmod 1777 "$base/tmp"
chmod 0700 "$base/root"
mkfs.ext4 -q -F -d "$base" -L banger-base -E root_owner=0:0 "$work/out/rootfs.ext4" "$rootfs_size" >&2 ||
    die "making the base rootfs failed"

touch "$work/out/.complete"
rm -rf "$out"
mv "$work/out" "$out" || die "cannot move the result to $out"
log "done"
print_paths
