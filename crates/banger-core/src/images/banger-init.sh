#!/bin/sh
# banger's early init for Debian images: PID 1 before systemd, installed as
# /usr/lib/banger/init and run through `init=/usr/lib/banger/init` once Debian's initrd has
# mounted the image's base rootfs (/dev/vda, read-only) as /.
#
#  1. kernel filesystems (the initrd usually moved them in already)
#  2. the root: overlayfs with lower = the base (/), upper and work dirs on banger.overlay=
#  3. the work disk (banger.work=) on /root
#  4. this VM's identity: hostname (banger.hostname=), /etc/hosts, the NIC config for
#     systemd-networkd (banger.ip=ADDR/PREFIX banger.gw= banger.dns=), resolv.conf
#  5. /dev /proc /sys /run moved into the new root, pivot_root, exec systemd
#
# A failure before systemd prints `banger-init: ...` on the console and ends PID 1 (the kernel
# panics and, with panic=-1, the VM stops): the daemon reports the console's last lines.

PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
B=/usr/lib/banger
NEW=$B/root

fail() {
    echo "banger-init: $*"
    sleep 1
    exit 1
}

wait_dev() {
    i=0
    while [ ! -b "$1" ]; do
        i=$((i + 1))
        [ "$i" -gt 100 ] && fail "device $1 did not appear"
        sleep 0.1
    done
}

mountpoint -q /proc || mount -t proc proc /proc || fail "mounting /proc"
mountpoint -q /sys || mount -t sysfs sysfs /sys || fail "mounting /sys"
mountpoint -q /dev || mount -t devtmpfs devtmpfs /dev || fail "mounting /dev"
mountpoint -q /run || mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run || fail "mounting /run"

overlay_dev=
work_dev=
name=debian
ip=
gw=
dns=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        banger.overlay=*) overlay_dev=${arg#*=} ;;
        banger.work=*) work_dev=${arg#*=} ;;
        banger.hostname=*) name=${arg#*=} ;;
        banger.ip=*) ip=${arg#*=} ;;
        banger.gw=*) gw=${arg#*=} ;;
        banger.dns=*) dns=${arg#*=} ;;
    esac
done

[ -n "$overlay_dev" ] || fail "no banger.overlay= on the kernel command line"
modprobe -q overlay 2>/dev/null
wait_dev "$overlay_dev"
mount -t ext4 -o noatime "$overlay_dev" "$B/rw" || fail "mounting the overlay disk $overlay_dev"
mkdir -p "$B/rw/upper" "$B/rw/work" || fail "preparing the overlay disk"
mount -t overlay overlay -o "lowerdir=/,upperdir=$B/rw/upper,workdir=$B/rw/work" "$NEW" ||
    fail "mounting the overlay root"

if [ -n "$work_dev" ]; then
    wait_dev "$work_dev"
    mount -t ext4 -o noatime "$work_dev" "$NEW/root" || fail "mounting the work disk $work_dev"
fi

echo "$name" >"$NEW/etc/hostname"
hostname "$name"
cat >"$NEW/etc/hosts" <<HOSTS
127.0.0.1	localhost
127.0.1.1	$name
::1	localhost ip6-localhost ip6-loopback
HOSTS

mkdir -p /run/systemd/network
if [ -n "$ip" ]; then
    {
        echo "[Match]"
        echo "Name=e*"
        echo
        echo "[Network]"
        echo "Address=$ip"
        [ -n "$gw" ] && echo "Gateway=$gw"
        [ -n "$dns" ] && echo "DNS=$dns"
        echo "LinkLocalAddressing=no"
        echo "IPv6AcceptRA=no"
    } >/run/systemd/network/10-banger.network
fi
if [ -n "$dns" ]; then
    echo "nameserver $dns" >"$NEW/etc/resolv.conf"
fi

for fs in dev proc sys run; do
    mount -n --move "/$fs" "$NEW/$fs" || fail "moving /$fs into the new root"
done
cd "$NEW" || fail "entering the new root"
pivot_root . "${B#/}/oldroot" || fail "pivot_root"
exec chroot . /sbin/init "$@" <dev/console >dev/console 2>&1
