#!/bin/busybox sh
# /init of L1: Debian's generic kernel under QEMU TCG with an emulated AMD SVM
# CPU, so that /dev/kvm is a hardware-style KVM (shared/platform/README.md,
# section 2). It loads kvm_amd and the 9p modules, mounts the host's root
# read-only over virtio-9p, and runs the repository's kvmm (the host's own
# Python and virtualenv) in a chroot to boot L2. /lane.env (written by
# ci/lane/lane.py) sets LANE_REPO, LANE_MODULES, LANE_TAP, LANE_TAP_ADDR and
# LANE_CMD. With LANE_TAP set, L1 makes that TAP (persistent, so every kvmm run
# attaches to it as it is) with the address LANE_TAP_ADDR: the guests' peer. L1
# has no other NIC; guest traffic never leaves it. /sys/fs/cgroup in the chroot
# is a pure cgroup v2 hierarchy (see ci/lane/cgroup_v2.py).
/bin/busybox mkdir -p /proc /sys /dev /bin /sbin /usr/bin /usr/sbin /host
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
. /lane.env

die() {
    echo "LANE-L1 FAIL $*"
    poweroff -f
    sleep 10
}

echo "LANE-L1 up: $(uname -r), uptime $(cut -d' ' -f1 /proc/uptime) s, $(grep -c ^processor /proc/cpuinfo) CPUs"
grep -qw svm /proc/cpuinfo || die "the emulated CPU has no svm flag"
for m in $LANE_MODULES; do
    insmod /lib/modules/$m.ko || die "insmod $m failed"
done
[ -c /dev/kvm ] || die "no /dev/kvm after loading kvm_amd"
echo "LANE-L1 kvm: $(dmesg | grep -i -m1 'nested paging' || echo 'kvm_amd loaded')"

ip link set lo up
if [ -n "$LANE_TAP" ]; then
    tunctl -t "$LANE_TAP" >/dev/null || die "cannot create the TAP $LANE_TAP"
    ip addr add "$LANE_TAP_ADDR" dev "$LANE_TAP" || die "cannot address $LANE_TAP"
    ip link set "$LANE_TAP" up || die "cannot bring $LANE_TAP up"
    echo "LANE-L1 tap: $LANE_TAP $LANE_TAP_ADDR"
fi

mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot /host \
    || die "cannot mount the host's root over 9p"
mkdir -p /dev/shm
mount -t tmpfs -o size=1g tmpfs /dev/shm || die "cannot mount a tmpfs on /dev/shm"
mount -t proc proc /host/proc
mount -t sysfs sysfs /host/sys
# A pure cgroup v2 hierarchy, as on most users' hosts: L1's kernel command line
# has cgroup_no_v1=all (no controller can be bound to a v1 hierarchy), and
# every process starts in the root cgroup. The cgroup-v2 run checks this.
if mount -t cgroup2 -o nsdelegate cgroup2 /host/sys/fs/cgroup; then
    echo "LANE-L1 cgroup2: $(cat /host/sys/fs/cgroup/cgroup.controllers)"
else
    echo "LANE-L1 cgroup2: cannot mount a cgroup2 hierarchy at /sys/fs/cgroup"
fi
mount -o bind /dev /host/dev      # with /dev/shm: scratch space (the disk image)
case "$LANE_REPO" in
    /tmp|/tmp/*) ;;               # the repository itself is there: keep it visible
    *) mount -t tmpfs -o size=64m tmpfs /host/tmp ;;
esac
echo "LANE-L1 running: $LANE_CMD"
chroot /host /bin/sh -c "cd '$LANE_REPO' && $LANE_CMD"
if [ -n "$LANE_TAP" ]; then
    s=/sys/class/net/$LANE_TAP/statistics
    echo "LANE-L1 tap $LANE_TAP: rx_packets=$(cat $s/rx_packets) tx_packets=$(cat $s/tx_packets) rx_dropped=$(cat $s/rx_dropped) tx_dropped=$(cat $s/tx_dropped)"
fi
echo "LANE-L1 done"
poweroff -f
sleep 10
