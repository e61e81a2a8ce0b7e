#!/bin/sh
# Init of banger's test guest: /init of the busybox initramfs and /sbin/init of the base rootfs.
#
# Stage 1 (initramfs, PID 1): mounts the kernel file systems and loads the virtio/vsock/overlay
# modules listed in /etc/banger/modules (dependencies first). Then banger's early init:
#   banger.overlay=DEV  the base rootfs is /dev/vda (read-only, shared by every VM of the image);
#                       DEV is the VM's own ext4 holding the overlay's upper/ and work/ dirs.
#                       overlayfs(lower=/dev/vda, upper=DEV) becomes the root.
#   root=DEV            (no banger.overlay) DEV, read-write, becomes the root (clone root mode).
#   banger.work=DEV     the VM's work disk, mounted at /root inside the new root.
# /dev, /proc, /sys and /run move into the new root (`mount -n --move`) and switch_root runs
# the new root's /sbin/init (this script again, in stage 2). With neither argument the guest
# keeps running from the initramfs, as it always did.
#
# Stage 2 (the real root, or still the initramfs): sets the hostname and eth0 from the kernel
# command line (banger.hostname=NAME banger.ip=ADDR/PREFIX banger.gw=GW; banger.dns=DNS becomes
# /etc/resolv.conf), then keeps
# /sbin/banger-agent running. Busybox `poweroff`/`reboot`/`halt` signal PID 1 (USR2/TERM/USR1);
# those requests end in sync + `poweroff -f`/`reboot -f`. The agent's own Shutdown calls
# reboot(2) after sync.
#
# Argument names use a `banger.` prefix: the kernel takes `overlay.*` as overlayfs module
# parameters and never passes them on.

export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root

say() {
    echo "banger-guest: $*"
}

# Waits up to 5 s for a block device the module load just announced.
wait_dev() {
    i=0
    while [ ! -b "$1" ] && [ $i -lt 50 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    [ -b "$1" ]
}

# Stage 1 drops to the initramfs root on failure: the agent still answers, and the console log
# says why, instead of a kernel panic with no agent to ask.
early_init() {
    overlay_dev=
    root_dev=
    work_dev=
    for arg in $(cat /proc/cmdline); do
        case "$arg" in
            banger.overlay=*) overlay_dev="${arg#banger.overlay=}" ;;
            banger.work=*) work_dev="${arg#banger.work=}" ;;
            root=/dev/*) root_dev="${arg#root=}" ;;
        esac
    done
    [ -n "$overlay_dev" ] || [ -n "$root_dev" ] || return 0

    mkdir -p /newroot
    if [ -n "$overlay_dev" ]; then
        wait_dev /dev/vda || { say "base rootfs /dev/vda did not appear"; return 1; }
        wait_dev "$overlay_dev" || { say "overlay disk $overlay_dev did not appear"; return 1; }
        mkdir -p /lower /layer
        mount -t ext4 -o ro /dev/vda /lower || { say "mounting the base /dev/vda failed"; return 1; }
        # The disk is a fresh sparse file: its inode tables read as zeros already.
        mount -t ext4 -o noinit_itable "$overlay_dev" /layer ||
            { say "mounting the overlay disk $overlay_dev failed"; return 1; }
        mkdir -p /layer/upper /layer/work
        mount -t overlay overlay -o lowerdir=/lower,upperdir=/layer/upper,workdir=/layer/work \
            /newroot || { say "mounting the overlay root failed"; return 1; }
        say "root: overlay of /dev/vda (read-only) and $overlay_dev"
    else
        wait_dev "$root_dev" || { say "root disk $root_dev did not appear"; return 1; }
        mount -t ext4 "$root_dev" /newroot || { say "mounting the root $root_dev failed"; return 1; }
        say "root: $root_dev"
    fi
    if [ -n "$work_dev" ]; then
        if wait_dev "$work_dev"; then
            mkdir -p /newroot/root
            mount -t ext4 -o noinit_itable "$work_dev" /newroot/root ||
                say "mounting the work disk $work_dev at /root failed"
        else
            say "work disk $work_dev did not appear"
        fi
    fi
    [ -x /newroot/sbin/init ] || { say "the new root has no /sbin/init"; return 1; }
    for fs in /dev /proc /sys /run; do
        mkdir -p "/newroot$fs"
        mount -n --move "$fs" "/newroot$fs" || { say "moving $fs failed"; return 1; }
    done
    umount /tmp 2>/dev/null
    export BANGER_STAGE=2
    exec switch_root /newroot /sbin/init
}

if [ "${BANGER_STAGE:-1}" = 1 ]; then
    mount -t proc proc /proc
    mount -t sysfs sysfs /sys
    mount -t devtmpfs devtmpfs /dev 2>/dev/null
    # The kernel may have found no /dev/console in the archive: reopen it now that devtmpfs is up.
    exec </dev/console >/dev/console 2>&1
    mkdir -p /dev/pts /dev/shm
    mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
    mount -t tmpfs tmpfs /tmp
    mount -t tmpfs tmpfs /run

    while read -r module; do
        [ -n "$module" ] || continue
        insmod "/lib/modules/banger/$module.ko" || say "loading module $module failed"
    done </etc/banger/modules

    early_init || say "early init failed; staying in the initramfs"
    # Whatever early_init mounted before failing is left as it is; the initramfs root works.
    if [ -d /newroot/dev ] && mountpoint -q /newroot/dev; then
        for fs in /dev /proc /sys /run; do
            mount -n --move "/newroot$fs" "$fs" 2>/dev/null
        done
    fi
else
    unset BANGER_STAGE
    # Stage 2 on the real root: /tmp is the root's own directory, made fresh per boot.
    mkdir -p /tmp
    mount -t tmpfs tmpfs /tmp
fi

hostname=banger-guest
ip_cidr=
gw=
dns=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        banger.hostname=*) hostname="${arg#banger.hostname=}" ;;
        banger.ip=*) ip_cidr="${arg#banger.ip=}" ;;
        banger.gw=*) gw="${arg#banger.gw=}" ;;
        banger.dns=*) dns="${arg#banger.dns=}" ;;
    esac
done
hostname "$hostname"
ip link set lo up
if [ -n "$ip_cidr" ]; then
    ip link set eth0 up &&
        ip addr add "$ip_cidr" dev eth0 &&
        { [ -z "$gw" ] || ip route add default via "$gw"; } ||
        say "configuring eth0 ($ip_cidr via ${gw:-none}) failed"
fi
if [ -n "$dns" ]; then
    echo "nameserver $dns" >/etc/resolv.conf || say "writing /etc/resolv.conf failed"
fi

go_down() {
    say "$1 requested"
    kill "$agent_pid" 2>/dev/null
    sync
    "$1" -f
}
trap 'go_down poweroff' USR2
trap 'go_down reboot' TERM
trap 'go_down poweroff' USR1

# SSH: this VM's own host keys on its first boot (no image carries any), then sshd on
# 127.0.0.1:22; the host reaches it through the agent's Connect pipe (`banger vm ssh`).
if [ -x /usr/sbin/sshd ]; then
    mkdir -p /etc/ssh /run/sshd
    # Only the ed25519 key sshd is configured with: `ssh-keygen -A` would also make an RSA key,
    # which takes many seconds under software emulation and delays the agent.
    [ -f /etc/ssh/ssh_host_ed25519_key ] ||
        ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key >/dev/null 2>&1 ||
        say "ssh-keygen failed"
    /usr/sbin/sshd -E /run/sshd.log || say "sshd failed to start"
fi

say "init done"

while true; do
    /sbin/banger-agent &
    agent_pid=$!
    wait "$agent_pid"
    status=$?
    # A trapped signal interrupts `wait` with a status above 128; go_down has run by then.
    say "banger-agent exited with status $status; restarting"
    sleep 1
done
