#!/bin/busybox sh
# /init of L2 for `python -m bench linux` (bench/linux.py): the marker first,
# then the guest's own clocks, then power off at once (ACPI S5, which ends kvmm
# and QEMU alike). Nothing else: the figures are the boot.
#   LANE-BENCH-UPTIME  /proc/uptime: seconds since the kernel's timekeeping began
#   LANE-BENCH-CLOCK   kvm-clock's "sched offset" (ns of guest clock before the
#                      kernel took kvm-clock as its sched_clock, early in
#                      setup_arch) and the sched_clock timestamp of init's marker
echo "LANE-BENCH-INIT"
/bin/busybox mount -t proc proc /proc
echo "LANE-BENCH-UPTIME $(/bin/busybox cut -d' ' -f1 /proc/uptime)"
/bin/busybox mount -t devtmpfs devtmpfs /dev
echo "LANE-BENCH init" > /dev/kmsg
offset=$(/bin/busybox dmesg | /bin/busybox sed -n 's/.*kvm-clock: using sched offset of \([0-9]*\) cycles.*/\1/p')
stamp=$(/bin/busybox dmesg | /bin/busybox sed -n 's/^\[ *\([0-9.]*\)\] LANE-BENCH init.*/\1/p')
echo "LANE-BENCH-CLOCK offset_ns=${offset:-none} init_s=${stamp:-none}"
/bin/busybox poweroff -f
/bin/busybox sleep 5
echo "LANE-BENCH-NO-POWEROFF"
