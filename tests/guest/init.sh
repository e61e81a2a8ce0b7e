#!/bin/sh
# /init of banger's test guest (busybox initramfs, PID 1).
#
# Mounts the kernel file systems, loads the virtio/vsock modules listed in /etc/banger/modules
# (dependencies first), sets the hostname and eth0 from the kernel command line
# (banger.hostname=NAME banger.ip=ADDR/PREFIX banger.gw=GW), then keeps /sbin/banger-agent
# running. Busybox `poweroff`/`reboot`/`halt` signal PID 1 (USR2/TERM/USR1); those requests end
# in sync + `poweroff -f`/`reboot -f`. The agent's own Shutdown calls reboot(2) after sync.

export PATH=/sbin:/bin:/usr/sbin:/usr/bin
export HOME=/root

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
    insmod "/lib/modules/banger/$module.ko" || echo "banger-guest: loading module $module failed"
done </etc/banger/modules

hostname=banger-guest
ip_cidr=
gw=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        banger.hostname=*) hostname="${arg#banger.hostname=}" ;;
        banger.ip=*) ip_cidr="${arg#banger.ip=}" ;;
        banger.gw=*) gw="${arg#banger.gw=}" ;;
    esac
done
hostname "$hostname"
ip link set lo up
if [ -n "$ip_cidr" ]; then
    ip link set eth0 up &&
        ip addr add "$ip_cidr" dev eth0 &&
        { [ -z "$gw" ] || ip route add default via "$gw"; } ||
        echo "banger-guest: configuring eth0 ($ip_cidr via ${gw:-none}) failed"
fi

go_down() {
    echo "banger-guest: $1 requested"
    kill "$agent_pid" 2>/dev/null
    sync
    "$1" -f
}
trap 'go_down poweroff' USR2
trap 'go_down reboot' TERM
trap 'go_down poweroff' USR1

echo "banger-guest: init done"

while true; do
    /sbin/banger-agent &
    agent_pid=$!
    wait "$agent_pid"
    status=$?
    # A trapped signal interrupts `wait` with a status above 128; go_down has run by then.
    echo "banger-guest: banger-agent exited with status $status; restarting"
    sleep 1
done
